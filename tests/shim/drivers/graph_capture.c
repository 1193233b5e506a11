/* What torch.cuda.graph does to the driver, run under the preloaded shim on the fake driver
 * (driven by tests/shim/test_shim_capture.py, at the share the control page gives):
 *
 *   graph_capture single          one thread: warm-up, synchronize, global-mode capture
 *   graph_capture second_thread   the same while a second thread launches on its own stream
 *
 * Warm-up: WARMUP kernels of a known 100 us kernel, alternately on the legacy stream and on
 * another stream, then cuCtxSynchronize (torch.cuda.synchronize). A 3 ms kernel then goes
 * on the other stream, so that the shim's completion thread has an event to poll all through
 * the capture, as it has whenever work is in flight (in PyTorch: other streams, other
 * threads, the allocator's frees). Then cuStreamBeginCapture_v2(side, GLOBAL), CAPTURED
 * launches of the known kernel into the side stream, spread over CAPTURE_NS (and more until
 * the completion thread has polled meanwhile), and cuStreamEndCapture, which must give a
 * graph: any potentially unsafe call of the shim's (an event query from a thread that did
 * not opt out) would have invalidated the capture (the fake applies CUDA's rule, see
 * fake_cuda.c). The graph is then replayed once.
 *
 * Built twice: linked against libcuda (calls reach the shim by symbol), and with
 * -DVIA_PROC_ADDRESS, fetching every entry point with cuGetProcAddress_v2 as the CUDA 12
 * runtime under PyTorch does (legacy default stream).
 *
 * Prints one JSON line; FAIL lines on stdout and exit 1 on a broken expectation (a capture
 * that fails is reported in the JSON and is the test's to judge, not a FAIL here). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake_cuda.h"
#include "driver_check.h"

#define WARMUP 50
#define CAPTURED 200
#define CAPTURE_NS (5 * MS)
#define POLL_DEADLINE_NS (2000 * MS)
#define KERNEL FAKE_KERNEL(100 * US)
#define LONG_KERNEL FAKE_KERNEL(3 * MS)

/* X(field, symbol, base name for cuGetProcAddress) */
#define DRIVER_API(X)                                                     \
    X(init, cuInit, cuInit)                                               \
    X(device_get, cuDeviceGet, cuDeviceGet)                               \
    X(primary_ctx_retain, cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRetain) \
    X(ctx_set_current, cuCtxSetCurrent, cuCtxSetCurrent)                  \
    X(ctx_synchronize, cuCtxSynchronize, cuCtxSynchronize)                \
    X(stream_create, cuStreamCreate, cuStreamCreate)                      \
    X(stream_synchronize, cuStreamSynchronize, cuStreamSynchronize)       \
    X(stream_is_capturing, cuStreamIsCapturing, cuStreamIsCapturing)      \
    X(begin_capture, cuStreamBeginCapture_v2, cuStreamBeginCapture)       \
    X(end_capture, cuStreamEndCapture, cuStreamEndCapture)                \
    X(launch, cuLaunchKernel, cuLaunchKernel)                             \
    X(graph_launch, cuGraphLaunch, cuGraphLaunch)
#define FAKE_API(X)                                                       \
    X(captured_launches, fake_captured_launches)                          \
    X(events_on_capturing_streams, fake_events_on_capturing_streams)      \
    X(invalidated_captures, fake_invalidated_captures)                    \
    X(calls, fake_calls)

static struct {
#define X_FIELD(field, symbol, ...) __typeof__(symbol) *field;
    DRIVER_API(X_FIELD)
    FAKE_API(X_FIELD)
#undef X_FIELD
} cu;

#ifdef VIA_PROC_ADDRESS
#define VARIANT "proc_address"
static void *libcuda;

static void *proc(const char *base) {
    static CUresult (*get_proc)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
    void *fn = NULL;
    CUdriverProcAddressQueryResult status;
    if (!get_proc)
        get_proc = (__typeof__(get_proc))dlsym(libcuda, "cuGetProcAddress_v2");
    CUresult r = get_proc ? get_proc(base, &fn, 12080, CU_GET_PROC_ADDRESS_DEFAULT, &status) : CUDA_ERROR_NOT_FOUND;
    if (r != CUDA_SUCCESS || !fn) {
        printf("FAIL cannot resolve %s through cuGetProcAddress_v2\n", base);
        exit(1);
    }
    return fn;
}

static void *fake(const char *symbol) {
    void *fn = dlsym(libcuda, symbol);
    if (!fn) {
        printf("FAIL the fake driver lacks %s\n", symbol);
        exit(1);
    }
    return fn;
}

static void bind_api(void) {
    libcuda = open_libcuda();
#define X_PROC(field, symbol, base) cu.field = (__typeof__(cu.field))proc(#base);
#define X_FAKE(field, symbol) cu.field = (__typeof__(cu.field))fake(#symbol);
    DRIVER_API(X_PROC)
    FAKE_API(X_FAKE)
#undef X_PROC
#undef X_FAKE
}
#else
#define VARIANT "linked"
static void bind_api(void) {
#define X_LINK(field, symbol, ...) cu.field = symbol;
    DRIVER_API(X_LINK)
    FAKE_API(X_LINK)
#undef X_LINK
}
#endif

static CUresult launch(CUfunction kernel, CUstream stream) {
    return cu.launch(kernel, 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL);
}

static unsigned long long executed; /* the main thread's launches that ran (not captured) */

