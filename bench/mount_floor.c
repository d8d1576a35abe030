/* The kernel floor of a containerized launch (bench/dense.sh): a mount namespace of its own,
 * the squashfs image attached to a fresh loop device and mounted, chroot into it, exec the
 * command. No policy, no checks, no /dev, /proc or binds: the least any container runtime
 * that mounts the image with the kernel does.
 *
 *   mount_floor IMAGE.sqfs MOUNTPOINT COMMAND [ARGS...]      (as root)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "mount_floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: mount_floor IMAGE MOUNTPOINT COMMAND [ARGS...]\n");
        return 2;
    }
    if (unshare(CLONE_NEWNS) < 0) die("unshare");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make / private");
    int img = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (img < 0) die(argv[1]);
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) die("/dev/loop-control");
    char dev[64];
    for (;;) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) die("LOOP_CTL_GET_FREE");
        snprintf(dev, sizeof dev, "/dev/loop%d", n);
        int lfd = open(dev, O_RDONLY | O_CLOEXEC);
        if (lfd < 0) die(dev);
        struct loop_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = img;
        cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
        if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0) {
            if (mount(dev, argv[2], "squashfs", MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
                die("mount");
            close(lfd);
            break;
        }
        if (errno != EBUSY) die("LOOP_CONFIGURE");
        close(lfd); /* another process took it first: ask again */
    }
    close(img);
    close(ctl);
    if (chroot(argv[2]) < 0) die("chroot");
    if (chdir("/") < 0) die("chdir");
    execv(argv[3], argv + 3);
    die(argv[3]);
}
