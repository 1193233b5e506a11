/* A fake CUDA driver (built by the tests as libcuda.so.1) that simulates GPUs, so the
 * LD_PRELOADed Dilu shim can be tested on a machine without one.
 *
 * Model: each device is one serial engine. A kernel of duration d launched on stream s
 * starts at max(now, device.busy_until, s.tail) and ends at start + d; then
 * device.busy_until = s.tail = end. Durations travel in the handles: (uintptr_t)f ns for
 * kernel launches, (uintptr_t)hGraphExec ns for graph launches (see FAKE_KERNEL in
 * fake_cuda.h). Time is CLOCK_MONOTONIC, the shim's clock. Nothing runs in the
 * background: state changes only inside calls, under one mutex, so the fake survives fork.
 * Streams, events and allocations live in fixed tables (no malloc anywhere).
 *
 * Stream capture follows the driver's rule for potentially unsafe calls (cuda.h, at
 * cuThreadExchangeStreamCaptureMode): the synchronizing calls (cuEventQuery,
 * cuEventSynchronize, cuStreamSynchronize, cuCtxSynchronize) fail with
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidate the captures that forbid them.
 * A thread whose own interaction mode is RELAXED is never refused; otherwise it is refused
 * while it has a capture of its own that is not RELAXED, and, in GLOBAL mode (the default),
 * also while another thread has a GLOBAL capture going. Synchronizing the capturing stream
 * itself is refused in any mode. An invalidated capture takes no more work (launches and
 * event records fail with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED) and ends with that error and
 * no graph; ended from another thread (unless RELAXED), a capture ends with
 * CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD and no graph. This is what a real driver did in each
 * case (an H200 on driver 580.159.04). Only these calls are modelled, not the legacy stream's
 * implicit synchronization with capturing streams.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake_cuda.h"

/* The entry points take the real driver's full parameter lists and ignore most of them. */
#pragma GCC diagnostic ignored "-Wunused-parameter"

typedef unsigned long long u64; /* the type of CUdeviceptr and of the fake_* results */

#define MAX_DEVICES 8
#define MAX_STREAMS 256
#define MAX_EVENTS 65536
#define MAX_ALLOCS 65536
#define ALLOC_BASE 0x10000000000ULL /* synthetic addresses and handles start at 1 TiB */
#define ALLOC_STRIDE (1ULL << 36)   /* 64 GiB per table slot: live ranges never overlap */
#define ERR_NO_DEVICE ((CUresult)100)
#define ERR_ILLEGAL_STATE ((CUresult)401)
#define MAX_CAPTURES (MAX_STREAMS + 64) /* created streams plus some per-thread ones */

/* Every exported entry point, as X(symbol, base name for cuGetProcAddress, first CUDA version
 * of this variant, is the per-thread-default-stream variant). One list gives the call
 * counters, the names fake_calls accepts and the cuGetProcAddress table.
 * ONE: a single variant; VER: a versioned variant; TWIN: a variant and its _ptsz twin. */
