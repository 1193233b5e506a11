/* The shim's dlsym hook and lazy start-up under re-entrant and concurrent use. Not linked
 * against libcuda: like a runtime, it dlopens libcuda.so.1 and looks everything up. Run
 * with LD_PRELOAD=libdilu_shim.so and LD_LIBRARY_PATH=<the fake's directory>.
 *
 *   reentrant constructor     (built with -DWITH_CTOR_LIB, linked to reentrant_lib.c) the
 *                             library's constructor looked cuLaunchKernel up before main
 *                             and before the shim ever ran; main calls what it got, under
 *                             enforcement
 *   reentrant threads         8 threads, released together at start-up, make the process's
 *                             first dlsym, cuGetProcAddress_v2 and launch calls
 *   reentrant dlopen_race LIB one thread dlopens LIB (reentrant_lib.c) whose constructor,
 *                             holding the loader's lock, calls cuGetProcAddress_v2 while
 *                             this thread makes the process's first hooked call (also runs
 *                             without the shim, as the control)
 *   reentrant rtld_next       (built with -DWITH_WRAP_LIB, linked to wrap_lib.c) a library
 *                             loaded after the shim wraps getpid with dlsym(RTLD_NEXT); and
 *                             dlsym(RTLD_NEXT, "dlsym") from the program is usable
 *
 * A run that takes longer than REENTRANT_DEADLINE_S (default 10) seconds is a deadlock: it
 * prints a FAIL line and exits 3. Otherwise one JSON line; FAIL lines and exit 1 on a
 * broken expectation. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fake_cuda.h"
#include "driver_check.h"

#define KERNEL_NS 20000ull

typedef CUresult (*kernel_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                              unsigned, unsigned, CUstream, void **, void **);
typedef CUresult (*ex_fn)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*graph_fn)(CUgraphExec, CUstream);
typedef CUresult (*get_proc_v2_fn)(const char *, void **, int, cuuint64_t,
                                   CUdriverProcAddressQueryResult *);

/* ---- deadlock watchdog ---- */

static const char *scenario = "?";

static void deadline_passed(int sig) {
    (void)sig;
    static const char text[] = "FAIL deadline: no progress (deadlock?) in scenario ";
    if (write(1, text, sizeof text - 1) < 0 ||
        write(1, scenario, strlen(scenario)) < 0 || write(1, "\n", 1) < 0)
        _exit(4);
    _exit(3);
}

static void arm_deadline(void) {
    const char *seconds = getenv("REENTRANT_DEADLINE_S");
    signal(SIGALRM, deadline_passed);
    alarm(seconds && *seconds ? (unsigned)atoi(seconds) : 10);
}

/* ---- the shim's introspection ---- */

static int (*hook_count)(void);
static const char *(*hook_symbol)(int);
static void *(*hook_address_at)(int);
static int (*shim_enforcing)(void);

/* Nonzero when the shim is loaded (its introspection functions are found). */
static int find_shim(void) {
    *(void **)&hook_count = dlsym(RTLD_DEFAULT, "dilu_shim_hook_count");
    *(void **)&hook_symbol = dlsym(RTLD_DEFAULT, "dilu_shim_hook_symbol");
    *(void **)&hook_address_at = dlsym(RTLD_DEFAULT, "dilu_shim_hook_address");
    *(void **)&shim_enforcing = dlsym(RTLD_DEFAULT, "dilu_shim_enforcing");
    return hook_count && hook_symbol && hook_address_at && shim_enforcing;
}

static void bind_shim(void) {
    if (!find_shim()) {
        printf("FAIL bind_shim: the shim's introspection functions are missing "
               "(is libdilu_shim.so preloaded?)\n");
        exit(1);
    }
}

static void *hook(const char *symbol) {
    for (int i = 0; i < hook_count(); i++)
        if (strcmp(hook_symbol(i), symbol) == 0)
            return hook_address_at(i);
    return NULL;
}

/* ---- the driver's un-hooked entry points, looked up by name ---- */

