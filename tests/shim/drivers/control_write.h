/* The agent's side of the control page, for test drivers that change their own quota at
 * a known instant (the agent does this in Python: services/node_agent/pages.py). */
#ifndef CONTROL_WRITE_H
#define CONTROL_WRITE_H

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

struct control_page {
    volatile unsigned char *base;
};

static inline int control_open(struct control_page *page, const char *path) {
    int fd = path ? open(path, O_RDWR) : -1;
    if (fd < 0)
        return -1;
    void *mapped = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    page->base = mapped == MAP_FAILED ? NULL : mapped;
    return page->base ? 0 : -1;
}

#define CONTROL_FIELD(type, offset) (*(volatile type *)(page->base + (offset)))

/* Writes under the seqlock: odd while writing, generation + 1, then even again. */
static inline void control_update(struct control_page *page, double share,
                                  uint64_t memory_limit_bytes) {
    uint64_t seq = CONTROL_FIELD(uint64_t, 8);
    __atomic_store_n((uint64_t *)(page->base + 8), seq + 1, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    CONTROL_FIELD(uint32_t, 16) += 1;
    CONTROL_FIELD(uint32_t, 24) = (uint32_t)(share * 1e6);
    uint32_t period_us = CONTROL_FIELD(uint32_t, 28);
    CONTROL_FIELD(uint64_t, 32) = (uint64_t)(share * period_us * 1000.0);  /* burst */
    CONTROL_FIELD(uint64_t, 48) = memory_limit_bytes;
    __atomic_store_n((uint64_t *)(page->base + 8), seq + 2, __ATOMIC_RELEASE);
}

static inline void control_set_share(struct control_page *page, double share) {
    control_update(page, share, CONTROL_FIELD(uint64_t, 48));
}

static inline void control_set_memory_limit(struct control_page *page, uint64_t bytes) {
    double share = CONTROL_FIELD(uint32_t, 24) / 1e6;
    control_update(page, share, bytes);
}

#endif
