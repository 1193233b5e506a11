/* The limiter core in plain C, on an injected clock: no GPU, no driver, no threads except
 * in the last case. Prints "FAIL ..." and exits 1 on the first broken property. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "limiter.h"

/* Plain C: no driver, fake or real. */
#define DRIVER_CHECK_NO_CUDA
#include "driver_check.h"

static struct dilu_quota quota(double share, uint64_t burst_ns, uint64_t cap_ns) {
    struct dilu_quota q = {(uint32_t)(share * DILU_PPM), 0, burst_ns, cap_ns};
    return q;
}

/* A serial GPU: admitted work runs back to back and completes in admission order. */
#define QUEUE 4096
struct gpu {
    uint64_t free_at;
    uint64_t end[QUEUE], estimate[QUEUE], actual[QUEUE];
    size_t head, tail;
    uint64_t busy_ns;  /* actual GPU time completed */
};

static void run_until(struct gpu *gpu, struct dilu_limiter *l, const struct dilu_quota *q,
                      uint64_t now) {
    while (gpu->tail != gpu->head && gpu->end[gpu->tail % QUEUE] <= now) {
        size_t i = gpu->tail++ % QUEUE;
        dilu_limiter_complete(l, q, gpu->estimate[i], gpu->actual[i]);
        gpu->busy_ns += gpu->actual[i];
    }
}

static void submit(struct gpu *gpu, uint64_t now, uint64_t estimate, uint64_t actual) {
    size_t i = gpu->head++ % QUEUE;
    uint64_t start = gpu->free_at > now ? gpu->free_at : now;
    gpu->free_at = start + actual;
    gpu->end[i] = gpu->free_at;
    gpu->estimate[i] = estimate;
    gpu->actual[i] = actual;
}

/* A caller that launches as fast as it is let, napping at most `nap` while refused.
 * Returns the GPU time that completed within [from, to). */
static uint64_t saturate(struct dilu_limiter *l, struct gpu *gpu, struct dilu_quota *q,
                         uint64_t *now, uint64_t to, uint64_t estimate, uint64_t actual) {
    uint64_t before = gpu->busy_ns;
    while (*now < to) {
        run_until(gpu, l, q, *now);
        uint64_t wait = dilu_limiter_admit(l, q, *now, estimate, 0);
        if (wait == 0) {
            submit(gpu, *now, estimate, actual);
            *now += 2 * US;  /* launch overhead */
        } else {
            *now += wait < 200 * US ? wait : 200 * US;
        }
    }
    run_until(gpu, l, q, to);
    return gpu->busy_ns - before;
}

static void test_saturating_caller_gets_its_share(void) {
    const double shares[] = {0.1, 0.25, 0.5, 0.75, 1.0};
    for (size_t i = 0; i < sizeof shares / sizeof shares[0]; i++) {
        struct dilu_limiter l = {0};
        struct gpu gpu = {0};
        struct dilu_quota q = quota(shares[i], (uint64_t)(shares[i] * 10 * MS), 10 * MS);
        uint64_t now = 1000 * MS;
        saturate(&l, &gpu, &q, &now, 1100 * MS, 100 * US, 100 * US);  /* warm up */
        uint64_t busy = saturate(&l, &gpu, &q, &now, 2100 * MS, 100 * US, 100 * US);
        double achieved = (double)busy / (1000.0 * MS);
        CHECK(achieved > shares[i] - 0.01 && achieved < shares[i] + 0.01,
              "share %.2f achieved %.4f", shares[i], achieved);
    }
}

static void test_wrong_estimates_are_corrected_by_actual_cost(void) {
    /* Estimates 10x too high and 10x too low: the bucket is settled by actual GPU time. */
    const uint64_t actuals[] = {100 * US, 10 * US};
    const uint64_t estimates[] = {1 * MS, 100 * US};
    for (int i = 0; i < 2; i++) {
        struct dilu_limiter l = {0};
        struct gpu gpu = {0};
        struct dilu_quota q = quota(0.3, 3 * MS, 10 * MS);
        uint64_t now = 1000 * MS;
        saturate(&l, &gpu, &q, &now, 1100 * MS, estimates[i], actuals[i]);
        uint64_t busy = saturate(&l, &gpu, &q, &now, 2100 * MS, estimates[i], actuals[i]);
        double achieved = (double)busy / (1000.0 * MS);
        CHECK(achieved > 0.29 && achieved < 0.31, "estimate %llu actual %llu: achieved %.4f",
              (unsigned long long)estimates[i], (unsigned long long)actuals[i], achieved);
    }
}

