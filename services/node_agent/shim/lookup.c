/* How callers reach the hooks. Three paths lead into the driver, and all of them must
 * land on the same hook:
 *   1. direct linking: the preloaded shim's exports come before libcuda's;
 *   2. dlopen("libcuda.so.1") + dlsym: dlsym is hooked and swaps in the hook when the
 *      symbol it found lives in libcuda;
 *   3. cuGetProcAddress(_v2), how CUDA >= 11.3 runtimes and PyTorch find the driver: the
 *      driver picks the variant (_v2, _ptsz) for the caller's version and flags, and the
 *      shim answers with its hook for exactly that variant. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

typedef void *(*dlsym_fn)(void *, const char *);

struct hook {
    const char *symbol;   /* the driver's exported name of this variant */
    const char *base;     /* the name callers give cuGetProcAddress */
    int version;          /* first CUDA version (1000 * major + 10 * minor) with it */
    int per_thread;       /* the _ptsz variant (per-thread default stream) */
    void *address;
    void **real;
};

#define HOOK(symbol, base, version, per_thread) \
    {#symbol, #base, version, per_thread, (void *)symbol, (void **)&dilu_real.symbol}

static const struct hook hooks[] = {
    HOOK(cuLaunchKernel, cuLaunchKernel, 4000, 0),
    HOOK(cuLaunchKernel_ptsz, cuLaunchKernel, 7000, 1),
    HOOK(cuLaunchKernelEx, cuLaunchKernelEx, 11060, 0),
    HOOK(cuLaunchKernelEx_ptsz, cuLaunchKernelEx, 11060, 1),
    HOOK(cuLaunchCooperativeKernel, cuLaunchCooperativeKernel, 9000, 0),
    HOOK(cuLaunchCooperativeKernel_ptsz, cuLaunchCooperativeKernel, 9000, 1),
    HOOK(cuGraphLaunch, cuGraphLaunch, 10000, 0),
    HOOK(cuGraphLaunch_ptsz, cuGraphLaunch, 10000, 1),
    HOOK(cuMemAlloc_v2, cuMemAlloc, 3020, 0),
    HOOK(cuMemAllocPitch_v2, cuMemAllocPitch, 3020, 0),
    HOOK(cuMemAllocManaged, cuMemAllocManaged, 6000, 0),
    HOOK(cuMemAllocAsync, cuMemAllocAsync, 11020, 0),
    HOOK(cuMemAllocAsync_ptsz, cuMemAllocAsync, 11020, 1),
    HOOK(cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync, 11020, 0),
    HOOK(cuMemAllocFromPoolAsync_ptsz, cuMemAllocFromPoolAsync, 11020, 1),
    HOOK(cuMemCreate, cuMemCreate, 10020, 0),
    HOOK(cuArrayCreate_v2, cuArrayCreate, 3020, 0),
    HOOK(cuArray3DCreate_v2, cuArray3DCreate, 3020, 0),
    HOOK(cuMemFree_v2, cuMemFree, 3020, 0),
    HOOK(cuMemFreeAsync, cuMemFreeAsync, 11020, 0),
    HOOK(cuMemFreeAsync_ptsz, cuMemFreeAsync, 11020, 1),
    HOOK(cuMemRelease, cuMemRelease, 10020, 0),
    HOOK(cuArrayDestroy, cuArrayDestroy, 2000, 0),
    HOOK(cuMemGetInfo_v2, cuMemGetInfo, 3020, 0),
    HOOK(cuDeviceTotalMem_v2, cuDeviceTotalMem, 3020, 0),
    HOOK(cuGetProcAddress, cuGetProcAddress, 11030, 0),
    HOOK(cuGetProcAddress_v2, cuGetProcAddress, 12000, 0),
};

#define HOOK_COUNT ((int)(sizeof hooks / sizeof hooks[0]))

static _Atomic(dlsym_fn) next_dlsym;
static _Atomic(void *) libcuda;

/* glibc's own dlsym, found without calling dlsym (which is us). */
static dlsym_fn real_dlsym(void) {
    dlsym_fn found = atomic_load_explicit(&next_dlsym, memory_order_acquire);
    if (found)
        return found;
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !found; i++)
        found = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (!found) {
        fprintf(stderr, "dilu-shim: cannot find the C library's dlsym\n");
        abort();
    }
    atomic_store_explicit(&next_dlsym, found, memory_order_release);
    return found;
}

void *dilu_real_dlsym(void *handle, const char *symbol) { return real_dlsym()(handle, symbol); }

