/* fork() under the shim. Linked against the fake libcuda, run with the shim preloaded and
 * a control page at share 0.5 with a memory limit of 1.5 GiB:
 *
 *   fork_share [PHASE_SECONDS]
 *
 * The parent allocates 1 GiB, launches 200 us kernels back to back for a phase, then
 * forks. The child (whose completion thread the shim must start afresh: threads do not
 * survive fork) sees the parent's gigabyte charged, cannot allocate another, and launches
 * for a phase of its own at the same share. The parent waits, launches for another phase
 * (its own completion thread must still work), frees its gigabyte and exits.
 *
 * Each process prints one JSON line: {"process": "parent"|"child", "launches": ...,
 * "busy_fraction": ..., ...}. FAIL lines and exit 1 on a broken expectation; a process
 * stuck for 10 s (a launch that never gets credit) prints a FAIL line and exits 3. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake_cuda.h"
#include "driver_check.h"

#define GIB (1ull << 30)
#define MIB (1ull << 20)
#define LIMIT (3 * GIB / 2)
#define SHARE 0.5
#define TOLERANCE 0.1
#define KERNEL_NS (200 * US)
#define WARM_NS (100 * MS)

static void deadline_passed(int sig) {
    (void)sig;
    static const char text[] = "FAIL deadline: no progress in 10 s (a launch never admitted?)\n";
    if (write(1, text, sizeof text - 1) < 0)
        _exit(4);
    _exit(3);
}

/* ---- one phase of back-to-back launches ---- */

struct phase {
    uint64_t launches;        /* successful launches */
    uint64_t admitted;        /* what the stats page counted meanwhile */
    uint64_t throttled_ns;    /* what the stats page counted meanwhile */
    uint64_t gpu_ns;          /* fake GPU time the phase's work took, once drained */
    double busy_fraction;     /* of the phase after its first WARM_NS */
};

static struct phase run_phase(double seconds) {
    struct phase phase = {0};
    uint64_t admitted = stats_word(STATS_LAUNCHES), throttled = stats_word(STATS_THROTTLED);
    uint64_t busy_start = fake_busy_ns(0) + fake_queued_ns(0);
    uint64_t start = now_ns(), warm = start + WARM_NS, end = start + (uint64_t)(seconds * 1e9);
    uint64_t busy_at_warm = 0, warm_at = 0;
    while (now_ns() < end) {
        if (!warm_at && now_ns() >= warm) {
            warm_at = now_ns();
            busy_at_warm = fake_busy_ns(0);
        }
        CUresult result = cuLaunchKernel(FAKE_KERNEL(KERNEL_NS), 1, 1, 1, 1, 1, 1, 0, NULL, NULL,
                                         NULL);
        CHECK(result == CUDA_SUCCESS, "cuLaunchKernel returned %d", result);
        phase.launches += result == CUDA_SUCCESS;
    }
    uint64_t stop = now_ns();
    phase.busy_fraction = warm_at && stop > warm_at
                              ? (double)(fake_busy_ns(0) - busy_at_warm) / (double)(stop - warm_at)
                              : -1;
    OK(cuCtxSynchronize());
    phase.gpu_ns = fake_busy_ns(0) - busy_start;
    phase.admitted = stats_word(STATS_LAUNCHES) - admitted;
    phase.throttled_ns = stats_word(STATS_THROTTLED) - throttled;
    CHECK(phase.admitted == phase.launches, "the shim admitted %llu of %llu launches",
          (unsigned long long)phase.admitted, (unsigned long long)phase.launches);
    CHECK(phase.throttled_ns > 0, "no launch waited for credit at share %.2f", SHARE);
    CHECK(phase.busy_fraction > SHARE - TOLERANCE && phase.busy_fraction < SHARE + TOLERANCE,
          "the GPU was busy %.3f of the time at share %.2f", phase.busy_fraction, SHARE);
    return phase;
}

static void print_phase(const char *name, const struct phase *phase) {
    printf("\"%s\": {\"launches\": %llu, \"admitted\": %llu, \"throttled_ns\": %llu, "
           "\"gpu_ns\": %llu, \"busy_fraction\": %.4f}", name,
           (unsigned long long)phase->launches, (unsigned long long)phase->admitted,
           (unsigned long long)phase->throttled_ns, (unsigned long long)phase->gpu_ns,
           phase->busy_fraction);
}