struct api {
    CUresult (*init)(unsigned int);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*primary_ctx_retain)(CUcontext *, CUdevice);
    CUresult (*ctx_set_current)(CUcontext);
    CUresult (*ctx_synchronize)(void);
    unsigned long long (*calls)(const char *);
};

static struct api bind_api(void *libcuda) {
    struct api api;
    *(void **)&api.init = dlsym(libcuda, "cuInit");
    *(void **)&api.device_get = dlsym(libcuda, "cuDeviceGet");
    *(void **)&api.primary_ctx_retain = dlsym(libcuda, "cuDevicePrimaryCtxRetain");
    *(void **)&api.ctx_set_current = dlsym(libcuda, "cuCtxSetCurrent");
    *(void **)&api.ctx_synchronize = dlsym(libcuda, "cuCtxSynchronize");
    *(void **)&api.calls = dlsym(libcuda, "fake_calls");
    if (!api.init || !api.device_get || !api.primary_ctx_retain || !api.ctx_set_current ||
        !api.ctx_synchronize || !api.calls) {
        printf("FAIL bind_api: the fake's entry points are missing\n");
        exit(1);
    }
    return api;
}

static CUresult launch_kernel(void *fn, CUstream stream) {
    return ((kernel_fn)fn)(FAKE_KERNEL(KERNEL_NS), 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL);
}

/* ---- constructor: lookups made before main, before the shim initialised ---- */

#ifdef WITH_CTOR_LIB
extern int reentrant_ctor_ran;
extern int reentrant_ctor_libcuda_was_loaded;
extern void *reentrant_ctor_launch;
extern void *reentrant_ctor_launch_default;
extern void *reentrant_ctor_launch_ex;
extern int reentrant_ctor_proc_result;

static int scenario_constructor(void) {
    bind_shim();
    map_stats();
    CHECK(reentrant_ctor_ran, "the library's constructor did not finish");
    CHECK(reentrant_ctor_libcuda_was_loaded == 0,
          "libcuda.so.1 was loaded before the constructor ran (%d): the shim had started",
          reentrant_ctor_libcuda_was_loaded);
    CHECK(reentrant_ctor_launch == hook("cuLaunchKernel"),
          "dlsym(libcuda.so.1, cuLaunchKernel) in a constructor gave %p (%s), hook %p",
          reentrant_ctor_launch, library_of(reentrant_ctor_launch), hook("cuLaunchKernel"));
    CHECK(reentrant_ctor_launch_default == hook("cuLaunchKernel"),
          "dlsym(RTLD_DEFAULT, cuLaunchKernel) in a constructor gave %p (%s)",
          reentrant_ctor_launch_default, library_of(reentrant_ctor_launch_default));
    CHECK(reentrant_ctor_proc_result == CUDA_SUCCESS &&
              reentrant_ctor_launch_ex == hook("cuLaunchKernelEx"),
          "cuGetProcAddress_v2(cuLaunchKernelEx) in a constructor = %d, %p (%s)",
          reentrant_ctor_proc_result, reentrant_ctor_launch_ex,
          library_of(reentrant_ctor_launch_ex));
    struct api api = bind_api(open_libcuda());
    make_primary_current(CONTEXT_CALLS_OF(api));
    CHECK(shim_enforcing(), "the shim does not enforce (no DILU_CONTROL?)");
    const int launches = 20;
    unsigned long long calls = api.calls("cuLaunchKernel"), calls_ex = api.calls("cuLaunchKernelEx");
    uint64_t admitted = stats_word(STATS_LAUNCHES);
    int launched = 0;
    for (int i = 0; reentrant_ctor_launch && i < launches; i++) {
        CUresult result = launch_kernel(reentrant_ctor_launch, NULL);
        CHECK(result == CUDA_SUCCESS, "launch %d through the constructor's pointer: %d", i, result);
        launched += result == CUDA_SUCCESS;
    }
    CUlaunchConfig config = {1, 1, 1, 1, 1, 1, 0, NULL, NULL, 0};
    if (reentrant_ctor_launch_ex) {
        CUresult result = ((ex_fn)reentrant_ctor_launch_ex)(&config, FAKE_KERNEL(KERNEL_NS), NULL, NULL);
        CHECK(result == CUDA_SUCCESS, "cuLaunchKernelEx through the constructor's pointer: %d", result);
        launched += result == CUDA_SUCCESS;
    }
    OK(api.ctx_synchronize());
    CHECK(api.calls("cuLaunchKernel") - calls == (unsigned long long)launches,
          "the driver ran cuLaunchKernel %llu times, expected %d",
          api.calls("cuLaunchKernel") - calls, launches);
    CHECK(api.calls("cuLaunchKernelEx") - calls_ex == 1, "the driver ran cuLaunchKernelEx %llu times",
          api.calls("cuLaunchKernelEx") - calls_ex);
    uint64_t counted = stats_word(STATS_LAUNCHES) - admitted;
    CHECK(counted == (uint64_t)launched, "the shim admitted %llu launches, expected %d",
          (unsigned long long)counted, launched);
    printf("{\"scenario\": \"constructor\", \"launched\": %d, \"admitted\": %llu, "
           "\"failures\": %d}\n", launched, (unsigned long long)counted, atomic_load(&failures));
    return atomic_load(&failures) ? 1 : 0;
}
#endif