void *dilu_libcuda(void) {
    void *handle = atomic_load(&libcuda);
    if (handle)
        return handle;
    const char *path = getenv("DILU_REAL_LIBCUDA");
    handle = dlopen(path && *path ? path : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    void *expected = NULL;
    if (handle && !atomic_compare_exchange_strong(&libcuda, &expected, handle)) {
        dlclose(handle);  /* another thread won; both point at the same library */
        handle = expected;
    }
    return handle;
}

static const struct hook *hook_named(const char *symbol) {
    for (int i = 0; i < HOOK_COUNT; i++)
        if (strcmp(hooks[i].symbol, symbol) == 0)
            return &hooks[i];
    return NULL;
}

void *dilu_hook_by_symbol(const char *symbol) {
    const struct hook *hook = hook_named(symbol);
    return hook ? hook->address : NULL;
}

static void adopt_real(const struct hook *hook, void *real) {
    void *expected = NULL;
    __atomic_compare_exchange_n(hook->real, &expected, real, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
}

/* DILU_SHIM_DEBUG=1 logs every driver lookup: how to see which entry points a runtime
 * really uses. */
static void debug_lookup(const char *how, const char *symbol, int cuda_version, uint64_t flags,
                         void *real, void *given) {
    static int enabled = -1;
    if (enabled < 0) {
        const char *debug = getenv("DILU_SHIM_DEBUG");
        enabled = debug && *debug && *debug != '0';
    }
    if (enabled)
        fprintf(stderr, "dilu-shim: %s %s version %d flags %llu -> %s\n", how, symbol,
                cuda_version, (unsigned long long)flags,
                !given ? "missing" : given == real ? "driver" : "hooked");
}

void *dilu_hook_for_proc(const char *base, int cuda_version, uint64_t flags, void *real) {
    /* The driver already chose the variant: recognise it by address. */
    for (int i = 0; i < HOOK_COUNT; i++)
        if (__atomic_load_n(hooks[i].real, __ATOMIC_ACQUIRE) == real)
            return hooks[i].address;
    /* A driver that hands out other addresses than its exports: choose the variant the
     * same way it does, by name, version and stream flavour. */
    int per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    int has_per_thread = 0;
    for (int i = 0; i < HOOK_COUNT; i++)
        has_per_thread |= strcmp(hooks[i].base, base) == 0 && hooks[i].per_thread;
    const struct hook *best = NULL;
    for (int i = 0; i < HOOK_COUNT; i++) {
        const struct hook *hook = &hooks[i];
        if (strcmp(hook->base, base) != 0 || hook->version > cuda_version ||
            hook->per_thread != (per_thread && has_per_thread))
            continue;
        if (!best || hook->version > best->version)
            best = hook;
    }
    if (!best)
        return real;  /* an older variant than any the shim hooks: leave it alone */
    /* The driver's answer for this variant wins over its exported symbol: it is what the
     * caller would have called without the shim. */
    __atomic_store_n(best->real, real, __ATOMIC_RELEASE);
    debug_lookup("cuGetProcAddress (not the exported address)", base, cuda_version, flags,
                 real, best->address);
    return best->address;
}

static int in_libcuda(void *address) {
    Dl_info info;
    if (!dladdr(address, &info) || !info.dli_fname)
        return 0;
    const char *name = strrchr(info.dli_fname, '/');
    name = name ? name + 1 : info.dli_fname;
    return strncmp(name, "libcuda.so", 10) == 0;
}

DILU_EXPORT void *dlsym(void *handle, const char *symbol) {
    dlsym_fn next = real_dlsym();
    /* RTLD_NEXT is relative to the caller: a tail call keeps the caller's return address,
     * which is what glibc looks at (tests/shim checks this still holds). */
    if (handle == RTLD_NEXT)
        return next(handle, symbol);
    void *found = next(handle, symbol);
    if (!found || symbol[0] != 'c' || symbol[1] != 'u')
        return found;
    const struct hook *hook = hook_named(symbol);
    if (!hook || !in_libcuda(found))
        return found;
    adopt_real(hook, found);
    debug_lookup("dlsym", symbol, 0, 0, found, hook->address);
    return hook->address;
}

DILU_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cuda_version,
                                      cuuint64_t flags) {
    dilu_init();
    if (!dilu_real.cuGetProcAddress)
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult result = dilu_real.cuGetProcAddress(symbol, pfn, cuda_version, flags);
    if (result == CUDA_SUCCESS && symbol && pfn && *pfn) {
        void *real = *pfn;
        *pfn = dilu_hook_for_proc(symbol, cuda_version, flags, real);
        debug_lookup("cuGetProcAddress", symbol, cuda_version, flags, real, *pfn);
    }
    return result;
}

DILU_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cuda_version,
                                         cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *status) {
    dilu_init();
    if (!dilu_real.cuGetProcAddress_v2)
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult result = dilu_real.cuGetProcAddress_v2(symbol, pfn, cuda_version, flags, status);
    if (result == CUDA_SUCCESS && symbol && pfn && *pfn) {
        void *real = *pfn;
        *pfn = dilu_hook_for_proc(symbol, cuda_version, flags, real);
        debug_lookup("cuGetProcAddress_v2", symbol, cuda_version, flags, real, *pfn);
    }
    return result;
}

/* Introspection for tests and the agent: which hooks exist, and is the shim enforcing. */
DILU_EXPORT int dilu_shim_hook_count(void) { return HOOK_COUNT; }
DILU_EXPORT const char *dilu_shim_hook_symbol(int i) { return hooks[i].symbol; }
DILU_EXPORT const char *dilu_shim_hook_base(int i) { return hooks[i].base; }
DILU_EXPORT int dilu_shim_hook_version(int i) { return hooks[i].version; }
DILU_EXPORT int dilu_shim_hook_per_thread(int i) { return hooks[i].per_thread; }
DILU_EXPORT void *dilu_shim_hook_address(int i) { return hooks[i].address; }
DILU_EXPORT int dilu_shim_enforcing(void) {
    dilu_init();
    return dilu_enforcing();
}
