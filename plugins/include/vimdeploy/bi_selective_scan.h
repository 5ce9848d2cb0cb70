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
 * Bytes of scratch memory that let the kernel split long sequences into chunks over two
 * launches (used when batch * E is too small to fill the GPU, e.g. batch 1). The size depends only on E and N: never on batch, L or the GPU, so
 * that a size fixed when a TensorRT engine is built holds on any GPU it runs on. The kernel
 * never uses more than workspace_bytes: with less (or NULL) it splits into fewer chunks or
 * none, equally correct. For tests, VIMDEPLOY_SM_COUNT=N makes the library act as on a GPU of
 * N SMs.
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
 * Kernel variants of vimdeploy_bi_selective_scan_ex (benchmarks and tests force each): how many
 * time steps of B and C a warp stages per chunk, and how many threads share a channel (each
 * then holds 16 / threads of its states). When each wins: bi_selective_scan.cu, autoVariant.
 * The ids are fixed: Python passes them as ints (vimdeploy/ops/cuda.py, VARIANTS).
 */
#define VIMDEPLOY_SCAN_AUTO 0 /* what vimdeploy_bi_selective_scan runs */
#define VIMDEPLOY_SCAN_STEPS4_THREADS1 1
#define VIMDEPLOY_SCAN_STEPS8_THREADS1 2
#define VIMDEPLOY_SCAN_STEPS4_THREADS2 3
#define VIMDEPLOY_SCAN_STEPS8_THREADS2 4
#define VIMDEPLOY_SCAN_STEPS16_THREADS1 5
#define VIMDEPLOY_SCAN_STEPS16_THREADS2 6
/* Sequence-parallel in one launch (never chosen automatically, docs/kernel.md): L cut into chunks,
 * one block per (32 channels, chunk), the chunks of the same channels in one thread block cluster
 * that combines their states through distributed shared memory, no workspace (sm_90 and newer;
 * older GPUs run the same chunks over two launches, as many as the workspace holds). Its
 * num_chunks: chunks per sequence, the largest power of two <= min(num_chunks, 16, L), 16 taken
 * as 8 where the GPU cannot schedule clusters of 16; 0 = its own estimate. */
#define VIMDEPLOY_SCAN_WARP_CHUNKS 7
/* The 16 states of a channel on 16 lanes (one launch, never splits L; num_chunks is ignored), for
 * grids too small to fill the GPU with one thread per channel (never chosen automatically:
 * docs/kernel.md has its batch-1 measurements). */
#define VIMDEPLOY_SCAN_STATE_LANES 8
#define VIMDEPLOY_SCAN_NUM_VARIANTS 9 /* ids 0 .. 8; any other is VIMDEPLOY_ERROR_INVALID_ARGUMENT */

/*
 * Same, with the tuning knobs exposed: variant = a VIMDEPLOY_SCAN_* id; num_chunks = number of
 * chunks L is split into (0 = automatic, 1 = never split). Variants 1-6 split L over two
 * launches through the workspace; VIMDEPLOY_SCAN_WARP_CHUNKS needs none (see above).
 */
VIMDEPLOY_API int vimdeploy_bi_selective_scan_ex(VimdeployScanParams const* p, void* workspace,
    size_t workspace_bytes, cudaStream_t stream, int num_chunks, int variant);

/* Human-readable text for a return code. */
VIMDEPLOY_API char const* vimdeploy_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* VIMDEPLOY_BI_SELECTIVE_SCAN_H */
