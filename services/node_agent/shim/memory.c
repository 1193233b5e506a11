/* The memory quota: every allocation path reserves its bytes against the GPU's limit on
 * the shared stats page before the driver is asked, and commits or rolls back after.
 * Reserving first means two processes of one instance can never both pass the limit.
 * Allocation is not the launch path, so a mutex guards the table of live allocations. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "shim.h"

#define ALLOCATION_SLOTS 65536
#define PITCH_ALIGNMENT 512

enum kind { KIND_NONE, KIND_POINTER, KIND_HANDLE, KIND_ARRAY };

struct allocation {
    uint64_t key;
    uint64_t bytes;
    int memory_slot;
    int kind;
};

static struct allocation table[ALLOCATION_SLOTS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

struct charge {
    void *page;       /* NULL: nothing was charged */
    int memory_slot;
    uint64_t bytes;
};

static size_t home(uint64_t key, int kind) {
    return (size_t)(((key >> 8) ^ (uint64_t)kind) * 0x9E3779B97F4A7C15ull >> 48) % ALLOCATION_SLOTS;
}

/* Linear probing with deletion by backward shift (no tombstones): a lookup of an unknown
 * pointer stops at the first empty slot however long the process has been churning. */
static size_t live_allocations;

static int remember(uint64_t key, int kind, uint64_t bytes, int memory_slot) {
    pthread_mutex_lock(&table_lock);
    int stored = 0;
    /* Keep a slot free so that every probe sequence ends. */
    if (live_allocations < ALLOCATION_SLOTS - 1) {
        size_t i = home(key, kind);
        while (table[i].kind != KIND_NONE)
            i = (i + 1) % ALLOCATION_SLOTS;
        table[i] = (struct allocation){key, bytes, memory_slot, kind};
        live_allocations++;
        stored = 1;
    }
    pthread_mutex_unlock(&table_lock);
    return stored;
}

static int forget(uint64_t key, int kind, struct allocation *out) {
    pthread_mutex_lock(&table_lock);
    size_t i = home(key, kind);
    while (table[i].kind != KIND_NONE && !(table[i].kind == kind && table[i].key == key))
        i = (i + 1) % ALLOCATION_SLOTS;
    int found = table[i].kind != KIND_NONE;
    if (found) {
        *out = table[i];
        /* Pull later entries of the run back over the hole unless that would move one
         * before its home slot. */
        size_t hole = i;
        for (size_t j = (i + 1) % ALLOCATION_SLOTS; table[j].kind != KIND_NONE;
             j = (j + 1) % ALLOCATION_SLOTS) {
            size_t want = home(table[j].key, table[j].kind);
            int movable = hole <= j ? (want <= hole || want > j) : (want <= hole && want > j);
            if (movable) {
                table[hole] = table[j];
                hole = j;
            }
        }
        table[hole].kind = KIND_NONE;
        live_allocations--;
    }
    pthread_mutex_unlock(&table_lock);
    return found;
}

void dilu_memory_after_fork(void) {
    /* The parent's allocations stay charged to the instance (they are still live in the
     * parent) but are not the child's to free; a lock held across fork() is dead. */
    pthread_mutex_init(&table_lock, NULL);
    for (size_t i = 0; i < ALLOCATION_SLOTS; i++)
        table[i].kind = KIND_NONE;
    live_allocations = 0;
}

static struct dilu_gpu *current_gpu(void) {
    struct dilu_context *context = dilu_current_context();
    return context ? atomic_load(&context->gpu) : NULL;
}

static uint64_t memory_limit(void) {
    if (!dilu_enforcing())
        return 0;
    struct dilu_control control;
    dilu_read_control(&control);
    return control.memory_limit_bytes;
}

