/* Checks the fake CUDA driver on its own (no shim): linked directly against the fake.
 *
 *   fake_smoke                    run every check
 *   fake_smoke --exports SYM...   check each exported SYM of the fake (dlsym on its own handle,
 *                                 so an LD_PRELOADed definition does not count) is what
 *                                 cuGetProcAddress_v2 returns for its base name at some version
 *
 * Prints each failure and exits 1 if there was any. FAKE_CUDA_DEVICES and
 * FAKE_CUDA_MEMORY_BYTES, when set, are the values the fake must report.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake_cuda.h"
#include "driver_check.h"

static CUresult launch(unsigned long long ns, CUstream stream) {
    return cuLaunchKernel(FAKE_KERNEL(ns), 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL);
}

static float elapsed_ms(CUevent a, CUevent b) {
    float ms = -1;
    OK(cuEventElapsedTime(&ms, a, b));
    return ms;
}

static unsigned long long env_or(const char *name, unsigned long long fallback) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : fallback;
}

static int ndev;
static CUstream s1, s2;

static void *no_context_thread(void *arg) {
    CUcontext ctx = (CUcontext)arg;
    OK(cuCtxGetCurrent(&ctx));
    CHECK(ctx == NULL, "a new thread starts with no current context");
    return NULL;
}

static void check_devices_and_contexts(void) {
    int count = -1, version = 0;
    char name[64];
    CUuuid uuid;
    CUdevice dev = -1;
    CUcontext ctx = (CUcontext)&ctx;
    size_t total = 0;

    OK(cuInit(0));
    OK(cuDriverGetVersion(&version));
    CHECK(version == 12080, "driver version %d", version);
    OK(cuDeviceGetCount(&count));
    ndev = count;
    CHECK(count == (int)env_or("FAKE_CUDA_DEVICES", 1), "device count %d", count);
    OK(cuDeviceGet(&dev, count - 1));
    EXPECT(cuDeviceGet(&dev, count), CUDA_ERROR_INVALID_DEVICE);
    OK(cuDeviceGetName(name, sizeof name, 0));
    CHECK(strcmp(name, "Fake GPU 0") == 0, "name %s", name);
    OK(cuDeviceGetUuid_v2(&uuid, 0));
    CHECK(memcmp(uuid.bytes, "FAKEGPU", 7) == 0, "uuid of device 0");
    OK(cuDeviceTotalMem_v2(&total, 0));
    CHECK(total == env_or("FAKE_CUDA_MEMORY_BYTES", 40ULL << 30), "total memory %zu", total);

    OK(cuCtxGetCurrent(&ctx));
    CHECK(ctx == NULL, "no current context before one is set");
    EXPECT(cuCtxGetDevice(&dev), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(launch(1000, NULL), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT(cuStreamCreate(&s1, 0), CUDA_ERROR_INVALID_CONTEXT);
    CUdeviceptr p;
    EXPECT(cuMemAlloc_v2(&p, 1), CUDA_ERROR_INVALID_CONTEXT);

    OK(cuDevicePrimaryCtxRetain(&ctx, 0));
    OK(cuCtxSetCurrent(ctx));
    CUcontext current = NULL;
    OK(cuCtxGetCurrent(&current));
    CHECK(current == ctx, "current context is the one set");
    OK(cuCtxGetDevice(&dev));
    CHECK(dev == 0, "device of the current context %d", dev);
    pthread_t thread;
    pthread_create(&thread, NULL, no_context_thread, NULL);
    pthread_join(thread, NULL);

    OK(cuStreamCreate(&s1, 0));
    OK(cuStreamCreate(&s2, 0));
    CHECK(s1 && s2 && s1 != s2, "two distinct streams");
}

static void check_timing(void) {
    CUevent a, b, c, d, e;
    OK(cuEventCreate(&a, 0));
    OK(cuEventCreate(&b, 0));
    OK(cuEventCreate(&c, 0));
    OK(cuEventCreate(&d, 0));
    OK(cuEventCreate(&e, 0));
    OK(cuCtxSynchronize());
    unsigned long long busy0 = fake_busy_ns(0), launches0 = fake_launches(0), t0 = now_ns();

    /* A 20 ms kernel in front makes the timestamps exact: what follows queues behind it. */
    OK(launch(20 * MS, s1));
    OK(cuEventRecord(a, s1));
    OK(launch(2 * MS, s1));
    OK(cuEventRecord(b, s1));
    float ms = -1;
    CUresult query = cuEventQuery(b), early = cuEventElapsedTime(&ms, a, b);
    unsigned long long queued = fake_queued_ns(0);
    if (now_ns() - t0 < 20 * MS) { /* checked only when this thread was not held up */
        CHECK(query == CUDA_ERROR_NOT_READY, "event behind a running kernel: %d", query);
        CHECK(early == CUDA_ERROR_NOT_READY, "elapsed time of an incomplete event: %d", early);
        CHECK(queued > 0, "work queued");
    }
    OK(cuEventSynchronize(b));
    OK(cuEventQuery(b));
    ms = elapsed_ms(a, b);
    if (now_ns() - t0 < 20 * MS)
        CHECK(ms == 2.0f, "a 2 ms kernel: %f ms", ms);
    CHECK(ms >= 2.0f, "a 2 ms kernel: %f ms", ms);

    /* The serial engine: a kernel on s2 waits for the one on s1. */
    t0 = now_ns();
    OK(launch(20 * MS, s1));
    OK(cuEventRecord(c, s1));
    OK(launch(2 * MS, s1));
    OK(launch(2 * MS, s2));
    OK(cuEventRecord(d, s2));
    OK(cuEventRecord(e, s1));
    OK(cuEventSynchronize(d));
    if (now_ns() - t0 < 20 * MS) {
        CHECK(elapsed_ms(c, d) == 4.0f, "s2's kernel ends 4 ms after c: %f", elapsed_ms(c, d));
        CHECK(elapsed_ms(c, e) == 2.0f, "s1's tail 2 ms after c: %f", elapsed_ms(c, e));
    }
    CHECK(elapsed_ms(c, d) >= 4.0f, "serial engine: %f ms", elapsed_ms(c, d));

    t0 = now_ns();
    OK(launch(5 * MS, s2));
    OK(cuStreamSynchronize(s2));
    CHECK(now_ns() - t0 >= 5 * MS, "cuStreamSynchronize waited %llu ns", now_ns() - t0);
    CHECK(fake_queued_ns(0) == 0, "nothing queued after a sync: %llu", fake_queued_ns(0));
    OK(cuCtxSynchronize());
    CHECK(fake_busy_ns(0) - busy0 == 51 * MS, "busy %llu ns", fake_busy_ns(0) - busy0);
    CHECK(fake_launches(0) - launches0 == 6, "launches %llu", fake_launches(0) - launches0);

    /* Per-thread and legacy default streams are different streams. */
    t0 = now_ns();
    OK(cuLaunchKernel_ptsz(FAKE_KERNEL(20 * MS), 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    OK(cuEventRecord(a, NULL));              /* the legacy stream: idle */
    OK(cuEventRecord(b, CU_STREAM_PER_THREAD)); /* ends with the kernel */
    CUresult legacy = cuEventQuery(a), per_thread = cuEventQuery(b);
    if (now_ns() - t0 < 20 * MS) {
        CHECK(legacy == CUDA_SUCCESS, "legacy stream event %d", legacy);
        CHECK(per_thread == CUDA_ERROR_NOT_READY, "per-thread stream event %d", per_thread);
    }
    OK(cuStreamSynchronize_ptsz(NULL));
    OK(cuEventQuery(b));

    /* Events that cannot be timed. */
    CUevent untimed, fresh;
    OK(cuEventCreate(&untimed, CU_EVENT_DISABLE_TIMING));
    OK(cuEventCreate(&fresh, 0));
    OK(cuEventRecord(untimed, s1));
    EXPECT(cuEventElapsedTime(&ms, a, untimed), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuEventElapsedTime_v2(&ms, a, fresh), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuEventQuery(fresh), CUDA_ERROR_INVALID_HANDLE);
    OK(cuEventDestroy(fresh));
    EXPECT(cuEventDestroy_v2(fresh), CUDA_ERROR_INVALID_HANDLE);
    OK(cuEventDestroy_v2(untimed));
    EXPECT(cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, s1, NULL, NULL), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuGraphLaunch(NULL, s1), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(launch(1000, (CUstream)&ms), CUDA_ERROR_INVALID_HANDLE);
    launches0 = fake_launches(0);
    OK(cuGraphLaunch(FAKE_GRAPH(MS), s1));
    CUlaunchConfig config = {.gridDimX = 1, .gridDimY = 1, .gridDimZ = 1, .hStream = s2};
    OK(cuLaunchKernelEx(&config, FAKE_KERNEL(MS), NULL, NULL));
    OK(cuLaunchCooperativeKernel(FAKE_KERNEL(MS), 1, 1, 1, 1, 1, 1, 0, s2, NULL));
    CHECK(fake_launches(0) - launches0 == 3, "graph, Ex and cooperative launches execute");
    OK(cuCtxSynchronize());
    CUevent all[] = {a, b, c, d, e};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        OK(cuEventDestroy_v2(all[i]));
}

static void check_capture(void) {
    unsigned long long captured0 = fake_captured_launches(), launches0 = fake_launches(0);
    unsigned long long on_capturing0 = fake_events_on_capturing_streams();
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_INVALIDATED;
    CUgraph graph = NULL;
    CUevent ev;
    OK(cuEventCreate(&ev, 0));

    OK(cuStreamBeginCapture_v2(s1, CU_STREAM_CAPTURE_MODE_GLOBAL));
    OK(cuStreamIsCapturing(s1, &status));
    CHECK(status == CU_STREAM_CAPTURE_STATUS_ACTIVE, "capturing: %d", status);
    OK(launch(1000 * MS, s1));
    OK(cuGraphLaunch(FAKE_GRAPH(1000 * MS), s1));
    OK(cuEventRecord(ev, s1));
    OK(cuStreamEndCapture(s1, &graph));
    CHECK(graph != NULL, "a graph");
    OK(cuStreamIsCapturing(s1, &status));
    CHECK(status == CU_STREAM_CAPTURE_STATUS_NONE, "capture over: %d", status);
    EXPECT(cuStreamEndCapture(s1, &graph), (CUresult)401);
    CHECK(graph == NULL, "no graph without a capture");
    EXPECT(cuStreamBeginCapture_v2(NULL, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);

    /* The per-thread default stream captures; the legacy one stays out of it. */
    OK(cuStreamBeginCapture_v2_ptsz(NULL, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    OK(cuStreamIsCapturing_ptsz(NULL, &status));
    CHECK(status == CU_STREAM_CAPTURE_STATUS_ACTIVE, "per-thread stream capturing: %d", status);
    OK(cuStreamIsCapturing(NULL, &status));
    CHECK(status == CU_STREAM_CAPTURE_STATUS_NONE, "legacy stream not capturing: %d", status);
    OK(cuLaunchKernel_ptsz(FAKE_KERNEL(1000 * MS), 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    OK(cuEventRecord_ptsz(ev, NULL));
    OK(cuStreamEndCapture_ptsz(NULL, &graph));

    CHECK(fake_captured_launches() - captured0 == 3, "captured %llu", fake_captured_launches() - captured0);
    CHECK(fake_launches(0) == launches0, "captured launches do not execute");
    CHECK(fake_queued_ns(0) == 0, "nothing queued by a capture: %llu", fake_queued_ns(0));
    CHECK(fake_events_on_capturing_streams() - on_capturing0 == 2, "events on capturing streams %llu",
          fake_events_on_capturing_streams() - on_capturing0);
    EXPECT(cuEventQuery(ev), CUDA_ERROR_INVALID_HANDLE); /* a captured record is no record */
    OK(cuEventDestroy_v2(ev));
}

/* ---- the rule for potentially unsafe calls during capture ---- */

#define ERR_ILLEGAL_STATE ((CUresult)401)

enum op {
    OP_QUERY, OP_EVENT_SYNC, OP_STREAM_SYNC, OP_STREAM_SYNC_PTSZ, OP_CTX_SYNC, /* the unsafe calls */
    OP_RECORD, OP_END_CAPTURE
};

struct task {
    enum op op;
    CUstreamCaptureMode mode; /* the thread's interaction mode for the call */
    CUstreamCaptureMode previous;
    CUcontext ctx;
    CUevent ev;
    CUresult result;
};

static CUresult do_op(enum op op, CUevent ev) {
    CUgraph graph = (CUgraph)&graph;
    CUresult r;
    switch (op) {
    case OP_QUERY: r = cuEventQuery(ev); return r == CUDA_ERROR_NOT_READY ? CUDA_SUCCESS : r;
    case OP_EVENT_SYNC: return cuEventSynchronize(ev);
    case OP_STREAM_SYNC: return cuStreamSynchronize(s2);
    case OP_STREAM_SYNC_PTSZ: return cuStreamSynchronize_ptsz(NULL);
    case OP_CTX_SYNC: return cuCtxSynchronize();
    case OP_RECORD: return cuEventRecord(ev, s2);
    case OP_END_CAPTURE:
        r = cuStreamEndCapture(s1, &graph);
        CHECK(r == CUDA_SUCCESS ? graph && graph != (CUgraph)&graph : graph == NULL, "a graph exactly on success");
        return r;
    }
    return CUDA_ERROR_UNKNOWN;
}

static void *task_thread(void *arg) {
    struct task *task = arg;
    task->previous = task->mode;
    if (cuCtxSetCurrent(task->ctx) != CUDA_SUCCESS ||
        cuThreadExchangeStreamCaptureMode(&task->previous) != CUDA_SUCCESS) {
        task->result = CUDA_ERROR_UNKNOWN;
        return NULL;
    }
    task->result = do_op(task->op, task->ev);
    return NULL;
}

/* The op's result in a new thread that switches itself to `mode` first (from GLOBAL). */
static CUresult in_thread(enum op op, CUstreamCaptureMode mode, CUevent ev) {
    struct task task = {.op = op, .mode = mode, .ev = ev, .result = CUDA_ERROR_UNKNOWN};
    pthread_t thread;
    OK(cuCtxGetCurrent(&task.ctx));
    CHECK(pthread_create(&thread, NULL, task_thread, &task) == 0, "thread");
    pthread_join(thread, NULL);
    CHECK(task.previous == CU_STREAM_CAPTURE_MODE_GLOBAL, "a new thread starts in GLOBAL mode: %d",
          (int)task.previous);
    return task.result;
}

static CUstreamCaptureStatus status_of(CUstream s) {
    CUstreamCaptureStatus status = (CUstreamCaptureStatus)-1;
    OK(cuStreamIsCapturing(s, &status));
    return status;
}

/* cuStreamEndCapture(s1) gives want, and a graph exactly when it succeeds. */
static void end_capture(CUresult want) {
    CUgraph graph = (CUgraph)&graph;
    EXPECT(cuStreamEndCapture(s1, &graph), want);
    CHECK(want == CUDA_SUCCESS ? graph != NULL : graph == NULL, "graph %p", (void *)graph);
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_NONE, "the capture is over");
}

static CUstreamCaptureMode exchange(CUstreamCaptureMode mode) {
    OK(cuThreadExchangeStreamCaptureMode(&mode));
    return mode;
}

static void check_capture_rule(void) {
    const CUstreamCaptureMode global = CU_STREAM_CAPTURE_MODE_GLOBAL,
                              local = CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                              relaxed = CU_STREAM_CAPTURE_MODE_RELAXED;
    const CUresult refused = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                   invalidated = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    unsigned long long invalidated0 = fake_invalidated_captures();
    CUevent ev;
    OK(cuEventCreate(&ev, 0));
    OK(cuEventRecord(ev, s2));

    /* The exchange swaps the thread's mode and hands back the previous one. */
    CHECK(exchange(relaxed) == global, "the default mode is GLOBAL");
    CHECK(exchange(local) == relaxed, "exchange returns the previous mode");
    CHECK(exchange(global) == local, "exchange returns the previous mode");
    EXPECT(cuThreadExchangeStreamCaptureMode(NULL), CUDA_ERROR_INVALID_VALUE);
    CUstreamCaptureMode bogus = (CUstreamCaptureMode)7;
    EXPECT(cuThreadExchangeStreamCaptureMode(&bogus), CUDA_ERROR_INVALID_VALUE);
    CHECK(bogus == 7 && exchange(global) == global, "a refused exchange changes nothing");
    void *fn = NULL;
    OK(cuGetProcAddress("cuThreadExchangeStreamCaptureMode", &fn, 12080, 0));
    CHECK(fn == dlsym(RTLD_DEFAULT, "cuThreadExchangeStreamCaptureMode"), "reachable by cuGetProcAddress");

    /* No capture: nothing is refused. */
    OK(in_thread(OP_QUERY, global, ev));
    OK(cuEventQuery(ev));
    OK(cuStreamSynchronize(s2));

    /* A GLOBAL capture: another GLOBAL-mode thread's query is refused and invalidates it. */
    OK(cuStreamBeginCapture_v2(s1, global));
    OK(launch(MS, s1));
    OK(cuEventRecord(ev, s2)); /* recording on a stream that is not capturing is fine */
    OK(launch(MS, s2));
    OK(in_thread(OP_RECORD, global, ev));
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_ACTIVE, "still active: %d", status_of(s1));
    EXPECT(in_thread(OP_QUERY, global, ev), refused);
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_INVALIDATED, "invalidated: %d", status_of(s1));
    EXPECT(launch(MS, s1), invalidated);
    EXPECT(cuEventRecord(ev, s1), invalidated);
    EXPECT(in_thread(OP_QUERY, global, ev), refused); /* until the capture ends */
    end_capture(invalidated);
    OK(in_thread(OP_QUERY, global, ev));
    CHECK(fake_invalidated_captures() - invalidated0 == 1, "one capture invalidated: %llu",
          fake_invalidated_captures() - invalidated0);

    /* Each synchronizing call from another GLOBAL-mode thread, likewise. */
    const enum op syncs[] = {OP_EVENT_SYNC, OP_STREAM_SYNC, OP_STREAM_SYNC_PTSZ, OP_CTX_SYNC};
    for (size_t i = 0; i < sizeof syncs / sizeof *syncs; i++) {
        OK(cuStreamBeginCapture_v2(s1, global));
        EXPECT(in_thread(syncs[i], global, ev), refused);
        CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_INVALIDATED, "op %d invalidates", (int)syncs[i]);
        end_capture(invalidated);
    }

    /* A thread that switched itself to RELAXED may query, wait and synchronize meanwhile. */
    OK(cuStreamBeginCapture_v2(s1, global));
    OK(launch(MS, s1));
    for (int op = OP_QUERY; op <= OP_CTX_SYNC; op++)
        OK(in_thread((enum op)op, relaxed, ev));
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_ACTIVE, "a RELAXED thread leaves it active");
    /* A THREAD_LOCAL-mode thread ignores other threads' captures. */
    OK(in_thread(OP_QUERY, local, ev));
    OK(in_thread(OP_STREAM_SYNC, local, ev));
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_ACTIVE, "a THREAD_LOCAL thread leaves it active");
    /* Only the thread that began a capture (not RELAXED) may end it: from another thread,
     * the capture ends all the same, with no graph. */
    EXPECT(in_thread(OP_END_CAPTURE, global, ev), FAKE_ERROR_STREAM_CAPTURE_WRONG_THREAD);
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_NONE, "ended by the wrong thread");
    end_capture(ERR_ILLEGAL_STATE);
    /* The capturing thread is bound by its own capture ... */
    OK(cuStreamBeginCapture_v2(s1, global));
    EXPECT(cuEventSynchronize(ev), refused);
    end_capture(invalidated);
    /* ... unless it is RELAXED itself. */
    OK(cuStreamBeginCapture_v2(s1, global));
    CHECK(exchange(relaxed) == global, "GLOBAL before");
    OK(cuEventQuery(ev));
    OK(cuStreamSynchronize(s2));
    CHECK(exchange(global) == relaxed, "restored");
    end_capture(CUDA_SUCCESS);

    /* A THREAD_LOCAL capture binds only the thread that began it. */
    OK(cuStreamBeginCapture_v2(s1, local));
    OK(in_thread(OP_QUERY, global, ev));
    OK(in_thread(OP_CTX_SYNC, global, ev));
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_ACTIVE, "others do not touch a THREAD_LOCAL capture");
    EXPECT(cuStreamSynchronize(s2), refused);
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_INVALIDATED, "its own thread does");
    end_capture(invalidated);

    /* A RELAXED capture restricts nobody, and any thread may end it. */
    OK(cuStreamBeginCapture_v2(s1, relaxed));
    OK(cuEventQuery(ev));
    OK(cuEventSynchronize(ev));
    OK(in_thread(OP_CTX_SYNC, global, ev));
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_ACTIVE, "a RELAXED capture stays active");
    OK(in_thread(OP_END_CAPTURE, global, ev));
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_NONE, "ended by another thread");

    /* Synchronizing the capturing stream itself conflicts with its capture in any mode. */
    OK(cuStreamBeginCapture_v2(s1, relaxed));
    EXPECT(cuStreamSynchronize(s1), refused);
    CHECK(status_of(s1) == CU_STREAM_CAPTURE_STATUS_INVALIDATED, "invalidated by its own sync");
    end_capture(invalidated);

    /* A GLOBAL capture of the per-thread default stream counts too. */
    OK(cuStreamBeginCapture_v2_ptsz(NULL, global));
    EXPECT(in_thread(OP_QUERY, global, ev), refused);
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
    OK(cuStreamIsCapturing_ptsz(NULL, &status));
    CHECK(status == CU_STREAM_CAPTURE_STATUS_INVALIDATED, "per-thread stream invalidated: %d", status);
    CUgraph graph = (CUgraph)&graph;
    EXPECT(cuStreamEndCapture_ptsz(NULL, &graph), invalidated);
    CHECK(graph == NULL, "no graph");

    /* Both captures of the calling thread forbid its query: one refused call invalidates both. */
    OK(cuStreamBeginCapture_v2(s1, global));
    OK(cuStreamBeginCapture_v2(s2, local));
    EXPECT(cuEventQuery(ev), refused);
    CHECK(status_of(s2) == CU_STREAM_CAPTURE_STATUS_INVALIDATED, "s2 invalidated");
    EXPECT(cuStreamEndCapture(s2, &graph), invalidated);
    end_capture(invalidated);

    OK(cuEventQuery(ev));
    OK(cuCtxSynchronize());
    OK(cuEventDestroy(ev));
}

