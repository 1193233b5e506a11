/* What every test driver in this directory shares: checks that count and report
 * failures, a monotonic clock, and (for the drivers that run against the fake libcuda) the
 * CUDA start-up, the instance's stats page and a little dladdr.
 *
 * Each driver is a single translation unit, so the statics below are that program's own.
 * limiter_test.c tests plain C with no driver: it defines DRIVER_CHECK_NO_CUDA first and
 * gets only the checks and the clock. The others must define _GNU_SOURCE before any
 * include (for dladdr). */
#ifndef DRIVER_CHECK_H
#define DRIVER_CHECK_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define MS 1000000ull
#define US 1000ull

/* ---- checks ---- */

/* Atomic: some drivers check from several threads at once. */
static _Atomic int failures;  /* broken checks */
static _Atomic int checks;    /* all checks made (a driver may report it: proof they ran) */

/* Set by a driver that forks, so that each FAIL line names the process it came from. */
static const char *check_process;

/* One line on stdout, "FAIL [process ]function:line: message", which the pytest modules
 * show (and some look for); the stream's lock keeps threads' lines whole. */
__attribute__((format(printf, 3, 4)))
static inline void check_failed(const char *function, int line, const char *format, ...) {
    va_list args;
    va_start(args, format);
    flockfile(stdout);
    if (check_process)
        printf("FAIL %s %s:%d: ", check_process, function, line);
    else
        printf("FAIL %s:%d: ", function, line);
    vprintf(format, args);
    printf("\n");
    funlockfile(stdout);
    va_end(args);
    atomic_fetch_add(&failures, 1);
}

/* CHECK(condition, printf-style message): count it, and report it when it does not hold. */
#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        atomic_fetch_add_explicit(&checks, 1, memory_order_relaxed);      \
        if (!(cond))                                                      \
            check_failed(__func__, __LINE__, __VA_ARGS__);                \
    } while (0)

/* ---- the clock ---- */

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#ifndef DRIVER_CHECK_NO_CUDA

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before any include: driver_check.h uses dladdr"
#endif

#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fake_cuda.h"

/* A CUDA call gives `want` (OK: CUDA_SUCCESS); the FAIL line quotes the call. */
#define EXPECT(call, want)                                                                   \
    do {                                                                                     \
        CUresult got_ = (call);                                                              \
        CHECK(got_ == (want), "%s returned %d, expected %d", #call, (int)got_, (int)(want)); \
    } while (0)
#define OK(call) EXPECT(call, CUDA_SUCCESS)

/* ---- CUDA start-up ---- */

/* The driver's own libcuda.so.1 (the fake), as a runtime opens it; exits on failure. */
static inline void *open_libcuda(void) {
    void *libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!libcuda) {
        printf("FAIL dlopen(libcuda.so.1): %s\n", dlerror());
        exit(1);
    }
    return libcuda;
}

/* The entry points make_primary_current() calls, however the driver found them. Passed in
 * rather than named here, so that a driver built to fetch everything with
 * cuGetProcAddress_v2 (-DVIA_PROC_ADDRESS) makes no direct reference to them. */
struct context_calls {
    CUresult (*init)(unsigned int);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*primary_ctx_retain)(CUcontext *, CUdevice);
    CUresult (*ctx_set_current)(CUcontext);
};

/* From any struct with fields of those names (the drivers' tables of entry points)... */
#define CONTEXT_CALLS_OF(api)                                                    \
    ((struct context_calls){(api).init, (api).device_get, (api).primary_ctx_retain, \
                            (api).ctx_set_current})
/* ... or as linked, for a driver linked against libcuda. */
#define LINKED_CONTEXT_CALLS \
    ((struct context_calls){cuInit, cuDeviceGet, cuDevicePrimaryCtxRetain, cuCtxSetCurrent})

/* cuInit, then device 0's primary context, made current on this thread and returned. */
static inline CUcontext make_primary_current(struct context_calls cu) {
    CUdevice device = 0;
    CUcontext ctx = NULL;
    OK(cu.init(0));
    OK(cu.device_get(&device, 0));
    OK(cu.primary_ctx_retain(&ctx, device));
    OK(cu.ctx_set_current(ctx));
    return ctx;
}

/* ---- the stats page (layout: services/node_agent/pages.py), to see what the shim counted ---- */

#define STATS_BUSY 8
#define STATS_LAUNCHES 16
#define STATS_THROTTLED 24
#define STATS_MEMORY_USED 32

/* DILU_STATS, mapped by map_stats(); NULL until then. Not every driver reads it. */
static const char *stats_page __attribute__((unused));

/* Maps the page the shim writes to, read-only; exits when it cannot. */
static inline void map_stats(void) {
    const char *path = getenv("DILU_STATS");
    int fd = path ? open(path, O_RDONLY) : -1;
    void *page = fd >= 0 ? mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (fd >= 0)
        close(fd);
    if (page == MAP_FAILED) {
        printf("FAIL map_stats: cannot map DILU_STATS (%s)\n", path ? path : "unset");
        exit(1);
    }
    stats_page = page;
}

/* An 8-byte counter, loaded with acquire as the agent's reader would; after map_stats(). */
static inline uint64_t stats_word(int offset) {
    return __atomic_load_n((const uint64_t *)(stats_page + offset), __ATOMIC_ACQUIRE);
}

/* ---- where an address lives ---- */

/* The file name of the object holding `address` ("libdilu_shim.so", ...), or "?". */
static inline const char *library_of(void *address) {
    Dl_info info;
    if (!address || !dladdr(address, &info) || !info.dli_fname)
        return "?";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

#endif /* DRIVER_CHECK_NO_CUDA */

#endif
