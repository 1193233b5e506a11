/* Test-side view of the fake CUDA driver (tests/shim/fake_cuda.c, built as libcuda.so.1).
 *
 * Include after "dilu_cuda.h". Declares the driver entry points the fake implements that
 * dilu_cuda.h lacks (real CUDA signatures), the handles that encode simulated durations,
 * and the fake_* inspection functions the tests read the simulated GPU through.
 */
#ifndef FAKE_CUDA_H
#define FAKE_CUDA_H

#include "dilu_cuda.h"

/* A kernel (or graph) handle whose value is its simulated duration in nanoseconds (> 0). */
#define FAKE_KERNEL(ns) ((CUfunction)(uintptr_t)(ns))
#define FAKE_GRAPH(ns) ((CUgraphExec)(uintptr_t)(ns))

typedef struct CUgraph_st *CUgraph; /* CUstreamCaptureMode comes from dilu_cuda.h */

/* Returned by cuStreamEndCapture called from another thread than the one that began a
 * capture not in CU_STREAM_CAPTURE_MODE_RELAXED, which still ends that capture, with no
 * graph (dilu_cuda.h does not name it). */
#define FAKE_ERROR_STREAM_CAPTURE_WRONG_THREAD ((CUresult)908)

CUresult cuInit(unsigned int Flags);
CUresult cuDriverGetVersion(int *driverVersion);
CUresult cuDeviceGetCount(int *count);
CUresult cuDeviceGet(CUdevice *device, int ordinal);
CUresult cuDeviceGetName(char *name, int len, CUdevice dev);
CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev);
CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev);
CUresult cuDevicePrimaryCtxRelease(CUdevice dev);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev);
CUresult cuCtxSynchronize(void);
CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags);
CUresult cuStreamDestroy(CUstream hStream);
CUresult cuStreamDestroy_v2(CUstream hStream);
CUresult cuStreamSynchronize(CUstream hStream);
CUresult cuStreamSynchronize_ptsz(CUstream hStream);
CUresult cuStreamIsCapturing_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus);
CUresult cuStreamBeginCapture(CUstream hStream);
CUresult cuStreamBeginCapture_ptsz(CUstream hStream);
CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode);
CUresult cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode);
CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph);
CUresult cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph);
CUresult cuEventRecord_ptsz(CUevent hEvent, CUstream hStream);
CUresult cuEventSynchronize(CUevent hEvent);
CUresult cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd);
CUresult cuEventDestroy(CUevent hEvent);
CUresult cuEventDestroy_v2(CUevent hEvent);
CUresult cuGetErrorString(CUresult error, const char **pStr);
CUresult cuGetErrorName(CUresult error, const char **pStr);

/* Inspection. dev out of range reads as 0. */
unsigned long long fake_busy_ns(int dev);       /* simulated GPU time executed up to now */
unsigned long long fake_queued_ns(int dev);     /* work still queued: busy_until - now, or 0 */
unsigned long long fake_launches(int dev);      /* kernels and graphs executed (not captured) */
unsigned long long fake_captured_launches(void);
unsigned long long fake_events_on_capturing_streams(void);
unsigned long long fake_invalidated_captures(void); /* captures an unsafe call invalidated */
unsigned long long fake_memory_used(int dev);
unsigned long long fake_calls(const char *entry_point); /* by exact symbol; unknown: 0 */

#endif /* FAKE_CUDA_H */
