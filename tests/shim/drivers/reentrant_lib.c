/* A shared library that looks the driver up from its constructor, the way a library with
 * static initialisers (a runtime, a profiler, a plugin) may: run before main when linked
 * into a program, or inside dlopen() when loaded later; either way with the dynamic
 * loader's lock held and, under LD_PRELOAD, before the shim has initialised.
 *
 * REENTRANT_SIGNAL_FD (optional): the constructor writes one byte to this descriptor once
 * it runs, then waits REENTRANT_PAUSE_MS before its cuGetProcAddress_v2 call; a test
 * thread uses the two to make its own first CUDA call while the loader's lock is held. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "dilu_cuda.h"

/* What the constructor found, for the program to check and call later. */
int reentrant_ctor_ran;
int reentrant_ctor_libcuda_was_loaded = -1; /* had anything (the shim) loaded it before? */
void *reentrant_ctor_launch;                /* dlsym(dlopen("libcuda.so.1"), "cuLaunchKernel") */
void *reentrant_ctor_launch_default;        /* dlsym(RTLD_DEFAULT, "cuLaunchKernel") */
void *reentrant_ctor_launch_ex;             /* cuGetProcAddress_v2("cuLaunchKernelEx") */
int reentrant_ctor_proc_result = -1;

typedef CUresult (*get_proc_v2_fn)(const char *, void **, int, cuuint64_t,
                                   CUdriverProcAddressQueryResult *);

__attribute__((constructor)) static void reentrant_ctor(void) {
    void *loaded = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    reentrant_ctor_libcuda_was_loaded = loaded != NULL;
    if (loaded)
        dlclose(loaded);
    void *libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!libcuda)
        return;
    reentrant_ctor_launch = dlsym(libcuda, "cuLaunchKernel");
    reentrant_ctor_launch_default = dlsym(RTLD_DEFAULT, "cuLaunchKernel");

    const char *fd = getenv("REENTRANT_SIGNAL_FD");
    if (fd && *fd) {
        char byte = 1;
        if (write(atoi(fd), &byte, 1) != 1)
            return;
        const char *pause = getenv("REENTRANT_PAUSE_MS");
        long ms = pause && *pause ? atol(pause) : 0;
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }

    get_proc_v2_fn get_proc = (get_proc_v2_fn)dlsym(libcuda, "cuGetProcAddress_v2");
    CUdriverProcAddressQueryResult status;
    if (get_proc)
        reentrant_ctor_proc_result =
            get_proc("cuLaunchKernelEx", &reentrant_ctor_launch_ex, 12080,
                     CU_GET_PROC_ADDRESS_LEGACY_STREAM, &status);
    reentrant_ctor_ran = 1;
}