/* ---- threads: the process's first lookups and launches, all at once ---- */

#define THREADS 8
#define THREAD_LAUNCHES 24

#define HEADER_NAME(name, params) #name,
static const char *const hooked[] = {
    DILU_HOOKED_LAUNCHES(HEADER_NAME) DILU_HOOKED_MEMORY(HEADER_NAME)
    DILU_HOOKED_LOOKUPS(HEADER_NAME)};
#define HOOKED ((int)(sizeof hooked / sizeof hooked[0]))

/* cuGetProcAddress_v2 requests each thread makes, and the hook each must give. */
static const struct {
    const char *base;
    int per_thread;
    const char *want;
} procs[] = {
    {"cuLaunchKernel", 0, "cuLaunchKernel"},       {"cuLaunchKernel", 1, "cuLaunchKernel_ptsz"},
    {"cuGraphLaunch", 1, "cuGraphLaunch_ptsz"},    {"cuMemAlloc", 0, "cuMemAlloc_v2"},
    {"cuMemFree", 0, "cuMemFree_v2"},              {"cuGetProcAddress", 0, "cuGetProcAddress_v2"},
    {"cuMemGetInfo", 0, "cuMemGetInfo_v2"},
};
#define PROCS ((int)(sizeof procs / sizeof procs[0]))

struct worker {
    pthread_t thread;
    void *first;                 /* the thread's very first call: dlsym(RTLD_DEFAULT, ...) */
    void *via_default[HOOKED];
    void *via_handle[HOOKED];
    void *via_proc[PROCS];
    int launched;
    int allocated;
};

static struct worker workers[THREADS];
static pthread_barrier_t start_line;