static void check_memory(void) {
    size_t free = 0, total = 0, pitch = 0;
    CUdeviceptr big, p, q;
    OK(cuMemGetInfo_v2(&free, &total));
    unsigned long long used0 = fake_memory_used(0);
    CHECK(total - free == used0, "cuMemGetInfo agrees with fake_memory_used");

    OK(cuMemAlloc_v2(&big, free));
    EXPECT(cuMemAlloc_v2(&p, 1), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT(cuMemAllocManaged(&p, 1, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(fake_memory_used(0) == total, "full: %llu", fake_memory_used(0));
    OK(cuMemGetInfo_v2(&free, &total));
    CHECK(free == 0, "no memory free: %zu", free);
    OK(cuMemFree_v2(big));
    EXPECT(cuMemFree_v2(big), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuMemFree_v2(0x1234), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cuMemAlloc_v2(&p, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK(fake_memory_used(0) == used0, "everything given back");

    OK(cuMemAllocPitch_v2(&p, &pitch, 100, 3, 4));
    CHECK(pitch == 512, "pitch %zu", pitch);
    CHECK(fake_memory_used(0) - used0 == 1536, "pitched size %llu", fake_memory_used(0) - used0);
    OK(cuMemAllocAsync(&q, 1000, s1));
    CHECK(p != q, "distinct pointers");
    OK(cuMemFreeAsync(q, s1));
    OK(cuMemFree_v2(p));

    CUarray array;
    CUDA_ARRAY_DESCRIPTOR a2 = {.Width = 10, .Height = 0, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    CUDA_ARRAY3D_DESCRIPTOR a3 = {.Width = 4, .Height = 4, .Depth = 4, .Format = CU_AD_FORMAT_HALF,
                                  .NumChannels = 1};
    OK(cuArrayCreate_v2(&array, &a2));
    CHECK(fake_memory_used(0) - used0 == 160, "2D array %llu", fake_memory_used(0) - used0);
    EXPECT(cuMemFree_v2((CUdeviceptr)(uintptr_t)array), CUDA_ERROR_INVALID_VALUE);
    OK(cuArrayDestroy(array));
    OK(cuArray3DCreate_v2(&array, &a3));
    CHECK(fake_memory_used(0) - used0 == 128, "3D array %llu", fake_memory_used(0) - used0);
    OK(cuArrayDestroy(array));

    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = ndev - 1}};
    CUmemGenericAllocationHandle handle;
    unsigned long long last0 = fake_memory_used(ndev - 1);
    OK(cuMemCreate(&handle, 4096, &prop, 0));
    CHECK(fake_memory_used(ndev - 1) - last0 == 4096, "cuMemCreate charges the device it names");
    OK(cuMemRelease(handle));
    EXPECT(cuMemRelease(handle), CUDA_ERROR_INVALID_VALUE);
    CHECK(fake_memory_used(0) == used0 && fake_memory_used(ndev - 1) == last0, "all given back");
}

static void check_ptsz_counters(void) {
    unsigned long long ptsz0 = fake_calls("cuLaunchKernel_ptsz"), plain0 = fake_calls("cuLaunchKernel");
    unsigned long long alloc0 = fake_calls("cuMemAllocFromPoolAsync_ptsz");
    CUdeviceptr p;
    OK(cuLaunchKernel_ptsz(FAKE_KERNEL(1000), 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    OK(cuMemAllocFromPoolAsync_ptsz(&p, 64, NULL, NULL));
    OK(cuMemFreeAsync_ptsz(p, CU_STREAM_PER_THREAD));
    CHECK(fake_calls("cuLaunchKernel_ptsz") - ptsz0 == 1, "one _ptsz launch counted");
    CHECK(fake_calls("cuLaunchKernel") == plain0, "no plain launch counted");
    CHECK(fake_calls("cuMemAllocFromPoolAsync_ptsz") - alloc0 == 1, "one _ptsz pool allocation");
    CHECK(fake_calls("cuMemAllocFromPoolAsync") == 0, "no plain pool allocation");
    CHECK(fake_calls("cuNoSuchCall") == 0 && fake_calls(NULL) == 0, "unknown names count 0");
    OK(cuCtxSynchronize());
}

/* cuGetProcAddress_v2(symbol, version, flags) gives dlsym(expected) (NULL: not found, status). */
static void expect_proc(const char *symbol, int version, cuuint64_t flags, const char *expected,
                        CUdriverProcAddressQueryResult want_status) {
    void *fn = (void *)&fn;
    CUdriverProcAddressQueryResult status = 99;
    CUresult r = cuGetProcAddress_v2(symbol, &fn, version, flags, &status);
    void *want = expected ? dlsym(RTLD_DEFAULT, expected) : NULL;
    CHECK(fn == want && status == want_status && r == (expected ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND),
          "cuGetProcAddress_v2(%s, %d, %llu): r=%d status=%d, %s", symbol, version, (unsigned long long)flags,
          (int)r, (int)status, expected ? expected : "(not found)");
}

static void check_get_proc_address(void) {
    const cuuint64_t ptds = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    expect_proc("cuMemAlloc", 12000, 0, "cuMemAlloc_v2", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuMemAlloc", 3000, 0, NULL, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    expect_proc("cuLaunchKernel", 12000, 0, "cuLaunchKernel", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuLaunchKernel", 12000, ptds, "cuLaunchKernel_ptsz", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuStreamBeginCapture", 12000, ptds, "cuStreamBeginCapture_v2_ptsz", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuStreamBeginCapture", 10000, 0, "cuStreamBeginCapture", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuEventElapsedTime", 12000, 0, "cuEventElapsedTime", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuEventElapsedTime", 12080, 0, "cuEventElapsedTime_v2", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuGetProcAddress", 11030, 0, "cuGetProcAddress", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuInit", 12000, ptds, "cuInit", CU_GET_PROC_ADDRESS_SUCCESS);
    expect_proc("cuNoSuchCall", 12000, 0, NULL, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    void *fn = NULL;
    OK(cuGetProcAddress("cuMemFree", &fn, 12000, 0));
    CHECK(fn == dlsym(RTLD_DEFAULT, "cuMemFree_v2"), "cuGetProcAddress (v1) resolves too");
    const char *text = NULL;
    OK(cuGetErrorString(CUDA_ERROR_OUT_OF_MEMORY, &text));
    CHECK(text && strcmp(text, "out of memory") == 0, "error string %s", text ? text : "(null)");
    OK(cuGetErrorName(CUDA_ERROR_NOT_READY, &text));
    CHECK(text && strcmp(text, "CUDA_ERROR_NOT_READY") == 0, "error name %s", text ? text : "(null)");
}

/* The fake keeps working in a forked child (no thread, no lock held across fork). */
static void check_fork(void) {
    pid_t pid = fork();
    if (pid == 0) {
        unsigned long long before = fake_launches(0);
        CUresult r = launch(MS, NULL);
        _exit(r == CUDA_SUCCESS && cuCtxSynchronize() == CUDA_SUCCESS && fake_launches(0) == before + 1 ? 0 : 1);
    }
    int status = -1;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "forked child launches (status %d)", status);
}

/* Each exported symbol is what cuGetProcAddress_v2 gives for its base name and flavour at
 * some CUDA version: strip _ptsz (then ask for the per-thread variant), then _v<N>. */
static void check_exports(int n, char **symbols) {
    static const int versions[] = {1000, 3020, 4000, 10000, 10010, 11000, 11030, 11040, 12000, 12080, 13000};
    void *fake = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    CHECK(fake != NULL, "libcuda.so.1 is loaded: %s", dlerror());
    for (int i = 0; i < n; i++) {
        char base[128];
        snprintf(base, sizeof base, "%s", symbols[i]);
        size_t len = strlen(base);
        int ptsz = len > 5 && strcmp(base + len - 5, "_ptsz") == 0;
        if (ptsz) base[len -= 5] = '\0';
        char *v = strrchr(base, '_');
        if (v && v[1] == 'v' && strspn(v + 2, "0123456789") == strlen(v + 2) && v[2]) *v = '\0';
        void *want = fake ? dlsym(fake, symbols[i]) : NULL;
        int found = 0;
        for (size_t k = 0; k < sizeof versions / sizeof *versions && !found; k++) {
            void *fn = NULL;
            CUdriverProcAddressQueryResult status;
            cuuint64_t flags = ptsz ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : 0;
            found = cuGetProcAddress_v2(base, &fn, versions[k], flags, &status) == CUDA_SUCCESS && fn == want;
        }
        CHECK(want && found, "%s is not reachable as cuGetProcAddress_v2(\"%s\")", symbols[i], base);
    }
    if (fake) dlclose(fake);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--exports") == 0) {
        check_exports(argc - 2, argv + 2);
    } else {
        check_devices_and_contexts();
        check_timing();
        check_capture();
        check_capture_rule();
        check_memory();
        check_ptsz_counters();
        check_get_proc_address();
        check_fork();
    }
    printf("fake_smoke: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