static void test_step_from_full_gpu_to_quarter_holds_within_a_period(void) {
    struct dilu_limiter l = {0};
    struct gpu gpu = {0};
    struct dilu_quota q = quota(1.0, 10 * MS, 5 * MS);
    uint64_t now = 1000 * MS;
    saturate(&l, &gpu, &q, &now, 1500 * MS, 100 * US, 100 * US);
    q = quota(0.25, 2500 * US, 5 * MS);
    uint64_t switched = now;
    /* Work already in flight (at most the cap) drains, then the new share holds. */
    saturate(&l, &gpu, &q, &now, switched + 10 * MS, 100 * US, 100 * US);
    uint64_t busy = saturate(&l, &gpu, &q, &now, switched + 210 * MS, 100 * US, 100 * US);
    double achieved = (double)busy / (200.0 * MS);
    CHECK(achieved > 0.24 && achieved < 0.26, "after the step: %.4f", achieved);
    /* And straight after the step: nothing beyond the cap plus one burst is admitted. */
    CHECK(gpu.free_at <= now + 5 * MS, "queued work beyond the cap");
}

static void test_burst_caps_what_an_idle_caller_can_spend_at_once(void) {
    struct dilu_limiter l = {0};
    struct dilu_quota q = quota(0.5, 5 * MS, 1000 * MS);
    uint64_t now = 5000 * MS;  /* long idle: credit is capped at the burst, not 5 s */
    int admitted = 0;
    while (dilu_limiter_admit(&l, &q, now, 100 * US, 0) == 0 && admitted < 1000)
        admitted++;
    CHECK(admitted >= 50 && admitted <= 51, "admitted %d x 100us from a 5 ms burst", admitted);
    uint64_t wait = dilu_limiter_admit(&l, &q, now, 100 * US, 0);
    CHECK(wait > 150 * US && wait <= 200 * US, "wait %llu for 100us at share 0.5",
          (unsigned long long)wait);
}

static void test_launch_bigger_than_burst_waits_for_a_full_bucket(void) {
    struct dilu_limiter l = {0};
    struct dilu_quota q = quota(0.25, 2500 * US, 1000 * MS);
    uint64_t now = 1000 * MS;
    CHECK(dilu_limiter_admit(&l, &q, now, 10 * MS, 0) == 0, "a full bucket admits a big launch");
    uint64_t wait = dilu_limiter_admit(&l, &q, now, 10 * MS, 0);
    CHECK(wait == 40 * MS, "then it waits 10ms/0.25 = 40 ms, got %llu", (unsigned long long)wait);
    CHECK(dilu_limiter_admit(&l, &q, now + 40 * MS, 10 * MS, 0) == 0, "and goes at 40 ms");
}

static void test_inflight_cap_bounds_queued_work(void) {
    struct dilu_limiter l = {0};
    struct dilu_quota q = quota(1.0, 10 * MS, 5 * MS);
    uint64_t now = 1000 * MS;
    int admitted = 0;
    while (dilu_limiter_admit(&l, &q, now, 1 * MS, 0) == 0 && admitted < 100)
        admitted++;
    CHECK(admitted == 5, "5 ms cap admitted %d x 1 ms", admitted);
    CHECK(dilu_limiter_admit(&l, &q, now, 1 * MS, 0) == DILU_INFLIGHT_POLL_NS, "refused");
    dilu_limiter_complete(&l, &q, 1 * MS, 1 * MS);
    CHECK(dilu_limiter_admit(&l, &q, now, 1 * MS, 0) == 0, "a completion makes room");
    /* Work bigger than the cap goes alone once nothing is in flight. */
    struct dilu_limiter empty = {0};
    CHECK(dilu_limiter_admit(&empty, &q, now, 50 * MS, 0) == 0, "big work alone");
    CHECK(dilu_limiter_admit(&empty, &q, now, 1 * US, 0) != 0, "nothing beside it");
}

static void test_refused_admission_leaves_nothing_in_flight(void) {
    struct dilu_limiter l = {0};
    struct dilu_quota q = quota(0.1, 1 * MS, 10 * MS);
    uint64_t now = 1000 * MS;
    CHECK(dilu_limiter_admit(&l, &q, now, 1 * MS, 0) == 0, "first");
    CHECK(dilu_limiter_admit(&l, &q, now, 1 * MS, 0) != 0, "second refused for credit");
    CHECK(l.inflight_ns == (int64_t)(1 * MS), "in flight %lld", (long long)l.inflight_ns);
    dilu_limiter_cancel(&l, &q, 1 * MS);
    CHECK(l.inflight_ns == 0, "cancel returns it");
    CHECK(dilu_limiter_admit(&l, &q, now, 1 * MS, 0) == 0, "and refunds the credit");
}

static void test_pause_and_zero_share_admit_nothing(void) {
    struct dilu_limiter l = {0};
    struct dilu_quota q = quota(0.5, 5 * MS, 10 * MS);
    q.paused = 1;
    CHECK(dilu_limiter_admit(&l, &q, 1000 * MS, 1 * US, 0) == DILU_PAUSED_POLL_NS, "paused");
    q = quota(0.0, 5 * MS, 10 * MS);
    CHECK(dilu_limiter_admit(&l, &q, 1000 * MS, 1 * US, 0) == DILU_PAUSED_POLL_NS, "share 0");
    CHECK(l.inflight_ns == 0 && l.tat_ns == 0, "untouched");
}

