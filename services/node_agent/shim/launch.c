/* Every kernel and graph launch passes through here: wait for credit, launch, and time the
 * work with a pair of events so that its real GPU time is charged when it completes.
 *
 * Once a thread has seen its context, a launch takes no lock and allocates nothing (after a
 * ring slot's events exist): admission is two compare-and-swaps (limiter.c), a ring ticket
 * is one more, and a waiting thread naps without holding anything. A single completion
 * thread retires the rings in order and returns credit.
 *
 * Fast path. At a share of the whole GPU there is nothing to ration, only queued work to
 * bound, so most launches go untimed: their estimates are admitted against the in-flight
 * cap and added to the thread's untimed total, and every SAMPLE_EVERY-th launch (or one
 * that would take the total past a quarter of the cap, or one of a kernel not timed yet)
 * is timed and carries that total with it. Stream order means that when it completes, so
 * has everything carried. The cost is a few atomics per launch instead of two events. */
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

/* An unknown kernel is assumed to cost this much until its first completion is timed:
 * generous, so that a burst of new long kernels cannot overrun the in-flight cap. */
#define DEFAULT_ESTIMATE_NS 1000000ull
/* Longest nap while waiting for credit: the control page is re-read after each one, so a
 * new share takes hold within this. */
#define MAX_NAP_NS 200000ull
#define ESTIMATE_SLOTS 4096
#define ESTIMATE_PROBES 8
#define SAMPLE_EVERY 16
#define MAX_THREADS 256
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

enum dilu_outcome { OUTCOME_TIMED, OUTCOME_MARKER, OUTCOME_ESTIMATED, OUTCOME_CANCELLED };
enum mode { MODE_PASS, MODE_UNTIMED, MODE_TIMED };

/* Untimed work of one launching thread, visible to the completion thread. */
struct untimed {
    _Atomic int state;  /* SLOT_FREE, SLOT_LIVE, or SLOT_DEAD (thread gone, work pending) */
    _Atomic uint64_t ns;
    _Atomic(struct dilu_gpu *) gpu;
    /* The completion thread's own view: the total it last saw, and since when. A total
     * that has not moved for STALE_NS belongs to a thread that stopped launching; this
     * keeps the clock off the launch path. */
    uint64_t seen_ns;
    uint64_t seen_since_ns;
};
enum { SLOT_FREE, SLOT_LIVE, SLOT_DEAD };

struct admission {
    enum mode mode;
    struct dilu_gpu *gpu;
    struct dilu_record *record;  /* NULL when the ring was full */
    int timed;                   /* the start event is on the stream */
    uint64_t ticket;
    uint64_t estimate_ns;
    CUstream stream;             /* where the markers go: the launch's own stream */
};

/* Running average GPU time per kernel (CUfunction) or graph (CUgraphExec). */
static struct {
    _Atomic uintptr_t key;
    _Atomic uint64_t ns;
} estimates[ESTIMATE_SLOTS];

static struct untimed untimed_slots[MAX_THREADS];
static pthread_key_t thread_exit_key;
static pthread_once_t thread_exit_once = PTHREAD_ONCE_INIT;
static _Atomic unsigned fork_epoch;

static __thread struct {
    struct untimed *slot;
    unsigned epoch;
    unsigned count;
    CUstream stream;
    struct dilu_context *context;
} self;


/* How launches went, for diagnostics (dilu_shim_counters); only slow paths count here,
 * untimed launches are the stats page's launches minus the timed ones. */
enum counter { TIMED, MARKERS, WAITS, STREAM_SWITCHES, PASSED, UNKNOWN, COUNTERS };
static _Atomic unsigned long long counters[COUNTERS];

static void count(enum counter which) {
    atomic_fetch_add_explicit(&counters[which], 1, memory_order_relaxed);
}

static _Atomic int reaper_running;
static _Atomic int reaper_idle;
static _Atomic int exiting;
static pthread_once_t exit_hook_once = PTHREAD_ONCE_INIT;

static void stop_reaper(void);
static void install_exit_hook(void) { atexit(stop_reaper); }

static size_t estimate_slot(uintptr_t key) {
    return (size_t)((key >> 4) * 0x9E3779B97F4A7C15ull >> 52) % ESTIMATE_SLOTS;
}

