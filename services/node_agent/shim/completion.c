/* The completion thread: retires each context's ring of timed launches in order once their
 * end events complete, charges the bucket their real cost, learns each kernel's estimate,
 * and releases the untimed work of threads that stopped launching. One thread for the
 * process, started by the first timed launch, asleep when nothing is pending. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

#define ESTIMATE_SLOTS 4096
#define ESTIMATE_PROBES 8

/* Untimed work of a thread that stopped launching is assumed done after this long: the
 * in-flight cap keeps the queue far shorter, and a wrong guess only admits a little more. */
#define STALE_NS 20000000ull
/* While launches are pending the completion thread polls at this pace, and it keeps
 * polling this long after the last one so that steady launching never pays for a wake-up.
 * Each poll queries events, which takes the driver's locks that launches need too; a
 * fifth of a millisecond is prompt next to the 5 ms in-flight cap. */
#define POLL_NS 200000ull
#define LINGER_NS 2000000ull
#define IDLE_TIMEOUT_NS 100000000ull

/* Running average GPU time per kernel (CUfunction) or graph (CUgraphExec). */
static struct {
    _Atomic uintptr_t key;
    _Atomic uint64_t ns;
} estimates[ESTIMATE_SLOTS];

static _Atomic int reaper_running;
static _Atomic int reaper_idle;
static _Atomic int exiting;
static pthread_once_t exit_hook_once = PTHREAD_ONCE_INIT;

static void stop_reaper(void);
static void install_exit_hook(void) { atexit(stop_reaper); }

