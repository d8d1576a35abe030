/* cuda_probe: reports what a process sees of the NVIDIA driver, one `key=value` per line.
 * Dynamic on purpose (gcc -O2 -o cuda_probe cuda_probe.c -ldl): it loads libcuda.so.1 the way
 * a CUDA program does, through the dynamic loader, so the report says which libcuda the
 * container's LD_LIBRARY_PATH and ld.so.cache led to. No CUDA headers: the few driver API
 * functions it calls are declared below (their ABI is stable since CUDA 6).
 *
 *   libcuda=PATH          the libcuda.so.1 loaded (the loader's name for it), or `none`
 *   libcuda_real=PATH     the same, symlinks resolved
 *   dlerror=TEXT          only when libcuda=none
 *   driver_version=N      cuDriverGetVersion (answers without a GPU: 12020 is CUDA 12.2, driver 535)
 *   cuinit=N              CUresult of cuInit(0): 0 success, 100 CUDA_ERROR_NO_DEVICE,
 *                         999 CUDA_ERROR_UNKNOWN, 304 CUDA_ERROR_OPERATING_SYSTEM, ...
 *   cuinit_name=NAME      cuGetErrorName of it
 *   device_count=N        cuDeviceGetCount, when cuInit succeeded
 *   deviceI=NAME          cuDeviceGetName of each device, when cuInit succeeded
 *   loaded=A,B            the NVIDIA/CUDA shared objects mapped after cuInit (dl_iterate_phdr)
 *   visible=V             $CUDA_VISIBLE_DEVICES, or `unset`
 *   ld_library_path=V     $LD_LIBRARY_PATH, or `unset`
 *   dev_nvidia=A,B        /dev/nvidia* sorted, as NAME@MAJOR:MINOR (NAME@dir etc. for non-devices)
 *   nvidia_caps=A,B       the entries of /dev/nvidia-caps, the same way
 *
 * `cuda_probe --no-init` skips cuInit (and so the GPU's initialisation, which can take seconds
 * without the persistence daemon): `cuinit=skipped`. For timing a launch, not the GPU.
 *
 * Exits 0 whenever it could report (the tests assert on the report, not the status). */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

typedef int CUresult;
typedef int CUdevice;
typedef CUresult (*cuDriverGetVersion_t)(int *);
typedef CUresult (*cuInit_t)(unsigned int);
typedef CUresult (*cuDeviceGetCount_t)(int *);
typedef CUresult (*cuDeviceGet_t)(CUdevice *, int);
typedef CUresult (*cuDeviceGetName_t)(char *, int, CUdevice);
typedef CUresult (*cuGetErrorName_t)(CUresult, const char **);

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) printf("missing_symbol=%s\n", name);
    return p;
}

static void env(const char *key, const char *var) {
    const char *v = getenv(var);
    printf("%s=%s\n", key, v ? v : "unset");
}

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Prints `key=` and the entries of `dir` whose names start with `prefix`, sorted, each as
 * NAME@MAJOR:MINOR for device nodes, NAME@dir / NAME@link / NAME@file otherwise. */
static void devices(const char *key, const char *dir, const char *prefix, const char *skip) {
    printf("%s=", key);
    DIR *d = opendir(dir);
    if (!d) {
        printf("%s\n", errno == ENOENT ? "" : strerror(errno));
        return;
    }
    char *names[1024];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < sizeof names / sizeof names[0]) {
        if (e->d_name[0] == '.' || strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        if (skip && strcmp(e->d_name, skip) == 0) continue;
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], cmp);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        printf("%s%s@", i ? "," : "", names[i]);
        if (lstat(path, &st) != 0) printf("%s", strerror(errno));
        else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
            printf("%u:%u", major(st.st_rdev), minor(st.st_rdev));
        else if (S_ISDIR(st.st_mode)) printf("dir");
        else if (S_ISLNK(st.st_mode)) printf("link");
        else printf("file");
        free(names[i]);
    }
    printf("\n");
}

static int loaded_one(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    int *first = data;
    const char *base = strrchr(info->dlpi_name, '/');
    base = base ? base + 1 : info->dlpi_name;
    if (strstr(base, "nvidia") || strstr(base, "cuda")) {
        printf("%s%s", *first ? "" : ",", info->dlpi_name);
        *first = 0;
    }
    return 0;
}

int main(int argc, char **argv) {
    int no_init = argc > 1 && strcmp(argv[1], "--no-init") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *err = dlerror();
        printf("libcuda=none\ndlerror=%s\n", err ? err : "unknown");
    } else {
        struct link_map *map = NULL;
        if (dlinfo(lib, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name[0]) {
            char real[PATH_MAX];
            printf("libcuda=%s\n", map->l_name);
            printf("libcuda_real=%s\n", realpath(map->l_name, real) ? real : strerror(errno));
        } else {
            printf("libcuda=unknown\n");
        }
        cuDriverGetVersion_t get_version = (cuDriverGetVersion_t)sym(lib, "cuDriverGetVersion");
        cuInit_t init = (cuInit_t)sym(lib, "cuInit");
        cuDeviceGetCount_t get_count = (cuDeviceGetCount_t)sym(lib, "cuDeviceGetCount");
        cuDeviceGet_t get_device = (cuDeviceGet_t)sym(lib, "cuDeviceGet");
        cuDeviceGetName_t get_name = (cuDeviceGetName_t)sym(lib, "cuDeviceGetName");
        cuGetErrorName_t error_name = (cuGetErrorName_t)dlsym(lib, "cuGetErrorName");
        int version = 0;
        if (get_version) {
            CUresult r = get_version(&version);
            if (r == 0) printf("driver_version=%d\n", version);
            else printf("driver_version=error:%d\n", r);
        }
        if (no_init) {
            printf("cuinit=skipped\n");
        } else if (init) {
            CUresult r = init(0);
            const char *name = NULL;
            printf("cuinit=%d\n", r);
            if (error_name && error_name(r, &name) == 0 && name) printf("cuinit_name=%s\n", name);
            int count = 0;
            if (r == 0 && get_count) {
                r = get_count(&count);
                if (r == 0) printf("device_count=%d\n", count);
                else printf("device_count=error:%d\n", r);
                for (int i = 0; r == 0 && i < count && get_device && get_name; i++) {
                    CUdevice dev;
                    char buf[256] = "";
                    if (get_device(&dev, i) == 0 && get_name(buf, sizeof buf, dev) == 0)
                        printf("device%d=%s\n", i, buf);
                }
            }
        }
        int first = 1;
        printf("loaded=");
        dl_iterate_phdr(loaded_one, &first);
        printf("\n");
    }
    env("visible", "CUDA_VISIBLE_DEVICES");
    env("ld_library_path", "LD_LIBRARY_PATH");
    devices("dev_nvidia", "/dev", "nvidia", "nvidia-caps");
    devices("nvidia_caps", "/dev/nvidia-caps", "", NULL);
    return 0;
}
