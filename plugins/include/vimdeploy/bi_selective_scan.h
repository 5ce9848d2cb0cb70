/*
 * vimdeploy: the BiSelectiveScan CUDA kernel, plain C API.
 *
 * One call computes the whole op of export/op_contract.md (both directions, the silu(z)
 * gate, the sum and the out_scale) for one Vim layer. The TensorRT plugin and the PyTorch
 * op (vimdeploy/plugin.py, through ctypes) both call this function.
 *
 * Layout: activations (batch, L, E) and B/C (batch, L, N), dense row-major, all of one
 * dtype (fp32 or fp16); A (E, N), D (E), dt_bias (E) always fp32. State and math fp32.
 */
#ifndef VIMDEPLOY_BI_SELECTIVE_SCAN_H
#define VIMDEPLOY_BI_SELECTIVE_SCAN_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define VIMDEPLOY_API __declspec(dllexport)
#else
#define VIMDEPLOY_API __attribute__((visibility("default")))
#endif

/* Activation dtypes (values fixed: Python passes them as ints). */
#define VIMDEPLOY_DTYPE_FLOAT32 0
#define VIMDEPLOY_DTYPE_FLOAT16 1

/* Return codes: 0 success, negative = bad arguments, positive = a cudaError_t. */
#define VIMDEPLOY_SUCCESS 0
#define VIMDEPLOY_ERROR_INVALID_ARGUMENT (-1)
#define VIMDEPLOY_ERROR_UNSUPPORTED (-2) /* N != 16, unknown dtype */

/* Version of the op contract this library implements (the plugin_version). */
#define VIMDEPLOY_BI_SELECTIVE_SCAN_VERSION "1"

/*
 * Bytes of scratch memory that let the kernel split long sequences into chunks (used when
 * batch * E is too small to fill the GPU, e.g. batch 1 at long L). The size depends only on
 * E, N and the current device's multiprocessor count, never on batch or L. Passing less
 * (or NULL) is allowed: the kernel then runs unsplit, equally correct, slower at small batch.
 */
VIMDEPLOY_API size_t vimdeploy_bi_selective_scan_workspace_size(int64_t E, int64_t N);

/*
 * y = BiSelectiveScan(z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
 *                     A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd)
 * Enqueued on `stream` (capturable in a CUDA graph). y must not alias any input; it is
 * also used as scratch between the two halves of the sweep (each element is written by
 * the kernel before it is read). Returns VIMDEPLOY_SUCCESS or an error code.
 */
VIMDEPLOY_API int vimdeploy_bi_selective_scan(
    void const* z, void const* x_fwd, void const* dt_fwd, void const* B_fwd, void const* C_fwd,
    void const* x_bwd, void const* dt_bwd, void const* B_bwd, void const* C_bwd,
    float const* A_fwd, float const* A_bwd, float const* D_fwd, float const* D_bwd,
    float const* dt_bias_fwd, float const* dt_bias_bwd, void* y,
    int64_t batch, int64_t L, int64_t E, int64_t N, int dtype, int delta_softplus, float out_scale,
    void* workspace, size_t workspace_bytes, cudaStream_t stream);

/*
 * Same, with the tuning knobs exposed (benchmarks and tests): num_chunks = number of
 * chunks L is split into (0 = automatic, 1 = never split; needs the workspace),
 * variant = 0 automatic, else a kernel variant id (see bi_selective_scan.cu).
 */
VIMDEPLOY_API int vimdeploy_bi_selective_scan_ex(
    void const* z, void const* x_fwd, void const* dt_fwd, void const* B_fwd, void const* C_fwd,
    void const* x_bwd, void const* dt_bwd, void const* B_bwd, void const* C_bwd,
    float const* A_fwd, float const* A_bwd, float const* D_fwd, float const* D_bwd,
    float const* dt_bias_fwd, float const* dt_bias_bwd, void* y,
    int64_t batch, int64_t L, int64_t E, int64_t N, int dtype, int delta_softplus, float out_scale,
    void* workspace, size_t workspace_bytes, cudaStream_t stream, int num_chunks, int variant);

/* Human-readable text for a return code. */
VIMDEPLOY_API char const* vimdeploy_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* VIMDEPLOY_BI_SELECTIVE_SCAN_H */