/* The kernel's estimate, or 0 when it has never been timed. */
static uint64_t known_estimate(uintptr_t key) {
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

static void nap(uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                          .tv_nsec = (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

static long futex(_Atomic int *word, int op, int value, const struct timespec *timeout) {
    return syscall(SYS_futex, (int *)word, op, value, timeout, NULL, 0);
}

/* Work that left the GPU (or is taken to have): out of flight, into the busy counter. */
static void settle(struct dilu_gpu *gpu, const struct dilu_quota *quota, uint64_t estimate_ns,
                   uint64_t actual_ns) {
    dilu_limiter_complete(&gpu->limiter, quota, estimate_ns, actual_ns);
    dilu_stats_add(dilu_stats(), DILU_STATS_BUSY_NS, actual_ns);
}

/* ---- completion thread ---- */

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
            settle(gpu, &control.quota, record->estimate_ns, actual);
        if (record->carried_ns)
            settle(gpu, &control.quota, record->carried_ns, record->carried_ns);
        tail++;
        atomic_store_explicit(&ring->tail, tail, memory_order_release);
    }
    return tail != head;
}

/* Releases untimed work of threads that stopped launching; 1 while any is left. */
static int release_stale(void) {
    uint64_t now = dilu_now_ns();
    int left = 0;
    for (int i = 0; i < MAX_THREADS; i++) {
        struct untimed *slot = &untimed_slots[i];
        int state = atomic_load(&slot->state);
        if (state == SLOT_FREE)
            continue;
        uint64_t ns = atomic_load(&slot->ns);
        if (ns == 0) {
            if (state == SLOT_DEAD)
                atomic_compare_exchange_strong(&slot->state, &state, SLOT_FREE);
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
            settle(gpu, &control.quota, ns, ns);
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
            nap(POLL_NS);
            continue;
        }
        if (stale) {
            nap(STALE_NS / 4);
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

static void ensure_reaper(void) {
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

static void wake_reaper(void) {
    /* Sequentially consistent, pairing with the reaper's store-then-check before sleeping:
     * a weaker load could miss its announcement (store buffering) and leave it asleep. */
    if (atomic_load(&reaper_idle) && atomic_exchange(&reaper_idle, 0))
        futex(&reaper_idle, FUTEX_WAKE_PRIVATE, 1, NULL);
}

void dilu_launch_after_fork(void) {
    /* The completion thread did not survive fork(), and the parent's pending launches
     * are not the child's. */
    atomic_store(&reaper_running, 0);
    atomic_store(&reaper_idle, 0);
    atomic_fetch_add(&fork_epoch, 1);
    if (self.slot)
        pthread_setspecific(thread_exit_key, NULL);  /* the parent's slot is not ours */
    self.slot = NULL;
    for (int i = 0; i < MAX_THREADS; i++) {
        atomic_store(&untimed_slots[i].ns, 0);
        atomic_store(&untimed_slots[i].state, SLOT_FREE);
    }
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

/* ---- launching threads ---- */

static void thread_exit(void *slot) {
    /* Its untimed work is released by the completion thread once it is stale. Launches
     * from later destructors of this thread must not use the slot again. */
    atomic_store(&((struct untimed *)slot)->state, SLOT_DEAD);
    self.slot = NULL;
    self.epoch = ~0u;
}

static void make_thread_exit_key(void) { pthread_key_create(&thread_exit_key, thread_exit); }

/* This thread's untimed slot, or NULL when all are taken (then every launch is timed). */
static struct untimed *own_slot(struct dilu_gpu *gpu) {
    unsigned epoch = atomic_load_explicit(&fork_epoch, memory_order_relaxed);
    if (self.slot && self.epoch == epoch)
        return self.slot;
    pthread_once(&thread_exit_once, make_thread_exit_key);
    self.slot = NULL;
    self.epoch = epoch;
    self.stream = NULL;
    self.context = NULL;
    for (int i = 0; i < MAX_THREADS && !self.slot; i++) {
        int state = SLOT_FREE;
        if (atomic_compare_exchange_strong(&untimed_slots[i].state, &state, SLOT_LIVE)) {
            self.slot = &untimed_slots[i];
            atomic_store(&self.slot->gpu, gpu);
            pthread_setspecific(thread_exit_key, self.slot);
        }
    }
    return self.slot;
}

static int capturing(CUstream stream) {
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
    if (!dilu_real.cuStreamIsCapturing)
        return 0;
    /* Any error (e.g. the legacy stream during another stream's global capture) counts as
     * capturing: then the only safe thing is to add nothing to the stream. */
    return dilu_real.cuStreamIsCapturing(stream, &status) != CUDA_SUCCESS ||
           status != CU_STREAM_CAPTURE_STATUS_NONE;
}

static void wait_for_credit(struct dilu_gpu *gpu, struct dilu_control *control,
                            uint64_t estimate_ns) {
    static __thread char token;  /* its address names this thread to the limiter */
    uint64_t waited = 0, waiter = 0;
    for (;;) {
        /* The whole GPU needs no clock (only the in-flight cap applies): skip reading it. */
        uint64_t now = control->quota.share_ppm >= DILU_PPM && !waited ? 0 : dilu_now_ns();
        uint64_t wait = dilu_limiter_admit(&gpu->limiter, &control->quota, now, estimate_ns,
                                           waiter);
        if (!wait)
            return;
        if (!now)
            now = dilu_now_ns();
        count(WAITS);
        nap(wait < MAX_NAP_NS ? wait : MAX_NAP_NS);
        uint64_t after = dilu_now_ns();
        dilu_stats_add(dilu_stats(), DILU_STATS_THROTTLED_NS, after - now);
        waited += after - now;
        if (waited >= DILU_STARVATION_NS)
            waiter = (uint64_t)(uintptr_t)&token;
        dilu_read_control(control);
    }
}

static struct dilu_record *claim_record(struct dilu_ring *ring, uint64_t *ticket) {
    uint64_t head = atomic_load(&ring->head);
    do {
        if (head - atomic_load(&ring->tail) >= DILU_RING_SIZE)
            return NULL;
    } while (!atomic_compare_exchange_weak(&ring->head, &head, head + 1));
    *ticket = head;
    struct dilu_record *record = &ring->records[head % DILU_RING_SIZE];
    /* The slot's events are created once, in the ring's context, and reused after. */
    if (!record->start && dilu_real.cuEventCreate(&record->start, CU_EVENT_DEFAULT) != CUDA_SUCCESS)
        record->start = NULL;
    if (!record->end && dilu_real.cuEventCreate(&record->end, CU_EVENT_DEFAULT) != CUDA_SUCCESS)
        record->end = NULL;
    record->carried_ns = 0;
    return record;
}

static void publish(struct dilu_record *record, uint64_t ticket, enum dilu_outcome outcome) {
    record->outcome = outcome;
    atomic_store_explicit(&record->published, ticket + 1, memory_order_release);
    wake_reaper();
}

static uint64_t take_untimed(void) {
    return self.slot ? atomic_exchange(&self.slot->ns, 0) : 0;
}

/* The thread moves to another stream: close its untimed work with a marker on the old
 * one (same context), or count it done when that is not possible. The work was admitted
 * on the old context's GPU, so that is where it leaves. */
static void close_untimed(struct dilu_context *context, const struct dilu_control *control) {
    uint64_t carried = take_untimed();
    if (!carried || !self.context)
        return;
    struct dilu_gpu *gpu = atomic_load(&self.context->gpu);
    uint64_t ticket;
    struct dilu_record *record = NULL;
    if (self.context == context && !capturing(self.stream))
        record = claim_record(&context->ring, &ticket);
    if (!record) {
        if (gpu)
            settle(gpu, &control->quota, carried, carried);
        return;
    }
    record->estimate_ns = 0;
    record->carried_ns = carried;
    count(MARKERS);
    int marked = record->end && dilu_real.cuEventRecord(record->end, self.stream) == CUDA_SUCCESS;
    publish(record, ticket, marked ? OUTCOME_MARKER : OUTCOME_ESTIMATED);
}

static void admit(struct admission *admission, uintptr_t key, CUstream stream, int ptsz) {
    admission->mode = MODE_PASS;
    dilu_init();
    if (!dilu_enforcing())
        return;
    struct dilu_context *context = dilu_current_context();
    if (!context)
        return;
    struct dilu_gpu *gpu = atomic_load(&context->gpu);
    /* The per-thread default stream must be named explicitly for the markers. */
    CUstream target = (ptsz && stream == NULL) ? CU_STREAM_PER_THREAD : stream;
    if (capturing(target)) {
        /* Work captured into a graph runs, and is charged, when the graph is launched: no
         * wait, no events, no count. The thread's untimed total is real work from before
         * the capture: it stays for the next timed launch (or the stale release). */
        count(PASSED);
        return;
    }
    struct dilu_control control;
    dilu_read_control(&control);
    uint64_t known = known_estimate(key);
    uint64_t estimate = known ? known : DEFAULT_ESTIMATE_NS;
    if (!known)
        count(UNKNOWN);
    struct untimed *slot = own_slot(gpu);
    if (slot && (self.stream != target || self.context != context)) {
        count(STREAM_SWITCHES);
        close_untimed(context, &control);
        self.stream = target;
        self.context = context;
        atomic_store(&slot->gpu, gpu);  /* after the old total left: the two stay in step */
    }
    int whole_gpu = control.quota.share_ppm >= DILU_PPM && !control.quota.paused;
    if (slot && whole_gpu && known && ++self.count % SAMPLE_EVERY != 0 &&
        atomic_load_explicit(&slot->ns, memory_order_relaxed) + estimate <
            control.quota.inflight_cap_ns / 4) {
        wait_for_credit(gpu, &control, estimate);
        admission->mode = MODE_UNTIMED;
    } else {
        wait_for_credit(gpu, &control, estimate);
        ensure_reaper();
        count(TIMED);
        admission->mode = MODE_TIMED;
        admission->record = claim_record(&context->ring, &admission->ticket);
    }
    admission->gpu = gpu;
    admission->estimate_ns = estimate;
    admission->stream = target;
    struct dilu_record *record = admission->mode == MODE_TIMED ? admission->record : NULL;
    admission->timed = 0;
    if (record) {
        record->estimate_ns = estimate;
        record->key = key;
        /* Without a start event the record is still published once, by finish(), so the
         * launch is settled exactly once either way. */
        admission->timed = record->start && record->end &&
                           dilu_real.cuEventRecord(record->start, target) == CUDA_SUCCESS;
    }
}

static void finish(struct admission *admission, CUresult launched) {
    if (admission->mode == MODE_PASS)
        return;
    struct dilu_record *record = admission->mode == MODE_TIMED ? admission->record : NULL;
    if (launched != CUDA_SUCCESS) {
        struct dilu_control control;
        dilu_read_control(&control);
        dilu_limiter_cancel(&admission->gpu->limiter, &control.quota, admission->estimate_ns);
        if (record)
            publish(record, admission->ticket, OUTCOME_CANCELLED);
        return;
    }
    dilu_stats_add(dilu_stats(), DILU_STATS_LAUNCHES, 1);
    if (admission->mode == MODE_UNTIMED) {
        atomic_fetch_add_explicit(&self.slot->ns, admission->estimate_ns, memory_order_relaxed);
        return;
    }
    if (record) {
        record->carried_ns = take_untimed();
        int timed = admission->timed &&
                    dilu_real.cuEventRecord(record->end, admission->stream) == CUDA_SUCCESS;
        publish(record, admission->ticket, timed ? OUTCOME_TIMED : OUTCOME_ESTIMATED);
        return;
    }
    /* No slot to time it: charge the estimate now. The ring holds DILU_RING_SIZE
     * launches: a full 5 ms cap of ~1 us kernels. */
    struct dilu_control control;
    dilu_read_control(&control);
    settle(admission->gpu, &control.quota, admission->estimate_ns, admission->estimate_ns);
}

DILU_EXPORT int dilu_shim_counters(unsigned long long *out, int n) {
    for (int i = 0; i < n && i < COUNTERS; i++)
        out[i] = atomic_load(&counters[i]);
    return COUNTERS;
}

/* ---- the hooks ---- */

#define LAUNCH_HOOK(name, params, key, stream, ptsz, args)                   \
    DILU_EXPORT CUresult name params {                                      \
        struct admission admission;                                         \
        admit(&admission, (uintptr_t)(key), (stream), (ptsz));              \
        CUresult launched = dilu_real.name ? dilu_real.name args            \
                                           : CUDA_ERROR_NOT_SUPPORTED;      \
        finish(&admission, launched);                                       \
        return launched;                                                    \
    }

#define KERNEL_PARAMS                                                                    \
    (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,   \
     unsigned int by, unsigned int bz, unsigned int shared, CUstream stream, void **params, \
     void **extra)
#define KERNEL_ARGS (f, gx, gy, gz, bx, by, bz, shared, stream, params, extra)
#define COOPERATIVE_PARAMS                                                               \
    (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,   \
     unsigned int by, unsigned int bz, unsigned int shared, CUstream stream, void **params)
#define COOPERATIVE_ARGS (f, gx, gy, gz, bx, by, bz, shared, stream, params)
#define EX_PARAMS (const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
#define EX_ARGS (config, f, params, extra)
#define EX_STREAM (config ? config->hStream : NULL)

LAUNCH_HOOK(cuLaunchKernel, KERNEL_PARAMS, f, stream, 0, KERNEL_ARGS)
LAUNCH_HOOK(cuLaunchKernel_ptsz, KERNEL_PARAMS, f, stream, 1, KERNEL_ARGS)
LAUNCH_HOOK(cuLaunchKernelEx, EX_PARAMS, f, EX_STREAM, 0, EX_ARGS)
LAUNCH_HOOK(cuLaunchKernelEx_ptsz, EX_PARAMS, f, EX_STREAM, 1, EX_ARGS)
LAUNCH_HOOK(cuLaunchCooperativeKernel, COOPERATIVE_PARAMS, f, stream, 0, COOPERATIVE_ARGS)
LAUNCH_HOOK(cuLaunchCooperativeKernel_ptsz, COOPERATIVE_PARAMS, f, stream, 1, COOPERATIVE_ARGS)
LAUNCH_HOOK(cuGraphLaunch, (CUgraphExec graph, CUstream stream), graph, stream, 0, (graph, stream))
LAUNCH_HOOK(cuGraphLaunch_ptsz, (CUgraphExec graph, CUstream stream), graph, stream, 1,
            (graph, stream))
