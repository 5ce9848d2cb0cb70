/*
 * vimdeploy: delta = softplus(dt @ weight^T + bias) for the selective scan
 * (vimdeploy/delta_softplus.h has the formula and the layout).
 *
 * Design: the op writes tokens x E values from a rank-R input (Vim-Ti: R = 12, E = 384), so
 * it is bound by the bytes it writes, as the dt_proj GEMM it replaces; what it adds is the
 * per-element epilogue (bias, softplus, rounding), which the selective scan would otherwise
 * run per step in its issue-bound loop.
 * - The products run on the tensor cores (mma.sync m16n8k16, fp16 inputs, fp32 sums):
 *   with R <= 16 one instruction per 128 outputs, so the epilogue (one MUFU op and ~8 FMAs
 *   for the softplus) is the only per-element work.
 * - A block is 4 warps over 64 channels; each warp holds the 64 channels' weight fragments
 *   and biases in registers (loaded once) and strides over 16-token tiles: A fragments
 *   straight from global memory (the x_proj output rows are short and read by E / 64 blocks:
 *   L1/L2 hits), loaded one tile ahead; kK k-steps of 16 per 8-channel tile with the bias as
 *   the accumulator's initial value; then the 32 softplus of a thread as straight-line code.
 * - Stores go through shared memory so that 8 lanes write one whole 128-byte row: stored
 *   from the fragments (4 bytes per lane, 8 rows per instruction) the L2 handled twice the
 *   sectors, each half written, and was the limit (ncu: L2 77% busy, DRAM 22%).
 * - Ranks and channels that do not fill a fragment are zero-filled on load; tokens and
 *   channels past the end (and rows not 16-byte aligned) take guarded 2-byte stores.
 * - softplus as the scan's (numeric.cuh: one MUFU ex2, the v > 20 rule exact) with a shorter
 *   polynomial, accurate to fp16's rounding (softplusHalf); delta is rounded once, after the
 *   softplus (the official pattern rounds dt_proj's output before the bias and softplus).
 * - Both directions of a Vim layer in one launch (vimdeploy_delta_softplus_bidir): the
 *   direction is blockIdx.z, each z-slice the one-direction grid on its own arguments.
 */
#include "vimdeploy/delta_softplus.h"