#define ONE(X, sym) X(sym, sym, 0, 0)
#define VER(X, sym, base, version) X(sym, base, version, 0)
#define TWIN(X, sym, base, version) X(sym, base, version, 0) X(sym##_ptsz, base, version, 1)
#define FAKE_ENTRY_POINTS(X)                                                                          \
    ONE(X, cuInit) ONE(X, cuDriverGetVersion) ONE(X, cuGetErrorString) ONE(X, cuGetErrorName)         \
    ONE(X, cuGetProcAddress) VER(X, cuGetProcAddress_v2, cuGetProcAddress, 12000)                     \
    ONE(X, cuDeviceGetCount) ONE(X, cuDeviceGet) ONE(X, cuDeviceGetName)                              \
    ONE(X, cuDeviceGetUuid) VER(X, cuDeviceGetUuid_v2, cuDeviceGetUuid, 11040)                        \
    VER(X, cuDeviceTotalMem_v2, cuDeviceTotalMem, 3020) ONE(X, cuDevicePrimaryCtxRetain)              \
    ONE(X, cuDevicePrimaryCtxRelease)                                                                 \
    VER(X, cuDevicePrimaryCtxRelease_v2, cuDevicePrimaryCtxRelease, 11000)                            \
    ONE(X, cuCtxGetCurrent) ONE(X, cuCtxSetCurrent) ONE(X, cuCtxGetDevice) ONE(X, cuCtxSynchronize)  \
    ONE(X, cuStreamCreate) ONE(X, cuStreamDestroy) VER(X, cuStreamDestroy_v2, cuStreamDestroy, 4000) \
    TWIN(X, cuStreamSynchronize, cuStreamSynchronize, 0)                                              \
    TWIN(X, cuStreamIsCapturing, cuStreamIsCapturing, 0)                                              \
    TWIN(X, cuStreamBeginCapture, cuStreamBeginCapture, 0)                                            \
    TWIN(X, cuStreamBeginCapture_v2, cuStreamBeginCapture, 10010)                                     \
    TWIN(X, cuStreamEndCapture, cuStreamEndCapture, 0)                                                \
    VER(X, cuThreadExchangeStreamCaptureMode, cuThreadExchangeStreamCaptureMode, 10010)               \
    ONE(X, cuEventCreate) TWIN(X, cuEventRecord, cuEventRecord, 0)                                    \
    ONE(X, cuEventQuery) ONE(X, cuEventSynchronize)                                                   \
    ONE(X, cuEventElapsedTime) VER(X, cuEventElapsedTime_v2, cuEventElapsedTime, 12080)               \
    ONE(X, cuEventDestroy) VER(X, cuEventDestroy_v2, cuEventDestroy, 4000)                            \
    TWIN(X, cuLaunchKernel, cuLaunchKernel, 0) TWIN(X, cuLaunchKernelEx, cuLaunchKernelEx, 0)         \
    TWIN(X, cuLaunchCooperativeKernel, cuLaunchCooperativeKernel, 0)                                  \
    TWIN(X, cuGraphLaunch, cuGraphLaunch, 0)                                                          \
    VER(X, cuMemAlloc_v2, cuMemAlloc, 3020) VER(X, cuMemAllocPitch_v2, cuMemAllocPitch, 3020)         \
    ONE(X, cuMemAllocManaged) TWIN(X, cuMemAllocAsync, cuMemAllocAsync, 0)                            \
    TWIN(X, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync, 0)                                      \
    ONE(X, cuMemCreate) ONE(X, cuMemRelease) ONE(X, cuArrayDestroy)                                   \
    VER(X, cuArrayCreate_v2, cuArrayCreate, 3020) VER(X, cuArray3DCreate_v2, cuArray3DCreate, 3020)   \
    VER(X, cuMemFree_v2, cuMemFree, 3020) TWIN(X, cuMemFreeAsync, cuMemFreeAsync, 0)                  \
    VER(X, cuMemGetInfo_v2, cuMemGetInfo, 3020)

enum entry_point {
#define X_ENUM(sym, base, version, ptsz) E_##sym,
    FAKE_ENTRY_POINTS(X_ENUM)
#undef X_ENUM
    E_COUNT
};

static const char *const entry_names[E_COUNT] = {
#define X_NAME(sym, base, version, ptsz) #sym,
    FAKE_ENTRY_POINTS(X_NAME)
#undef X_NAME
};

static unsigned long long calls[E_COUNT];
#define COUNT(sym) __atomic_fetch_add(&calls[E_##sym], 1, __ATOMIC_RELAXED)

/* tail: when its last work ends. While capturing: the capture's mode, the thread that began
 * it (a thread_id()), and whether an unsafe call invalidated it. */
struct fstream {
    u64 tail, capture_thread;
    int dev;
    CUstreamCaptureMode capture_mode;
    unsigned char in_use, capturing, invalidated, legacy;
};
struct fevent { u64 time; unsigned int flags; unsigned char in_use, recorded; };
enum alloc_kind { A_FREE, A_POINTER, A_HANDLE, A_ARRAY };
struct falloc { u64 size; int dev; unsigned char kind; };

struct fdevice {
    /* The engine's future is one busy run [seg_start, busy_until]: a gap can only open
     * before a launch, so executed time = done + (min(now, busy_until) - seg_start). */
    u64 busy_until, seg_start, done, launches, used;
    struct fstream legacy;
};

struct CUctx_st { int dev; };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int ndev = 1;
static u64 capacity = 40ULL << 30;
static struct fdevice devs[MAX_DEVICES];
static struct CUctx_st ctxs[MAX_DEVICES];
static struct fstream streams[MAX_STREAMS];
static struct fevent events[MAX_EVENTS];
static uint32_t event_free[MAX_EVENTS], event_nfree, event_next;
static struct falloc allocs[MAX_ALLOCS];
static uint32_t alloc_free[MAX_ALLOCS], alloc_nfree, alloc_next;
static unsigned long long captured, events_on_capturing, graphs, invalidated_captures;
/* The streams capturing now. A thread must end its per-thread stream's capture before it
 * exits (its stream lives in its thread-local storage). */
static struct fstream *captures[MAX_CAPTURES];
static int ncaptures;
static u64 last_thread_id;

static __thread CUcontext tl_ctx;
static __thread struct fstream tl_ptds[MAX_DEVICES]; /* per-thread default streams */
static __thread CUstreamCaptureMode tl_capture_mode; /* zero: CU_STREAM_CAPTURE_MODE_GLOBAL */
static __thread u64 tl_thread_id;

static void lock_all(void) { pthread_mutex_lock(&lock); }
static void unlock_all(void) { pthread_mutex_unlock(&lock); }

