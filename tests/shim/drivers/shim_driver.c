/* A CUDA program run under the shim against the fake driver. Built twice:
 *   - linked against libcuda (-lcuda): calls resolve to the preloaded shim by symbol;
 *   - with -DVIA_PROC_ADDRESS: like a CUDA >= 12 runtime, it dlopens libcuda.so.1, takes
 *     cuGetProcAddress_v2 from dlsym, and fetches every entry point with CUDA 12.8 and
 *     the per-thread default stream flag.
 * Each scenario prints one line of JSON with what it measured; exit status 1 on a broken
 * expectation (with FAIL lines on stdout). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fake_cuda.h"
#include "control_write.h"
#include "driver_check.h"

struct api {
    CUresult (*init)(unsigned int);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*primary_ctx_retain)(CUcontext *, CUdevice);
    CUresult (*ctx_set_current)(CUcontext);
    CUresult (*stream_create)(CUstream *, unsigned int);
    CUresult (*stream_synchronize)(CUstream);
    CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                       unsigned, CUstream, void **, void **);
    CUresult (*launch_ex)(const CUlaunchConfig *, CUfunction, void **, void **);
    CUresult (*launch_cooperative)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                                   unsigned, unsigned, unsigned, CUstream, void **);
    CUresult (*graph_launch)(CUgraphExec, CUstream);
    CUresult (*mem_alloc)(CUdeviceptr *, size_t);
    CUresult (*mem_free)(CUdeviceptr);
    CUresult (*mem_get_info)(size_t *, size_t *);
    CUresult (*device_total_mem)(size_t *, CUdevice);
    CUresult (*begin_capture)(CUstream, CUstreamCaptureMode);
    CUresult (*end_capture)(CUstream, CUgraph *);
    unsigned long long (*busy_ns)(int);
    unsigned long long (*queued_ns)(int);
    unsigned long long (*calls)(const char *);
    unsigned long long (*events_on_capturing_streams)(void);
    unsigned long long (*captured_launches)(void);
};

static struct api cu;

#ifdef VIA_PROC_ADDRESS
#define VARIANT "proc_address"
static void *libcuda;
static CUresult (*get_proc)(const char *, void **, int, cuuint64_t,
                            CUdriverProcAddressQueryResult *);

static void *proc(const char *base) {
    void *fn = NULL;
    CUdriverProcAddressQueryResult status;
    CUresult result = get_proc(base, &fn, 12080, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
                               &status);
    if (result != CUDA_SUCCESS || !fn) {
        printf("FAIL cuGetProcAddress_v2(%s) = %d\n", base, result);
        exit(1);
    }
    return fn;
}

static void bind_api(void) {
    libcuda = open_libcuda();
    get_proc = dlsym(libcuda, "cuGetProcAddress_v2");
    cu.init = proc("cuInit");
    cu.device_get = proc("cuDeviceGet");
    cu.primary_ctx_retain = proc("cuDevicePrimaryCtxRetain");
    cu.ctx_set_current = proc("cuCtxSetCurrent");
    cu.stream_create = proc("cuStreamCreate");
    cu.stream_synchronize = proc("cuStreamSynchronize");
    cu.launch = proc("cuLaunchKernel");
    cu.launch_ex = proc("cuLaunchKernelEx");
    cu.launch_cooperative = proc("cuLaunchCooperativeKernel");
    cu.graph_launch = proc("cuGraphLaunch");
    cu.mem_alloc = proc("cuMemAlloc");
    cu.mem_free = proc("cuMemFree");
    cu.mem_get_info = proc("cuMemGetInfo");
    cu.device_total_mem = proc("cuDeviceTotalMem");
    cu.begin_capture = proc("cuStreamBeginCapture");
    cu.end_capture = proc("cuStreamEndCapture");
    cu.busy_ns = dlsym(libcuda, "fake_busy_ns");
    cu.queued_ns = dlsym(libcuda, "fake_queued_ns");
    cu.calls = dlsym(libcuda, "fake_calls");
    cu.events_on_capturing_streams = dlsym(libcuda, "fake_events_on_capturing_streams");
    cu.captured_launches = dlsym(libcuda, "fake_captured_launches");
}
#define LAUNCH_SYMBOL "cuLaunchKernel_ptsz"
#else
#define VARIANT "linked"
static void bind_api(void) {
    cu = (struct api){cuInit, cuDeviceGet, cuDevicePrimaryCtxRetain, cuCtxSetCurrent,
                      cuStreamCreate, cuStreamSynchronize, cuLaunchKernel, cuLaunchKernelEx,
                      cuLaunchCooperativeKernel, cuGraphLaunch, cuMemAlloc_v2, cuMemFree_v2,
                      cuMemGetInfo_v2, cuDeviceTotalMem_v2, cuStreamBeginCapture_v2,
                      cuStreamEndCapture, fake_busy_ns, fake_queued_ns, fake_calls,
                      fake_events_on_capturing_streams, fake_captured_launches};
}
#define LAUNCH_SYMBOL "cuLaunchKernel"
#endif

static CUstream stream;

static void setup(void) {
    bind_api();
    make_primary_current(CONTEXT_CALLS_OF(cu));
    OK(cu.stream_create(&stream, 0));
}

/* One launch of a kernel that runs `ns` on the fake GPU, through the chosen entry point. */
static CUresult launch(const char *variant, uint64_t ns) {
    if (strcmp(variant, "ex") == 0) {
        CUlaunchConfig config = {1, 1, 1, 1, 1, 1, 0, stream, NULL, 0};
        return cu.launch_ex(&config, FAKE_KERNEL(ns), NULL, NULL);
    }
    if (strcmp(variant, "cooperative") == 0)
        return cu.launch_cooperative(FAKE_KERNEL(ns), 1, 1, 1, 1, 1, 1, 0, stream, NULL);
    if (strcmp(variant, "graph") == 0)
        return cu.graph_launch(FAKE_GRAPH(ns), stream);
    return cu.launch(FAKE_KERNEL(ns), 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL);
}

