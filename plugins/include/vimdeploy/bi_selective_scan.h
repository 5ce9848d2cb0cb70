/*
 * vimdeploy: the BiSelectiveScan CUDA kernel, plain C API.
 *
 * One call computes the whole op of export/op_contract.md (both directions, the silu(z)
 * gate, the sum and the out_scale) for one Vim layer. The TensorRT plugin and the PyTorch
 * op (vimdeploy/ops/cuda.py, through ctypes) both call it with a VimdeployScanParams.
 */
#ifndef VIMDEPLOY_BI_SELECTIVE_SCAN_H
#define VIMDEPLOY_BI_SELECTIVE_SCAN_H

#include <cuda_runtime_api.h>

#include "vimdeploy/scan_params.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Bytes of scratch memory that let the kernel split long sequences into chunks (used when
 * batch * E is too small to fill the GPU, e.g. batch 1 at long L). The size depends only on
 * E, N and the current device's multiprocessor count, never on batch or L. Passing less
 * (or NULL) is allowed: the kernel then runs unsplit, equally correct, slower at small batch.
 */
VIMDEPLOY_API size_t vimdeploy_bi_selective_scan_workspace_size(int64_t E, int64_t N);

/*
 * p->y = BiSelectiveScan(inputs of p), enqueued on `stream` (capturable in a CUDA graph).
 * p->y is also used as scratch between the two halves of the sweep (each element is written
 * by the kernel before it is read). Returns VIMDEPLOY_SUCCESS or an error code.
 */
VIMDEPLOY_API int vimdeploy_bi_selective_scan(
    VimdeployScanParams const* p, void* workspace, size_t workspace_bytes, cudaStream_t stream);

/*
 * Same, with the tuning knobs exposed (benchmarks and tests): num_chunks = number of
 * chunks L is split into (0 = automatic, 1 = never split; needs the workspace),
 * variant = 0 automatic, else a kernel variant id (see bi_selective_scan.cu).
 */
VIMDEPLOY_API int vimdeploy_bi_selective_scan_ex(VimdeployScanParams const* p, void* workspace,
    size_t workspace_bytes, cudaStream_t stream, int num_chunks, int variant);

/* Human-readable text for a return code. */
VIMDEPLOY_API char const* vimdeploy_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* VIMDEPLOY_BI_SELECTIVE_SCAN_H */
