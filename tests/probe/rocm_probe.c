/* rocm_probe: reports, one key=value per line, whether the ROCm runtime (HSA) loads in the
 * container and what it says, and which AMD device nodes the container has.
 *
 *   libhsa=        the path libhsa-runtime64.so.1 was loaded from, or "none" (with dlerror=)
 *   hsa_init=      the hsa_status_t of hsa_init() (0 = success; without a GPU the runtime
 *                  answers an error: it opened /dev/kfd and found no usable agent)
 *   rocr_visible=  ROCR_VISIBLE_DEVICES, or "unset"
 *   kfd=           /dev/kfd's major:minor, or "none"
 *   dev_dri=       /dev/dri entries, sorted, as name@major:minor
 * Build: gcc -O2 -o rocm_probe rocm_probe.c -ldl */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void) {
    void *h = dlopen("libhsa-runtime64.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        const char *e = dlerror();
        printf("libhsa=none\ndlerror=%s\n", e ? e : "");
    } else {
        int (*init)(void) = (int (*)(void))dlsym(h, "hsa_init");
        Dl_info info;
        if (init && dladdr((void *)init, &info) && info.dli_fname)
            printf("libhsa=%s\n", info.dli_fname);
        else
            printf("libhsa=unknown\n");
        printf("hsa_init=%d\n", init ? init() : -1);
    }
    const char *v = getenv("ROCR_VISIBLE_DEVICES");
    printf("rocr_visible=%s\n", v ? v : "unset");
    struct stat st;
    if (stat("/dev/kfd", &st) == 0)
        printf("kfd=%u:%u\n", major(st.st_rdev), minor(st.st_rdev));
    else
        printf("kfd=none\n");
    char *names[256];
    int n = 0;
    DIR *d = opendir("/dev/dri");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && n < 256) {
            if (e->d_name[0] == '.')
                continue;
            char p[512], buf[300];
            snprintf(p, sizeof p, "/dev/dri/%s", e->d_name);
            if (stat(p, &st) == 0)
                snprintf(buf, sizeof buf, "%s@%u:%u", e->d_name, major(st.st_rdev), minor(st.st_rdev));
            else
                snprintf(buf, sizeof buf, "%s", e->d_name);
            names[n++] = strdup(buf);
        }
        closedir(d);
    }
    qsort(names, n, sizeof *names, cmp);
    printf("dev_dri=");
    for (int i = 0; i < n; i++)
        printf("%s%s", i ? "," : "", names[i]);
    printf("\n");
    return 0;
}
