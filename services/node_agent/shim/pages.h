/* The shim's side of the instance's two pages (layouts: services/node_agent/pages.py).
 *
 * Control page: mapped read-only, read under the agent's seqlock with acquire loads.
 * Stats page: mapped shared and writable; the shim owns GPU busy ns, launches, throttled
 * ns and the memory counters, and updates them with atomic adds because every process and
 * thread of the instance writes the same page. */
#ifndef DILU_PAGES_H
#define DILU_PAGES_H

#include <stdint.h>

#include "limiter.h"

#define DILU_PAGE_SIZE 4096
#define DILU_CONTROL_MAGIC 0x44494C55u
#define DILU_CONTROL_VERSION 1u
#define DILU_STATS_MAGIC 0x444C5354u

/* Stats page offsets written by the shim. */
#define DILU_STATS_BUSY_NS 8
#define DILU_STATS_LAUNCHES 16
#define DILU_STATS_THROTTLED_NS 24
#define DILU_STATS_MEMORY_USED 32
#define DILU_STATS_MEMORY_PEAK 40
/* Per-GPU memory slots: the quota is per GPU, and a slot is claimed by GPU UUID so that
 * all processes of the instance charge the same counter. */
#define DILU_STATS_GPU_SLOTS 1280
#define DILU_STATS_GPU_SLOT_SIZE 48
#define DILU_MAX_GPUS 16

struct dilu_control {
    struct dilu_quota quota;
    uint32_t generation;
    uint64_t memory_limit_bytes; /* per GPU; 0 = none */
};

/* Maps the page at `path`; NULL (with a message on stderr) when it is missing or wrong. */
const void *dilu_control_map(const char *path);
/* One consistent snapshot; 0 on success, -1 if the page stays mid-write (writer died).
 * A page already seen stuck at sequence `stuck_seq` (odd) fails at once, not after spinning. */
int dilu_control_read(const void *page, struct dilu_control *out);
uint64_t dilu_control_seq(const void *page);

void *dilu_stats_map(const char *path);
void dilu_stats_add(void *page, int offset, uint64_t amount);
void dilu_stats_sub(void *page, int offset, uint64_t amount);
void dilu_stats_raise_to(void *page, int offset, uint64_t value);

/* The memory slot of the GPU with this 16-byte UUID (claimed on first use), or -1 when
 * all slots are taken. */
int dilu_stats_gpu_slot(void *page, const char uuid[16]);
/* Charge `bytes` to the slot unless that would pass `limit` (0 = none); 0 on success. */
int dilu_stats_reserve_memory(void *page, int slot, uint64_t bytes, uint64_t limit);
void dilu_stats_release_memory(void *page, int slot, uint64_t bytes);
uint64_t dilu_stats_gpu_memory_used(const void *page, int slot);

#endif