__attribute__((constructor)) static void fake_init(void) {
    char *end;
    const char *e = getenv("FAKE_CUDA_DEVICES");
    if (e && *e) {
        long n = strtol(e, &end, 10);
        if (*end == '\0' && n >= 0) ndev = n > MAX_DEVICES ? MAX_DEVICES : (int)n;
    }
    e = getenv("FAKE_CUDA_MEMORY_BYTES");
    if (e && *e) {
        unsigned long long v = strtoull(e, &end, 10);
        if (*end == '\0' && v > 0) capacity = v;
    }
    for (int i = 0; i < MAX_DEVICES; i++) {
        ctxs[i].dev = i;
        devs[i].legacy = (struct fstream){.dev = i, .in_use = 1, .legacy = 1};
    }
    pthread_atfork(lock_all, unlock_all, unlock_all); /* a child never inherits it held */
}

static u64 now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (u64)ts.tv_sec * 1000000000ULL + (u64)ts.tv_nsec;
}

static int cur_dev(void) { return tl_ctx ? tl_ctx->dev : -1; }
static int bad_dev(int dev) { return dev < 0 || dev >= ndev; }

/* Index of p in a table of n elements of size sz, or -1. */
static long index_in(const void *p, const void *table, size_t n, size_t sz) {
    uintptr_t off = (uintptr_t)p - (uintptr_t)table;
    return off < n * sz && off % sz == 0 ? (long)(off / sz) : -1;
}

/* The stream a handle names (lock held). NULL is the legacy default stream, or the
 * per-thread one for the _ptsz entry points; both belong to the current context. */
static CUresult stream_of(CUstream h, int ptsz, struct fstream **out) {
    if (h == NULL) h = ptsz ? CU_STREAM_PER_THREAD : CU_STREAM_LEGACY;
    if (h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD) {
        int d = cur_dev();
        if (d < 0) return CUDA_ERROR_INVALID_CONTEXT;
        *out = h == CU_STREAM_LEGACY ? &devs[d].legacy : &tl_ptds[d];
        (*out)->dev = d;
        return CUDA_SUCCESS;
    }
    long i = index_in(h, streams, MAX_STREAMS, sizeof *streams);
    if (i < 0 || !streams[i].in_use) return CUDA_ERROR_INVALID_HANDLE;
    *out = &streams[i];
    return CUDA_SUCCESS;
}

static struct fevent *event_of(CUevent e) {
    long i = index_in(e, events, MAX_EVENTS, sizeof *events);
    return i >= 0 && events[i].in_use ? &events[i] : NULL;
}

/* ---- the capture rule (lock held throughout) ---- */

/* The calling thread, as a number no other thread of this process had (pthread_t values
 * are reused). */
static u64 thread_id(void) {
    if (!tl_thread_id) tl_thread_id = ++last_thread_id;
    return tl_thread_id;
}

static void capture_begin(struct fstream *s, CUstreamCaptureMode mode) {
    s->capturing = 1;
    s->invalidated = 0;
    s->capture_mode = mode;
    s->capture_thread = thread_id();
    captures[ncaptures++] = s;
}

static void capture_end(struct fstream *s) {
    for (int i = 0; i < ncaptures; i++)
        if (captures[i] == s) {
            captures[i] = captures[--ncaptures];
            break;
        }
    s->capturing = s->invalidated = 0;
}

static void invalidate(struct fstream *s) {
    if (!s->invalidated) invalidated_captures++;
    s->invalidated = 1;
}

/* The calling thread makes a potentially unsafe call: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
 * with every capture that forbids it invalidated, or CUDA_SUCCESS when none does. */
static CUresult unsafe_call(void) {
    CUresult r = CUDA_SUCCESS;
    if (tl_capture_mode == CU_STREAM_CAPTURE_MODE_RELAXED) return r;
    u64 me = thread_id();
    for (int i = 0; i < ncaptures; i++) {
        struct fstream *s = captures[i];
        int forbids = s->capture_thread == me ? s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED
                                              : tl_capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL &&
                                                    s->capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
        if (forbids) {
            invalidate(s);
            r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
        }
    }
    return r;
}

/* An exported entry point that counts its call and returns expr. The code is the static
 * impl_##sym and the exported name an alias of it: cuGetProcAddress hands out impl_##sym,
 * which an LD_PRELOADed shim exporting the same name cannot interpose (&sym could be). */
