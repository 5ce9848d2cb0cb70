/*
 * vimdeploy: the one check of a VimdeployScanParams against the op contract, run by every C
 * entry point (the CUDA kernel, the CPU kernel) before any pointer is read. Header-only
 * (static inline), C and C++, host code: each library compiles its own copy.
 *
 * What it cannot see: the sizes of the buffers behind the pointers. Callers that get tensors
 * with shapes (the TensorRT plugin, the PyTorch and ONNX Runtime ops) check those against
 * the contract before they fill the struct.
 */
#ifndef VIMDEPLOY_SCAN_CHECK_H
#define VIMDEPLOY_SCAN_CHECK_H

#include <math.h>

#include "vimdeploy/scan_params.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * VIMDEPLOY_SUCCESS when *p is a call the kernels can run:
 *   VIMDEPLOY_ERROR_UNSUPPORTED       N != VIMDEPLOY_SCAN_D_STATE, dtype not a VIMDEPLOY_DTYPE_*;
 *   VIMDEPLOY_ERROR_INVALID_ARGUMENT  p NULL, batch / L / E negative, delta_softplus not 0 or 1,
 *                                     out_scale not finite, bc_stride neither 0 nor >= N, or a
 *                                     NULL input or output pointer in a call with elements.
 * A call with batch, L or E zero passes with any pointers: it has nothing to read or write
 * (vimdeploy_scan_is_empty), and the kernels return at once.
 */
static inline int vimdeploy_scan_is_empty(VimdeployScanParams const* p)
{
    return p->batch == 0 || p->L == 0 || p->E == 0;
}

static inline int vimdeploy_scan_params_check(VimdeployScanParams const* p)
{
    if (!p)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (p->N != VIMDEPLOY_SCAN_D_STATE || (p->dtype != VIMDEPLOY_DTYPE_FLOAT32 && p->dtype != VIMDEPLOY_DTYPE_FLOAT16))
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    if (p->batch < 0 || p->L < 0 || p->E < 0)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if ((p->delta_softplus != 0 && p->delta_softplus != 1) || !isfinite(p->out_scale))
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (p->bc_stride != 0 && p->bc_stride < p->N)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (vimdeploy_scan_is_empty(p))
        return VIMDEPLOY_SUCCESS;
    /* the 15 input pointers head the struct, in contract order (scan_params.h) */
    void const* const* inputs = &p->z;
    for (int i = 0; i < VIMDEPLOY_SCAN_NUM_INPUTS; ++i)
        if (!inputs[i])
            return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    return p->y ? VIMDEPLOY_SUCCESS : VIMDEPLOY_ERROR_INVALID_ARGUMENT;
}

#ifdef __cplusplus
}
#endif

#endif /* VIMDEPLOY_SCAN_CHECK_H */
