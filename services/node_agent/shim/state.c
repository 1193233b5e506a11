/* Process-wide state: the real driver, the instance's pages, and the contexts and GPUs
 * seen so far. Everything here is set up once or on the first sight of a context; the
 * launch path only reads it.
 *
 * Start-up never waits for another thread. It calls dlopen and dlsym, which take the
 * loader's lock; a thread waiting for "the one initialiser" could be that lock's holder
 * (a library constructor calling CUDA) while the initialiser waits for the lock. So every
 * thread that finds the shim not yet started runs the (idempotent) start-up itself, and
 * each result is published once with an atomic store. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "shim.h"

struct dilu_real dilu_real;
struct dilu_context dilu_contexts[DILU_MAX_CONTEXTS];

static _Atomic int started;
static _Atomic int announced;
static _Atomic(const void *) control_page;
static _Atomic(void *) stats_page;
/* Used while the page is stuck mid-write. Until a first good reading it is the whole GPU
 * with no memory limit: better unlimited than blocked by a writer that died. */
static struct dilu_control last_control = {
    .quota = {.share_ppm = DILU_PPM, .burst_ns = 10000000, .inflight_cap_ns = 5000000}};
static _Atomic uint64_t stuck_seq;  /* the (odd) sequence a stuck page stays at; 0: none */

static struct dilu_gpu gpus[DILU_MAX_GPUS];
static int gpu_count;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
/* Bumped by fork(): the child's contexts are not the parent's. */
static _Atomic unsigned context_epoch;

static __thread CUcontext cached_ctx;
static __thread struct dilu_context *cached_context;
static __thread unsigned cached_epoch;

uint64_t dilu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *resolve(const char *symbol) {
    void *libcuda = dilu_libcuda();
    return libcuda ? dilu_real_dlsym(libcuda, symbol) : NULL;
}

/* Stores what was found into an empty field only: an address adopted from
 * cuGetProcAddress (the driver's own answer) must not be overwritten. */
#define PUBLISH(field, address)                                                        \
    do {                                                                               \
        void *found_ = (address), *none_ = NULL;                                       \
        if (found_)                                                                    \
            __atomic_compare_exchange_n((void **)&(field), &none_, found_, 0,          \
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);           \
    } while (0)

static void resolve_driver(void) {
    /* CUDA 12.8 and 11.4 gave these a _v2 with the same signature; older drivers lack it. */
    PUBLISH(dilu_real.cuEventElapsedTime, resolve("cuEventElapsedTime_v2"));
    PUBLISH(dilu_real.cuDeviceGetUuid, resolve("cuDeviceGetUuid_v2"));
#define DILU_RESOLVE(name, params) PUBLISH(dilu_real.name, resolve(#name));
    DILU_HOOKED_LAUNCHES(DILU_RESOLVE)
    DILU_HOOKED_MEMORY(DILU_RESOLVE)
    DILU_HOOKED_LOOKUPS(DILU_RESOLVE)
    DILU_CALLED(DILU_RESOLVE)
#undef DILU_RESOLVE
}

