#include "limiter.h"

#include <stdatomic.h>

static uint64_t clamp_cost(uint64_t cost_ns) {
    return cost_ns > DILU_MAX_COST_NS ? DILU_MAX_COST_NS : cost_ns;
}

static int unlimited(const struct dilu_quota *quota) { return quota->share_ppm >= DILU_PPM; }

/* Wall time over which `share` earns `gpu_ns` of GPU time. */
static uint64_t wall_ns(uint64_t gpu_ns, uint32_t share_ppm) {
    return clamp_cost(gpu_ns) * DILU_PPM / share_ppm;
}

static int reserve_inflight(struct dilu_limiter *limiter, const struct dilu_quota *quota,
                            uint64_t cost_ns) {
    int64_t inflight = atomic_load(&limiter->inflight_ns);
    do {
        /* Work bigger than the cap is admitted alone, or it could never run. */
        if (inflight > 0 && (uint64_t)inflight + cost_ns > quota->inflight_cap_ns)
            return 0;
    } while (!atomic_compare_exchange_weak(&limiter->inflight_ns, &inflight,
                                           inflight + (int64_t)cost_ns));
    return 1;
}

/* 1 when the caller may try now: nobody has priority, or it is the caller. */
static int may_try(struct dilu_limiter *limiter, uint64_t waiter) {
    uint64_t holder = atomic_load(&limiter->priority);
    if (holder == 0 && waiter != 0)
        atomic_compare_exchange_strong(&limiter->priority, &holder, waiter);
    return holder == 0 || holder == waiter;
}

static uint64_t admitted(struct dilu_limiter *limiter, uint64_t waiter) {
    uint64_t holder = waiter;
    if (waiter)
        atomic_compare_exchange_strong(&limiter->priority, &holder, 0);
    return 0;
}

uint64_t dilu_limiter_admit(struct dilu_limiter *limiter, const struct dilu_quota *quota,
                            uint64_t now_ns, uint64_t cost_ns, uint64_t waiter) {
    if (quota->paused || quota->share_ppm == 0)
        return DILU_PAUSED_POLL_NS;
    if (!may_try(limiter, waiter))
        return DILU_INFLIGHT_POLL_NS;
    cost_ns = clamp_cost(cost_ns);
    if (!reserve_inflight(limiter, quota, cost_ns))
        return DILU_INFLIGHT_POLL_NS;
    /* The whole GPU: nothing to ration, but the in-flight cap still bounds queued work so
     * that a later cut takes hold within one period. */
    if (unlimited(quota))
        return admitted(limiter, waiter);
    uint64_t increment = wall_ns(cost_ns, quota->share_ppm);
    uint64_t tolerance = wall_ns(quota->burst_ns ? quota->burst_ns : 1, quota->share_ppm);
    if (tolerance < increment)
        tolerance = increment;
    uint64_t tat = atomic_load(&limiter->tat_ns);
    for (;;) {
        uint64_t base = tat > now_ns ? tat : now_ns;
        uint64_t due = base + increment;
        if (due - now_ns > tolerance) {
            atomic_fetch_sub(&limiter->inflight_ns, (int64_t)cost_ns);
            return due - now_ns - tolerance;
        }
        if (atomic_compare_exchange_weak(&limiter->tat_ns, &tat, due))
            return admitted(limiter, waiter);
    }
}

static void shift_tat(struct dilu_limiter *limiter, int64_t delta_ns) {
    uint64_t tat = atomic_load(&limiter->tat_ns);
    uint64_t moved;
    do {
        if (delta_ns < 0 && (uint64_t)(-delta_ns) > tat)
            moved = 0;
        else
            moved = tat + (uint64_t)delta_ns;
    } while (!atomic_compare_exchange_weak(&limiter->tat_ns, &tat, moved));
}

static int64_t signed_wall_ns(int64_t gpu_ns, uint32_t share_ppm) {
    return gpu_ns < 0 ? -(int64_t)wall_ns((uint64_t)(-gpu_ns), share_ppm)
                      : (int64_t)wall_ns((uint64_t)gpu_ns, share_ppm);
}

void dilu_limiter_complete(struct dilu_limiter *limiter, const struct dilu_quota *quota,
                           uint64_t estimate_ns, uint64_t actual_ns) {
    estimate_ns = clamp_cost(estimate_ns);
    actual_ns = clamp_cost(actual_ns);
    atomic_fetch_sub(&limiter->inflight_ns, (int64_t)estimate_ns);
    if (unlimited(quota) || quota->share_ppm == 0 || actual_ns == estimate_ns)
        return;
    shift_tat(limiter, signed_wall_ns((int64_t)actual_ns - (int64_t)estimate_ns,
                                      quota->share_ppm));
}

void dilu_limiter_cancel(struct dilu_limiter *limiter, const struct dilu_quota *quota,
                         uint64_t estimate_ns) {
    dilu_limiter_complete(limiter, quota, estimate_ns, 0);
}

void dilu_limiter_reset(struct dilu_limiter *limiter) {
    atomic_store(&limiter->tat_ns, 0);
    atomic_store(&limiter->inflight_ns, 0);
    atomic_store(&limiter->priority, 0);
}
