/*
 * vimdeploy: the selective scan's step sizes, delta = softplus(dt_proj(dt) + dt_bias), as one
 * CUDA kernel, plain C API.
 *
 *   delta[t, e] = softplus(bias[e] + sum_{k < R} weight[e, k] * dt[t, k])
 *
 * softplus as mamba_ssm: v if v > 20, else log1p(exp(v)), to fp16 accuracy (rel. error 1.9e-5
 * before the output's rounding). It is the dt_proj GEMM of Vim's mixer (rank R = dt_rank ->
 * E = d_inner) with the bias and the softplus that the scan would otherwise apply per step: the model hands the result to the BiSelectiveScan op with
 * delta_softplus = 0 and a zero dt_bias (vimdeploy/model/vim.py, Mamba.scan_inputs), and the
 * scan, bound by instruction issue, runs 6-7% faster (docs/kernel.md). The PyTorch op
 * (vimdeploy/ops/delta.py, through ctypes) calls it with a VimdeployDeltaParams, or with two (one
 * per scan direction, one launch: vimdeploy_delta_softplus_bidir).
 */
#ifndef VIMDEPLOY_DELTA_SOFTPLUS_H
#define VIMDEPLOY_DELTA_SOFTPLUS_H

#include <cuda_runtime_api.h>

#include "vimdeploy/scan_params.h" /* VIMDEPLOY_API, VIMDEPLOY_DTYPE_*, return codes */

#ifdef __cplusplus
extern "C" {
#endif

/* Largest rank the kernel takes (Vim-B's dt_rank is 48). */
#define VIMDEPLOY_DELTA_MAX_R 64

/*
 * Layout: dt (tokens, R) with `dt_stride` elements between tokens (>= R: a slice of x_proj's
 * output); weight (E, R) dense (nn.Linear's dt_proj.weight); delta (tokens, E) dense; these
 * three of `dtype`, which must be VIMDEPLOY_DTYPE_FLOAT16 (tensor-core products, fp32 sums).
 * bias (E) fp32, NULL = zero. Each output rounded once. delta must not alias dt.
 */
typedef struct VimdeployDeltaParams
{
    void const* dt;
    void const* weight;
    float const* bias;
    void* delta;
    int64_t tokens;
    int64_t E;
    int64_t R;         /* 1..VIMDEPLOY_DELTA_MAX_R */
    int64_t dt_stride; /* >= R */
    int32_t dtype;     /* VIMDEPLOY_DTYPE_FLOAT16 (fp32: VIMDEPLOY_ERROR_UNSUPPORTED) */
} VimdeployDeltaParams;

/*
 * delta, enqueued on `stream` (one launch; capturable in a CUDA graph). Returns
 * VIMDEPLOY_SUCCESS or an error code (vimdeploy_error_string).
 */
VIMDEPLOY_API int vimdeploy_delta_softplus(VimdeployDeltaParams const* p, cudaStream_t stream);

/*
 * Both scan directions' delta in one launch: p[0] and p[1] (an array of two), each checked as
 * vimdeploy_delta_softplus checks its one, with the same tokens, E and R (their pointers,
 * dt_stride and bias their own; VIMDEPLOY_ERROR_INVALID_ARGUMENT otherwise). Each direction's
 * output is bit-identical to vimdeploy_delta_softplus on its parameters (the same kernel code).
 * Neither delta may alias either dt or the other delta.
 */
VIMDEPLOY_API int vimdeploy_delta_softplus_bidir(VimdeployDeltaParams const* p, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* VIMDEPLOY_DELTA_SOFTPLUS_H */
