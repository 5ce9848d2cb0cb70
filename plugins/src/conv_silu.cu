/*
 * vimdeploy: both directions' depthwise conv + SiLU of Vim's mixer front in one launch
 * (vimdeploy/conv_silu.h has the formulas).
 *
 * Design: the op reads x (batch, L, E) once and writes two tensors of the same size, with
 * 2k FMAs and two SiLUs per element pair: it is bound by memory bandwidth, so the kernel is
 * built around the bytes moved.
 *
 * - Each thread owns one 16-byte run of channels (8 fp16 or 4 fp32, `W` below) and a tile of
 *   consecutive tokens of one batch row; consecutive threads of a warp own consecutive runs
 *   of the same token, so every load and store of a warp is a contiguous, coalesced
 *   16-byte-per-lane access (no shared memory: nothing is exchanged between threads, so there
 *   are no bank conflicts to avoid; the conv window lives in registers).
 * - A thread walks its tile in chunks of kChunk tokens: it loads the chunk's kChunk new
 *   tokens (kChunk independent 16-byte loads in flight per thread), computes kChunk outputs
 *   per direction from a register window of the chunk plus the 2(k-1) tokens around it, and
 *   carries the last 2(k-1) tokens of the window into the next chunk. Each x element is
 *   loaded once per tile, plus the k-1 halo tokens on each side of the tile: with 32-token
 *   tiles that is (32 + 6) / 32 = 1.19 loads per element, and the halo loads hit L2 (the
 *   neighbouring tile's thread reads the same lines), so DRAM traffic stays ~1x x + 2x y.
 *   The window is kept as raw 16-byte packs (4 registers each) and converted to fp32 where
 *   used, which halves the registers of an fp16 window.
 * - Tile length is a trade between halo loads (fewer with long tiles) and threads in flight
 *   (more with short tiles): 32 tokens when the launch still has >= 1024 threads per SM
 *   (Vim-Ti at 1248 px, batch 32: 293k threads), else 8 (Vim-Ti at 224 px, batch 128).
 * - k = 4 (Vim's d_conv) is a template: the window, the weights (2 * k * W fp32 per thread)
 *   and the loops are in registers, fully unrolled. Other k (1..8) run a generic kernel,
 *   one token per thread, reading its 2k - 1 tokens through L1.
 * - Where E is not a multiple of W or a pointer is not 16-byte aligned, the same kernels
 *   run with W = 1 (one channel per thread, still coalesced across the warp).
 * - Math in fp32 (weights and bias fp32), each output rounded to the output dtype once.
 *   SiLU(v) = v / (1 + exp(-v)) with __expf and __fdividef (a few ulp in fp32).
 */
#include "vimdeploy/conv_silu.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <cstdint>

namespace
{

constexpr int kThreads = 256; // threads per block
constexpr int kChunk = 8;     // tokens loaded together by a tiled thread
constexpr int kTiledK = 4;    // the conv width with a dedicated kernel (Vim's d_conv)

struct Args
{
    void const* x;
    float const* wf; // (E, k)
    float const* bf; // (E) or null
    float const* wb;
    float const* bb;
    void* yf;
    void* yb;
    int64_t batch, L, E;
    int64_t groups; // E / W: channel runs per token
    int64_t tiles;  // tiles per batch row
    int64_t total;  // threads with work: batch * tiles * groups
    int k;
};

// W elements of T, one 16-byte access when W * sizeof(T) == 16.
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack
{
    T v[W];
};

__device__ __forceinline__ float toF(float v) { return v; }
__device__ __forceinline__ float toF(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T fromF(float v);
template <>
__device__ __forceinline__ float fromF<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromF<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.f + __expf(-v)); }

// x[row + t * E] as a pack, zero outside [0, L).
template <typename T, int W>
__device__ __forceinline__ Pack<T, W> loadToken(T const* __restrict__ row, int64_t t, int64_t L, int64_t E)
{
    Pack<T, W> p;
    if (static_cast<uint64_t>(t) < static_cast<uint64_t>(L))
        p = *reinterpret_cast<Pack<T, W> const*>(row + t * E);
    else
    {
#pragma unroll
        for (int i = 0; i < W; ++i)
            p.v[i] = fromF<T>(0.f);
    }
    return p;
}

// Thread -> (batch row, tile, channel run): consecutive threads take consecutive runs.
struct Where
{
    int64_t b, tile, c0;
};
__device__ __forceinline__ Where where(Args const& a, int64_t idx, int W)
{
    int64_t const g = idx % a.groups;
    int64_t const rest = idx / a.groups;
    return {rest / a.tiles, rest % a.tiles, g * W};
}