static void test_extreme_values_do_not_overflow(void) {
    struct dilu_limiter l = {0};
    struct dilu_quota q = {1, 0, UINT64_MAX, UINT64_MAX};  /* 1 ppm, no burst */
    uint64_t now = UINT64_MAX / 4;
    CHECK(dilu_limiter_admit(&l, &q, now, UINT64_MAX, 0) == 0, "huge cost admitted alone");
    uint64_t wait = dilu_limiter_admit(&l, &q, now, 1, 0);
    CHECK(wait > 0 && wait <= DILU_MAX_COST_NS * DILU_PPM, "bounded wait %llu",
          (unsigned long long)wait);
    dilu_limiter_complete(&l, &q, UINT64_MAX, 0);  /* refund far more than the tat */
    CHECK(l.inflight_ns == 0, "in flight back to 0: %lld", (long long)l.inflight_ns);
    CHECK(l.tat_ns <= now, "tat did not wrap: %llu", (unsigned long long)l.tat_ns);
    CHECK(dilu_limiter_admit(&l, &q, now, 1, 0) == 0, "credit is back");
}

/* Many threads admitting and completing at once lose no in-flight accounting. */
struct worker_args {
    struct dilu_limiter *l;
    struct dilu_quota *q;
    int admitted;
};

static void *hammer(void *arg) {
    struct worker_args *w = arg;
    for (int i = 0; i < 200000; i++)
        if (dilu_limiter_admit(w->l, w->q, 1000 * MS + (uint64_t)i, 1 * US, 0) == 0) {
            w->admitted++;
            dilu_limiter_complete(w->l, w->q, 1 * US, 1 * US);
        }
    return NULL;
}

static void test_concurrent_callers_keep_the_books(void) {
    struct dilu_limiter l = {0};
    struct dilu_quota q = quota(1.0, 10 * MS, 8 * US);
    pthread_t threads[4];
    struct worker_args args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct worker_args){&l, &q, 0};
        pthread_create(&threads[i], NULL, hammer, &args[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        total += args[i].admitted;
    }
    CHECK(l.inflight_ns == 0, "in flight %lld after all completed", (long long)l.inflight_ns);
    CHECK(total > 0, "something was admitted");
}

/* A large launch among a stream of small ones: without priority the small ones, each
 * fitting first, starve it; once it asks for priority it goes within a cap's worth. */
static void test_a_starving_launch_gets_priority(void) {
    for (int with_priority = 0; with_priority < 2; with_priority++) {
        struct dilu_limiter l = {0};
        struct dilu_quota q = quota(0.5, 5 * MS, 5 * MS);
        struct gpu gpu = {0};
        /* The small caller has the GPU to itself for 100 ms before the big launch asks. */
        uint64_t now = 1000 * MS, asked = now + 100 * MS, waited_for = 0;
        int admitted = 0;
        while (now < asked + 2000 * MS && !admitted) {
            run_until(&gpu, &l, &q, now);
            if (dilu_limiter_admit(&l, &q, now, 100 * US, 0) == 0)
                submit(&gpu, now, 100 * US, 100 * US);
            uint64_t waiter = with_priority && now - asked >= DILU_STARVATION_NS ? 42 : 0;
            if (now >= asked && dilu_limiter_admit(&l, &q, now, 2 * MS, waiter) == 0) {
                admitted = 1;
                waited_for = now - asked;
            }
            now += 20 * US;
        }
        if (with_priority)
            CHECK(admitted && waited_for < DILU_STARVATION_NS + 30 * MS,
                  "with priority the big launch waited %llu ms", (unsigned long long)(waited_for / MS));
        else
            CHECK(!admitted, "without priority it starves (this is what priority is for), "
                  "but went after %llu ms", (unsigned long long)(waited_for / MS));
        CHECK(!with_priority || l.priority == 0, "priority released on admission");
    }
}

int main(void) {
    test_saturating_caller_gets_its_share();
    test_wrong_estimates_are_corrected_by_actual_cost();
    test_step_from_full_gpu_to_quarter_holds_within_a_period();
    test_burst_caps_what_an_idle_caller_can_spend_at_once();
    test_launch_bigger_than_burst_waits_for_a_full_bucket();
    test_inflight_cap_bounds_queued_work();
    test_refused_admission_leaves_nothing_in_flight();
    test_pause_and_zero_share_admit_nothing();
    test_extreme_values_do_not_overflow();
    test_concurrent_callers_keep_the_books();
    test_a_starving_launch_gets_priority();
    if (failures) {
        printf("%d failure(s)\n", failures);
        return 1;
    }
    printf("limiter: all passed\n");
    return 0;
}