/* Launch back to back for `seconds` and report the GPU-busy fraction of the last part. */
static int scenario_share(double seconds, uint64_t kernel_us, const char *variant) {
    setup();
    uint64_t start = now_ns();
    uint64_t warm = start + 200 * MS, end = warm + (uint64_t)(seconds * 1e9);
    uint64_t busy_at_warm = 0, launches = 0;
    int warmed = 0;
    while (now_ns() < end) {
        if (!warmed && now_ns() >= warm) {
            busy_at_warm = cu.busy_ns(0);
            warm = now_ns();
            warmed = 1;
        }
        CHECK(launch(variant, kernel_us * US) == CUDA_SUCCESS, "launch");
        launches++;
    }
    uint64_t stop = now_ns();
    double fraction = (double)(cu.busy_ns(0) - busy_at_warm) / (double)(stop - warm);
    printf("{\"scenario\": \"share\", \"variant\": \"%s\", \"busy_fraction\": %.4f, "
           "\"launches\": %llu, \"calls\": %llu}\n",
           variant, fraction, (unsigned long long)launches,
           cu.calls(strcmp(variant, "graph") == 0 ? "cuGraphLaunch" : LAUNCH_SYMBOL));
    return failures ? 1 : 0;
}

/* Sample the fake's busy counter every 250 us while launches go on in the main thread. */
#define SAMPLES 8192
static uint64_t sample_time[SAMPLES], sample_busy[SAMPLES], sample_queued[SAMPLES];
static _Atomic int sample_count, sampling;

