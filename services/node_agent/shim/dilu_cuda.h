/* The subset of the CUDA driver API that the Dilu shim hooks or calls.
 *
 * Declared here so the shim builds where only the NVIDIA driver is installed (no toolkit).
 * Names, values and layouts follow the driver's public ABI; tests/shim/test_header_abi.py
 * checks every declaration below against a real cuda.h when one is present.
 *
 * Define DILU_USE_SYSTEM_CUDA_TYPES after including <cuda.h> to take the types from there
 * and keep only the prototypes (which the compiler then checks against cuda.h's).
 */
#ifndef DILU_CUDA_H
#define DILU_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifndef DILU_USE_SYSTEM_CUDA_TYPES

typedef uint32_t cuuint32_t;
typedef uint64_t cuuint64_t;

typedef enum cudaError_enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_IMPLICIT = 906,
    CUDA_ERROR_UNKNOWN = 999
} CUresult;

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;

typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUfunc_st *CUfunction;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUarray_st *CUarray;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUlaunchAttribute_st CUlaunchAttribute;

#define CU_STREAM_LEGACY ((CUstream)0x1)
#define CU_STREAM_PER_THREAD ((CUstream)0x2)

typedef struct CUuuid_st {
    char bytes[16];
} CUuuid;

typedef enum CUevent_flags_enum {
    CU_EVENT_DEFAULT = 0x0,
    CU_EVENT_BLOCKING_SYNC = 0x1,
    CU_EVENT_DISABLE_TIMING = 0x2
} CUevent_flags;

typedef enum CUstreamCaptureStatus_enum {
    CU_STREAM_CAPTURE_STATUS_NONE = 0,
    CU_STREAM_CAPTURE_STATUS_ACTIVE = 1,
    CU_STREAM_CAPTURE_STATUS_INVALIDATED = 2
} CUstreamCaptureStatus;

typedef enum CUstreamCaptureMode_enum {
    CU_STREAM_CAPTURE_MODE_GLOBAL = 0,
    CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1,
    CU_STREAM_CAPTURE_MODE_RELAXED = 2
} CUstreamCaptureMode;

typedef enum CUdriverProcAddress_flags_enum {
    CU_GET_PROC_ADDRESS_DEFAULT = 0,
    CU_GET_PROC_ADDRESS_LEGACY_STREAM = 1 << 0,
    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM = 1 << 1
} CUdriverProcAddress_flags;

typedef enum CUdriverProcAddressQueryResult_enum {
    CU_GET_PROC_ADDRESS_SUCCESS = 0,
    CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND = 1,
    CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT = 2
} CUdriverProcAddressQueryResult;