static void *worker_main(void *arg) {
    struct worker *w = arg;
    pthread_barrier_wait(&start_line);
    w->first = dlsym(RTLD_DEFAULT, "cuLaunchKernel");
    void *libcuda = open_libcuda();
    for (int k = 0; k < HOOKED; k++) {
        w->via_handle[k] = dlsym(libcuda, hooked[k]);
        w->via_default[k] = dlsym(RTLD_DEFAULT, hooked[k]);
    }
    get_proc_v2_fn get_proc = (get_proc_v2_fn)dlsym(libcuda, "cuGetProcAddress_v2");
    for (int p = 0; get_proc && p < PROCS; p++) {
        CUdriverProcAddressQueryResult status;
        cuuint64_t flags = procs[p].per_thread ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
                                               : CU_GET_PROC_ADDRESS_LEGACY_STREAM;
        if (get_proc(procs[p].base, &w->via_proc[p], 12080, flags, &status) != CUDA_SUCCESS)
            w->via_proc[p] = NULL;
    }
    struct api api = bind_api(libcuda);
    make_primary_current(CONTEXT_CALLS_OF(api));
    /* Launch through all three kinds of pointer this thread got. */
    void *launchers[3] = {w->via_handle[0], w->via_proc[1], w->via_default[0]};
    for (int i = 0; i < THREAD_LAUNCHES; i++) {
        void *fn = launchers[i % 3];
        if (fn && launch_kernel(fn, NULL) == CUDA_SUCCESS)
            w->launched++;
    }
    graph_fn graph = (graph_fn)w->via_proc[2];
    if (graph && graph(FAKE_GRAPH(KERNEL_NS), NULL) == CUDA_SUCCESS)
        w->launched++;
    CUresult (*alloc)(CUdeviceptr *, size_t) = (CUresult(*)(CUdeviceptr *, size_t))w->via_proc[3];
    CUresult (*release)(CUdeviceptr) = (CUresult(*)(CUdeviceptr))w->via_proc[4];
    CUdeviceptr pointer = 0;
    if (alloc && release && alloc(&pointer, 1 << 20) == CUDA_SUCCESS) {
        w->allocated = 1;
        OK(release(pointer));
    }
    OK(api.ctx_synchronize());
    dlclose(libcuda);
    return NULL;
}

static int scenario_threads(void) {
    map_stats();
    pthread_barrier_init(&start_line, NULL, THREADS);
    for (int t = 0; t < THREADS; t++)
        if (pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]) != 0) {
            printf("FAIL pthread_create\n");
            return 1;
        }
    for (int t = 0; t < THREADS; t++)
        pthread_join(workers[t].thread, NULL);
    /* Only now look at the shim: its first calls were the threads'. */
    bind_shim();
    CHECK(shim_enforcing(), "the shim does not enforce (no DILU_CONTROL?)");
    int launched = 0, allocated = 0;
    for (int t = 0; t < THREADS; t++) {
        struct worker *w = &workers[t];
        CHECK(w->first == hook("cuLaunchKernel"), "thread %d: first dlsym gave %p (%s)", t,
              w->first, library_of(w->first));
        for (int k = 0; k < HOOKED; k++) {
            CHECK(w->via_handle[k] == hook(hooked[k]),
                  "thread %d: dlsym(libcuda.so.1, %s) = %p (%s), hook %p", t, hooked[k],
                  w->via_handle[k], library_of(w->via_handle[k]), hook(hooked[k]));
            CHECK(w->via_default[k] == hook(hooked[k]),
                  "thread %d: dlsym(RTLD_DEFAULT, %s) = %p (%s), hook %p", t, hooked[k],
                  w->via_default[k], library_of(w->via_default[k]), hook(hooked[k]));
        }
        for (int p = 0; p < PROCS; p++)
            CHECK(w->via_proc[p] == hook(procs[p].want),
                  "thread %d: cuGetProcAddress_v2(%s, %s) = %p (%s), hook %s %p", t,
                  procs[p].base, procs[p].per_thread ? "per-thread" : "legacy", w->via_proc[p],
                  library_of(w->via_proc[p]), procs[p].want, hook(procs[p].want));
        CHECK(w->launched == THREAD_LAUNCHES + 1, "thread %d launched %d of %d", t, w->launched,
              THREAD_LAUNCHES + 1);
        CHECK(w->allocated, "thread %d could not allocate", t);
        launched += w->launched;
        allocated += w->allocated;
    }
    uint64_t admitted = stats_word(STATS_LAUNCHES);
    CHECK(admitted == (uint64_t)launched, "the shim admitted %llu launches, the threads made %d",
          (unsigned long long)admitted, launched);
    CHECK(stats_word(STATS_MEMORY_USED) == 0, "%llu bytes still charged after every free",
          (unsigned long long)stats_word(STATS_MEMORY_USED));
    printf("{\"scenario\": \"threads\", \"threads\": %d, \"launched\": %d, \"admitted\": %llu, "
           "\"allocated\": %d, \"failures\": %d}\n", THREADS, launched,
           (unsigned long long)admitted, allocated, atomic_load(&failures));
    return atomic_load(&failures) ? 1 : 0;
}

