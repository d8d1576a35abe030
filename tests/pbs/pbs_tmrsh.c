/* A stand-in for PBS's pbs_tmrsh, for tests/tests/pbs_nodes.rs (no PBS can be installed here).
 *
 *   pbs_tmrsh [-n] [-l USER] HOST [-n] [-l USER] COMMAND [ARG...]
 *
 * The real one (OpenPBS src/cmds/pbs_tmrsh.c) is an rsh replacement for MPI launchers: it
 * finds HOST's node in the job, tm_spawn()s COMMAND with its arguments, one element each and
 * no shell, on that node through its MoM (the TM interface: TCP to the local MoM at
 * PBS_MOMPORT), waits with tm_obit() and exits with the task's exit status, or 255 when PBS
 * cannot start it. The sister MoM runs the execjob_launch hooks on the task and starts it as
 * the job's user with the job's environment (tm_spawn's envp is NULL: the caller's
 * environment is not sent) plus PBS_NODENUM and PBS_TASKNUM.
 *
 * Here the stand-in MoM is tests/pbs/tm_server.py, listening on the unix socket MOM_SOCKET
 * (fixed at build time, as PBS's port is fixed by pbs.conf). The request is the job's id, the
 * host and the command's argv, each ending with a NUL, and this process's stdout and stderr
 * (SCM_RIGHTS), which the task writes to (real PBS sends a TM task's output to the job's
 * output files). The answer is "exit N\n", or "fail MESSAGE\n" when the task could not be
 * started. Built with `gcc -static`: it runs in any image, like the real one, which sites
 * build against nothing but libc.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef MOM_SOCKET
#error "build with -DMOM_SOCKET='\"/path/of/tm.sock\"'"
#endif

static void usage(const char *id)
{
    fprintf(stderr, "usage: %s [-n][-l username] host [-n][-l username] command\n", id);
    exit(255);
}

/* Appends s and its NUL to buf (grown as needed). */
static void put(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s) + 1;

    while (*len + n > *cap) {
        *cap = *cap ? *cap * 2 : 4096;
        *buf = realloc(*buf, *cap);
        if (!*buf) {
            perror("pbs_tmrsh: realloc");
            exit(255);
        }
    }
    memcpy(*buf + *len, s, n);
    *len += n;
}

int main(int argc, char **argv)
{
    const char *id = argv[0], *host = NULL, *jobid;
    char *buf = NULL, reply[4096];
    size_t len = 0, cap = 0, got = 0;
    int arg, fd, fds[2] = {1, 2};
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    /* As the real one: -n is a no-op, -l names the user (only the caller is allowed; the
     * task runs as the job's user anyway), the first other word is the host. */
    for (arg = 1; arg < argc; arg++) {
        const char *c = argv[arg];
        if (c[0] != '-') {
            if (host)
                break;
            host = c;
        } else if (strcmp(c, "-n") == 0) {
            continue;
        } else if (strncmp(c, "-l", 2) == 0) {
            if (c[2] == '\0' && ++arg == argc)
                usage(id);
        } else {
            usage(id);
        }
    }
    if (!host || arg == argc)
        usage(id);
    if (!getenv("PBS_ENVIRONMENT")) {
        fprintf(stderr, "%s: not executing under PBS\n", id);
        return 255;
    }
    if (!(jobid = getenv("PBS_JOBID"))) {
        fprintf(stderr, "%s: PBS jobid not in environment\n", id);
        return 255;
    }

    put(&buf, &len, &cap, jobid);
    put(&buf, &len, &cap, host);
    for (; arg < argc; arg++)
        put(&buf, &len, &cap, argv[arg]);

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("pbs_tmrsh: socket");
        return 255;
    }
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", MOM_SOCKET);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "%s: tm_init: cannot reach the MoM at %s: %s\n", id, MOM_SOCKET,
                strerror(errno));
        return 255;
    }

    /* The first part of the request carries the two descriptors; the rest follows. */
    {
        char control[CMSG_SPACE(sizeof fds)];
        struct iovec iov = {.iov_base = buf, .iov_len = len};
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = control, .msg_controllen = sizeof control,
        };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        ssize_t n;
        size_t sent;

        memset(control, 0, sizeof control);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof fds);
        memcpy(CMSG_DATA(cm), fds, sizeof fds);
        n = sendmsg(fd, &msg, 0);
        if (n < 0) {
            perror("pbs_tmrsh: sendmsg");
            return 255;
        }
        for (sent = n; sent < len; sent += n) {
            n = write(fd, buf + sent, len - sent);
            if (n < 0) {
                if (errno == EINTR) {
                    n = 0;
                    continue;
                }
                perror("pbs_tmrsh: write");
                return 255;
            }
        }
    }
    shutdown(fd, SHUT_WR);

    /* tm_obit: the task's exit status. */
    for (;;) {
        ssize_t n = read(fd, reply + got, sizeof reply - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += n;
        if (got == sizeof reply - 1)
            break;
    }
    reply[got] = '\0';
    if (strncmp(reply, "exit ", 5) == 0)
        return atoi(reply + 5);
    if (strncmp(reply, "fail ", 5) == 0) {
        reply[strcspn(reply, "\n")] = '\0';
        fprintf(stderr, "%s: tm_spawn: host \"%s\": %s\n", id, host, reply + 5);
        return 255;
    }
    fprintf(stderr, "%s: tm_poll(obit): host \"%s\": the MoM answered %s\n", id, host,
            got ? reply : "nothing");
    return 255;
}