typedef struct CUlaunchConfig_st {
    unsigned int gridDimX;
    unsigned int gridDimY;
    unsigned int gridDimZ;
    unsigned int blockDimX;
    unsigned int blockDimY;
    unsigned int blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

typedef enum CUarray_format_enum {
    CU_AD_FORMAT_UNSIGNED_INT8 = 0x01,
    CU_AD_FORMAT_UNSIGNED_INT16 = 0x02,
    CU_AD_FORMAT_UNSIGNED_INT32 = 0x03,
    CU_AD_FORMAT_SIGNED_INT8 = 0x08,
    CU_AD_FORMAT_SIGNED_INT16 = 0x09,
    CU_AD_FORMAT_SIGNED_INT32 = 0x0a,
    CU_AD_FORMAT_HALF = 0x10,
    CU_AD_FORMAT_FLOAT = 0x20
} CUarray_format;

typedef struct CUDA_ARRAY_DESCRIPTOR_st {
    size_t Width;
    size_t Height;
    CUarray_format Format;
    unsigned int NumChannels;
} CUDA_ARRAY_DESCRIPTOR;

typedef struct CUDA_ARRAY3D_DESCRIPTOR_st {
    size_t Width;
    size_t Height;
    size_t Depth;
    CUarray_format Format;
    unsigned int NumChannels;
    unsigned int Flags;
} CUDA_ARRAY3D_DESCRIPTOR;

typedef enum CUmemLocationType_enum {
    CU_MEM_LOCATION_TYPE_INVALID = 0x0,
    CU_MEM_LOCATION_TYPE_DEVICE = 0x1
} CUmemLocationType;

typedef struct CUmemLocation_st {
    CUmemLocationType type;
    int id;
} CUmemLocation;

typedef enum CUmemAllocationType_enum {
    CU_MEM_ALLOCATION_TYPE_INVALID = 0x0,
    CU_MEM_ALLOCATION_TYPE_PINNED = 0x1
} CUmemAllocationType;

typedef enum CUmemAllocationHandleType_enum {
    CU_MEM_HANDLE_TYPE_NONE = 0x0
} CUmemAllocationHandleType;

typedef struct CUmemAllocationProp_st {
    CUmemAllocationType type;
    CUmemAllocationHandleType requestedHandleTypes;
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

#endif /* DILU_USE_SYSTEM_CUDA_TYPES */

/* X-macro of every entry point the shim hooks: X(symbol, return-free parameter list).
 * One list feeds the prototypes below, the shim's table of real functions and its hook
 * table, so a hook cannot exist on one lookup path and be missing on another. */
#define DILU_HOOKED_LAUNCHES(X)                                                             \
    X(cuLaunchKernel, (CUfunction f, unsigned int gridDimX, unsigned int gridDimY,          \
                       unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY, \
                       unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream, \
                       void **kernelParams, void **extra))                                  \
    X(cuLaunchKernel_ptsz, (CUfunction f, unsigned int gridDimX, unsigned int gridDimY,     \
                            unsigned int gridDimZ, unsigned int blockDimX,                  \
                            unsigned int blockDimY, unsigned int blockDimZ,                 \
                            unsigned int sharedMemBytes, CUstream hStream,                  \
                            void **kernelParams, void **extra))                             \
    X(cuLaunchKernelEx, (const CUlaunchConfig *config, CUfunction f, void **kernelParams,   \
                         void **extra))                                                     \
    X(cuLaunchKernelEx_ptsz, (const CUlaunchConfig *config, CUfunction f,                   \
                              void **kernelParams, void **extra))                           \
    X(cuLaunchCooperativeKernel, (CUfunction f, unsigned int gridDimX, unsigned int gridDimY, \
                                  unsigned int gridDimZ, unsigned int blockDimX,            \
                                  unsigned int blockDimY, unsigned int blockDimZ,           \
                                  unsigned int sharedMemBytes, CUstream hStream,            \
                                  void **kernelParams))                                     \
    X(cuLaunchCooperativeKernel_ptsz, (CUfunction f, unsigned int gridDimX,                 \
                                       unsigned int gridDimY, unsigned int gridDimZ,        \
                                       unsigned int blockDimX, unsigned int blockDimY,      \
                                       unsigned int blockDimZ, unsigned int sharedMemBytes, \
                                       CUstream hStream, void **kernelParams))              \
    X(cuGraphLaunch, (CUgraphExec hGraphExec, CUstream hStream))                            \
    X(cuGraphLaunch_ptsz, (CUgraphExec hGraphExec, CUstream hStream))

#define DILU_HOOKED_MEMORY(X)                                                               \
    X(cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytesize))                                  \
    X(cuMemAllocPitch_v2, (CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,          \
                           size_t Height, unsigned int ElementSizeBytes))                   \
    X(cuMemAllocManaged, (CUdeviceptr *dptr, size_t bytesize, unsigned int flags))          \
    X(cuMemAllocAsync, (CUdeviceptr *dptr, size_t bytesize, CUstream hStream))              \
    X(cuMemAllocAsync_ptsz, (CUdeviceptr *dptr, size_t bytesize, CUstream hStream))         \
    X(cuMemAllocFromPoolAsync, (CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,      \
                                CUstream hStream))                                          \
    X(cuMemAllocFromPoolAsync_ptsz, (CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, \
                                     CUstream hStream))                                     \
    X(cuMemCreate, (CUmemGenericAllocationHandle *handle, size_t size,                      \
                    const CUmemAllocationProp *prop, unsigned long long flags))             \
    X(cuArrayCreate_v2, (CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *pAllocateArray))    \
    X(cuArray3DCreate_v2, (CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pAllocateArray)) \
    X(cuMemFree_v2, (CUdeviceptr dptr))                                                     \
    X(cuMemFreeAsync, (CUdeviceptr dptr, CUstream hStream))                                 \
    X(cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream hStream))                            \
    X(cuMemRelease, (CUmemGenericAllocationHandle handle))                                  \
    X(cuArrayDestroy, (CUarray hArray))                                                     \
    X(cuMemGetInfo_v2, (size_t *free, size_t *total))                                      \
    X(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev))

#define DILU_HOOKED_LOOKUPS(X)                                                              \
    X(cuGetProcAddress, (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)) \
    X(cuGetProcAddress_v2, (const char *symbol, void **pfn, int cudaVersion,                \
                            cuuint64_t flags, CUdriverProcAddressQueryResult *symbolStatus))

/* Entry points the shim calls but does not hook. */
#define DILU_CALLED(X)                                                                      \
    X(cuCtxGetCurrent, (CUcontext *pctx))                                                   \
    X(cuCtxSetCurrent, (CUcontext ctx))                                                     \
    X(cuCtxGetDevice, (CUdevice *device))                                                   \
    X(cuDeviceGetUuid, (CUuuid *uuid, CUdevice dev))                                        \
    X(cuEventCreate, (CUevent *phEvent, unsigned int Flags))                                \
    X(cuEventRecord, (CUevent hEvent, CUstream hStream))                                    \
    X(cuEventQuery, (CUevent hEvent))                                                       \
    X(cuEventElapsedTime, (float *pMilliseconds, CUevent hStart, CUevent hEnd))             \
    X(cuStreamIsCapturing, (CUstream hStream, CUstreamCaptureStatus *captureStatus))        \
    X(cuThreadExchangeStreamCaptureMode, (CUstreamCaptureMode *mode))

#define DILU_DECLARE(name, params) CUresult name params;
DILU_HOOKED_LAUNCHES(DILU_DECLARE)
DILU_HOOKED_MEMORY(DILU_DECLARE)
DILU_HOOKED_LOOKUPS(DILU_DECLARE)
DILU_CALLED(DILU_DECLARE)
#undef DILU_DECLARE

#endif /* DILU_CUDA_H */
