/*
 * vimdeploy: the arguments of one BiSelectiveScan call (export/op_contract.md), shared by
 * the CUDA kernel, the CPU kernel, the TensorRT plugin and the ONNX Runtime op. No CUDA
 * header here: the CPU library includes it too.
 *
 * One struct instead of a 28-argument prototype (mamba_ssm's SSMParamsBase is the model):
 * the pointer fields are the contract's 15 inputs in the contract's order and under its
 * names (Python fills them by name from `vimdeploy.ops.ScanInputs`), then the output.
 *
 * Layout: activations (batch, L, E) and B/C (batch, L, N), dense row-major, all of one
 * dtype (fp32 or fp16); A (E, N), D (E), dt_bias (E) always fp32. State and math fp32.
 */
#ifndef VIMDEPLOY_SCAN_PARAMS_H
#define VIMDEPLOY_SCAN_PARAMS_H

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

/* The op (vimdeploy/contract.py holds the same facts for Python; tests/test_contract.py checks
   that the two agree): its ONNX domain, its ONNX op_type = the TensorRT plugin's name, the plugin_version and
   plugin_namespace, d_state, and the attributes' defaults. */
#define VIMDEPLOY_SCAN_DOMAIN "trt.plugins"
#define VIMDEPLOY_SCAN_OP_TYPE "BiSelectiveScan"
#define VIMDEPLOY_SCAN_PLUGIN_VERSION "1"
#define VIMDEPLOY_SCAN_PLUGIN_NAMESPACE ""
#define VIMDEPLOY_SCAN_D_STATE 16 /* N: the only d_state the kernels implement */
#define VIMDEPLOY_SCAN_DEFAULT_DELTA_SOFTPLUS 1
#define VIMDEPLOY_SCAN_DEFAULT_OUT_SCALE 0.5f

/* Activation dtypes (values fixed: Python passes them as ints). */
#define VIMDEPLOY_DTYPE_FLOAT32 0
#define VIMDEPLOY_DTYPE_FLOAT16 1

/* Return codes: 0 success, negative = bad arguments, positive = a cudaError_t. */
#define VIMDEPLOY_SUCCESS 0
#define VIMDEPLOY_ERROR_INVALID_ARGUMENT (-1)
#define VIMDEPLOY_ERROR_UNSUPPORTED (-2) /* N != VIMDEPLOY_SCAN_D_STATE, unknown dtype */

typedef struct VimdeployScanParams
{
    /* inputs 0-8: activations, `dtype` */
    void const* z;
    void const* x_fwd;
    void const* dt_fwd;
    void const* B_fwd;
    void const* C_fwd;
    void const* x_bwd;
    void const* dt_bwd;
    void const* B_bwd;
    void const* C_bwd;
    /* inputs 9-14: parameters, always fp32 (void like the others, so that the 15 input
       pointers form one array: see VIMDEPLOY_SCAN_NUM_INPUTS) */
    void const* A_fwd;
    void const* A_bwd;
    void const* D_fwd;
    void const* D_bwd;
    void const* dt_bias_fwd;
    void const* dt_bias_bwd;
    /* output 0: (batch, L, E), `dtype`; must not alias an input */
    void* y;
    int64_t batch;
    int64_t L;
    int64_t E;
    int64_t N;
    int32_t dtype;          /* VIMDEPLOY_DTYPE_* */
    int32_t delta_softplus; /* attribute delta_softplus (0 or 1) */
    float out_scale;        /* attribute out_scale (finite) */
    /* Elements between consecutive tokens of B_fwd, C_fwd, B_bwd and C_bwd (each (batch, L, N)
       with unit stride over N and batch stride L * bc_stride); 0 means N (dense). The CUDA
       kernel takes any bc_stride >= N (the model hands it slices of x_proj's output without a
       copy); the CPU kernel only dense B and C. Zero-initialise the struct: TensorRT's plugin
       and older callers then get dense B/C. */
    int64_t bc_stride;
} VimdeployScanParams;

/* The 15 input pointers head VimdeployScanParams with no padding, so they can be read and
   written as an array `void const* inputs[15]` at &params.z (TensorRT hands them over so). */
#define VIMDEPLOY_SCAN_NUM_INPUTS 15
/* Their names, in the same order (for messages). */
#define VIMDEPLOY_SCAN_INPUT_NAMES                                                                     \
    "z", "x_fwd", "dt_fwd", "B_fwd", "C_fwd", "x_bwd", "dt_bwd", "B_bwd", "C_bwd", "A_fwd", "A_bwd",   \
        "D_fwd", "D_bwd", "dt_bias_fwd", "dt_bias_bwd"
#ifdef __cplusplus
static_assert(offsetof(VimdeployScanParams, y) == VIMDEPLOY_SCAN_NUM_INPUTS * sizeof(void const*),
    "the input pointers of VimdeployScanParams must be contiguous");
#endif

#ifdef __cplusplus
}
#endif

#endif /* VIMDEPLOY_SCAN_PARAMS_H */