/* ---- dlopen_race: a constructor's CUDA call against another thread's first call ---- */

static const char *race_library;
static void *race_handle;

static void *race_loader(void *unused) {
    (void)unused;
    race_handle = dlopen(race_library, RTLD_NOW | RTLD_LOCAL);
    return NULL;
}

static int scenario_dlopen_race(void) {
    if (getenv("DILU_STATS"))
        map_stats();
    /* Everything this thread calls later is looked up first: dlsym alone does not start
     * the shim. */
    void *libcuda = open_libcuda();
    struct api api = bind_api(libcuda);
    void *mem_get_info = dlsym(libcuda, "cuMemGetInfo_v2");
    void *launch = dlsym(libcuda, "cuLaunchKernel");
    if (!mem_get_info || !launch) {
        printf("FAIL dlsym\n");
        return 1;
    }
    int signal_pipe[2];
    if (pipe(signal_pipe) != 0) {
        printf("FAIL pipe\n");
        return 1;
    }
    char fd[16];
    snprintf(fd, sizeof fd, "%d", signal_pipe[1]);
    setenv("REENTRANT_SIGNAL_FD", fd, 1);
    if (!getenv("REENTRANT_PAUSE_MS"))
        setenv("REENTRANT_PAUSE_MS", "100", 1);
    pthread_t loader;
    pthread_create(&loader, NULL, race_loader, NULL);
    char byte;
    /* The constructor is running: the loader's lock is held until it returns. */
    if (read(signal_pipe[0], &byte, 1) != 1) {
        printf("FAIL the constructor never signalled\n");
        return 1;
    }
    make_primary_current(CONTEXT_CALLS_OF(api));
    size_t free_bytes = 0, total_bytes = 0;
    OK(((CUresult(*)(size_t *, size_t *))mem_get_info)(&free_bytes, &total_bytes));
    OK(launch_kernel(launch, NULL));
    pthread_join(loader, NULL);
    CHECK(race_handle != NULL, "dlopen(%s): %s", race_library, dlerror());
    int *ran = race_handle ? dlsym(race_handle, "reentrant_ctor_ran") : NULL;
    void **launch_ex = race_handle ? dlsym(race_handle, "reentrant_ctor_launch_ex") : NULL;
    CHECK(ran && *ran, "the constructor did not finish");
    /* Without the shim (the control run) the constructor gets the driver's own function. */
    int shim = find_shim();
    if (shim)
        CHECK(launch_ex && *launch_ex == hook("cuLaunchKernelEx"),
              "the constructor's cuGetProcAddress_v2 gave %p", launch_ex ? *launch_ex : NULL);
    else
        CHECK(launch_ex && *launch_ex == dlsym(libcuda, "cuLaunchKernelEx"),
              "the constructor's cuGetProcAddress_v2 gave %p", launch_ex ? *launch_ex : NULL);
    OK(api.ctx_synchronize());
    printf("{\"scenario\": \"dlopen_race\", \"shim\": %s, \"admitted\": %llu, "
           "\"failures\": %d}\n", shim ? "true" : "false",
           stats_page ? (unsigned long long)stats_word(STATS_LAUNCHES) : 0ull,
           atomic_load(&failures));
    return atomic_load(&failures) ? 1 : 0;
}

/* ---- rtld_next: RTLD_NEXT stays relative to whoever called dlsym ---- */

#ifdef WITH_WRAP_LIB
extern unsigned long wrap_getpid_calls;
extern int wrap_recursed;
extern void *wrap_next_getpid;

typedef void *(*dlsym_fn)(void *, const char *);

