#include "pages.h"

#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOT_FREE 0u
#define SLOT_CLAIMING 1u
#define SLOT_READY 2u
/* A page stuck mid-write for this many reads belongs to a writer that died. */
#define MAX_SEQLOCK_SPINS 100000

static void *map_page(const char *path, int writable) {
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "dilu-shim: cannot open %s: %m\n", path);
        return NULL;
    }
    struct stat st;
    void *page = MAP_FAILED;
    if (fstat(fd, &st) == 0 && st.st_size == DILU_PAGE_SIZE)
        page = mmap(NULL, DILU_PAGE_SIZE, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                    MAP_SHARED, fd, 0);
    else
        fprintf(stderr, "dilu-shim: %s is not a %d-byte page\n", path, DILU_PAGE_SIZE);
    close(fd);
    return page == MAP_FAILED ? NULL : page;
}

static uint32_t load32(const void *page, int offset) {
    return __atomic_load_n((const uint32_t *)((const char *)page + offset), __ATOMIC_ACQUIRE);
}

static uint64_t load64(const void *page, int offset) {
    return __atomic_load_n((const uint64_t *)((const char *)page + offset), __ATOMIC_ACQUIRE);
}

const void *dilu_control_map(const char *path) {
    const void *page = map_page(path, 0);
    if (page && (load32(page, 0) != DILU_CONTROL_MAGIC || load32(page, 4) != DILU_CONTROL_VERSION)) {
        fprintf(stderr, "dilu-shim: %s is not a version-1 Dilu control page\n", path);
        munmap((void *)page, DILU_PAGE_SIZE);
        return NULL;
    }
    return page;
}

uint64_t dilu_control_seq(const void *page) { return load64(page, 8); }

int dilu_control_read(const void *page, struct dilu_control *out) {
    for (int spin = 0; spin < MAX_SEQLOCK_SPINS; spin++) {
        uint64_t before = load64(page, 8);
        if (before & 1) {
            if (spin > 64)
                sched_yield();
            continue;
        }
        struct dilu_control read;
        read.generation = load32(page, 16);
        read.quota.paused = load32(page, 20) & 1u;
        read.quota.share_ppm = load32(page, 24);
        read.quota.burst_ns = load64(page, 32);
        read.quota.inflight_cap_ns = load64(page, 40);
        read.memory_limit_bytes = load64(page, 48);
        atomic_thread_fence(memory_order_acquire);
        if (load64(page, 8) == before) {
            *out = read;
            return 0;
        }
    }
    return -1;
}

void *dilu_stats_map(const char *path) {
    void *page = map_page(path, 1);
    if (page && load32(page, 0) != DILU_STATS_MAGIC) {
        fprintf(stderr, "dilu-shim: %s is not a Dilu stats page\n", path);
        munmap(page, DILU_PAGE_SIZE);
        return NULL;
    }
    return page;
}

static _Atomic uint64_t *word(void *page, int offset) {
    return (_Atomic uint64_t *)((char *)page + offset);
}

void dilu_stats_add(void *page, int offset, uint64_t amount) {
    atomic_fetch_add_explicit(word(page, offset), amount, memory_order_relaxed);
}

void dilu_stats_sub(void *page, int offset, uint64_t amount) {
    atomic_fetch_sub_explicit(word(page, offset), amount, memory_order_relaxed);
}

void dilu_stats_raise_to(void *page, int offset, uint64_t value) {
    uint64_t seen = atomic_load_explicit(word(page, offset), memory_order_relaxed);
    while (seen < value &&
           !atomic_compare_exchange_weak(word(page, offset), &seen, value)) {
    }
}

/* Slot layout: u32 state, u32 reserved, 16-byte UUID, u64 used, u64 peak. */
static int slot_offset(int slot) { return DILU_STATS_GPU_SLOTS + slot * DILU_STATS_GPU_SLOT_SIZE; }

int dilu_stats_gpu_slot(void *page, const char uuid[16]) {
    for (int slot = 0; slot < DILU_MAX_GPUS; slot++) {
        char *base = (char *)page + slot_offset(slot);
        _Atomic uint32_t *state = (_Atomic uint32_t *)base;
        uint32_t seen = atomic_load(state);
        if (seen == SLOT_FREE) {
            if (atomic_compare_exchange_strong(state, &seen, SLOT_CLAIMING)) {
                memcpy(base + 8, uuid, 16);
                atomic_store(state, SLOT_READY);
                return slot;
            }
        }
        /* Another process is writing the UUID: microseconds. One killed mid-claim never
         * finishes; after ~a second the slot is passed over rather than waited on forever. */
        for (int spin = 0; (seen = atomic_load(state)) == SLOT_CLAIMING && spin < 100000; spin++)
            sched_yield();
        if (seen == SLOT_READY && memcmp(base + 8, uuid, 16) == 0)
            return slot;
    }
    return -1;
}

int dilu_stats_reserve_memory(void *page, int slot, uint64_t bytes, uint64_t limit) {
    _Atomic uint64_t *used = word(page, slot_offset(slot) + 24);
    uint64_t seen = atomic_load(used);
    do {
        if (limit && (seen > limit || bytes > limit - seen))
            return -1;
    } while (!atomic_compare_exchange_weak(used, &seen, seen + bytes));
    dilu_stats_raise_to(page, slot_offset(slot) + 32, seen + bytes);
    uint64_t total = atomic_fetch_add(word(page, DILU_STATS_MEMORY_USED), bytes) + bytes;
    dilu_stats_raise_to(page, DILU_STATS_MEMORY_PEAK, total);
    return 0;
}

void dilu_stats_release_memory(void *page, int slot, uint64_t bytes) {
    dilu_stats_sub(page, slot_offset(slot) + 24, bytes);
    dilu_stats_sub(page, DILU_STATS_MEMORY_USED, bytes);
}

uint64_t dilu_stats_gpu_memory_used(const void *page, int slot) {
    return load64(page, slot_offset(slot) + 24);
}
