/*
 * vimdeploy: the BiSelectiveScan CPU kernel, plain C API (no CUDA needed).
 *
 * Same op and same VimdeployScanParams as the CUDA kernel (export/op_contract.md). Called by
 * the PyTorch op on CPU (vimdeploy/ops/cpu.py) and by the ONNX Runtime op, through ctypes.
 */
#ifndef VIMDEPLOY_BI_SELECTIVE_SCAN_CPU_H
#define VIMDEPLOY_BI_SELECTIVE_SCAN_CPU_H

#include "vimdeploy/scan_params.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * p->y = BiSelectiveScan(inputs of p) on the calling thread plus up to num_threads - 1
 * workers of the library's own pool (num_threads <= 0: one per CPU the process may run
 * on). Work is split over batch x 16-channel blocks x direction. Safe to call from several
 * threads at once (a call that finds the pool busy runs on its own thread). Returns
 * VIMDEPLOY_SUCCESS or an error code (vimdeploy_cpu_error_string).
 */
VIMDEPLOY_API int vimdeploy_bi_selective_scan_cpu(VimdeployScanParams const* p, int num_threads);

/* The vector instruction set the kernel runs with on this CPU, e.g. "avx512f", "avx2", "neon". */
VIMDEPLOY_API char const* vimdeploy_cpu_isa(void);

/* Human-readable text for a return code. */
VIMDEPLOY_API char const* vimdeploy_cpu_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* VIMDEPLOY_BI_SELECTIVE_SCAN_CPU_H */
