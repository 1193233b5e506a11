/* Every hook of the preloaded shim must be reachable by every lookup path a CUDA program
 * uses. Linked against the fake libcuda (so direct linking is one of the paths) and run
 * with LD_PRELOAD=libdilu_shim.so:
 *
 *   lookup_paths table        for each hook the shim lists (dilu_shim_hook_*): linking,
 *                             dlsym(RTLD_DEFAULT), dlsym on a dlopen("libcuda.so.1")
 *                             handle, cuGetProcAddress_v2 and cuGetProcAddress (with the
 *                             version and stream flags that select that variant) all give
 *                             the hook's address; the shim's table holds exactly the entries
 *                             of the header's X-macro lists
 *   lookup_paths passthrough  symbols the shim does not hook come back from dlsym as the
 *                             driver's own (and missing ones stay missing)
 *   lookup_paths ptsz         the launch entry points fetched through each path: the
 *                             per-thread variant reaches the driver's _ptsz function, the
 *                             legacy one the legacy function, and the shim admits each
 *                             (needs DILU_STATS and DILU_CONTROL)
 *
 * Prints one JSON line; FAIL lines and exit status 1 on a broken expectation. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_cuda.h"
#include "driver_check.h"

#define CUDA_VERSION_NOW 12080

/* ---- the shim's introspection, found the way a tool would: by name ---- */

static struct {
    int (*count)(void);
    const char *(*symbol)(int);
    const char *(*base)(int);
    int (*version)(int);
    int (*per_thread)(int);
    void *(*address)(int);
    int (*enforcing)(void);
} shim;

static void bind_shim(void) {
    *(void **)&shim.count = dlsym(RTLD_DEFAULT, "dilu_shim_hook_count");
    *(void **)&shim.symbol = dlsym(RTLD_DEFAULT, "dilu_shim_hook_symbol");
    *(void **)&shim.base = dlsym(RTLD_DEFAULT, "dilu_shim_hook_base");
    *(void **)&shim.version = dlsym(RTLD_DEFAULT, "dilu_shim_hook_version");
    *(void **)&shim.per_thread = dlsym(RTLD_DEFAULT, "dilu_shim_hook_per_thread");
    *(void **)&shim.address = dlsym(RTLD_DEFAULT, "dilu_shim_hook_address");
    *(void **)&shim.enforcing = dlsym(RTLD_DEFAULT, "dilu_shim_enforcing");
    if (!shim.count || !shim.symbol || !shim.base || !shim.version || !shim.per_thread ||
        !shim.address || !shim.enforcing) {
        printf("FAIL bind_shim: the shim's introspection functions are missing "
               "(is libdilu_shim.so preloaded?)\n");
        exit(1);
    }
}

static int hook_index(const char *symbol) {
    for (int i = 0; i < shim.count(); i++)
        if (strcmp(shim.symbol(i), symbol) == 0)
            return i;
    return -1;
}

static void *hook_address(const char *symbol) {
    int i = hook_index(symbol);
    return i < 0 ? NULL : shim.address(i);
}

/* ---- the driver, as a runtime finds it ---- */

typedef CUresult (*get_proc_v2_fn)(const char *, void **, int, cuuint64_t,
                                   CUdriverProcAddressQueryResult *);
typedef CUresult (*get_proc_fn)(const char *, void **, int, cuuint64_t);

static void *libcuda;
static get_proc_v2_fn get_proc_v2;
static get_proc_fn get_proc;

static void open_driver(void) {
    libcuda = open_libcuda();
    *(void **)&get_proc_v2 = dlsym(libcuda, "cuGetProcAddress_v2");
    *(void **)&get_proc = dlsym(libcuda, "cuGetProcAddress");
    if (!get_proc_v2 || !get_proc) {
        printf("FAIL open_driver: no cuGetProcAddress(_v2) in libcuda.so.1\n");
        exit(1);
    }
}

static const char *symbol_at(void *address) {
    Dl_info info;
    if (!address || !dladdr(address, &info) || !info.dli_sname)
        return "?";
    return info.dli_sname;
}

/* The version a runtime asks cuGetProcAddress with to get this very variant: the current
 * one, unless a newer variant of the same base and stream flavour is hooked too. */