/* Without a stats file (a worker started by hand) counters go to a private page. */
static void *private_stats_page(void) {
    void *page = mmap(NULL, DILU_PAGE_SIZE, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return NULL;
    *(uint32_t *)page = DILU_STATS_MAGIC;
    return page;
}

/* Maps the pages, keeping the first mapping published by any thread. */
static void map_pages(const char *control_path, const char *stats_path) {
    if (control_path && *control_path && !atomic_load(&control_page)) {
        const void *mine = dilu_control_map(control_path), *none = NULL;
        if (mine && !atomic_compare_exchange_strong(&control_page, &none, mine))
            munmap((void *)mine, DILU_PAGE_SIZE);
    }
    if (!atomic_load(&stats_page)) {
        void *mine = stats_path && *stats_path ? dilu_stats_map(stats_path) : NULL, *none = NULL;
        if (!mine)
            mine = private_stats_page();
        if (mine && !atomic_compare_exchange_strong(&stats_page, &none, mine))
            munmap(mine, DILU_PAGE_SIZE);
    }
}

static void after_fork_in_child(void) {
    atomic_fetch_add(&context_epoch, 1);
    for (int i = 0; i < DILU_MAX_CONTEXTS; i++) {
        atomic_store(&dilu_contexts[i].gpu, NULL);
        atomic_store(&dilu_contexts[i].ctx, NULL);
    }
    for (int i = 0; i < gpu_count; i++)
        dilu_limiter_reset(&gpus[i].limiter);
    pthread_mutex_init(&registry_lock, NULL);
    dilu_launch_after_fork();
    dilu_memory_after_fork();
}

static void announce(const char *control_path) {
    if (atomic_exchange(&announced, 1))
        return;
    const char *quiet = getenv("DILU_SHIM_QUIET");
    const void *page = atomic_load(&control_page);
    struct dilu_control first;
    if (page && dilu_control_read(page, &first) == 0)
        last_control = first;
    else if (page)
        fprintf(stderr, "dilu-shim: %s is stuck mid-write; not limiting until it is not\n",
                control_path);
    if (!dilu_libcuda())
        fprintf(stderr, "dilu-shim: no CUDA driver (libcuda.so.1): nothing to enforce\n");
    else if (!page)
        fprintf(stderr, "dilu-shim: no control page (DILU_CONTROL): forwarding only\n");
    else if (!quiet || !*quiet)
        fprintf(stderr, "dilu-shim: enforcing %s (share %.3f, memory limit %llu MiB)\n",
                control_path, last_control.quota.share_ppm / 1e6,
                (unsigned long long)(last_control.memory_limit_bytes >> 20));
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

void dilu_init(void) {
    if (atomic_load_explicit(&started, memory_order_acquire))
        return;
    const char *control_path = getenv("DILU_CONTROL");
    resolve_driver();
    map_pages(control_path, getenv("DILU_STATS"));
    announce(control_path);
    atomic_store_explicit(&started, 1, memory_order_release);
}

/* Without a driver there is nothing to enforce (a CPU worker): its own gate does it. */
int dilu_enforcing(void) { return atomic_load(&control_page) != NULL && dilu_libcuda() != NULL; }

void *dilu_stats(void) { return atomic_load_explicit(&stats_page, memory_order_relaxed); }

void dilu_read_control(struct dilu_control *out) {
    /* A page stuck mid-write keeps the last good reading: the agent rewrites within
     * microseconds, so a page that stays odd belongs to a writer that died, and it is
     * waited on once, not at every launch. Racy copies of last_control are harmless: each
     * field is a plain word. */
    const void *page = atomic_load_explicit(&control_page, memory_order_relaxed);
    uint64_t seq = dilu_control_seq(page);
    if (!(seq & 1) || seq != atomic_load_explicit(&stuck_seq, memory_order_relaxed)) {
        if (dilu_control_read(page, out) == 0) {
            last_control = *out;
            return;
        }
        atomic_store_explicit(&stuck_seq, dilu_control_seq(page), memory_order_relaxed);
    }
    *out = last_control;
}

static struct dilu_gpu *gpu_for_uuid(const CUuuid *uuid) {
    for (int i = 0; i < gpu_count; i++)
        if (memcmp(gpus[i].uuid, uuid->bytes, 16) == 0)
            return &gpus[i];
    if (gpu_count == DILU_MAX_GPUS)
        return NULL;
    struct dilu_gpu *gpu = &gpus[gpu_count++];
    memcpy(gpu->uuid, uuid->bytes, 16);
    void *stats = dilu_stats();
    gpu->memory_slot = stats ? dilu_stats_gpu_slot(stats, gpu->uuid) : -1;
    return gpu;
}

struct dilu_gpu *dilu_gpu_for_device(CUdevice device) {
    CUuuid uuid;
    if (!dilu_real.cuDeviceGetUuid || dilu_real.cuDeviceGetUuid(&uuid, device) != CUDA_SUCCESS)
        return NULL;
    pthread_mutex_lock(&registry_lock);
    struct dilu_gpu *gpu = gpu_for_uuid(&uuid);
    pthread_mutex_unlock(&registry_lock);
    return gpu;
}

static struct dilu_context *register_context(CUcontext ctx) {
    CUdevice device;
    CUuuid uuid;
    if (!dilu_real.cuCtxGetDevice || dilu_real.cuCtxGetDevice(&device) != CUDA_SUCCESS ||
        !dilu_real.cuDeviceGetUuid || dilu_real.cuDeviceGetUuid(&uuid, device) != CUDA_SUCCESS)
        return NULL;
    pthread_mutex_lock(&registry_lock);
    struct dilu_context *found = NULL;
    struct dilu_gpu *gpu = gpu_for_uuid(&uuid);
    for (int i = 0; gpu && i < DILU_MAX_CONTEXTS && !found; i++) {
        CUcontext seen = atomic_load(&dilu_contexts[i].ctx);
        if (seen == ctx || (seen == NULL &&
                            atomic_compare_exchange_strong(&dilu_contexts[i].ctx, &seen, ctx))) {
            atomic_store(&dilu_contexts[i].gpu, gpu);
            found = &dilu_contexts[i];
        }
    }
    pthread_mutex_unlock(&registry_lock);
    if (!found) {
        static _Atomic int warned;
        if (!atomic_exchange(&warned, 1))
            fprintf(stderr, "dilu-shim: more than %d contexts or %d GPUs; "
                            "launches beyond them are not limited\n",
                    DILU_MAX_CONTEXTS, DILU_MAX_GPUS);
    }
    return found;
}

struct dilu_context *dilu_current_context(void) {
    CUcontext ctx = NULL;
    if (!dilu_real.cuCtxGetCurrent || dilu_real.cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || !ctx)
        return NULL;
    unsigned epoch = atomic_load_explicit(&context_epoch, memory_order_relaxed);
    if (ctx == cached_ctx && epoch == cached_epoch && cached_context)
        return cached_context;
    struct dilu_context *context = NULL;
    for (int i = 0; i < DILU_MAX_CONTEXTS && !context; i++)
        if (atomic_load(&dilu_contexts[i].ctx) == ctx && atomic_load(&dilu_contexts[i].gpu))
            context = &dilu_contexts[i];
    if (!context)
        context = register_context(ctx);
    cached_ctx = ctx;
    cached_context = context;
    cached_epoch = epoch;
    return context;
}
