/*
 * vimdeploy: the front of Vim's bimamba-v2 mixer as one CUDA kernel, plain C API.
 *
 * One call reads x once and writes both directions' convolved, activated inputs of the
 * selective scan (vimdeploy/model/vim.py, Mamba.scan_inputs):
 *
 *   y_fwd[b, t, e] = silu(bias_fwd[e] + sum_j weight_fwd[e, j] * x[b, t - (k-1) + j, e])
 *   y_bwd[b, t, e] = silu(bias_bwd[e] + sum_j weight_bwd[e, j] * x[b, t + (k-1) - j, e])
 *
 * with x = 0 outside [0, L): the causal depthwise conv of the forward branch and the
 * anti-causal one of the backward branch (= flip(causal_conv(flip(x))), what the official
 * model computes on its flipped sequence). The PyTorch op (vimdeploy/ops/conv.py, through
 * ctypes) calls it with a VimdeployConvSiluParams.
 */
#ifndef VIMDEPLOY_CONV_SILU_H
#define VIMDEPLOY_CONV_SILU_H

#include <cuda_runtime_api.h>

#include "vimdeploy/scan_params.h" /* VIMDEPLOY_API, VIMDEPLOY_DTYPE_*, return codes */

#ifdef __cplusplus
extern "C" {
#endif

/* Largest conv width the kernel takes (Vim's d_conv is 4). */
#define VIMDEPLOY_CONV_SILU_MAX_K 8

/*
 * Layout: x, y_fwd, y_bwd (batch, L, E), dense row-major, all of `dtype` (fp32 or fp16);
 * weights (E, k) (a Conv1d weight (E, 1, k) as it is stored), biases (E), always fp32 (NULL
 * bias = zero). Sums in fp32, each output rounded once. Outputs must not alias x.
 */
typedef struct VimdeployConvSiluParams
{
    void const* x;
    float const* weight_fwd;
    float const* bias_fwd;
    float const* weight_bwd;
    float const* bias_bwd;
    void* y_fwd;
    void* y_bwd;
    int64_t batch;
    int64_t L;
    int64_t E;
    int32_t k;     /* 1..VIMDEPLOY_CONV_SILU_MAX_K */
    int32_t dtype; /* VIMDEPLOY_DTYPE_* */
} VimdeployConvSiluParams;

/* Kernel variants of vimdeploy_conv_silu_bidir_ex (tests and benchmarks force each). */
#define VIMDEPLOY_CONV_SILU_AUTO 0
#define VIMDEPLOY_CONV_SILU_TILED_8 1  /* k == 4 only: 8 tokens per thread */
#define VIMDEPLOY_CONV_SILU_TILED_32 2 /* k == 4 only: 32 tokens per thread */
#define VIMDEPLOY_CONV_SILU_GENERIC 3  /* any k: one token per thread */
#define VIMDEPLOY_CONV_SILU_SCALAR 4   /* any k: one token and one channel per thread */
#define VIMDEPLOY_CONV_SILU_ASYNC_32 5 /* k == 4 only: TILED_32 with its loads as cp.async (16-byte path;
                                         without it, TILED_32); what AUTO runs for k == 4 */
#define VIMDEPLOY_CONV_SILU_ASYNC_16 6 /* k == 4 only: the same, 16 tokens per thread */

/*
 * Both outputs, enqueued on `stream` (one launch; capturable in a CUDA graph).
 * Returns VIMDEPLOY_SUCCESS or an error code (vimdeploy_error_string).
 */
VIMDEPLOY_API int vimdeploy_conv_silu_bidir(VimdeployConvSiluParams const* p, cudaStream_t stream);

/* Same, with the kernel variant forced (VIMDEPLOY_CONV_SILU_*; AUTO = what the call above
   picks). A tiled or async variant with k != 4 is VIMDEPLOY_ERROR_UNSUPPORTED. The 16-byte path is
   taken wherever E and the pointers allow it, except for VIMDEPLOY_CONV_SILU_SCALAR. */
VIMDEPLOY_API int vimdeploy_conv_silu_bidir_ex(VimdeployConvSiluParams const* p, cudaStream_t stream, int variant);

/*
 * The same conv + SiLU with each direction's x_proj behind it, in the same launch:
 *
 *   out_fwd[b, t, n] = sum_e weight_fwd[n, e] * y_fwd[b, t, e]   (n < rows; likewise bwd)
 *
 * where y_fwd is the output above rounded to fp16 (what x_proj reads when it runs apart), and y_fwd,
 * y_bwd are still written. The x_proj product then costs no second read of y_fwd / y_bwd
 * (Vim-Ti at 1248 px batch 32: 2 x 150 MB per layer). Layout: weights (rows, E) dense fp16 (an
 * nn.Linear weight, rows zero-padded as the caller likes), out_* (batch, L, rows) dense fp16.
 * Supported: p->dtype fp16, p->k 4, E a multiple of 64, rows a multiple of 8 up to
 * VIMDEPLOY_CONV_XPROJ_MAX_ROWS, every pointer 16-byte aligned; otherwise
 * VIMDEPLOY_ERROR_UNSUPPORTED (the caller runs conv + SiLU and the GEMM apart). Sums in fp32,
 * each output rounded once.
 */
#define VIMDEPLOY_CONV_XPROJ_MAX_ROWS 80 /* Vim-B: dt_rank 48 + 2 x d_state 16 */

typedef struct VimdeployXProjParams
{
    void const* weight_fwd;
    void const* weight_bwd;
    void* out_fwd;
    void* out_bwd;
    int64_t rows;
} VimdeployXProjParams;

VIMDEPLOY_API int vimdeploy_conv_silu_xproj_bidir(
    VimdeployConvSiluParams const* p, VimdeployXProjParams const* xp, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* VIMDEPLOY_CONV_SILU_H */