static int version_for(int i) {
    for (int j = 0; j < shim.count(); j++)
        if (j != i && strcmp(shim.base(j), shim.base(i)) == 0 &&
            shim.per_thread(j) == shim.per_thread(i) && shim.version(j) > shim.version(i))
            return shim.version(i);
    return CUDA_VERSION_NOW;
}

/* Whether the hook's base name has a per-thread (_ptsz) variant among the hooks. */
static int has_per_thread_variant(int i) {
    for (int j = 0; j < shim.count(); j++)
        if (strcmp(shim.base(j), shim.base(i)) == 0 && shim.per_thread(j))
            return 1;
    return 0;
}

static cuuint64_t flags_for(int per_thread) {
    return per_thread ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
                      : CU_GET_PROC_ADDRESS_LEGACY_STREAM;
}

/* ---- table: every hook on every path ---- */

/* What the header's X-macros list, and what the linker bound each name to in this
 * program (linked against libcuda, run with the shim preloaded: the shim's export). */
#define HEADER_NAME(name, params) #name,
#define HEADER_LINKED(name, params) (void *)name,
static const char *const header_names[] = {
    DILU_HOOKED_LAUNCHES(HEADER_NAME) DILU_HOOKED_MEMORY(HEADER_NAME)
    DILU_HOOKED_LOOKUPS(HEADER_NAME)};
static void *const header_linked[] = {
    DILU_HOOKED_LAUNCHES(HEADER_LINKED) DILU_HOOKED_MEMORY(HEADER_LINKED)
    DILU_HOOKED_LOOKUPS(HEADER_LINKED)};
#define HEADER_COUNT ((int)(sizeof header_names / sizeof header_names[0]))

static int scenario_table(void) {
    bind_shim();
    open_driver();
    int count = shim.count();
    CHECK(count == HEADER_COUNT, "the shim has %d hooks, the header's X-macro lists %d", count,
          HEADER_COUNT);
    /* Every header entry is in the table (a hook declared but never installed fails). */
    for (int h = 0; h < HEADER_COUNT; h++) {
        int i = hook_index(header_names[h]);
        CHECK(i >= 0, "%s is in dilu_cuda.h's hooked lists but not in the shim's hook table",
              header_names[h]);
        if (i >= 0)
            CHECK(header_linked[h] == shim.address(i),
                  "linked %s is %p (%s), the hook is %p", header_names[h], header_linked[h],
                  library_of(header_linked[h]), shim.address(i));
    }
    int proc_checked = 0;
    for (int i = 0; i < count; i++) {
        const char *symbol = shim.symbol(i), *base = shim.base(i);
        void *hook = shim.address(i);
        int per_thread = shim.per_thread(i), version = version_for(i);
        int in_header = 0;
        for (int h = 0; h < HEADER_COUNT; h++)
            in_header |= strcmp(header_names[h], symbol) == 0;
        CHECK(in_header, "hook %s is not in dilu_cuda.h's hooked lists", symbol);
        CHECK(hook_index(symbol) == i, "hook %s is listed twice", symbol);
        CHECK(hook != NULL, "hook %s has no address", symbol);
        CHECK(strncmp(library_of(hook), "libdilu_shim", 12) == 0 &&
                  strcmp(symbol_at(hook), symbol) == 0,
              "hook %s's address is %s in %s, not the shim's export of that name", symbol,
              symbol_at(hook), library_of(hook));
        CHECK(per_thread == (strstr(symbol, "_ptsz") != NULL),
              "hook %s: per_thread is %d", symbol, per_thread);
        CHECK(strncmp(symbol, base, strlen(base)) == 0, "hook %s has base %s", symbol, base);

        /* (a) what a program linked against libcuda resolves */
        void *found = dlsym(RTLD_DEFAULT, symbol);
        CHECK(found == hook, "dlsym(RTLD_DEFAULT, %s) = %p (%s), hook %p", symbol, found,
              library_of(found), hook);
        /* (b) dlopen + dlsym, the way the CUDA runtime < 11.3 and many loaders do it */
        found = dlsym(libcuda, symbol);
        CHECK(found == hook, "dlsym(libcuda.so.1, %s) = %p (%s), hook %p", symbol, found,
              library_of(found), hook);
        /* (c) cuGetProcAddress_v2 with the version and flags that select this variant */
        void *fn = NULL;
        CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        CUresult result = get_proc_v2(base, &fn, version, flags_for(per_thread), &status);
        CHECK(result == CUDA_SUCCESS && status == CU_GET_PROC_ADDRESS_SUCCESS && fn == hook,
              "cuGetProcAddress_v2(%s, %d, %s) = %d status %d fn %p (%s %s), hook %s %p", base,
              version, per_thread ? "per-thread" : "legacy", result, status, fn,
              library_of(fn), symbol_at(fn), symbol, hook);
        /* ... and the v1 entry point, which older runtimes use */
        fn = NULL;
        result = get_proc(base, &fn, version, flags_for(per_thread));
        CHECK(result == CUDA_SUCCESS && fn == hook,
              "cuGetProcAddress(%s, %d, %s) = %d fn %p (%s %s), hook %s %p", base, version,
              per_thread ? "per-thread" : "legacy", result, fn, library_of(fn),
              symbol_at(fn), symbol, hook);
        /* ... and CU_GET_PROC_ADDRESS_DEFAULT, which means legacy unless the program was
         * built for the per-thread default stream */
        if (!per_thread) {
            fn = NULL;
            result = get_proc_v2(base, &fn, version, CU_GET_PROC_ADDRESS_DEFAULT, &status);
            CHECK(result == CUDA_SUCCESS && fn == hook,
                  "cuGetProcAddress_v2(%s, %d, default) = %d fn %p (%s %s), hook %s %p", base,
                  version, result, fn, library_of(fn), symbol_at(fn), symbol, hook);
        }
        /* ... and the per-thread flag where the entry point has no per-thread variant: a
         * runtime built for the per-thread default stream passes it for every name */
        if (!per_thread && !has_per_thread_variant(i)) {
            fn = NULL;
            result = get_proc_v2(base, &fn, version, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
                                 &status);
            CHECK(result == CUDA_SUCCESS && fn == hook,
                  "cuGetProcAddress_v2(%s, %d, per-thread) = %d fn %p (%s %s), hook %s %p", base,
                  version, result, fn, library_of(fn), symbol_at(fn), symbol, hook);
        }
        proc_checked++;
    }
    printf("{\"scenario\": \"table\", \"hooks\": %d, \"header_entries\": %d, "
           "\"proc_checked\": %d, \"checks\": %d, \"failures\": %d}\n",
           count, HEADER_COUNT, proc_checked, checks, failures);
    return failures ? 1 : 0;
}