// k = K fixed, TILE tokens per thread, the window in registers.
template <typename T, int W, int K, int TILE>
__global__ void __launch_bounds__(kThreads) convSiluTiled(Args a)
{
    constexpr int H = K - 1;
    static_assert(TILE % kChunk == 0, "a tile is whole chunks");
    int64_t const idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (idx >= a.total)
        return;
    Where const w = where(a, idx, W);
    int64_t const base = w.b * a.L * a.E + w.c0;
    T const* __restrict__ x = static_cast<T const*>(a.x) + base;
    T* __restrict__ yf = static_cast<T*>(a.yf) + base;
    T* __restrict__ yb = static_cast<T*>(a.yb) + base;

    float wf[W][K], wb[W][K], bf[W], bb[W];
#pragma unroll
    for (int i = 0; i < W; ++i)
    {
#pragma unroll
        for (int j = 0; j < K; ++j)
        {
            wf[i][j] = a.wf[(w.c0 + i) * K + j];
            wb[i][j] = a.wb[(w.c0 + i) * K + j];
        }
        bf[i] = a.bf ? a.bf[w.c0 + i] : 0.f;
        bb[i] = a.bb ? a.bb[w.c0 + i] : 0.f;
    }

    // win[m] = x[tc - H + m] for the chunk starting at token tc.
    Pack<T, W> win[2 * H + kChunk];
    int64_t const t0 = w.tile * TILE;
#pragma unroll
    for (int m = 0; m < 2 * H; ++m)
        win[m] = loadToken<T, W>(x, t0 - H + m, a.L, a.E);

#pragma unroll 1 // one chunk's loads in flight at a time: unrolled, all 32 + 6 tokens' packs stay live
    for (int c = 0; c < TILE / kChunk; ++c)
    {
        int64_t const tc = t0 + c * kChunk;
        if (tc >= a.L)
            break;
#pragma unroll
        for (int m = 0; m < kChunk; ++m)
            win[2 * H + m] = loadToken<T, W>(x, tc + H + m, a.L, a.E);
#pragma unroll
        for (int s = 0; s < kChunk; ++s)
        {
            Pack<T, W> of, ob;
#pragma unroll
            for (int i = 0; i < W; ++i)
            {
                float sf = bf[i], sb = bb[i];
#pragma unroll
                for (int j = 0; j < K; ++j)
                {
                    sf = fmaf(wf[i][j], toF(win[s + j].v[i]), sf);         // x[t - H + j]
                    sb = fmaf(wb[i][j], toF(win[s + 2 * H - j].v[i]), sb); // x[t + H - j]
                }
                of.v[i] = fromF<T>(silu(sf));
                ob.v[i] = fromF<T>(silu(sb));
            }
            int64_t const t = tc + s;
            if (t < a.L)
            {
                *reinterpret_cast<Pack<T, W>*>(yf + t * a.E) = of;
                *reinterpret_cast<Pack<T, W>*>(yb + t * a.E) = ob;
            }
        }
#pragma unroll
        for (int m = 0; m < 2 * H; ++m)
            win[m] = win[kChunk + m];
    }
}

// Any k (run time, 1..VIMDEPLOY_CONV_SILU_MAX_K): one token per thread (tiles = L).
template <typename T, int W>
__global__ void __launch_bounds__(kThreads) convSiluGeneric(Args a)
{
    int64_t const idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (idx >= a.total)
        return;
    Where const w = where(a, idx, W);
    int64_t const t = w.tile;
    int64_t const base = w.b * a.L * a.E + w.c0;
    T const* __restrict__ x = static_cast<T const*>(a.x) + base;
    int const k = a.k, H = k - 1;

    float sf[W], sb[W];
#pragma unroll
    for (int i = 0; i < W; ++i)
    {
        sf[i] = a.bf ? a.bf[w.c0 + i] : 0.f;
        sb[i] = a.bb ? a.bb[w.c0 + i] : 0.f;
    }
    // Token t - H + m feeds forward tap j = m (m <= H) and backward tap j = 2H - m (m >= H).
    for (int m = 0; m <= 2 * H; ++m)
    {
        Pack<T, W> const p = loadToken<T, W>(x, t - H + m, a.L, a.E);
#pragma unroll
        for (int i = 0; i < W; ++i)
        {
            float const v = toF(p.v[i]);
            if (m <= H)
                sf[i] = fmaf(a.wf[(w.c0 + i) * k + m], v, sf[i]);
            if (m >= H)
                sb[i] = fmaf(a.wb[(w.c0 + i) * k + 2 * H - m], v, sb[i]);
        }
    }
    Pack<T, W> of, ob;
#pragma unroll
    for (int i = 0; i < W; ++i)
    {
        of.v[i] = fromF<T>(silu(sf[i]));
        ob.v[i] = fromF<T>(silu(sb[i]));
    }
    *reinterpret_cast<Pack<T, W>*>(static_cast<T*>(a.yf) + base + t * a.E) = of;
    *reinterpret_cast<Pack<T, W>*>(static_cast<T*>(a.yb) + base + t * a.E) = ob;
}

