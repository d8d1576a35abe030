/* cma_probe: cross-memory attach between two processes, as MPI's shared-memory transports
 * use it (Open MPI vader's single-copy "cma" mechanism: process_vm_readv).
 *
 *   cma_probe serve FILE   fills 4 MiB with a pattern, writes "PID ADDRESS" to FILE, then
 *                          waits (at most 20 s) until FILE.done exists
 *   cma_probe read FILE    reads the 4 MiB from that process with process_vm_readv, checks the
 *                          pattern, creates FILE.done, prints "cma=ok" or "cma=<errno name>"
 * Built static by the tests. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define SIZE (4 << 20)

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: cma_probe serve|read FILE\n");
        return 2;
    }
    char done[4096];
    snprintf(done, sizeof done, "%s.done", argv[2]);
    if (strcmp(argv[1], "serve") == 0) {
        unsigned char *buf = malloc(SIZE);
        for (int i = 0; i < SIZE; i++) buf[i] = (unsigned char)(i * 7);
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
        FILE *f = fopen(tmp, "w");
        if (!f) { perror(tmp); return 1; }
        fprintf(f, "%d %p\n", getpid(), (void *)buf);
        fclose(f);
        rename(tmp, argv[2]);
        for (int i = 0; i < 2000 && access(done, F_OK) != 0; i++) usleep(10000);
        return 0;
    }
    FILE *f = NULL;
    for (int i = 0; i < 2000 && !(f = fopen(argv[2], "r")); i++) usleep(10000);
    if (!f) { perror(argv[2]); return 1; }
    int pid; void *addr;
    if (fscanf(f, "%d %p", &pid, &addr) != 2) { fprintf(stderr, "bad %s\n", argv[2]); return 1; }
    fclose(f);
    unsigned char *buf = malloc(SIZE);
    struct iovec local = { buf, SIZE }, remote = { addr, SIZE };
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    int err = errno;
    FILE *d = fopen(done, "w");
    if (d) fclose(d);
    if (n != SIZE) {
        printf("cma=%s\n", n < 0 ? strerrorname_np(err) : "short");
        return 0;
    }
    for (int i = 0; i < SIZE; i++)
        if (buf[i] != (unsigned char)(i * 7)) { printf("cma=corrupt\n"); return 0; }
    printf("cma=ok\n");
    return 0;
}