/* ---- passthrough: what the shim does not hook stays the driver's ---- */

static void expect_driver_own(const char *symbol, void *linked) {
    void *via_handle = dlsym(libcuda, symbol);
    void *via_default = dlsym(RTLD_DEFAULT, symbol);
    CHECK(via_handle != NULL, "dlsym(libcuda.so.1, %s) is NULL", symbol);
    CHECK(strcmp(library_of(via_handle), "libcuda.so.1") == 0 &&
              strcmp(symbol_at(via_handle), symbol) == 0,
          "dlsym(libcuda.so.1, %s) = %p is %s in %s, not the driver's", symbol, via_handle,
          symbol_at(via_handle), library_of(via_handle));
    CHECK(via_handle == linked, "dlsym(libcuda.so.1, %s) = %p, linked %p", symbol, via_handle,
          linked);
    CHECK(via_default == linked, "dlsym(RTLD_DEFAULT, %s) = %p, linked %p", symbol,
          via_default, linked);
    CHECK(hook_index(symbol) < 0, "%s is hooked after all", symbol);
}

static int scenario_passthrough(void) {
    bind_shim();
    open_driver();
    expect_driver_own("cuCtxGetCurrent", (void *)cuCtxGetCurrent);
    expect_driver_own("cuEventRecord_ptsz", (void *)cuEventRecord_ptsz);
    expect_driver_own("cuStreamSynchronize", (void *)cuStreamSynchronize);
    expect_driver_own("cuEventElapsedTime_v2", (void *)cuEventElapsedTime_v2);
    expect_driver_own("fake_busy_ns", (void *)fake_busy_ns);
    expect_driver_own("fake_calls", (void *)fake_calls);
    /* cuGetProcAddress hands un-hooked entry points through as well. */
    void *fn = NULL;
    CUdriverProcAddressQueryResult status;
    CUresult result = get_proc_v2("cuCtxGetCurrent", &fn, CUDA_VERSION_NOW,
                                  CU_GET_PROC_ADDRESS_LEGACY_STREAM, &status);
    CHECK(result == CUDA_SUCCESS && fn == (void *)cuCtxGetCurrent,
          "cuGetProcAddress_v2(cuCtxGetCurrent) = %d fn %p (%s in %s)", result, fn,
          symbol_at(fn), library_of(fn));
    fn = NULL;
    result = get_proc_v2("cuEventRecord", &fn, CUDA_VERSION_NOW,
                         CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &status);
    CHECK(result == CUDA_SUCCESS && fn == (void *)cuEventRecord_ptsz,
          "cuGetProcAddress_v2(cuEventRecord, per-thread) = %d fn %p (%s in %s)", result, fn,
          symbol_at(fn), library_of(fn));
    /* A name the driver lacks stays missing, hooked base name or not: the shim must not
     * answer for an entry point the driver does not have. */
    dlerror();
    void *missing = dlsym(libcuda, "cuMemAlloc");
    CHECK(missing == NULL, "dlsym(libcuda.so.1, cuMemAlloc) = %p (%s in %s); the fake has no "
          "such export", missing, symbol_at(missing), library_of(missing));
    CHECK(dlerror() != NULL, "dlsym of a missing symbol leaves no dlerror()");
    missing = dlsym(libcuda, "cuNoSuchEntryPoint");
    CHECK(missing == NULL, "dlsym(libcuda.so.1, cuNoSuchEntryPoint) = %p", missing);
    fn = (void *)1;
    status = CU_GET_PROC_ADDRESS_SUCCESS;
    result = get_proc_v2("cuNoSuchEntryPoint", &fn, CUDA_VERSION_NOW,
                         CU_GET_PROC_ADDRESS_LEGACY_STREAM, &status);
    CHECK(result != CUDA_SUCCESS && fn == NULL && status == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND,
          "cuGetProcAddress_v2(cuNoSuchEntryPoint) = %d fn %p status %d", result, fn, status);
    /* Too old a version for any variant: the driver's answer, untouched. */
    fn = (void *)1;
    result = get_proc_v2("cuLaunchKernelEx", &fn, 11000, CU_GET_PROC_ADDRESS_LEGACY_STREAM,
                         &status);
    CHECK(fn == NULL || fn == hook_address("cuLaunchKernelEx"),
          "cuGetProcAddress_v2(cuLaunchKernelEx, 11000) = %d fn %p (%s in %s): neither the "
          "driver's refusal nor the hook", result, fn, symbol_at(fn), library_of(fn));
    printf("{\"scenario\": \"passthrough\", \"checks\": %d, \"failures\": %d}\n", checks,
           failures);
    return failures ? 1 : 0;
}

