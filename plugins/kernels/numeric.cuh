// vimdeploy: numerics shared by the CUDA kernels (internal header): fp32 <-> activation type
// conversions, exp2 on the special-function unit, mamba_ssm's softplus.
#pragma once

#include "vimdeploy/scan_numeric.h"

#include <cuda_fp16.h>

namespace vimdeploy
{

constexpr float kLog2e = VIMDEPLOY_LOG2E;

__device__ __forceinline__ float toF(float v) { return v; }
__device__ __forceinline__ float toF(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T fromF(float v);
template <>
__device__ __forceinline__ float fromF<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromF<__half>(float v) { return __float2half_rn(v); } // round to nearest even

// 2^x on the special-function unit (max rel. error ~2 ulp; ftz: results below 2^-126 are 0).
__device__ __forceinline__ float ex2Mufu(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// mamba_ssm's softplus as scan_numeric.h writes it (the CPU kernel uses the same fit): one
// MUFU op instead of the ~40 instructions of log1pf(expf(v)), same result at fp32 level.
__device__ __forceinline__ float softplus(float v)
{
    constexpr float kQ[] = {VIMDEPLOY_SOFTPLUS_LOG1P_COEFFS};
    float const w = ex2Mufu(-fabsf(v) * kLog2e);
    // The steps written out: as a loop, nvcc scheduled the scan's hot loop differently.
    static_assert(VIMDEPLOY_SOFTPLUS_LOG1P_DEGREE == 8, "one Horner step per coefficient");
    float q = kQ[0];
    q = fmaf(q, w, kQ[1]);
    q = fmaf(q, w, kQ[2]);
    q = fmaf(q, w, kQ[3]);
    q = fmaf(q, w, kQ[4]);
    q = fmaf(q, w, kQ[5]);
    q = fmaf(q, w, kQ[6]);
    q = fmaf(q, w, kQ[7]);
    q = fmaf(q, w, kQ[8]);
    // No branch for the v > 20 rule: there w * q < 2.1e-9 is below half an ulp of v (9.5e-7),
    // so max(v, 0) + w * q rounds to v exactly. A branch here split the scan's hot loop into
    // basic blocks (with divergence bookkeeping around every shuffle) and cost more than the FMAs.
    return fmaf(w, q, fmaxf(v, 0.f));
}

} // namespace vimdeploy
