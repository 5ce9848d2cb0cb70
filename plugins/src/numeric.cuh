// vimdeploy: fp32 <-> activation type conversions shared by the CUDA kernels (internal header).
#pragma once

#include <cuda_fp16.h>

namespace vimdeploy
{

__device__ __forceinline__ float toF(float v) { return v; }
__device__ __forceinline__ float toF(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T fromF(float v);
template <>
__device__ __forceinline__ float fromF<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromF<__half>(float v) { return __float2half_rn(v); } // round to nearest even

} // namespace vimdeploy