#define ENTRY(sym, params, expr)                                  \
    static CUresult impl_##sym params { COUNT(sym); return expr; } \
    extern __typeof__(impl_##sym) sym __attribute__((alias("impl_" #sym)));
/* An entry point and its _ptsz twin; impl takes "NULL means the per-thread stream" last. */
#define WITH_PTSZ(sym, params, impl, ...) \
    ENTRY(sym, params, impl(__VA_ARGS__, 0)) ENTRY(sym##_ptsz, params, impl(__VA_ARGS__, 1))

/* ---- devices and contexts ---- */

static CUresult put_int(int *p, int v) { return p ? (*p = v, CUDA_SUCCESS) : CUDA_ERROR_INVALID_VALUE; }
static CUresult device_ok(CUdevice dev) { return bad_dev(dev) ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS; }

ENTRY(cuInit, (unsigned int Flags), Flags ? CUDA_ERROR_INVALID_VALUE : ndev ? CUDA_SUCCESS : ERR_NO_DEVICE)
ENTRY(cuDriverGetVersion, (int *driverVersion), put_int(driverVersion, 12080))
ENTRY(cuDeviceGetCount, (int *count), put_int(count, ndev))
ENTRY(cuDeviceGet, (CUdevice *device, int ordinal),
      bad_dev(ordinal) ? CUDA_ERROR_INVALID_DEVICE : put_int(device, ordinal))

static CUresult device_name(char *name, int len, CUdevice dev) {
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (bad_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "Fake GPU %d", dev);
    return CUDA_SUCCESS;
}
ENTRY(cuDeviceGetName, (char *name, int len, CUdevice dev), device_name(name, len, dev))

static CUresult device_uuid(CUuuid *uuid, CUdevice dev) {
    char text[17];
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    if (bad_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(text, sizeof text, "FAKEGPU-%08x", (unsigned)dev); /* exactly 16 bytes */
    memcpy(uuid->bytes, text, 16);
    return CUDA_SUCCESS;
}
ENTRY(cuDeviceGetUuid, (CUuuid *uuid, CUdevice dev), device_uuid(uuid, dev))
ENTRY(cuDeviceGetUuid_v2, (CUuuid *uuid, CUdevice dev), device_uuid(uuid, dev))

static CUresult total_mem(size_t *bytes, CUdevice dev) {
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (bad_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = capacity;
    return CUDA_SUCCESS;
}
ENTRY(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev), total_mem(bytes, dev))

static CUresult retain(CUcontext *pctx, CUdevice dev) {
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (bad_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *pctx = &ctxs[dev];
    return CUDA_SUCCESS;
}
ENTRY(cuDevicePrimaryCtxRetain, (CUcontext *pctx, CUdevice dev), retain(pctx, dev))
/* Primary contexts are static: releasing one changes nothing. */
ENTRY(cuDevicePrimaryCtxRelease, (CUdevice dev), device_ok(dev))
ENTRY(cuDevicePrimaryCtxRelease_v2, (CUdevice dev), device_ok(dev))

static CUresult set_current(CUcontext ctx) {
    long i = index_in(ctx, ctxs, MAX_DEVICES, sizeof *ctxs);
    if (ctx && (i < 0 || bad_dev((int)i))) return CUDA_ERROR_INVALID_CONTEXT;
    tl_ctx = ctx;
    return CUDA_SUCCESS;
}
ENTRY(cuCtxSetCurrent, (CUcontext ctx), set_current(ctx))
ENTRY(cuCtxGetCurrent, (CUcontext *pctx), pctx ? (*pctx = tl_ctx, CUDA_SUCCESS) : CUDA_ERROR_INVALID_VALUE)
ENTRY(cuCtxGetDevice, (CUdevice *device), tl_ctx ? put_int(device, tl_ctx->dev) : CUDA_ERROR_INVALID_CONTEXT)

static void sleep_until(u64 t) {
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ULL), .tv_nsec = (long)(t % 1000000000ULL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static CUresult ctx_sync(void) {
    int d = cur_dev();
    if (d < 0) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    CUresult r = unsafe_call();
    u64 until = devs[d].busy_until;
    pthread_mutex_unlock(&lock);
    if (r == CUDA_SUCCESS) sleep_until(until);
    return r;
}
ENTRY(cuCtxSynchronize, (void), ctx_sync())

static CUresult exchange_mode(CUstreamCaptureMode *mode) {
    if (!mode || *mode < CU_STREAM_CAPTURE_MODE_GLOBAL || *mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode previous = tl_capture_mode;
    tl_capture_mode = *mode;
    *mode = previous;
    return CUDA_SUCCESS;
}
ENTRY(cuThreadExchangeStreamCaptureMode, (CUstreamCaptureMode *mode), exchange_mode(mode))

/* ---- streams and capture ---- */

static CUresult stream_create(CUstream *out) {
    int d = cur_dev();
    CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_STREAMS && r != CUDA_SUCCESS; i++)
        if (!streams[i].in_use) {
            streams[i] = (struct fstream){.dev = d, .in_use = 1};
            *out = (CUstream)&streams[i];
            r = CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&lock);
    return r;
}
ENTRY(cuStreamCreate, (CUstream *phStream, unsigned int Flags), stream_create(phStream))

static CUresult stream_destroy(CUstream h) {
    long i = index_in(h, streams, MAX_STREAMS, sizeof *streams);
    CUresult r = CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    if (i >= 0 && streams[i].in_use) {
        if (streams[i].capturing) capture_end(&streams[i]);
        streams[i].in_use = 0;
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return r;
}
ENTRY(cuStreamDestroy, (CUstream hStream), stream_destroy(hStream))
ENTRY(cuStreamDestroy_v2, (CUstream hStream), stream_destroy(hStream))

static CUresult stream_sync(CUstream h, int ptsz) {
    struct fstream *s;
    u64 until = 0;
    pthread_mutex_lock(&lock);
    CUresult r = stream_of(h, ptsz, &s);
    if (r == CUDA_SUCCESS && s->capturing) { /* conflicts with its capture in any mode */
        invalidate(s);
        r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (r == CUDA_SUCCESS) r = unsafe_call();
    if (r == CUDA_SUCCESS) until = s->tail;
    pthread_mutex_unlock(&lock);
    if (r == CUDA_SUCCESS) sleep_until(until);
    return r;
}
WITH_PTSZ(cuStreamSynchronize, (CUstream hStream), stream_sync, hStream)

static CUresult is_capturing(CUstream h, CUstreamCaptureStatus *status, int ptsz) {
    struct fstream *s;
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    CUresult r = stream_of(h, ptsz, &s);
    if (r == CUDA_SUCCESS)
        *status = !s->capturing    ? CU_STREAM_CAPTURE_STATUS_NONE
                  : s->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                   : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    pthread_mutex_unlock(&lock);
    return r;
}
WITH_PTSZ(cuStreamIsCapturing, (CUstream hStream, CUstreamCaptureStatus *captureStatus), is_capturing,
          hStream, captureStatus)

static CUresult begin_capture(CUstream h, int mode, int ptsz) {
    struct fstream *s;
    if (mode < CU_STREAM_CAPTURE_MODE_GLOBAL || mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    CUresult r = stream_of(h, ptsz, &s);
    if (r == CUDA_SUCCESS)
        r = s->legacy ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : s->capturing ? ERR_ILLEGAL_STATE : r;
    if (r == CUDA_SUCCESS && ncaptures == MAX_CAPTURES) r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) capture_begin(s, (CUstreamCaptureMode)mode);
    pthread_mutex_unlock(&lock);
    return r;
}
WITH_PTSZ(cuStreamBeginCapture, (CUstream hStream), begin_capture, hStream, CU_STREAM_CAPTURE_MODE_GLOBAL)
WITH_PTSZ(cuStreamBeginCapture_v2, (CUstream hStream, CUstreamCaptureMode mode), begin_capture, hStream,
          (int)mode)

static CUresult end_capture(CUstream h, CUgraph *graph, int ptsz) {
    struct fstream *s;
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    *graph = NULL; /* the driver's answer whenever it gives no graph */
    pthread_mutex_lock(&lock);
    CUresult r = stream_of(h, ptsz, &s);
    if (r == CUDA_SUCCESS && !s->capturing) r = ERR_ILLEGAL_STATE;
    if (r == CUDA_SUCCESS) {
        /* From another thread (not RELAXED), the driver still ends the capture, with no graph. */
        r = s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED && s->capture_thread != thread_id()
                ? FAKE_ERROR_STREAM_CAPTURE_WRONG_THREAD
            : s->invalidated ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
                             : CUDA_SUCCESS;
        capture_end(s);
        if (r == CUDA_SUCCESS) *graph = (CUgraph)(uintptr_t)(0x9a000000ULL + 16 * ++graphs); /* never NULL */
    }
    pthread_mutex_unlock(&lock);
    return r;
}
WITH_PTSZ(cuStreamEndCapture, (CUstream hStream, CUgraph *phGraph), end_capture, hStream, phGraph)

/* ---- launches: one lock, a little arithmetic, one unlock ---- */

static CUresult launch(u64 ns, CUstream h, int ptsz) {
    struct fstream *s;
    if (!ns) return CUDA_ERROR_INVALID_HANDLE;
    if (!tl_ctx) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    CUresult r = stream_of(h, ptsz, &s);
    if (r == CUDA_SUCCESS && s->invalidated) {
        r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else if (r == CUDA_SUCCESS && s->capturing) {
        captured++;
    } else if (r == CUDA_SUCCESS) {
        struct fdevice *d = &devs[s->dev];
        u64 now = now_ns();
        if (now > d->busy_until) { /* the engine went idle: a new busy run starts now */
            d->done += d->busy_until - d->seg_start;
            d->seg_start = d->busy_until = now;
        }
        d->busy_until += ns; /* s->tail <= busy_until always, so the kernel starts there */
        s->tail = d->busy_until;
        d->launches++;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

#define LAUNCH_PARAMS                                                                   \
    CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ, \
        unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,         \
        unsigned int sharedMemBytes, CUstream hStream, void **kernelParams

static CUresult launch_ex(const CUlaunchConfig *config, CUfunction f, int ptsz) {
    return config ? launch((uintptr_t)f, config->hStream, ptsz) : CUDA_ERROR_INVALID_VALUE;
}

WITH_PTSZ(cuLaunchKernel, (LAUNCH_PARAMS, void **extra), launch, (uintptr_t)f, hStream)
WITH_PTSZ(cuLaunchCooperativeKernel, (LAUNCH_PARAMS), launch, (uintptr_t)f, hStream)
WITH_PTSZ(cuLaunchKernelEx, (const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra),
          launch_ex, config, f)
WITH_PTSZ(cuGraphLaunch, (CUgraphExec hGraphExec, CUstream hStream), launch, (uintptr_t)hGraphExec, hStream)

/* ---- events ---- */

static CUresult event_create(CUevent *out, unsigned int flags) {
    CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    if (event_nfree || event_next < MAX_EVENTS) {
        uint32_t i = event_nfree ? event_free[--event_nfree] : event_next++;
        events[i] = (struct fevent){.flags = flags, .in_use = 1};
        *out = (CUevent)&events[i];
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return r;
}
ENTRY(cuEventCreate, (CUevent *phEvent, unsigned int Flags), event_create(phEvent, Flags))

static CUresult event_destroy(CUevent h) {
    CUresult r = CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    struct fevent *e = event_of(h);
    if (e) {
        e->in_use = 0;
        event_free[event_nfree++] = (uint32_t)(e - events);
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return r;
}
ENTRY(cuEventDestroy, (CUevent hEvent), event_destroy(hEvent))
ENTRY(cuEventDestroy_v2, (CUevent hEvent), event_destroy(hEvent))

static CUresult event_record(CUevent h, CUstream hs, int ptsz) {
    struct fstream *s;
    pthread_mutex_lock(&lock);
    struct fevent *e = event_of(h);
    CUresult r = e ? stream_of(hs, ptsz, &s) : CUDA_ERROR_INVALID_HANDLE;
    if (r == CUDA_SUCCESS && s->invalidated) {
        r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else if (r == CUDA_SUCCESS && s->capturing) {
        events_on_capturing++; /* becomes a graph node; the event's own time is untouched */
    } else if (r == CUDA_SUCCESS) {
        u64 now = now_ns();
        e->time = s->tail > now ? s->tail : now;
        e->recorded = 1;
    }
    pthread_mutex_unlock(&lock);
    return r;
}
WITH_PTSZ(cuEventRecord, (CUevent hEvent, CUstream hStream), event_record, hEvent, hStream)

static CUresult event_query(CUevent h) {
    pthread_mutex_lock(&lock);
    struct fevent *e = event_of(h);
    CUresult r = !e || !e->recorded        ? CUDA_ERROR_INVALID_HANDLE
                 : unsafe_call()           ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
                 : e->time > now_ns() ? CUDA_ERROR_NOT_READY
                                           : CUDA_SUCCESS;
    pthread_mutex_unlock(&lock);
    return r;
}
ENTRY(cuEventQuery, (CUevent hEvent), event_query(hEvent))

static CUresult event_sync(CUevent h) {
    pthread_mutex_lock(&lock);
    struct fevent *e = event_of(h);
    CUresult r = e ? unsafe_call() : CUDA_ERROR_INVALID_HANDLE;
    u64 until = e && e->recorded ? e->time : 0;
    pthread_mutex_unlock(&lock);
    if (r == CUDA_SUCCESS) sleep_until(until);
    return r;
}
ENTRY(cuEventSynchronize, (CUevent hEvent), event_sync(hEvent))

static CUresult elapsed(float *ms, CUevent start, CUevent end) {
    CUresult r = CUDA_SUCCESS;
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    struct fevent *a = event_of(start), *b = event_of(end);
    u64 now = now_ns();
    if (!a || !b || !a->recorded || !b->recorded || ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING))
        r = CUDA_ERROR_INVALID_HANDLE;
    else if (a->time > now || b->time > now)
        r = CUDA_ERROR_NOT_READY;
    else
        *ms = (float)((double)(long long)(b->time - a->time) / 1e6);
    pthread_mutex_unlock(&lock);
    return r;
}
ENTRY(cuEventElapsedTime, (float *pMilliseconds, CUevent hStart, CUevent hEnd),
      elapsed(pMilliseconds, hStart, hEnd))
ENTRY(cuEventElapsedTime_v2, (float *pMilliseconds, CUevent hStart, CUevent hEnd),
      elapsed(pMilliseconds, hStart, hEnd))

/* ---- memory: a used counter per device, a table of live allocations ---- */

static CUresult charge(int dev, u64 size, enum alloc_kind kind, u64 *out) {
    CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
    if (!out || !size) return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (bad_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    if (size <= capacity - devs[dev].used && (alloc_nfree || alloc_next < MAX_ALLOCS)) {
        uint32_t i = alloc_nfree ? alloc_free[--alloc_nfree] : alloc_next++;
        allocs[i] = (struct falloc){.size = size, .dev = dev, .kind = kind};
        devs[dev].used += size;
        *out = ALLOC_BASE + i * ALLOC_STRIDE;
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

static CUresult uncharge(u64 value, enum alloc_kind kind) {
    u64 off = value - ALLOC_BASE, i = off / ALLOC_STRIDE;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    if (value < ALLOC_BASE || off % ALLOC_STRIDE || i >= MAX_ALLOCS) return r;
    pthread_mutex_lock(&lock);
    if (allocs[i].kind == kind) {
        devs[allocs[i].dev].used -= allocs[i].size;
        allocs[i].kind = A_FREE;
        alloc_free[alloc_nfree++] = (uint32_t)i;
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

static CUresult stream_ok(CUstream h, int ptsz) {
    struct fstream *s;
    pthread_mutex_lock(&lock);
    CUresult r = stream_of(h, ptsz, &s);
    pthread_mutex_unlock(&lock);
    return r;
}
static CUresult alloc_async(CUdeviceptr *dptr, size_t size, CUstream h, int ptsz) {
    CUresult r = stream_ok(h, ptsz);
    return r ? r : charge(cur_dev(), size, A_POINTER, dptr);
}
static CUresult free_async(CUdeviceptr dptr, CUstream h, int ptsz) {
    CUresult r = stream_ok(h, ptsz);
    return r ? r : uncharge(dptr, A_POINTER);
}

static CUresult alloc_pitch(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height) {
    size_t p = (width + 511) / 512 * 512;
    CUresult r = pitch ? charge(cur_dev(), (u64)p * height, A_POINTER, dptr) : CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) *pitch = p;
    return r;
}

static CUresult mem_create(CUmemGenericAllocationHandle *out, size_t size, const CUmemAllocationProp *prop) {
    if (!prop) return CUDA_ERROR_INVALID_VALUE;
    int dev = prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? prop->location.id : cur_dev();
    return charge(dev, size, A_HANDLE, out);
}

static u64 element_size(CUarray_format format) {
    switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: return 2;
    default: return 4;
    }
}

static CUresult array_create(CUarray *out, u64 w, u64 h, u64 d, CUarray_format format, unsigned channels) {
    u64 value = 0, size = w * (h ? h : 1) * (d ? d : 1) * element_size(format) * channels;
    CUresult r = out ? charge(cur_dev(), size, A_ARRAY, &value) : CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) *out = (CUarray)(uintptr_t)value;
    return r;
}
static CUresult array2d(CUarray *out, const CUDA_ARRAY_DESCRIPTOR *a) {
    return a ? array_create(out, a->Width, a->Height, 1, a->Format, a->NumChannels)
             : CUDA_ERROR_INVALID_VALUE;
}
static CUresult array3d(CUarray *out, const CUDA_ARRAY3D_DESCRIPTOR *a) {
    return a ? array_create(out, a->Width, a->Height, a->Depth, a->Format, a->NumChannels)
             : CUDA_ERROR_INVALID_VALUE;
}

static CUresult mem_info(size_t *free, size_t *total) {
    int d = cur_dev();
    if (!free || !total) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    *free = capacity - devs[d].used;
    *total = capacity;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

ENTRY(cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytesize), charge(cur_dev(), bytesize, A_POINTER, dptr))
ENTRY(cuMemAllocManaged, (CUdeviceptr *dptr, size_t bytesize, unsigned int flags),
      charge(cur_dev(), bytesize, A_POINTER, dptr))
ENTRY(cuMemAllocPitch_v2,
      (CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height, unsigned int ElementSizeBytes),
      alloc_pitch(dptr, pPitch, WidthInBytes, Height))
WITH_PTSZ(cuMemAllocAsync, (CUdeviceptr *dptr, size_t bytesize, CUstream hStream), alloc_async, dptr,
          bytesize, hStream)
WITH_PTSZ(cuMemAllocFromPoolAsync, (CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream),
          alloc_async, dptr, bytesize, hStream)
ENTRY(cuMemCreate,
      (CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
       unsigned long long flags),
      mem_create(handle, size, prop))
ENTRY(cuArrayCreate_v2, (CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *pAllocateArray),
      array2d(pHandle, pAllocateArray))
ENTRY(cuArray3DCreate_v2, (CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pAllocateArray),
      array3d(pHandle, pAllocateArray))
ENTRY(cuMemFree_v2, (CUdeviceptr dptr), uncharge(dptr, A_POINTER))
WITH_PTSZ(cuMemFreeAsync, (CUdeviceptr dptr, CUstream hStream), free_async, dptr, hStream)
ENTRY(cuMemRelease, (CUmemGenericAllocationHandle handle), uncharge(handle, A_HANDLE))
ENTRY(cuArrayDestroy, (CUarray hArray), uncharge((uintptr_t)hArray, A_ARRAY))
ENTRY(cuMemGetInfo_v2, (size_t *free, size_t *total), mem_info(free, total))

/* ---- errors ---- */

static const struct {
    int code;
    const char *name, *text;
} errors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {401, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {600, "CUDA_ERROR_NOT_READY", "device not ready"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing"},
    {901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture"},
    {906, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", "implicit dependency on a capturing stream"},
    {908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "capture ended by another thread than its own"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static CUresult error_text(CUresult error, const char **out, int want_name) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    *out = NULL;
    for (size_t i = 0; i < sizeof errors / sizeof *errors; i++)
        if (errors[i].code == (int)error) {
            *out = want_name ? errors[i].name : errors[i].text;
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_INVALID_VALUE;
}
ENTRY(cuGetErrorString, (CUresult error, const char **pStr), error_text(error, pStr, 0))
ENTRY(cuGetErrorName, (CUresult error, const char **pStr), error_text(error, pStr, 1))

/* ---- cuGetProcAddress: the base name and the caller's CUDA version pick the newest variant
 * no newer than that version; the per-thread flag picks the _ptsz variant where one exists. */

static CUresult impl_cuGetProcAddress(const char *, void **, int, cuuint64_t);
static CUresult impl_cuGetProcAddress_v2(const char *, void **, int, cuuint64_t,
                                         CUdriverProcAddressQueryResult *);

static const struct proc {
    const char *base;
    int version, ptsz;
    void *fn;
} procs[] = {
#define X_PROC(sym, base, version, ptsz) {#base, version, ptsz, (void *)impl_##sym},
    FAKE_ENTRY_POINTS(X_PROC)
#undef X_PROC
};

static CUresult proc_address(const char *symbol, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status) {
    const struct proc *best = NULL;
    int known = 0, has_ptsz = 0, n = (int)(sizeof procs / sizeof *procs);
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < n; i++)
        if (strcmp(procs[i].base, symbol) == 0) {
            known = 1;
            has_ptsz |= procs[i].ptsz;
        }
    int want_ptsz = has_ptsz && (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    for (int i = 0; i < n; i++) {
        const struct proc *p = &procs[i];
        if (p->ptsz == want_ptsz && p->version <= version && strcmp(p->base, symbol) == 0 &&
            (!best || p->version > best->version))
            best = p;
    }
    *pfn = best ? best->fn : NULL;
    if (status)
        *status = best ? CU_GET_PROC_ADDRESS_SUCCESS
                  : known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                          : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return best ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}
ENTRY(cuGetProcAddress, (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags),
      proc_address(symbol, pfn, cudaVersion, flags, NULL))
ENTRY(cuGetProcAddress_v2,
      (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
       CUdriverProcAddressQueryResult *symbolStatus),
      proc_address(symbol, pfn, cudaVersion, flags, symbolStatus))

/* ---- inspection for the tests ---- */

unsigned long long fake_busy_ns(int dev) {
    if (bad_dev(dev)) return 0;
    pthread_mutex_lock(&lock);
    const struct fdevice *d = &devs[dev];
    u64 now = now_ns(), upto = now < d->busy_until ? now : d->busy_until;
    u64 r = d->done + (upto > d->seg_start ? upto - d->seg_start : 0);
    pthread_mutex_unlock(&lock);
    return r;
}

unsigned long long fake_queued_ns(int dev) {
    if (bad_dev(dev)) return 0;
    pthread_mutex_lock(&lock);
    u64 now = now_ns(), until = devs[dev].busy_until;
    pthread_mutex_unlock(&lock);
    return until > now ? until - now : 0;
}

static u64 read_locked(const u64 *p) {
    pthread_mutex_lock(&lock);
    u64 v = *p;
    pthread_mutex_unlock(&lock);
    return v;
}
unsigned long long fake_launches(int dev) { return bad_dev(dev) ? 0 : read_locked(&devs[dev].launches); }
unsigned long long fake_memory_used(int dev) { return bad_dev(dev) ? 0 : read_locked(&devs[dev].used); }
unsigned long long fake_captured_launches(void) { return read_locked(&captured); }
unsigned long long fake_events_on_capturing_streams(void) { return read_locked(&events_on_capturing); }
unsigned long long fake_invalidated_captures(void) { return read_locked(&invalidated_captures); }

unsigned long long fake_calls(const char *entry_point) {
    for (int i = 0; entry_point && i < E_COUNT; i++)
        if (strcmp(entry_names[i], entry_point) == 0) return __atomic_load_n(&calls[i], __ATOMIC_RELAXED);
    return 0;
}
