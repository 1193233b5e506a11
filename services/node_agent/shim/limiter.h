/* The GPU-time token bucket of one instance on one GPU: the pure core of the shim.
 *
 * No I/O, no clock of its own (callers pass `now_ns`), no locks: admission and completion
 * are compare-and-swap loops on two words, so any number of launching threads and the
 * completion thread can share one limiter. Costs are nanoseconds of GPU time.
 *
 * The bucket is kept as a "theoretical arrival time" (tat): credit at `now` is
 * burst - share * (tat - now), capped at the burst. Admitting a launch of cost c moves
 * tat forward by c / share of wall time, so a saturating caller gets exactly `share` of
 * GPU time. A launch larger than the burst waits for a full bucket and then goes alone.
 */
#ifndef DILU_LIMITER_H
#define DILU_LIMITER_H

#include <stdint.h>

#define DILU_PPM 1000000u
/* Costs are clamped here so that cost * PPM never overflows 64 bits. */
#define DILU_MAX_COST_NS 60000000000ull
/* How long a caller refused for the in-flight cap (or a pause) should nap before retrying:
 * completions arrive asynchronously, so there is no exact time to wait for. */
#define DILU_INFLIGHT_POLL_NS 50000ull
#define DILU_PAUSED_POLL_NS 1000000ull

struct dilu_quota {
    uint32_t share_ppm;        /* effective share; >= DILU_PPM means the whole GPU */
    uint32_t paused;           /* nonzero: admit nothing */
    uint64_t burst_ns;         /* most credit that may build up */
    uint64_t inflight_cap_ns;  /* most estimated GPU time admitted but not completed */
};

struct dilu_limiter {
    _Atomic uint64_t tat_ns;
    _Atomic int64_t inflight_ns;
    _Atomic uint64_t priority;  /* the waiter everyone else yields to; 0: none */
};

/* A caller refused for this long asks for priority: otherwise a stream of small launches,
 * each fitting first, could starve a large one for seconds. */
#define DILU_STARVATION_NS 10000000ull

/* 0 when the launch is admitted (its cost is debited and counted in flight); otherwise
 * the nanoseconds worth waiting before trying again. Never blocks.
 *
 * `waiter` is 0 for an ordinary attempt. A caller that has waited DILU_STARVATION_NS
 * passes a token unique to it (nonzero) on every further attempt: the first such caller
 * gets priority, and until it is admitted every other caller is refused. */
uint64_t dilu_limiter_admit(struct dilu_limiter *limiter, const struct dilu_quota *quota,
                            uint64_t now_ns, uint64_t cost_ns, uint64_t waiter);

/* The admitted work finished: it is no longer in flight, and the bucket is corrected by
 * what it really cost. */
void dilu_limiter_complete(struct dilu_limiter *limiter, const struct dilu_quota *quota,
                           uint64_t estimate_ns, uint64_t actual_ns);

/* The admitted launch never reached the GPU (the driver refused it): refund it. */
void dilu_limiter_cancel(struct dilu_limiter *limiter, const struct dilu_quota *quota,
                         uint64_t estimate_ns);

/* Forget everything (after fork(): the parent's work is not the child's). */
void dilu_limiter_reset(struct dilu_limiter *limiter);

#endif