/* ---- ptsz: each variant, fetched through each path, runs the driver's own variant ---- */

typedef CUresult (*kernel_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                              unsigned, unsigned, CUstream, void **, void **);
typedef CUresult (*ex_fn)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*cooperative_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                                   unsigned, unsigned, unsigned, CUstream, void **);
typedef CUresult (*graph_fn)(CUgraphExec, CUstream);

struct launcher {
    const char *base;      /* the cuGetProcAddress name */
    const char *legacy;    /* the driver's two exports */
    const char *ptsz;
    void *linked[2];       /* what this program is linked to: legacy, _ptsz */
};

static const struct launcher launchers[] = {
    {"cuLaunchKernel", "cuLaunchKernel", "cuLaunchKernel_ptsz",
     {(void *)cuLaunchKernel, (void *)cuLaunchKernel_ptsz}},
    {"cuLaunchKernelEx", "cuLaunchKernelEx", "cuLaunchKernelEx_ptsz",
     {(void *)cuLaunchKernelEx, (void *)cuLaunchKernelEx_ptsz}},
    {"cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz",
     {(void *)cuLaunchCooperativeKernel, (void *)cuLaunchCooperativeKernel_ptsz}},
    {"cuGraphLaunch", "cuGraphLaunch", "cuGraphLaunch_ptsz",
     {(void *)cuGraphLaunch, (void *)cuGraphLaunch_ptsz}},
};
#define LAUNCHERS ((int)(sizeof launchers / sizeof launchers[0]))

static const char *const paths[] = {"linked", "dlsym_default", "dlsym_libcuda", "proc_v2",
                                    "proc_v1"};
#define PATHS ((int)(sizeof paths / sizeof paths[0]))

