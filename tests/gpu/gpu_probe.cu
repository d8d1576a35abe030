// gpu_probe: lists the CUDA devices this process sees and runs a vector add on each, one
// `key=value` per line. Built by tests/gpu/prepare.sh with the CUDA runtime linked in
// (`nvcc -cudart static`) and SASS for sm_70..sm_90 plus compute_90 PTX, so it needs only the
// driver's libcuda.so.1 (and glibc) at run time: what `slipway exec --nv` must provide.
//
//   runtime_version=N  driver_version=N  visible=V  device_count=N
//   deviceI.name=  deviceI.pci=  deviceI.uuid=GPU-...  deviceI.cc=M.m  deviceI.mem_mib=
//   deviceI.vector_add=ok|FAIL ...  deviceI.kernel_us=
//   result=PASS | result=FAIL reason=...
//
// Exits 0 when every visible device computed the right sums, 1 otherwise (2 when no device is
// visible at all, so a caller can tell "no GPU here" from "GPU broken").
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

static const int N = 1 << 20;

__global__ void vector_add(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

// Prints `deviceI.vector_add=FAIL <what>: <error name> (<text>)` and returns false on error.
static bool ok(int dev, const char *what, cudaError_t err) {
    if (err == cudaSuccess) return true;
    printf("device%d.vector_add=FAIL %s: %s (%s)\n", dev, what, cudaGetErrorName(err),
           cudaGetErrorString(err));
    return false;
}

static bool run_on(int dev) {
    if (!ok(dev, "cudaSetDevice", cudaSetDevice(dev))) return false;
    std::vector<float> a(N), b(N), c(N, -1.0f);
    for (int i = 0; i < N; i++) {
        a[i] = (float)i;
        b[i] = 2.0f * (float)i;  // sums up to 3 * 2^20 < 2^24: exact in float
    }
    float *da = nullptr, *db = nullptr, *dc = nullptr;
    const size_t bytes = N * sizeof(float);
    bool good = ok(dev, "cudaMalloc", cudaMalloc(&da, bytes)) &&
                ok(dev, "cudaMalloc", cudaMalloc(&db, bytes)) &&
                ok(dev, "cudaMalloc", cudaMalloc(&dc, bytes)) &&
                ok(dev, "cudaMemcpy", cudaMemcpy(da, a.data(), bytes, cudaMemcpyHostToDevice)) &&
                ok(dev, "cudaMemcpy", cudaMemcpy(db, b.data(), bytes, cudaMemcpyHostToDevice));
    cudaEvent_t start, stop;
    if (good) good = ok(dev, "cudaEventCreate", cudaEventCreate(&start)) &&
                     ok(dev, "cudaEventCreate", cudaEventCreate(&stop));
    if (good) {
        cudaEventRecord(start);
        vector_add<<<(N + 255) / 256, 256>>>(da, db, dc, N);
        cudaEventRecord(stop);
        good = ok(dev, "kernel launch", cudaGetLastError()) &&
               ok(dev, "cudaDeviceSynchronize", cudaDeviceSynchronize()) &&
               ok(dev, "cudaMemcpy", cudaMemcpy(c.data(), dc, bytes, cudaMemcpyDeviceToHost));
        float ms = 0;
        if (good && cudaEventElapsedTime(&ms, start, stop) == cudaSuccess)
            printf("device%d.kernel_us=%.1f\n", dev, ms * 1000.0f);
    }
    if (good) {
        int bad = 0, first = -1;
        for (int i = 0; i < N; i++)
            if (c[i] != 3.0f * (float)i && bad++ == 0) first = i;
        if (bad) {
            printf("device%d.vector_add=FAIL %d of %d sums wrong, first c[%d]=%g (want %g)\n", dev,
                   bad, N, first, c[first], 3.0f * (float)first);
            good = false;
        } else {
            printf("device%d.vector_add=ok\n", dev);
        }
    }
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    return good;
}

int main() {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    int driver = 0;
    // The runtime linked in (cudaRuntimeGetVersion fails without a device in CUDA 11).
    printf("runtime_version=%d\n", CUDART_VERSION);
    cudaError_t err = cudaDriverGetVersion(&driver);
    if (err == cudaSuccess) printf("driver_version=%d\n", driver);
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    printf("visible=%s\n", visible ? visible : "unset");
    if (err == cudaSuccess && driver == 0) {
        printf("result=FAIL reason=no CUDA driver (libcuda.so.1 not found or not loadable)\n");
        return 2;
    }
    int count = 0;
    err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        printf("device_count=0\n");
        printf("result=FAIL reason=cudaGetDeviceCount: %s (%s)\n",
               err == cudaSuccess ? "no device" : cudaGetErrorName(err),
               err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
        return 2;
    }
    printf("device_count=%d\n", count);
    bool all = true;
    for (int d = 0; d < count; d++) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, d) != cudaSuccess) {
            printf("device%d.vector_add=FAIL cudaGetDeviceProperties\n", d);
            all = false;
            continue;
        }
        char pci[32] = "";
        cudaDeviceGetPCIBusId(pci, sizeof pci, d);
        const unsigned char *u = (const unsigned char *)p.uuid.bytes;
        printf("device%d.name=%s\n", d, p.name);
        printf("device%d.pci=%s\n", d, pci);
        printf("device%d.uuid=GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
               "%02x%02x%02x%02x%02x%02x\n",
               d, u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
               u[12], u[13], u[14], u[15]);
        printf("device%d.cc=%d.%d\n", d, p.major, p.minor);
        printf("device%d.mem_mib=%zu\n", d, p.totalGlobalMem >> 20);
        if (!run_on(d)) all = false;
    }
    if (all) {
        printf("result=PASS\n");
        return 0;
    }
    printf("result=FAIL reason=a device failed the vector add (see deviceI.vector_add)\n");
    return 1;
}
