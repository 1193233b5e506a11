/* Shared state of libdilu_shim.so (internal). */
#ifndef DILU_SHIM_H
#define DILU_SHIM_H

#include <stdint.h>

#include "dilu_cuda.h"
#include "limiter.h"
#include "pages.h"

#define DILU_EXPORT __attribute__((visibility("default")))

/* The driver's own functions, resolved from libcuda. */
#define DILU_FN_TYPE(name, params) typedef CUresult (*name##_fn) params;
DILU_HOOKED_LAUNCHES(DILU_FN_TYPE)
DILU_HOOKED_MEMORY(DILU_FN_TYPE)
DILU_HOOKED_LOOKUPS(DILU_FN_TYPE)
DILU_CALLED(DILU_FN_TYPE)
#undef DILU_FN_TYPE

struct dilu_real {
#define DILU_FN_FIELD(name, params) name##_fn name;
    DILU_HOOKED_LAUNCHES(DILU_FN_FIELD)
    DILU_HOOKED_MEMORY(DILU_FN_FIELD)
    DILU_HOOKED_LOOKUPS(DILU_FN_FIELD)
    DILU_CALLED(DILU_FN_FIELD)
#undef DILU_FN_FIELD
};

extern struct dilu_real dilu_real;

/* One GPU the instance uses, keyed by UUID. */
struct dilu_gpu {
    char uuid[16];
    int memory_slot;  /* slot on the stats page, -1 if none */
    struct dilu_limiter limiter;
};

/* Resolves the driver and maps the pages, once; cheap to call on every entry. */
void dilu_init(void);
/* Nonzero when a control page is mapped: the shim enforces; else it only forwards. */
int dilu_enforcing(void);
void dilu_read_control(struct dilu_control *out);
void *dilu_stats(void);

#define DILU_RING_SIZE 4096

/* One launch (or graph) in flight, timed by a pair of events on its stream. */
struct dilu_record {
    _Atomic uint64_t published;  /* ticket + 1 once the launching thread is done with it */
    uint32_t outcome;            /* enum dilu_outcome in launch.c */
    CUevent start;               /* created in the ring's context on first use, then reused */
    CUevent end;
    uint64_t estimate_ns;        /* what the timed launch was charged on admission */
    uint64_t carried_ns;         /* untimed launches before it on the same stream */
    uintptr_t key;
};

/* Launches of one context awaiting completion, oldest first: many launching threads
 * claim tickets, the single completion thread retires them in order. */
struct dilu_ring {
    _Atomic uint64_t head;
    _Atomic uint64_t tail;
    struct dilu_record records[DILU_RING_SIZE];
};

/* A CUDA context seen by the shim: events must live in the context of their stream. */
struct dilu_context {
    _Atomic(CUcontext) ctx;
    _Atomic(struct dilu_gpu *) gpu;  /* set once the context is registered */
    struct dilu_ring ring;
};

#define DILU_MAX_CONTEXTS 16
extern struct dilu_context dilu_contexts[DILU_MAX_CONTEXTS];

/* The calling thread's current context (NULL without one, or when all slots are taken). */
struct dilu_context *dilu_current_context(void);
uint64_t dilu_now_ns(void);
/* The GPU behind a device ordinal (for allocations that name their device). */
struct dilu_gpu *dilu_gpu_for_device(CUdevice device);

/* Launch tracking: the launching threads (launch.c) and the completion thread
 * (completion.c). */
enum dilu_outcome { OUTCOME_TIMED, OUTCOME_MARKER, OUTCOME_ESTIMATED, OUTCOME_CANCELLED };

#define DILU_MAX_THREADS 256
enum { UNTIMED_FREE, UNTIMED_LIVE, UNTIMED_DEAD };

/* Untimed work of one launching thread (the fast path), visible to the completion
 * thread, which releases it when the thread stops launching. */
struct dilu_untimed {
    _Atomic int state;  /* UNTIMED_FREE, _LIVE, or _DEAD (thread gone, work pending) */
    _Atomic uint64_t ns;
    _Atomic(struct dilu_gpu *) gpu;
    /* The completion thread's own view: the total it last saw, and since when. A total
     * that has not moved for a while belongs to a thread that stopped launching; this
     * keeps the clock off the launch path. */
    uint64_t seen_ns;
    uint64_t seen_since_ns;
};
extern struct dilu_untimed dilu_untimed_slots[DILU_MAX_THREADS];

void dilu_launch_after_fork(void);
/* The kernel's (or graph's) running-average GPU time, or 0 when it was never timed. */
uint64_t dilu_known_estimate(uintptr_t key);
/* Work that left the GPU (or is taken to have): out of flight, into the busy counter. */
void dilu_settle(struct dilu_gpu *gpu, const struct dilu_quota *quota, uint64_t estimate_ns,
                 uint64_t actual_ns);
void dilu_start_completions(void);
void dilu_wake_completions(void);
void dilu_completions_after_fork(void);
void dilu_nap(uint64_t ns);
/* Memory accounting (memory.c). */
void dilu_memory_after_fork(void);

/* Lookup (lookup.c): the hook for a driver symbol, or NULL. */
void *dilu_hook_by_symbol(const char *symbol);
void *dilu_hook_for_proc(const char *base, int cuda_version, uint64_t flags, void *real);
void *dilu_real_dlsym(void *handle, const char *symbol);
void *dilu_libcuda(void);

#endif