int smCount()
{
    constexpr int kMaxDevices = 64;
    static std::atomic<int> cache[kMaxDevices];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices)
        return 132;
    int n = cache[dev].load(std::memory_order_relaxed);
    if (n == 0)
    {
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0)
            n = 132;
        cache[dev].store(n, std::memory_order_relaxed);
    }
    return n;
}

bool aligned16(void const* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, int W>
int launchW(Args a, int variant, cudaStream_t stream)
{
    a.groups = a.E / W;
    int tile = 1;
    if (variant == VIMDEPLOY_CONV_SILU_AUTO)
    {
        if (a.k != kTiledK)
            variant = VIMDEPLOY_CONV_SILU_GENERIC;
        else
        {
            int64_t const threads32 = a.batch * ((a.L + 31) / 32) * a.groups;
            variant = threads32 >= int64_t(smCount()) * 1024 ? VIMDEPLOY_CONV_SILU_TILED_32 : VIMDEPLOY_CONV_SILU_TILED_8;
        }
    }
    if (variant == VIMDEPLOY_CONV_SILU_TILED_8)
        tile = 8;
    else if (variant == VIMDEPLOY_CONV_SILU_TILED_32)
        tile = 32;
    a.tiles = (a.L + tile - 1) / tile;
    a.total = a.batch * a.tiles * a.groups;
    int64_t const blocks = (a.total + kThreads - 1) / kThreads;
    if (blocks > INT_MAX)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    dim3 const grid(static_cast<unsigned>(blocks));
    switch (tile)
    {
    case 8: convSiluTiled<T, W, kTiledK, 8><<<grid, kThreads, 0, stream>>>(a); break;
    case 32: convSiluTiled<T, W, kTiledK, 32><<<grid, kThreads, 0, stream>>>(a); break;
    default: convSiluGeneric<T, W><<<grid, kThreads, 0, stream>>>(a); break;
    }
    cudaError_t const err = cudaGetLastError();
    return err == cudaSuccess ? VIMDEPLOY_SUCCESS : int(err);
}

template <typename T>
int launch(Args const& a, int variant, cudaStream_t stream)
{
    constexpr int kVec = 16 / sizeof(T);
    bool const vec = variant != VIMDEPLOY_CONV_SILU_SCALAR && a.E % kVec == 0 && aligned16(a.x)
        && aligned16(a.yf) && aligned16(a.yb);
    if (variant == VIMDEPLOY_CONV_SILU_SCALAR)
        variant = VIMDEPLOY_CONV_SILU_GENERIC;
    return vec ? launchW<T, kVec>(a, variant, stream) : launchW<T, 1>(a, variant, stream);
}

} // namespace

extern "C" {

int vimdeploy_conv_silu_bidir_ex(VimdeployConvSiluParams const* p, cudaStream_t stream, int variant)
{
    if (!p)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if ((p->dtype != VIMDEPLOY_DTYPE_FLOAT32 && p->dtype != VIMDEPLOY_DTYPE_FLOAT16) || p->k < 1
        || p->k > VIMDEPLOY_CONV_SILU_MAX_K || variant < VIMDEPLOY_CONV_SILU_AUTO
        || variant > VIMDEPLOY_CONV_SILU_SCALAR)
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    if ((variant == VIMDEPLOY_CONV_SILU_TILED_8 || variant == VIMDEPLOY_CONV_SILU_TILED_32) && p->k != kTiledK)
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    if (p->batch < 0 || p->L < 0 || p->E < 0)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (p->batch == 0 || p->L == 0 || p->E == 0)
        return VIMDEPLOY_SUCCESS;
    if (!p->x || !p->weight_fwd || !p->weight_bwd || !p->y_fwd || !p->y_bwd)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;

    Args a{};
    a.x = p->x;
    a.wf = p->weight_fwd;
    a.bf = p->bias_fwd;
    a.wb = p->weight_bwd;
    a.bb = p->bias_bwd;
    a.yf = p->y_fwd;
    a.yb = p->y_bwd;
    a.L = p->L;
    a.E = p->E;
    a.k = p->k;
    a.batch = p->batch;
    return p->dtype == VIMDEPLOY_DTYPE_FLOAT16 ? launch<__half>(a, variant, stream) : launch<float>(a, variant, stream);
}

int vimdeploy_conv_silu_bidir(VimdeployConvSiluParams const* p, cudaStream_t stream)
{
    return vimdeploy_conv_silu_bidir_ex(p, stream, VIMDEPLOY_CONV_SILU_AUTO);
}

} // extern "C"