void dilu_nap(uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                          .tv_nsec = (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

static long futex(_Atomic int *word, int op, int value, const struct timespec *timeout) {
    return syscall(SYS_futex, (int *)word, op, value, timeout, NULL, 0);
}

static size_t estimate_slot(uintptr_t key) {
    return (size_t)((key >> 4) * 0x9E3779B97F4A7C15ull >> 52) % ESTIMATE_SLOTS;
}

uint64_t dilu_known_estimate(uintptr_t key) {
    size_t slot = estimate_slot(key);
    for (int probe = 0; probe < ESTIMATE_PROBES; probe++) {
        size_t i = (slot + (size_t)probe) % ESTIMATE_SLOTS;
        uintptr_t seen = atomic_load_explicit(&estimates[i].key, memory_order_relaxed);
        if (seen == key)
            return atomic_load_explicit(&estimates[i].ns, memory_order_relaxed);
        if (seen == 0)
            break;
    }
    return 0;
}

static void learn_estimate(uintptr_t key, uint64_t actual_ns) {
    size_t slot = estimate_slot(key);
    for (int probe = 0; probe < ESTIMATE_PROBES; probe++) {
        size_t i = (slot + (size_t)probe) % ESTIMATE_SLOTS;
        uintptr_t seen = atomic_load(&estimates[i].key);
        if (seen == 0 && !atomic_compare_exchange_strong(&estimates[i].key, &seen, key) &&
            seen != key)
            continue;
        if (seen != 0 && seen != key)
            continue;
        /* Only the completion thread writes estimates, so read-modify-write is safe. */
        uint64_t old = atomic_load_explicit(&estimates[i].ns, memory_order_relaxed);
        uint64_t next = old ? old - old / 4 + actual_ns / 4 : actual_ns;
        atomic_store_explicit(&estimates[i].ns, next ? next : 1, memory_order_relaxed);
        return;
    }
    /* Its neighbourhood is full (many kernels, or handles of unloaded modules): take over
     * the home slot, or a new kernel would be timed at the default cost forever. A reader
     * racing this may pair the new key with the old figure once; it is only an estimate. */
    atomic_store_explicit(&estimates[slot].ns, 0, memory_order_relaxed);
    atomic_store_explicit(&estimates[slot].key, key, memory_order_relaxed);
    atomic_store_explicit(&estimates[slot].ns, actual_ns ? actual_ns : 1, memory_order_relaxed);
}

void dilu_settle(struct dilu_gpu *gpu, const struct dilu_quota *quota, uint64_t estimate_ns,
                 uint64_t actual_ns) {
    dilu_limiter_complete(&gpu->limiter, quota, estimate_ns, actual_ns);
    dilu_stats_add(dilu_stats(), DILU_STATS_BUSY_NS, actual_ns);
}


static int retire(struct dilu_context *context) {
    static __thread CUcontext current;  /* the completion thread's own context */
    struct dilu_ring *ring = &context->ring;
    struct dilu_gpu *gpu = atomic_load(&context->gpu);
    uint64_t tail = atomic_load(&ring->tail);
    uint64_t head = atomic_load(&ring->head);
    if (tail == head || !gpu)
        return 0;
    CUcontext ctx = atomic_load(&context->ctx);
    if (ctx && ctx != current && dilu_real.cuCtxSetCurrent &&
        dilu_real.cuCtxSetCurrent(ctx) == CUDA_SUCCESS)
        current = ctx;
    struct dilu_control control;
    dilu_read_control(&control);
    while (tail != head) {
        struct dilu_record *record = &ring->records[tail % DILU_RING_SIZE];
        if (atomic_load_explicit(&record->published, memory_order_acquire) != tail + 1)
            break;  /* its thread is still launching */
        uint64_t actual = record->estimate_ns;
        if (record->outcome == OUTCOME_TIMED || record->outcome == OUTCOME_MARKER) {
            CUresult done = dilu_real.cuEventQuery(record->end);
            if (done == CUDA_ERROR_NOT_READY)
                break;
            float ms = 0;
            if (record->outcome == OUTCOME_TIMED && done == CUDA_SUCCESS &&
                dilu_real.cuEventElapsedTime(&ms, record->start, record->end) == CUDA_SUCCESS &&
                ms >= 0) {
                actual = (uint64_t)((double)ms * 1e6);
                learn_estimate(record->key, actual);
            }
        }
        if (record->outcome != OUTCOME_CANCELLED)
            dilu_settle(gpu, &control.quota, record->estimate_ns, actual);
        if (record->carried_ns)
            dilu_settle(gpu, &control.quota, record->carried_ns, record->carried_ns);
        tail++;
        atomic_store_explicit(&ring->tail, tail, memory_order_release);
    }
    return tail != head;
}

/* Releases untimed work of threads that stopped launching; 1 while any is left. */
static int release_stale(void) {
    uint64_t now = dilu_now_ns();
    int left = 0;
    for (int i = 0; i < DILU_MAX_THREADS; i++) {
        struct dilu_untimed *slot = &dilu_untimed_slots[i];
        int state = atomic_load(&slot->state);
        if (state == UNTIMED_FREE)
            continue;
        uint64_t ns = atomic_load(&slot->ns);
        if (ns == 0) {
            if (state == UNTIMED_DEAD)
                atomic_compare_exchange_strong(&slot->state, &state, UNTIMED_FREE);
            continue;
        }
        if (ns != slot->seen_ns) {
            slot->seen_ns = ns;
            slot->seen_since_ns = now;
        }
        if (now - slot->seen_since_ns < STALE_NS) {
            left = 1;
            continue;
        }
        ns = atomic_exchange(&slot->ns, 0);
        slot->seen_ns = 0;
        struct dilu_gpu *gpu = atomic_load(&slot->gpu);
        if (ns && gpu) {
            struct dilu_control control;
            dilu_read_control(&control);
            dilu_settle(gpu, &control.quota, ns, ns);
        }
    }
    return left;
}

static int any_pending(void) {
    for (int i = 0; i < DILU_MAX_CONTEXTS; i++)
        if (atomic_load(&dilu_contexts[i].ring.head) != atomic_load(&dilu_contexts[i].ring.tail))
            return 1;
    return 0;
}

static void stop_reaper(void) { atomic_store(&exiting, 1); }

static void *reaper_main(void *unused) {
    (void)unused;
    /* The completion thread queries events while the application may be capturing a
     * graph in global mode, which forbids such calls from other threads unless they opt
     * out: without this, the first query during a capture would invalidate it. */
    CUstreamCaptureMode relaxed = CU_STREAM_CAPTURE_MODE_RELAXED;
    if (dilu_real.cuThreadExchangeStreamCaptureMode)
        dilu_real.cuThreadExchangeStreamCaptureMode(&relaxed);
    uint64_t last_busy = dilu_now_ns();
    while (!atomic_load(&exiting)) {
        int pending = 0;
        for (int i = 0; i < DILU_MAX_CONTEXTS; i++)
            pending |= retire(&dilu_contexts[i]);
        int stale = release_stale();
        uint64_t now = dilu_now_ns();
        if (pending)
            last_busy = now;
        if (pending || now - last_busy < LINGER_NS) {
            dilu_nap(POLL_NS);
            continue;
        }
        if (stale) {
            dilu_nap(STALE_NS / 4);
            continue;
        }
        /* Sleep until a launch publishes; re-check after announcing the sleep so that a
         * launch published in between is not missed. */
        atomic_store(&reaper_idle, 1);
        if (any_pending()) {
            atomic_store(&reaper_idle, 0);
            continue;
        }
        struct timespec timeout = {0, (long)IDLE_TIMEOUT_NS};
        futex(&reaper_idle, FUTEX_WAIT_PRIVATE, 1, &timeout);
        atomic_store(&reaper_idle, 0);
        last_busy = dilu_now_ns();
    }
    return NULL;  /* the process is exiting: the driver may be tearing down */
}

void dilu_start_completions(void) {
    if (atomic_load_explicit(&reaper_running, memory_order_acquire))
        return;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&reaper_running, &expected, 1))
        return;
    pthread_once(&exit_hook_once, install_exit_hook);
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attr, reaper_main, NULL) != 0) {
        fprintf(stderr, "dilu-shim: cannot start the completion thread\n");
        atomic_store(&reaper_running, 0);
    }
    pthread_attr_destroy(&attr);
}

void dilu_wake_completions(void) {
    /* Sequentially consistent, pairing with the reaper's store-then-check before sleeping:
     * a weaker load could miss its announcement (store buffering) and leave it asleep. */
    if (atomic_load(&reaper_idle) && atomic_exchange(&reaper_idle, 0))
        futex(&reaper_idle, FUTEX_WAKE_PRIVATE, 1, NULL);
}

void dilu_completions_after_fork(void) {
    /* The completion thread did not survive fork(), and the parent's pending launches
     * are not the child's. */
    atomic_store(&reaper_running, 0);
    atomic_store(&reaper_idle, 0);
    for (int i = 0; i < DILU_MAX_CONTEXTS; i++) {
        struct dilu_ring *ring = &dilu_contexts[i].ring;
        atomic_store(&ring->head, 0);
        atomic_store(&ring->tail, 0);
        for (int r = 0; r < DILU_RING_SIZE; r++) {
            atomic_store(&ring->records[r].published, 0);
            ring->records[r].start = ring->records[r].end = NULL;
        }
    }
}
