/* ABI probe for services/node_agent/shim/dilu_cuda.h (driven by tests/shim/test_header_abi.py).
 *
 * Built twice: with -DDILU_PROBE_SYSTEM_CUDA against the toolkit's <cuda.h>, and without it
 * against dilu_cuda.h. Each build prints one "name value" line per type size, field offset,
 * field size and constant; the test requires the two outputs to be identical.
 *
 * Line formats:
 *   sizeof(TYPE) N
 *   offsetof(TYPE,FIELD) N      (FIELD may be nested: allocFlags.usage)
 *   sizeof(TYPE.FIELD) N
 *   CONSTANT_NAME N             (enum constants and macros dilu_cuda.h defines)
 */
#ifdef DILU_PROBE_SYSTEM_CUDA
#include <cuda.h>
#else
#include "dilu_cuda.h"
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SIZE(type) printf("sizeof(%s) %zu\n", #type, sizeof(type))
#define FIELD(type, field)                                                               \
    do {                                                                                 \
        printf("offsetof(%s,%s) %zu\n", #type, #field, offsetof(type, field));          \
        printf("sizeof(%s.%s) %zu\n", #type, #field, sizeof(((type *)0)->field));       \
    } while (0)
#define CONST(name) printf("%s %lld\n", #name, (long long)(name))
#define HANDLE(name) printf("%s %lld\n", #name, (long long)(uintptr_t)(name))

int main(void) {
    /* Scalar and handle types. */
    SIZE(cuuint32_t);
    SIZE(cuuint64_t);
    SIZE(CUresult);
    SIZE(CUdevice);
    SIZE(CUdeviceptr);
    SIZE(CUmemGenericAllocationHandle);
    SIZE(CUcontext);
    SIZE(CUstream);
    SIZE(CUevent);
    SIZE(CUfunction);
    SIZE(CUgraphExec);
    SIZE(CUarray);
    SIZE(CUmemoryPool);

    /* Enum types. */
    SIZE(CUevent_flags);
    SIZE(CUstreamCaptureStatus);
    SIZE(CUstreamCaptureMode);
    SIZE(CUdriverProcAddress_flags);
    SIZE(CUdriverProcAddressQueryResult);
    SIZE(CUarray_format);
    SIZE(CUmemLocationType);
    SIZE(CUmemAllocationType);
    SIZE(CUmemAllocationHandleType);

    /* Structs. */
    SIZE(CUuuid);
    FIELD(CUuuid, bytes);

    SIZE(CUlaunchConfig);
    FIELD(CUlaunchConfig, gridDimX);
    FIELD(CUlaunchConfig, gridDimY);
    FIELD(CUlaunchConfig, gridDimZ);
    FIELD(CUlaunchConfig, blockDimX);
    FIELD(CUlaunchConfig, blockDimY);
    FIELD(CUlaunchConfig, blockDimZ);
    FIELD(CUlaunchConfig, sharedMemBytes);
    FIELD(CUlaunchConfig, hStream);
    FIELD(CUlaunchConfig, attrs);
    FIELD(CUlaunchConfig, numAttrs);

    SIZE(CUDA_ARRAY_DESCRIPTOR);
    FIELD(CUDA_ARRAY_DESCRIPTOR, Width);
    FIELD(CUDA_ARRAY_DESCRIPTOR, Height);
    FIELD(CUDA_ARRAY_DESCRIPTOR, Format);
    FIELD(CUDA_ARRAY_DESCRIPTOR, NumChannels);

    SIZE(CUDA_ARRAY3D_DESCRIPTOR);
    FIELD(CUDA_ARRAY3D_DESCRIPTOR, Width);
    FIELD(CUDA_ARRAY3D_DESCRIPTOR, Height);
    FIELD(CUDA_ARRAY3D_DESCRIPTOR, Depth);
    FIELD(CUDA_ARRAY3D_DESCRIPTOR, Format);
    FIELD(CUDA_ARRAY3D_DESCRIPTOR, NumChannels);
    FIELD(CUDA_ARRAY3D_DESCRIPTOR, Flags);

    SIZE(CUmemLocation);
    FIELD(CUmemLocation, type);
    FIELD(CUmemLocation, id);

    SIZE(CUmemAllocationProp);
    FIELD(CUmemAllocationProp, type);
    FIELD(CUmemAllocationProp, requestedHandleTypes);
    FIELD(CUmemAllocationProp, location);
    FIELD(CUmemAllocationProp, win32HandleMetaData);
    FIELD(CUmemAllocationProp, allocFlags);
    FIELD(CUmemAllocationProp, allocFlags.compressionType);
    FIELD(CUmemAllocationProp, allocFlags.gpuDirectRDMACapable);
    FIELD(CUmemAllocationProp, allocFlags.usage);
    FIELD(CUmemAllocationProp, allocFlags.reserved);

    /* CUresult. */
    CONST(CUDA_SUCCESS);
    CONST(CUDA_ERROR_INVALID_VALUE);
    CONST(CUDA_ERROR_OUT_OF_MEMORY);
    CONST(CUDA_ERROR_NOT_INITIALIZED);
    CONST(CUDA_ERROR_INVALID_DEVICE);
    CONST(CUDA_ERROR_INVALID_CONTEXT);
    CONST(CUDA_ERROR_INVALID_HANDLE);
    CONST(CUDA_ERROR_NOT_FOUND);
    CONST(CUDA_ERROR_NOT_READY);
    CONST(CUDA_ERROR_NOT_SUPPORTED);
    CONST(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    CONST(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    CONST(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    CONST(CUDA_ERROR_UNKNOWN);

    /* Special stream handles (macros). */
    HANDLE(CU_STREAM_LEGACY);
    HANDLE(CU_STREAM_PER_THREAD);

    /* CUevent_flags. */
    CONST(CU_EVENT_DEFAULT);
    CONST(CU_EVENT_BLOCKING_SYNC);
    CONST(CU_EVENT_DISABLE_TIMING);

    /* CUstreamCaptureStatus. */
    CONST(CU_STREAM_CAPTURE_STATUS_NONE);
    CONST(CU_STREAM_CAPTURE_STATUS_ACTIVE);
    CONST(CU_STREAM_CAPTURE_STATUS_INVALIDATED);

    /* CUstreamCaptureMode. */
    CONST(CU_STREAM_CAPTURE_MODE_GLOBAL);
    CONST(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
    CONST(CU_STREAM_CAPTURE_MODE_RELAXED);

    /* CUdriverProcAddress_flags. */
    CONST(CU_GET_PROC_ADDRESS_DEFAULT);
    CONST(CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    CONST(CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);

    /* CUdriverProcAddressQueryResult. */
    CONST(CU_GET_PROC_ADDRESS_SUCCESS);
    CONST(CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    CONST(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);

    /* CUarray_format. */
    CONST(CU_AD_FORMAT_UNSIGNED_INT8);
    CONST(CU_AD_FORMAT_UNSIGNED_INT16);
    CONST(CU_AD_FORMAT_UNSIGNED_INT32);
    CONST(CU_AD_FORMAT_SIGNED_INT8);
    CONST(CU_AD_FORMAT_SIGNED_INT16);
    CONST(CU_AD_FORMAT_SIGNED_INT32);
    CONST(CU_AD_FORMAT_HALF);
    CONST(CU_AD_FORMAT_FLOAT);

    /* CUmemLocationType. */
    CONST(CU_MEM_LOCATION_TYPE_INVALID);
    CONST(CU_MEM_LOCATION_TYPE_DEVICE);

    /* CUmemAllocationType. */
    CONST(CU_MEM_ALLOCATION_TYPE_INVALID);
    CONST(CU_MEM_ALLOCATION_TYPE_PINNED);

    /* CUmemAllocationHandleType. */
    CONST(CU_MEM_HANDLE_TYPE_NONE);

    return 0;
}