/* ---- the child ---- */

static int child_main(double seconds, CUdeviceptr parent_block) {
    check_process = "child";
    alarm(10);
    int (*enforcing)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "dilu_shim_enforcing");
    CHECK(enforcing && enforcing(), "the shim does not enforce in the child");

    /* The parent's gigabyte is the instance's: charged here too. */
    size_t free_bytes = 0, total_bytes = 0;
    OK(cuMemGetInfo_v2(&free_bytes, &total_bytes));
    CHECK(total_bytes == LIMIT, "child: total %zu, expected the limit %llu", total_bytes,
          (unsigned long long)LIMIT);
    CHECK(free_bytes <= LIMIT - GIB, "child: free %zu, but the parent holds 1 GiB of %llu",
          free_bytes, (unsigned long long)LIMIT);
    CUdeviceptr block = 0;
    EXPECT(cuMemAlloc_v2(&block, GIB), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(stats_word(STATS_MEMORY_USED) == GIB, "a refused allocation left %llu bytes charged",
          (unsigned long long)stats_word(STATS_MEMORY_USED));
    /* What fits, fits, and is returned on free. */
    OK(cuMemAlloc_v2(&block, 256 * MIB));
    CHECK(stats_word(STATS_MEMORY_USED) == GIB + 256 * MIB, "after 256 MiB: %llu charged",
          (unsigned long long)stats_word(STATS_MEMORY_USED));
    OK(cuMemFree_v2(block));
    /* The parent's allocation is not the child's to return (the child's copy of the fake
     * frees it; the shim must not give the parent's bytes back). */
    OK(cuMemFree_v2(parent_block));
    CHECK(stats_word(STATS_MEMORY_USED) == GIB,
          "after the child's frees %llu bytes are charged, expected the parent's 1 GiB",
          (unsigned long long)stats_word(STATS_MEMORY_USED));

    /* Launches are admitted at the instance's share: the completion thread that returns
     * credit must be running in this process, or the in-flight cap stalls it. */
    struct phase phase = run_phase(seconds);
    printf("{\"process\": \"child\", \"pid\": %d, ", (int)getpid());
    print_phase("phase", &phase);
    printf(", \"failures\": %d}\n", failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    check_process = "parent";
    signal(SIGALRM, deadline_passed);
    alarm(10);
    double seconds = argc >= 2 ? atof(argv[1]) : 0.4;
    map_stats();
    make_primary_current(LINKED_CONTEXT_CALLS);
    int (*enforcing)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "dilu_shim_enforcing");
    if (!enforcing || !enforcing()) {
        printf("FAIL the shim is not preloaded or not enforcing\n");
        return 1;
    }
    CUdeviceptr block = 0;
    OK(cuMemAlloc_v2(&block, GIB));
    size_t free_bytes = 0, total_bytes = 0;
    OK(cuMemGetInfo_v2(&free_bytes, &total_bytes));
    CHECK(total_bytes == LIMIT && free_bytes == LIMIT - GIB, "parent: free %zu of %zu",
          free_bytes, total_bytes);

    struct phase before = run_phase(seconds);
    fflush(stdout);
    alarm(0); /* the child has a deadline of its own; the parent waits past it */
    pid_t child = fork();
    if (child < 0) {
        printf("FAIL fork\n");
        return 1;
    }
    if (child == 0)
        exit(child_main(seconds, block));
    /* Not launching meanwhile: each process's share is measured alone. */
    alarm(15);
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child, "waitpid");
    alarm(10);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status 0x%x)", status);
    CHECK(stats_word(STATS_MEMORY_USED) == GIB, "after the child: %llu bytes charged",
          (unsigned long long)stats_word(STATS_MEMORY_USED));

    struct phase after = run_phase(seconds);
    OK(cuMemFree_v2(block));
    CHECK(stats_word(STATS_MEMORY_USED) == 0, "after the parent's free: %llu bytes charged",
          (unsigned long long)stats_word(STATS_MEMORY_USED));
    printf("{\"process\": \"parent\", \"pid\": %d, \"child_status\": %d, ", (int)getpid(), status);
    print_phase("before_fork", &before);
    printf(", ");
    print_phase("after_fork", &after);
    printf(", \"failures\": %d}\n", failures);
    return failures ? 1 : 0;
}