static void *fetch(const struct launcher *launcher, int path, int per_thread) {
    const char *symbol = per_thread ? launcher->ptsz : launcher->legacy;
    void *fn = NULL;
    CUdriverProcAddressQueryResult status;
    switch (path) {
    case 0:
        return launcher->linked[per_thread];
    case 1:
        return dlsym(RTLD_DEFAULT, symbol);
    case 2:
        return dlsym(libcuda, symbol);
    case 3:
        return get_proc_v2(launcher->base, &fn, CUDA_VERSION_NOW, flags_for(per_thread),
                           &status) == CUDA_SUCCESS ? fn : NULL;
    default:
        return get_proc(launcher->base, &fn, CUDA_VERSION_NOW, flags_for(per_thread)) ==
                       CUDA_SUCCESS ? fn : NULL;
    }
}

/* One 10 us launch on the default stream (NULL: legacy or per-thread by variant). */
static CUresult launch_with(const struct launcher *launcher, void *fn) {
    const uint64_t ns = 10000;
    if (strcmp(launcher->base, "cuLaunchKernelEx") == 0) {
        CUlaunchConfig config = {1, 1, 1, 1, 1, 1, 0, NULL, NULL, 0};
        return ((ex_fn)fn)(&config, FAKE_KERNEL(ns), NULL, NULL);
    }
    if (strcmp(launcher->base, "cuLaunchCooperativeKernel") == 0)
        return ((cooperative_fn)fn)(FAKE_KERNEL(ns), 1, 1, 1, 1, 1, 1, 0, NULL, NULL);
    if (strcmp(launcher->base, "cuGraphLaunch") == 0)
        return ((graph_fn)fn)(FAKE_GRAPH(ns), NULL);
    return ((kernel_fn)fn)(FAKE_KERNEL(ns), 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
}

static int scenario_ptsz(void) {
    bind_shim();
    open_driver();
    map_stats();
    make_primary_current(LINKED_CONTEXT_CALLS);
    CHECK(shim.enforcing(), "the shim does not enforce (no DILU_CONTROL?)");
    int launched = 0;
    for (int l = 0; l < LAUNCHERS; l++) {
        const struct launcher *launcher = &launchers[l];
        for (int path = 0; path < PATHS; path++) {
            for (int per_thread = 0; per_thread <= 1; per_thread++) {
                const char *want = per_thread ? launcher->ptsz : launcher->legacy;
                const char *other = per_thread ? launcher->legacy : launcher->ptsz;
                void *fn = fetch(launcher, path, per_thread);
                CHECK(fn != NULL && fn == hook_address(want),
                      "%s via %s is %p (%s in %s), hook %p", want, paths[path], fn,
                      symbol_at(fn), library_of(fn), hook_address(want));
                if (!fn)
                    continue;
                unsigned long long calls_want = fake_calls(want), calls_other = fake_calls(other);
                uint64_t admitted = stats_word(STATS_LAUNCHES);
                CUresult result = launch_with(launcher, fn);
                CHECK(result == CUDA_SUCCESS, "%s via %s returned %d", want, paths[path], result);
                launched += result == CUDA_SUCCESS;
                CHECK(fake_calls(want) == calls_want + 1,
                      "%s via %s: the driver's %s ran %llu times, expected once", want,
                      paths[path], want, fake_calls(want) - calls_want);
                CHECK(fake_calls(other) == calls_other,
                      "%s via %s: the driver's %s ran %llu times, expected never", want,
                      paths[path], other, fake_calls(other) - calls_other);
                CHECK(stats_word(STATS_LAUNCHES) == admitted + 1,
                      "%s via %s: the shim counted %llu launches, expected 1", want,
                      paths[path], (unsigned long long)(stats_word(STATS_LAUNCHES) - admitted));
            }
        }
    }
    OK(cuCtxSynchronize());
    printf("{\"scenario\": \"ptsz\", \"launched\": %d, \"checks\": %d, \"failures\": %d}\n",
           launched, checks, failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "table") == 0)
        return scenario_table();
    if (argc >= 2 && strcmp(argv[1], "passthrough") == 0)
        return scenario_passthrough();
    if (argc >= 2 && strcmp(argv[1], "ptsz") == 0)
        return scenario_ptsz();
    fprintf(stderr, "usage: %s table|passthrough|ptsz\n", argv[0]);
    return 2;
}