static CUresult reserve(struct charge *charge, struct dilu_gpu *gpu, uint64_t bytes) {
    charge->page = NULL;
    if (!dilu_enforcing() || !gpu || gpu->memory_slot < 0 || !dilu_stats())
        return CUDA_SUCCESS;
    struct dilu_control control;
    dilu_read_control(&control);
    if (dilu_stats_reserve_memory(dilu_stats(), gpu->memory_slot, bytes,
                                  control.memory_limit_bytes) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *charge = (struct charge){dilu_stats(), gpu->memory_slot, bytes};
    return CUDA_SUCCESS;
}

/* After the driver answered: keep the charge and remember the allocation, or undo it. */
static void keep_or_undo(const struct charge *charge, CUresult result, int kind, uint64_t key) {
    if (!charge->page)
        return;
    if (result != CUDA_SUCCESS) {
        dilu_stats_release_memory(charge->page, charge->memory_slot, charge->bytes);
        return;
    }
    if (!remember(key, kind, charge->bytes, charge->memory_slot)) {
        static _Atomic int warned;
        if (!atomic_exchange(&warned, 1))
            fprintf(stderr, "dilu-shim: more than %d live allocations; "
                            "the excess is charged but never returned\n", ALLOCATION_SLOTS);
    }
}

static void give_back(uint64_t key, int kind) {
    struct allocation allocation;
    if (forget(key, kind, &allocation))
        dilu_stats_release_memory(dilu_stats(), allocation.memory_slot, allocation.bytes);
}

#define FORWARD(name, args) (dilu_real.name ? dilu_real.name args : CUDA_ERROR_NOT_SUPPORTED)

/* Allocations that charge the current context's GPU and return a device pointer. */
#define POINTER_ALLOCATION(name, params, args)                                  \
    DILU_EXPORT CUresult name params {                                         \
        dilu_init();                                                           \
        struct charge charge;                                                  \
        CUresult result = reserve(&charge, current_gpu(), bytesize);           \
        if (result != CUDA_SUCCESS)                                            \
            return result;                                                     \
        result = FORWARD(name, args);                                          \
        keep_or_undo(&charge, result, KIND_POINTER, result == CUDA_SUCCESS ? *dptr : 0); \
        return result;                                                         \
    }

POINTER_ALLOCATION(cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytesize), (dptr, bytesize))
POINTER_ALLOCATION(cuMemAllocManaged, (CUdeviceptr *dptr, size_t bytesize, unsigned int flags),
                   (dptr, bytesize, flags))
POINTER_ALLOCATION(cuMemAllocAsync, (CUdeviceptr *dptr, size_t bytesize, CUstream stream),
                   (dptr, bytesize, stream))
POINTER_ALLOCATION(cuMemAllocAsync_ptsz, (CUdeviceptr *dptr, size_t bytesize, CUstream stream),
                   (dptr, bytesize, stream))
POINTER_ALLOCATION(cuMemAllocFromPoolAsync,
                   (CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream stream),
                   (dptr, bytesize, pool, stream))
POINTER_ALLOCATION(cuMemAllocFromPoolAsync_ptsz,
                   (CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream stream),
                   (dptr, bytesize, pool, stream))

DILU_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width,
                                        size_t height, unsigned int element_size) {
    dilu_init();
    /* The driver picks the pitch; reserve for the usual alignment and settle on the real
     * figure afterwards. */
    size_t row = (width + PITCH_ALIGNMENT - 1) / PITCH_ALIGNMENT * PITCH_ALIGNMENT;
    if (row < width || (height && row > SIZE_MAX / height))
        return CUDA_ERROR_INVALID_VALUE;  /* the driver would refuse it too */
    size_t guess = row * height;
    struct charge charge;
    CUresult result = reserve(&charge, current_gpu(), guess);
    if (result != CUDA_SUCCESS)
        return result;
    result = FORWARD(cuMemAllocPitch_v2, (dptr, pitch, width, height, element_size));
    if (result == CUDA_SUCCESS && charge.page && *pitch * height != guess) {
        uint64_t actual = (uint64_t)*pitch * height;
        if (actual < guess) {
            dilu_stats_release_memory(charge.page, charge.memory_slot, guess - actual);
        } else if (dilu_stats_reserve_memory(charge.page, charge.memory_slot, actual - guess,
                                             memory_limit()) != 0) {
            /* A wider pitch than guessed that no longer fits: give it back. */
            FORWARD(cuMemFree_v2, (*dptr));
            dilu_stats_release_memory(charge.page, charge.memory_slot, guess);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        charge.bytes = actual;
    }
    keep_or_undo(&charge, result, KIND_POINTER, result == CUDA_SUCCESS ? *dptr : 0);
    return result;
}

DILU_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                 const CUmemAllocationProp *prop, unsigned long long flags) {
    dilu_init();
    struct dilu_gpu *gpu = prop && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE
                               ? dilu_gpu_for_device(prop->location.id)
                               : current_gpu();
    struct charge charge;
    CUresult result = reserve(&charge, gpu, size);
    if (result != CUDA_SUCCESS)
        return result;
    result = FORWARD(cuMemCreate, (handle, size, prop, flags));
    keep_or_undo(&charge, result, KIND_HANDLE, result == CUDA_SUCCESS ? *handle : 0);
    return result;
}

