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
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "shim.h"

/* An unknown kernel is assumed to cost this much until its first completion is timed:
 * generous, so that a burst of new long kernels cannot overrun the in-flight cap. */
#define DEFAULT_ESTIMATE_NS 1000000ull
/* Longest nap while waiting for credit: the control page is re-read after each one, so a
 * new share takes hold within this. */
#define MAX_NAP_NS 200000ull
#define SAMPLE_EVERY 16

enum mode { MODE_PASS, MODE_UNTIMED, MODE_TIMED };

struct admission {
    enum mode mode;
    struct dilu_gpu *gpu;
    struct dilu_record *record;  /* NULL when the ring was full */
    int timed;                   /* the start event is on the stream */
    uint64_t ticket;
    uint64_t estimate_ns;
    CUstream stream;             /* where the markers go: the launch's own stream */
};

struct dilu_untimed dilu_untimed_slots[DILU_MAX_THREADS];
static pthread_key_t thread_exit_key;
static pthread_once_t thread_exit_once = PTHREAD_ONCE_INIT;
static _Atomic unsigned fork_epoch;

static __thread struct {
    struct dilu_untimed *slot;
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

void dilu_launch_after_fork(void) {
    dilu_completions_after_fork();
    atomic_fetch_add(&fork_epoch, 1);
    if (self.slot)
        pthread_setspecific(thread_exit_key, NULL);  /* the parent's slot is not ours */
    self.slot = NULL;
    for (int i = 0; i < DILU_MAX_THREADS; i++) {
        atomic_store(&dilu_untimed_slots[i].ns, 0);
        atomic_store(&dilu_untimed_slots[i].state, UNTIMED_FREE);
    }
}

/* ---- launching threads ---- */

static void thread_exit(void *slot) {
    /* Its untimed work is released by the completion thread once it is stale. Launches
     * from later destructors of this thread must not use the slot again. */
    atomic_store(&((struct dilu_untimed *)slot)->state, UNTIMED_DEAD);
    self.slot = NULL;
    self.epoch = ~0u;
}

static void make_thread_exit_key(void) { pthread_key_create(&thread_exit_key, thread_exit); }

/* This thread's untimed slot, or NULL when all are taken (then every launch is timed). */
static struct dilu_untimed *own_slot(struct dilu_gpu *gpu) {
    unsigned epoch = atomic_load_explicit(&fork_epoch, memory_order_relaxed);
    if (self.slot && self.epoch == epoch)
        return self.slot;
    pthread_once(&thread_exit_once, make_thread_exit_key);
    self.slot = NULL;
    self.epoch = epoch;
    self.stream = NULL;
    self.context = NULL;
    for (int i = 0; i < DILU_MAX_THREADS && !self.slot; i++) {
        int state = UNTIMED_FREE;
        if (atomic_compare_exchange_strong(&dilu_untimed_slots[i].state, &state, UNTIMED_LIVE)) {
            self.slot = &dilu_untimed_slots[i];
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
        dilu_nap(wait < MAX_NAP_NS ? wait : MAX_NAP_NS);
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
    dilu_wake_completions();
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
            dilu_settle(gpu, &control->quota, carried, carried);
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
    uint64_t known = dilu_known_estimate(key);
    uint64_t estimate = known ? known : DEFAULT_ESTIMATE_NS;
    if (!known)
        count(UNKNOWN);
    struct dilu_untimed *slot = own_slot(gpu);
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
        dilu_start_completions();
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
    dilu_settle(admission->gpu, &control.quota, admission->estimate_ns, admission->estimate_ns);
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
