// vimdeploy: numerics shared by the CUDA kernels (internal header): fp32 <-> activation type
// conversions, exp2 on the special-function unit, mamba_ssm's softplus.
#pragma once

#include <cuda_fp16.h>

namespace vimdeploy
{

constexpr float kLog2e = 1.4426950408889634f;

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

// mamba_ssm's rule softplus(v) = v if v > 20 else log1p(exp(v)), computed as
// max(v, 0) + log1p(w), w = exp(-|v|) in (0, 1], with log1p(w) = w * q(w), q a degree-8
// Chebyshev fit of log1p(w)/w on [0, 1] (rel. error 2.5e-7 in fp32): one MUFU op instead
// of the ~40 instructions of log1pf(expf(v)), same result at fp32 level.
__device__ __forceinline__ float softplus(float v)
{
    float const w = ex2Mufu(-fabsf(v) * kLog2e);
    float q = 5.1261024e-3f;
    q = fmaf(q, w, -2.9074065e-2f);
    q = fmaf(q, w, 7.7516086e-2f);
    q = fmaf(q, w, -1.3602248e-1f);
    q = fmaf(q, w, 1.9076881e-1f);
    q = fmaf(q, w, -2.4835399e-1f);
    q = fmaf(q, w, 3.3318120e-1f);
    q = fmaf(q, w, -4.9999446e-1f);
    q = fmaf(q, w, 9.9999994e-1f);
    // No branch for the v > 20 rule: there w * q < 2.1e-9 is below half an ulp of v (9.5e-7),
    // so max(v, 0) + w * q rounds to v exactly. A branch here split the scan's hot loop into
    // basic blocks (with divergence bookkeeping around every shuffle) and cost more than the FMAs.
    return fmaf(w, q, fmaxf(v, 0.f));
}

} // namespace vimdeploy