static int scenario_rtld_next(void) {
    /* The wrapper's dlsym(RTLD_NEXT) is the process's first call into the shim's dlsym. */
    pid_t real = (pid_t)syscall(SYS_getpid);
    pid_t pid = getpid();
    bind_shim();
    CHECK(wrap_getpid_calls >= 1, "getpid() did not go through the wrapping library");
    CHECK(!wrap_recursed, "the wrapper's dlsym(RTLD_NEXT, \"getpid\") found the wrapper itself "
          "(%p, %s): RTLD_NEXT was taken relative to the shim, not the caller",
          wrap_next_getpid, library_of(wrap_next_getpid));
    CHECK(pid == real, "getpid() = %d, the kernel says %d", (int)pid, (int)real);
    CHECK(strncmp(library_of(wrap_next_getpid), "libc.so", 7) == 0,
          "the wrapper's dlsym(RTLD_NEXT, \"getpid\") is in %s, not the C library",
          library_of(wrap_next_getpid));

    /* (d) dlsym(RTLD_NEXT, "dlsym") from the program, and using what it gives. */
    dlsym_fn next_dlsym = (dlsym_fn)dlsym(RTLD_NEXT, "dlsym");
    CHECK(next_dlsym != NULL, "dlsym(RTLD_NEXT, \"dlsym\") is NULL: %s", dlerror());
    void *libcuda = open_libcuda();
    if (next_dlsym) {
        void *found = next_dlsym(libcuda, "cuLaunchKernel");
        CHECK(found == hook("cuLaunchKernel"), "next dlsym(libcuda.so.1, cuLaunchKernel) = %p (%s)",
              found, library_of(found));
        found = next_dlsym(libcuda, "cuCtxGetCurrent");
        CHECK(found != NULL && strcmp(library_of(found), "libcuda.so.1") == 0,
              "next dlsym(libcuda.so.1, cuCtxGetCurrent) = %p (%s)", found, library_of(found));
        found = next_dlsym(RTLD_DEFAULT, "getpid");
        CHECK(found == (void *)getpid, "next dlsym(RTLD_DEFAULT, getpid) = %p (%s), linked %p",
              found, library_of(found), (void *)getpid);
        /* Through the pointer, RTLD_NEXT is still relative to this program. */
        found = next_dlsym(RTLD_NEXT, "getpid");
        CHECK(found == (void *)getpid, "next dlsym(RTLD_NEXT, getpid) = %p (%s), linked %p",
              found, library_of(found), (void *)getpid);
    }
    /* The shim comes right after the program: its hook is the program's next cuLaunchKernel,
     * what an interposer in the program forwarding with RTLD_NEXT should call. */
    void *next_launch = dlsym(RTLD_NEXT, "cuLaunchKernel");
    CHECK(next_launch == hook("cuLaunchKernel"), "dlsym(RTLD_NEXT, cuLaunchKernel) = %p (%s)",
          next_launch, library_of(next_launch));
    void *next_getpid = dlsym(RTLD_NEXT, "getpid");
    CHECK(next_getpid == (void *)getpid, "dlsym(RTLD_NEXT, getpid) from the program = %p (%s)",
          next_getpid, library_of(next_getpid));
    printf("{\"scenario\": \"rtld_next\", \"pid\": %d, \"wrapper_calls\": %lu, "
           "\"next_dlsym_in\": \"%s\", \"failures\": %d}\n", (int)pid, wrap_getpid_calls,
           library_of((void *)next_dlsym), atomic_load(&failures));
    return atomic_load(&failures) ? 1 : 0;
}
#endif

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2)
        scenario = argv[1];
    arm_deadline();
#ifdef WITH_CTOR_LIB
    if (argc >= 2 && strcmp(argv[1], "constructor") == 0)
        return scenario_constructor();
#endif
#ifdef WITH_WRAP_LIB
    if (argc >= 2 && strcmp(argv[1], "rtld_next") == 0)
        return scenario_rtld_next();
#endif
    if (argc >= 2 && strcmp(argv[1], "threads") == 0)
        return scenario_threads();
    if (argc >= 3 && strcmp(argv[1], "dlopen_race") == 0) {
        race_library = argv[2];
        return scenario_dlopen_race();
    }
    fprintf(stderr, "usage: %s constructor|threads|rtld_next|dlopen_race LIB\n", argv[0]);
    return 2;
}