/* A launch outside the capture, which must succeed. */
static void run(CUfunction kernel, CUstream stream) {
    CUresult r = launch(kernel, stream);
    CHECK(r == CUDA_SUCCESS, "launch returned %d", (int)r);
    executed += r == CUDA_SUCCESS;
}

static CUcontext ctx;

/* ---- the second thread: launches normally on its own stream all through the capture ---- */

static _Atomic int second_started, second_stop;
static _Atomic unsigned long long second_launches, second_errors;

static void *second_thread(void *unused) {
    (void)unused;
    CUstream own;
    OK(cu.ctx_set_current(ctx));
    OK(cu.stream_create(&own, 0));
    while (!atomic_load(&second_stop)) {
        if (launch(KERNEL, own) == CUDA_SUCCESS)
            atomic_fetch_add(&second_launches, 1);
        else
            atomic_fetch_add(&second_errors, 1);
        if (atomic_load(&second_launches) + atomic_load(&second_errors) >= 8)
            atomic_store(&second_started, 1);
    }
    /* Only once the capture is over: a synchronization during it would be the app's own
     * unsafe call. */
    OK(cu.stream_synchronize(own));
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int with_second = argc >= 2 && strcmp(argv[1], "second_thread") == 0;
    if (argc < 2 || (!with_second && strcmp(argv[1], "single") != 0)) {
        fprintf(stderr, "usage: %s single|second_thread\n", argv[0]);
        return 2;
    }
    bind_api();
    CUstream other, side;
    ctx = make_primary_current(CONTEXT_CALLS_OF(cu));
    OK(cu.stream_create(&other, 0));
    OK(cu.stream_create(&side, 0));

    /* Warm-up (the kernel becomes known to the shim), then torch.cuda.synchronize(). */
    for (int i = 0; i < WARMUP; i++)
        run(KERNEL, i % 2 ? other : NULL);
    OK(cu.ctx_synchronize());

    /* In flight all through the capture. Launched before the second thread starts: a
     * thread launching small kernels back to back can hold off a bigger launch for seconds
     * (the limiter admits whichever request fits first). */
    run(LONG_KERNEL, other);
    pthread_t thread;
    if (with_second) {
        CHECK(pthread_create(&thread, NULL, second_thread, NULL) == 0, "second thread");
        while (!atomic_load(&second_started)) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }

    unsigned long long captured0 = cu.captured_launches(), on_capturing0 = cu.events_on_capturing_streams();
    unsigned long long invalidated0 = cu.invalidated_captures(), queries0 = cu.calls("cuEventQuery");
    OK(cu.begin_capture(side, CU_STREAM_CAPTURE_MODE_GLOBAL));
    uint64_t start = now_ns();
    int launched = 0, launch_errors = 0;
    for (int i = 0; i < CAPTURED; i++) {
        if (launch(KERNEL, side) == CUDA_SUCCESS)
            launched++;
        else
            launch_errors++;
        /* Spread over CAPTURE_NS, as a model's forward pass would be. */
        uint64_t next = start + (uint64_t)(i + 1) * CAPTURE_NS / CAPTURED;
        struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    /* A loaded machine may not have run the completion thread yet: go on until it polled
     * (its events stay pending until it does), within reason. */
    while (cu.calls("cuEventQuery") == queries0 && now_ns() - start < POLL_DEADLINE_NS) {
        if (launch(KERNEL, side) == CUDA_SUCCESS)
            launched++;
        else
            launch_errors++;
        struct timespec ts = {0, (long)(100 * US)};
        nanosleep(&ts, NULL);
    }
    CUstreamCaptureStatus before_end = (CUstreamCaptureStatus)-1, after_end = (CUstreamCaptureStatus)-1;
    OK(cu.stream_is_capturing(side, &before_end));
    CUgraph graph = NULL;
    CUresult ended = cu.end_capture(side, &graph);
    uint64_t capture_ns = now_ns() - start;
    unsigned long long queries = cu.calls("cuEventQuery") - queries0;
    OK(cu.stream_is_capturing(side, &after_end));
    CHECK(after_end == CU_STREAM_CAPTURE_STATUS_NONE, "the capture is over: %d", (int)after_end);
    if (with_second) {
        atomic_store(&second_stop, 1);
        pthread_join(thread, NULL);
    }

    /* graph.replay(): the instantiated graph (the fake takes its duration as the handle). */
    CUresult replayed = cu.graph_launch(FAKE_GRAPH(2 * MS), side);
    OK(replayed);
    executed += replayed == CUDA_SUCCESS;
    OK(cu.stream_synchronize(side));
    OK(cu.ctx_synchronize());

    printf("{\"scenario\": \"%s\", \"variant\": \"%s\", \"end_capture\": %d, \"graph\": %s, "
           "\"status_before_end\": %d, \"launched\": %d, \"launch_errors\": %d, \"captured\": %llu, "
           "\"events_on_capturing_streams\": %llu, \"invalidated_captures\": %llu, "
           "\"queries_during_capture\": %llu, \"capture_ms\": %.3f, \"second_launches\": %llu, "
           "\"second_errors\": %llu, \"replayed\": %d, \"executed\": %llu, \"failures\": %d}\n",
           argv[1], VARIANT, (int)ended, graph ? "true" : "false", (int)before_end, launched, launch_errors,
           cu.captured_launches() - captured0, cu.events_on_capturing_streams() - on_capturing0,
           cu.invalidated_captures() - invalidated0, queries, (double)capture_ns / 1e6,
           atomic_load(&second_launches), atomic_load(&second_errors), (int)replayed, executed,
           atomic_load(&failures));
    return atomic_load(&failures) ? 1 : 0;
}