static uint64_t element_bytes(CUarray_format format) {
    switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
        return 2;
    default:
        return 4;  /* 32-bit formats, and an upper bound for the packed and video ones */
    }
}

static uint64_t array_bytes(size_t width, size_t height, size_t depth, CUarray_format format,
                            unsigned channels) {
    return (uint64_t)width * (height ? height : 1) * (depth ? depth : 1) *
           element_bytes(format) * (channels ? channels : 1);
}

#define ARRAY_ALLOCATION(name, descriptor_type, depth)                                   \
    DILU_EXPORT CUresult name(CUarray *array, const descriptor_type *d) {              \
        dilu_init();                                                                   \
        struct charge charge;                                                          \
        uint64_t bytes = d ? array_bytes(d->Width, d->Height, depth, d->Format, d->NumChannels) : 0; \
        CUresult result = reserve(&charge, current_gpu(), bytes);                      \
        if (result != CUDA_SUCCESS)                                                    \
            return result;                                                             \
        result = FORWARD(name, (array, d));                                            \
        keep_or_undo(&charge, result, KIND_ARRAY, result == CUDA_SUCCESS ? (uintptr_t)*array : 0); \
        return result;                                                                 \
    }

ARRAY_ALLOCATION(cuArrayCreate_v2, CUDA_ARRAY_DESCRIPTOR, 1)
ARRAY_ALLOCATION(cuArray3DCreate_v2, CUDA_ARRAY3D_DESCRIPTOR, d->Depth)

#define RELEASE(name, params, args, key, kind)          \
    DILU_EXPORT CUresult name params {                 \
        dilu_init();                                   \
        CUresult result = FORWARD(name, args);         \
        if (result == CUDA_SUCCESS)                    \
            give_back((uint64_t)(key), kind);          \
        return result;                                 \
    }

RELEASE(cuMemFree_v2, (CUdeviceptr dptr), (dptr), dptr, KIND_POINTER)
RELEASE(cuMemFreeAsync, (CUdeviceptr dptr, CUstream stream), (dptr, stream), dptr, KIND_POINTER)
RELEASE(cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream stream), (dptr, stream), dptr,
        KIND_POINTER)
RELEASE(cuMemRelease, (CUmemGenericAllocationHandle handle), (handle), handle, KIND_HANDLE)
RELEASE(cuArrayDestroy, (CUarray array), (array), (uintptr_t)array, KIND_ARRAY)


/* Frameworks size their caches from these two, so they must see the quota, not the card. */
DILU_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    dilu_init();
    CUresult result = FORWARD(cuMemGetInfo_v2, (free_bytes, total_bytes));
    uint64_t limit = memory_limit();
    struct dilu_gpu *gpu = limit ? current_gpu() : NULL;
    if (result != CUDA_SUCCESS || !gpu || gpu->memory_slot < 0)
        return result;
    uint64_t used = dilu_stats_gpu_memory_used(dilu_stats(), gpu->memory_slot);
    uint64_t left = used < limit ? limit - used : 0;
    if (total_bytes && *total_bytes > limit)
        *total_bytes = (size_t)limit;
    if (free_bytes && *free_bytes > left)
        *free_bytes = (size_t)left;
    return result;
}

DILU_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice device) {
    dilu_init();
    CUresult result = FORWARD(cuDeviceTotalMem_v2, (bytes, device));
    uint64_t limit = memory_limit();
    if (result == CUDA_SUCCESS && limit && bytes && *bytes > limit)
        *bytes = (size_t)limit;
    return result;
}