#include "numeric.cuh"
#include "ptx.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace
{

constexpr int kWarps = 4;                         // per block
constexpr int kChannels = 64;                     // per block: 8 mma tiles of 8
constexpr int kTilesN = kChannels / 8;
constexpr int kTokensPerBlock = kWarps * 16 * 4;  // each warp walks 4 tiles of 16 tokens

struct Args
{
    __half const* dt;
    __half const* w;
    float const* bias; // or null
    __half* out;
    int64_t tokens, E, R, stride;
    int64_t tiles; // groups of kTokensPerBlock tokens: the grid's y (at most 65535; warps stride beyond)
    bool rows16;   // E a multiple of 8 and out 16-byte aligned: 16-byte stores
    bool pairs32;  // R and the row stride even, dt 4-byte aligned: two ranks per load
};

using vimdeploy::mma;
using vimdeploy::pack;

// mamba_ssm's softplus for an fp16 result: numeric.cuh's form with a degree-5 polynomial for
// log1p(w)/w (Chebyshev fit on [0, 1], rel. error 1.9e-5 evaluated in fp32; the scan's degree 8
// is good to 2.5e-7). 1.9e-5 + fp16's half ulp (2^-12) stays under 2^-11 relative, and the
// kernel is issue-bound on these FMAs: 3 fewer per element measured 9% faster (H200, Vim-Ti
// 1248 px batch 32: 0.069 vs 0.076 ms).
__device__ __forceinline__ float softplusHalf(float v)
{
    float const w = vimdeploy::ex2Mufu(-fabsf(v) * vimdeploy::kLog2e);
    float q = -2.3689253e-2f;
    q = fmaf(q, w, 1.0028721e-1f);
    q = fmaf(q, w, -2.0866966e-1f);
    q = fmaf(q, w, 3.2441181e-1f);
    q = fmaf(q, w, -4.9918786e-1f);
    q = fmaf(q, w, 9.9998188e-1f);
    return fmaf(w, q, fmaxf(v, 0.f)); // v > 20: w * q < 2.1e-9 vanishes in v, as in numeric.cuh
}

// One direction's delta per blockIdx.z: a0 for z = 0, a1 for z = 1 (the one-direction form
// launches one z with a1 = a0, so both forms run the same code on the same arguments).
template <int kK> // k-steps: R <= 16 * kK
__global__ void __launch_bounds__(kWarps * 32) deltaKernel(Args const a0, Args const a1)
{
    Args const a = blockIdx.z == 0 ? a0 : a1;
    int const lane = threadIdx.x % 32;
    int const g = lane / 4;
    int const q = lane % 4;
    int64_t const ch0 = int64_t(blockIdx.x) * kChannels;

    auto weight = [&](int64_t n, int k) { return n < a.E && k < a.R ? a.w[n * a.R + k] : __float2half(0.f); };
    uint32_t b[kK][kTilesN][2];
    float bias[kTilesN][2];
#pragma unroll
    for (int j = 0; j < kTilesN; ++j)
    {
        int64_t const n = ch0 + 8 * j + g;
#pragma unroll
        for (int s = 0; s < kK; ++s)
        {
            int const k = 16 * s + 2 * q;
            b[s][j][0] = pack(weight(n, k), weight(n, k + 1));
            b[s][j][1] = pack(weight(n, k + 8), weight(n, k + 9));
        }
        int64_t const c = ch0 + 8 * j + 2 * q;
#pragma unroll
        for (int i = 0; i < 2; ++i)
            bias[j][i] = a.bias && c + i < a.E ? a.bias[c + i] : 0.f;
    }

    // The warp's 16-token tiles: t0, t0 + stride, ... (a block's 4 warps take 64 consecutive tokens).
    int64_t const stride = int64_t(gridDim.y) * kWarps * 16;
    int64_t t0 = (int64_t(blockIdx.y) * kWarps + threadIdx.x / 32) * 16;
    // This thread's A columns (ranks) 16s + 2q + {0, 1, 8, 9}, and which of them exist (< R).
    bool in[kK][4];
#pragma unroll
    for (int s = 0; s < kK; ++s)
#pragma unroll
        for (int i = 0; i < 4; ++i)
            in[s][i] = 16 * s + 2 * q + (i & 1) + 8 * (i >> 1) < a.R;
    auto load = [&](int64_t t, uint32_t (&x)[kK][4]) {
        __half const* const p0 = a.dt + (t + g) * a.stride + 2 * q; // rows t + g and t + g + 8
        __half const* const p1 = p0 + 8 * a.stride;
        bool const ok0 = t + g < a.tokens, ok1 = t + g + 8 < a.tokens;
        __half const zero = __float2half(0.f);
#pragma unroll
        for (int s = 0; s < kK; ++s)
        {
            if (a.pairs32) // (k, k + 1) as one 4-byte load: both exist or neither (R even)
            {
                auto pair = [&](__half const* p, bool ok) {
                    return ok ? __ldg(reinterpret_cast<uint32_t const*>(p)) : 0u;
                };
                x[s][0] = pair(p0 + 16 * s, ok0 && in[s][0]);
                x[s][1] = pair(p1 + 16 * s, ok1 && in[s][0]);
                x[s][2] = pair(p0 + 16 * s + 8, ok0 && in[s][2]);
                x[s][3] = pair(p1 + 16 * s + 8, ok1 && in[s][2]);
            }
            else
            {
                auto one = [&](__half const* p, bool ok) { return ok ? __ldg(p) : zero; };
                x[s][0] = pack(one(p0 + 16 * s, ok0 && in[s][0]), one(p0 + 16 * s + 1, ok0 && in[s][1]));
                x[s][1] = pack(one(p1 + 16 * s, ok1 && in[s][0]), one(p1 + 16 * s + 1, ok1 && in[s][1]));
                x[s][2] = pack(one(p0 + 16 * s + 8, ok0 && in[s][2]), one(p0 + 16 * s + 9, ok0 && in[s][3]));
                x[s][3] = pack(one(p1 + 16 * s + 8, ok1 && in[s][2]), one(p1 + 16 * s + 9, ok1 && in[s][3]));
            }
        }
    };
    uint32_t x[kK][4];
    if (t0 < a.tokens)
        load(t0, x);
    // A whole 64-channel strip with 16-byte aligned rows: stores go through shared memory
    __shared__ __align__(16) __half2 stage[kWarps][16][kChannels / 2 + 4]; // +16 bytes: no bank conflicts
    __half2 (*const tile)[kChannels / 2 + 4] = stage[threadIdx.x / 32];
    bool const strip = ch0 + kChannels <= a.E && a.rows16;
#pragma unroll 1
    for (; t0 < a.tokens; t0 += stride)
    {
        // All 8 tiles' products, then the next tile's loads (in flight during the epilogue),
        // then the epilogue as straight-line code: 32 independent softplus chains per thread.
        float d[kTilesN][4];
#pragma unroll
        for (int j = 0; j < kTilesN; ++j)
        {
            mma(d[j], x[0], b[0][j], bias[j][0], bias[j][1], bias[j][0], bias[j][1]);
#pragma unroll
            for (int s = 1; s < kK; ++s)
                mma(d[j], x[s], b[s][j], d[j][0], d[j][1], d[j][2], d[j][3]);
        }
        if (t0 + stride < a.tokens)
            load(t0 + stride, x);
#pragma unroll
        for (int j = 0; j < kTilesN; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i)
                d[j][i] = softplusHalf(d[j][i]);
        int64_t const r0 = t0 + g;
        int64_t const c0 = ch0 + 2 * q;
        if (strip && t0 + 16 <= a.tokens) // warp-uniform: a whole 16 x 64 tile
        {
            // Through shared memory, so that each store writes whole 128-byte rows (8 lanes x 16
            // bytes): stored from the fragments directly (4 bytes per lane, 8 rows per
            // instruction) the L2 took twice the sectors, half-written, and was the limit.
#pragma unroll
            for (int j = 0; j < kTilesN; ++j)
            {
                tile[g][4 * j + q] = __floats2half2_rn(d[j][0], d[j][1]);
                tile[g + 8][4 * j + q] = __floats2half2_rn(d[j][2], d[j][3]);
            }
            __syncwarp();
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
                int const r = lane / 8 + 4 * i, c = lane % 8;
                *reinterpret_cast<uint4*>(a.out + (t0 + r) * a.E + ch0 + 8 * c) =
                    *reinterpret_cast<uint4 const*>(&tile[r][4 * c]);
            }
            __syncwarp();
        }
        else
        {
#pragma unroll
            for (int j = 0; j < kTilesN; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                {
                    int64_t const r = r0 + 8 * (i / 2), c = c0 + 8 * j + i % 2;
                    if (r < a.tokens && c < a.E)
                        a.out[r * a.E + c] = __float2half_rn(d[j][i]);
                }
        }
    }
}

// `n` directions (1 or 2) of the same tokens, E and R: a grid of n z-slices, one launch.
template <int kK>
cudaError_t launch(Args const (&a)[2], int n, cudaStream_t stream)
{
    dim3 const grid(
        unsigned((a[0].E + kChannels - 1) / kChannels), unsigned(a[0].tiles < 65535 ? a[0].tiles : 65535), unsigned(n));
    deltaKernel<kK><<<grid, kWarps * 32, 0, stream>>>(a[0], a[1]);
    return cudaGetLastError();
}

// VIMDEPLOY_SUCCESS if `p` is a set of parameters the kernel takes (sizes, rank, dtype, and the
// pointers where there is work), else the error code. `empty`: nothing to write.
int check(VimdeployDeltaParams const* p, bool& empty)
{
    if (!p)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (p->dtype != VIMDEPLOY_DTYPE_FLOAT16 || p->R < 1 || p->R > VIMDEPLOY_DELTA_MAX_R)
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    if (p->tokens < 0 || p->E < 0 || p->dt_stride < p->R || p->E > 65535LL * kChannels)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    empty = p->tokens == 0 || p->E == 0;
    if (!empty && (!p->dt || !p->weight || !p->delta))
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    return VIMDEPLOY_SUCCESS;
}

Args args(VimdeployDeltaParams const& p)
{
    Args a{};
    a.dt = static_cast<__half const*>(p.dt);
    a.w = static_cast<__half const*>(p.weight);
    a.bias = p.bias;
    a.out = static_cast<__half*>(p.delta);
    a.tokens = p.tokens;
    a.E = p.E;
    a.R = p.R;
    a.stride = p.dt_stride;
    a.tiles = (p.tokens + kTokensPerBlock - 1) / kTokensPerBlock;
    a.rows16 = p.E % 8 == 0 && reinterpret_cast<uintptr_t>(p.delta) % 16 == 0;
    a.pairs32 = p.R % 2 == 0 && p.dt_stride % 2 == 0 && reinterpret_cast<uintptr_t>(p.dt) % 4 == 0;
    return a;
}

int run(Args const (&a)[2], int n, cudaStream_t stream)
{
    switch ((a[0].R + 15) / 16)
    {
    case 1: return launch<1>(a, n, stream);
    case 2: return launch<2>(a, n, stream);
    case 3: return launch<3>(a, n, stream);
    default: return launch<4>(a, n, stream);
    }
}

} // namespace

extern "C" {

int vimdeploy_delta_softplus(VimdeployDeltaParams const* p, cudaStream_t stream)
{
    bool empty = false;
    if (int const rc = check(p, empty))
        return rc;
    if (empty)
        return VIMDEPLOY_SUCCESS;
    Args const a[2] = {args(*p), args(*p)};
    return run(a, 1, stream);
}

int vimdeploy_delta_softplus_bidir(VimdeployDeltaParams const* p, cudaStream_t stream)
{
    if (!p)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    bool empty[2] = {false, false};
    for (int i = 0; i < 2; ++i)
        if (int const rc = check(p + i, empty[i]))
            return rc;
    if (p[0].tokens != p[1].tokens || p[0].E != p[1].E || p[0].R != p[1].R)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (empty[0])
        return VIMDEPLOY_SUCCESS;
    Args const a[2] = {args(p[0]), args(p[1])};
    return run(a, 2, stream);
}

} // extern "C"
