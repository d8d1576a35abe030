/* probe: reports what a process sees inside a container, as one JSON object on stdout.
 * Built static (gcc -static) by the tests so it runs in any image.
 *
 *   probe [--exit N] [--signal N] [--write PATH]... [--read PATH]...
 *
 * --exit N exits with N after reporting; --signal N kills itself with signal N;
 * --sleep N sleeps N seconds after reporting.
 * --write PATH tries to create PATH and reports "ok" or the errno text.
 * --read PATH reports the file's content (or the errno text). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static void str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') printf("\\n");
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void field(const char *k) { str(k); putchar(':'); }

int main(int argc, char **argv) {
    int exit_code = 0, sig = 0;
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;
    getresuid(&ruid, &euid, &suid);
    getresgid(&rgid, &egid, &sgid);
    printf("{");
    field("uid"); printf("%u,", ruid);
    field("euid"); printf("%u,", euid);
    field("suid"); printf("%u,", suid);
    field("gid"); printf("%u,", rgid);
    field("egid"); printf("%u,", egid);
    gid_t groups[1024];
    int n = getgroups(1024, groups);
    field("groups"); printf("[");
    for (int i = 0; i < n; i++) printf("%s%u", i ? "," : "", groups[i]);
    printf("],");
    char buf[8192];
    field("cwd"); str(getcwd(buf, sizeof buf) ? buf : strerror(errno)); printf(",");
    gethostname(buf, sizeof buf);
    field("hostname"); str(buf); printf(",");
    /* Capability sets and no_new_privs, as /proc/self/status shows them. */
    field("status"); printf("{");
    FILE *st = fopen("/proc/self/status", "r");
    int fs = 1;
    while (st && fgets(buf, sizeof buf, st)) {
        char *colon = strchr(buf, ':');
        if (!colon || (strncmp(buf, "Cap", 3) && strncmp(buf, "NoNewPrivs", 10))) continue;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        v[strcspn(v, "\n")] = 0;
        printf("%s", fs ? "" : ","); fs = 0;
        field(buf); str(v);
    }
    if (st) fclose(st);
    printf("},");
    /* Signals ignored and blocked at start (what exec passed on): numbers, as lists. */
    const char *sigs[] = {"ignored", "blocked"};
    for (int k = 0; k < 2; k++) {
        struct sigaction sa;
        sigset_t mask;
        sigprocmask(SIG_BLOCK, NULL, &mask);
        field(sigs[k]); printf("[");
        int first = 1;
        for (int sig = 1; sig < 32; sig++) {
            int on = k == 0 ? (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
                            : sigismember(&mask, sig) == 1;
            if (on) { printf("%s%d", first ? "" : ",", sig); first = 0; }
        }
        printf("],");
    }
    field("env"); printf("{");
    for (char **e = environ; *e; e++) {
        char *eq = strchr(*e, '=');
        if (!eq) continue;
        *eq = 0;
        printf("%s", e == environ ? "" : ",");
        str(*e); putchar(':'); str(eq + 1);
        *eq = '=';
    }
    printf("},");
    field("mounts"); printf("[");
    FILE *mi = fopen("/proc/self/mountinfo", "r");
    int first = 1;
    char line[8192];
    while (mi && fgets(line, sizeof line, mi)) {
        /* id parent maj:min root target options [optional...] - fstype source superopts */
        char *f[64]; int nf = 0;
        for (char *t = strtok(line, " \n"); t && nf < 64; t = strtok(NULL, " \n")) f[nf++] = t;
        int dash = -1;
        for (int i = 6; i < nf; i++) if (!strcmp(f[i], "-")) { dash = i; break; }
        if (nf < 6 || dash < 0 || dash + 1 >= nf) continue;
        printf("%s{", first ? "" : ","); first = 0;
        field("target"); str(f[4]); putchar(',');
        field("fstype"); str(f[dash + 1]); putchar(',');
        field("options"); str(f[5]); putchar(',');
        field("root"); str(f[3]);
        putchar('}');
    }
    if (mi) fclose(mi);
    printf("],");
    field("dev"); printf("[");
    DIR *d = opendir("/dev");
    first = 1;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        printf("%s", first ? "" : ","); first = 0;
        str(de->d_name);
    }
    if (d) closedir(d);
    printf("],");
    int fd = open("/.probe-root-write", O_CREAT | O_WRONLY | O_EXCL, 0600);
    field("root_writable"); printf("%s,", fd >= 0 ? "true" : "false");
    if (fd >= 0) { close(fd); unlink("/.probe-root-write"); }
    field("writes"); printf("{");
    int fw = 1;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--write")) continue;
        int w = open(argv[i + 1], O_CREAT | O_WRONLY | O_TRUNC, 0644);
        printf("%s", fw ? "" : ","); fw = 0;
        str(argv[i + 1]); putchar(':'); str(w >= 0 ? "ok" : strerror(errno));
        if (w >= 0) close(w);
    }
    printf("},");
    field("reads"); printf("{");
    int fr = 1;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--read")) continue;
        printf("%s", fr ? "" : ","); fr = 0;
        str(argv[i + 1]); putchar(':');
        FILE *rf = fopen(argv[i + 1], "r");
        if (!rf) { str(strerror(errno)); continue; }
        static char content[65536];
        size_t len = fread(content, 1, sizeof content - 1, rf);
        content[len] = 0;
        fclose(rf);
        str(content);
    }
    printf("},");
    field("argv"); printf("[");
    for (int i = 0; i < argc; i++) { printf("%s", i ? "," : ""); str(argv[i]); }
    printf("]}\n");
    fflush(stdout);
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--exit")) exit_code = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--signal")) sig = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--sleep")) sleep(atoi(argv[i + 1]));
    }
    if (sig) { signal(sig, SIG_DFL); kill(getpid(), sig); pause(); }
    return exit_code;
}