static void *sampler(void *unused) {
    (void)unused;
    while (atomic_load(&sampling) && atomic_load(&sample_count) < SAMPLES) {
        int i = atomic_load(&sample_count);
        sample_time[i] = now_ns();
        sample_busy[i] = cu.busy_ns(0);
        sample_queued[i] = cu.queued_ns(0);
        atomic_store(&sample_count, i + 1);
        struct timespec ts = {0, 250000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static double busy_between(uint64_t from, uint64_t to) {
    int count = atomic_load(&sample_count), a = -1, b = -1;
    for (int i = 0; i < count; i++) {
        if (a < 0 && sample_time[i] >= from)
            a = i;
        if (sample_time[i] <= to)
            b = i;
    }
    if (a < 0 || b <= a)
        return -1;
    return (double)(sample_busy[b] - sample_busy[a]) / (double)(sample_time[b] - sample_time[a]);
}

/* Run at `before`, write `after` into the control page, and measure how long the old
 * share lasts: until the GPU first goes idle, i.e. the work queued at the old share is gone
 * and launches are paced at the new one (a share below 1 must leave the GPU idle). Also
 * the first moment from which every 20 ms window holds the new share within 0.05, which a
 * legitimate burst after a scheduling hiccup can push later. */
static int scenario_step(uint64_t kernel_us, double before, double after) {
    setup();
    struct control_page page;
    CHECK(control_open(&page, getenv("DILU_CONTROL")) == 0, "control page");
    control_set_share(&page, before);
    atomic_store(&sampling, 1);
    pthread_t thread;
    pthread_create(&thread, NULL, sampler, NULL);
    uint64_t switch_at = now_ns() + 300 * MS, end = switch_at + 400 * MS, switched = 0;
    while (now_ns() < end) {
        if (!switched && now_ns() >= switch_at) {
            control_set_share(&page, after);
            switched = now_ns();
        }
        launch("kernel", kernel_us * US);
    }
    atomic_store(&sampling, 0);
    pthread_join(thread, NULL);
    const uint64_t window = 20 * MS;
    double tolerance = 0.05;
    uint64_t holds_from = end - switched;
    for (uint64_t t = switched; t + window <= end; t += 250 * US) {
        int holds = 1;
        for (uint64_t u = t; u + window <= end && holds; u += MS)
            holds = busy_between(u, u + window) <= after + tolerance;
        if (holds) {
            holds_from = t - switched;
            break;
        }
    }
    uint64_t reaction = end - switched;
    for (int i = 0; i < atomic_load(&sample_count); i++)
        if (sample_time[i] >= switched && sample_queued[i] == 0) {
            reaction = sample_time[i] - switched;
            break;
        }
    double settled = busy_between(switched + 100 * MS, end);
    double previous = busy_between(switched - 200 * MS, switched);
    printf("{\"scenario\": \"step\", \"before\": %.3f, \"after\": %.3f, \"busy_before\": %.4f, "
           "\"busy_after\": %.4f, \"reaction_ms\": %.2f, \"holds_ms\": %.2f}\n",
           before, after, previous, settled, (double)reaction / 1e6, (double)holds_from / 1e6);
    return failures ? 1 : 0;
}

#define MIB (1ull << 20)

/* Allocations are refused past the limit, come back after frees and after a live raise,
 * and CUDA reports the quota as the card's size. */
static int scenario_memory(void) {
    setup();
    struct control_page page;
    CHECK(control_open(&page, getenv("DILU_CONTROL")) == 0, "control page");
    control_set_memory_limit(&page, 64 * MIB);
    size_t free_bytes = 0, total = 0, device_total = 0;
    OK(cu.mem_get_info(&free_bytes, &total));
    OK(cu.device_total_mem(&device_total, 0));
    CHECK(total == 64 * MIB && free_bytes == 64 * MIB, "info %zu/%zu", free_bytes, total);
    CHECK(device_total == 64 * MIB, "device total %zu", device_total);
    CUdeviceptr blocks[8];
    for (int i = 0; i < 4; i++)
        OK(cu.mem_alloc(&blocks[i], 16 * MIB));
    CUdeviceptr extra;
    CHECK(cu.mem_alloc(&extra, 16 * MIB) == CUDA_ERROR_OUT_OF_MEMORY, "5th block refused");
    CHECK(cu.mem_alloc(&extra, 1) == CUDA_ERROR_OUT_OF_MEMORY, "even one byte");
    OK(cu.mem_get_info(&free_bytes, &total));
    CHECK(free_bytes == 0, "free %zu at the limit", free_bytes);
    OK(cu.mem_free(blocks[3]));
    OK(cu.mem_alloc(&blocks[3], 16 * MIB));
    int refused_before_raise = cu.mem_alloc(&extra, 16 * MIB) == CUDA_ERROR_OUT_OF_MEMORY;
    control_set_memory_limit(&page, 128 * MIB);  /* the agent raises the quota live */
    for (int i = 4; i < 8; i++)
        OK(cu.mem_alloc(&blocks[i], 16 * MIB));
    CHECK(cu.mem_alloc(&extra, 16 * MIB) == CUDA_ERROR_OUT_OF_MEMORY, "new limit holds");
    OK(cu.mem_get_info(&free_bytes, &total));
    CHECK(total == 128 * MIB, "total after raise %zu", total);
    for (int i = 0; i < 6; i++)
        OK(cu.mem_free(blocks[i]));
    printf("{\"scenario\": \"memory\", \"refused_before_raise\": %d, "
           "\"live_bytes\": %llu}\n", refused_before_raise, 32 * MIB);
    return failures ? 1 : 0;
}

#ifndef VIA_PROC_ADDRESS
/* The other allocation paths charge the same quota and give it back. */
static int scenario_allocators(void) {
    setup();
    struct control_page page;
    CHECK(control_open(&page, getenv("DILU_CONTROL")) == 0, "control page");
    control_set_memory_limit(&page, 10 * MIB);
    CUdeviceptr p;
    size_t pitch;
    CUmemGenericAllocationHandle handle;
    CUarray array;
    CUmemAllocationProp prop = {0};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CUDA_ARRAY_DESCRIPTOR flat = {1024, 1024, CU_AD_FORMAT_FLOAT, 4};          /* 16 MiB */
    CUDA_ARRAY3D_DESCRIPTOR cube = {256, 256, 64, CU_AD_FORMAT_HALF, 1, 0};    /* 8 MiB */
    CHECK(cuMemAllocManaged(&p, 11 * MIB, 1) == CUDA_ERROR_OUT_OF_MEMORY, "managed");
    CHECK(cuMemAllocAsync(&p, 11 * MIB, stream) == CUDA_ERROR_OUT_OF_MEMORY, "async");
    CHECK(cuMemAllocPitch_v2(&p, &pitch, 4096, 4096, 4) == CUDA_ERROR_OUT_OF_MEMORY, "pitch");
    CHECK(cuMemCreate(&handle, 11 * MIB, &prop, 0) == CUDA_ERROR_OUT_OF_MEMORY, "create");
    CHECK(cuArrayCreate_v2(&array, &flat) == CUDA_ERROR_OUT_OF_MEMORY, "array");
    OK(cuArray3DCreate_v2(&array, &cube));
    CHECK(cuMemCreate(&handle, 3 * MIB, &prop, 0) == CUDA_ERROR_OUT_OF_MEMORY, "8+3 > 10");
    OK(cuArrayDestroy(array));
    OK(cuMemCreate(&handle, 9 * MIB, &prop, 0));
    OK(cuMemRelease(handle));
    OK(cuMemAllocAsync(&p, 9 * MIB, stream));
    OK(cuMemFreeAsync(p, stream));
    OK(cuMemAllocManaged(&p, 9 * MIB, 1));
    OK(cuMemFree_v2(p));
    OK(cuMemAllocPitch_v2(&p, &pitch, 1000, 1000, 4));
    CHECK(pitch >= 1000, "pitch %zu", pitch);
    unsigned long long pitched = fake_memory_used(0);
    printf("{\"scenario\": \"allocators\", \"live_bytes\": %llu}\n", pitched);
    return failures ? 1 : 0;
}
#endif

/* Work captured into a graph is neither throttled nor given marker events. */
static int scenario_capture(void) {
    setup();
    unsigned long long captured_before = cu.captured_launches();
    OK(cu.begin_capture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL));
    uint64_t start = now_ns();
    for (int i = 0; i < 200; i++)
        OK(launch("kernel", 1 * MS));
    uint64_t capture_ns = now_ns() - start;
    CUgraph graph;
    OK(cu.end_capture(stream, &graph));
    uint64_t busy = cu.busy_ns(0);
    start = now_ns();
    for (int i = 0; i < 20; i++)
        OK(launch("kernel", 1 * MS));
    OK(cu.stream_synchronize(stream));
    double fraction = (double)(cu.busy_ns(0) - busy) / (double)(now_ns() - start);
    printf("{\"scenario\": \"capture\", \"capture_ms\": %.2f, \"captured\": %llu, "
           "\"events_on_capturing_streams\": %llu, \"busy_after\": %.3f}\n",
           capture_ns / 1e6, cu.captured_launches() - captured_before,
           cu.events_on_capturing_streams(), fraction);
    return failures ? 1 : 0;
}

/* Host cost of one launch of a 1 ns kernel: the shim's fast path when nothing waits. */
static int scenario_overhead(long count) {
    setup();
    for (int i = 0; i < 10000; i++)
        launch("kernel", 1);
    OK(cu.stream_synchronize(stream));
    uint64_t start = now_ns();
    for (long i = 0; i < count; i++)
        launch("kernel", 1);
    uint64_t elapsed = now_ns() - start;
    OK(cu.stream_synchronize(stream));
    printf("{\"scenario\": \"overhead\", \"ns_per_launch\": %.1f}\n",
           (double)elapsed / (double)count);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 5 && strcmp(argv[1], "share") == 0)
        return scenario_share(atof(argv[2]), strtoull(argv[3], NULL, 10), argv[4]);
    if (argc >= 5 && strcmp(argv[1], "step") == 0)
        return scenario_step(strtoull(argv[2], NULL, 10), atof(argv[3]), atof(argv[4]));
    if (argc >= 2 && strcmp(argv[1], "memory") == 0)
        return scenario_memory();
#ifndef VIA_PROC_ADDRESS
    if (argc >= 2 && strcmp(argv[1], "allocators") == 0)
        return scenario_allocators();
#endif
    if (argc >= 2 && strcmp(argv[1], "capture") == 0)
        return scenario_capture();
    if (argc >= 3 && strcmp(argv[1], "overhead") == 0)
        return scenario_overhead(atol(argv[2]));
    fprintf(stderr, "usage: %s share SECONDS KERNEL_US kernel|ex|cooperative|graph\n"
                    "       %s step KERNEL_US BEFORE AFTER\n"
                    "       %s memory | allocators | capture | overhead COUNT\n",
            argv[0], argv[0], argv[0]);
    return 2;
}
