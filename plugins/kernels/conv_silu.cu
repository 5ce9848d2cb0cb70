/*
 * vimdeploy: both directions' depthwise conv + SiLU of Vim's mixer front in one launch
 * (vimdeploy/conv_silu.h has the formulas).
 *
 * Design: the op reads x (batch, L, E) once and writes two tensors of the same size, with
 * 2k FMAs and two SiLUs per element pair: it is bound by memory bandwidth, so the kernel is
 * built around the bytes moved and the bytes in flight. Measured on an H100 (fp16, Vim-Ti,
 * E = 384, k = 4; benchmarks/bench_conv.py, device-to-device copy 2.43-2.44 TB/s read + write;
 * two runs, docs/bench_conv_h100.json is the second): 1248 px batch 32 (449 MB moved)
 * 0.200-0.205 ms = 2.19-2.24 TB/s = 90-92% of the copy; 224 px batch 128 (58 MB) 0.040 ms =
 * 60%. torch.compile's fusion of the multiply-add path, timed the same way: 0.65 / 0.089 ms.
 *
 * - Each thread owns one 16-byte run of channels (8 fp16 or 4 fp32, `W` below) and a tile of
 *   consecutive tokens of one batch row; consecutive threads of a warp own consecutive runs
 *   of the same token, so every global load and store of a warp is a contiguous, coalesced
 *   16-byte-per-lane access. Threads exchange nothing: the conv window lives in registers.
 * - A thread walks its tile in chunks of kChunk = 8 tokens: it gets the chunk's new tokens,
 *   computes kChunk outputs per direction from a register window of the chunk plus the
 *   2(k-1) tokens before it, and carries the window's last 2(k-1) tokens into the next chunk.
 *   Each x element is loaded once per tile plus the k-1 halo tokens on each side: with
 *   32-token tiles (32 + 6) / 32 = 1.19 loads per element; the halo lines are read by the
 *   neighbouring tile's thread too, so they are expected to come from L2 (not measured).
 * - The window, the 2k + 2 weights per channel (fp32) and the fp32 conversions fill ~250
 *   registers per fp16 thread, which leaves 8 warps per SM: too few plain loads in flight
 *   (convSiluTiled: 67% of the copy at 1248/32). convSiluAsync (what AUTO runs for k = 4)
 *   issues each chunk's loads as cp.async into the thread's own shared-memory slots, two
 *   chunks ahead (3 stages x 8 tokens x 128 threads x 16 B = 48 KB per block): the bytes in
 *   flight take no registers, every thread keeps 256 bytes in flight while it computes (90-92%).
 *   A thread reads back only its own slots, so no barrier is needed; the layout
 *   [stage][token][thread] makes a warp's shared-memory reads 16 consecutive bytes per lane
 *   (no bank conflicts). Capping registers for 3 blocks per SM instead (168 registers, 264
 *   bytes spilled) was slower: 74% in one run, so that variant is not kept. Tiles of 8 or
 *   16 tokens (more threads, more halo) were slower than 32 at both
 *   shapes (ASYNC_16: 67% / 53%; TILED_8 vs TILED_32: 38% / 33% vs 66% / 43%).
 * - k = 4 (Vim's d_conv) is a template: window, weights and loops are in registers, fully
 *   unrolled within a chunk. Other k (1..8) run convSiluGeneric, one token per thread,
 *   reading its 2k - 1 tokens through L1: correct, ~13x slower than the k = 4 path.
 * - Where E is not a multiple of W or a pointer is not 16-byte aligned, the same kernels run
 *   with W = 1 (one channel per thread, still coalesced across the warp; no cp.async).
 * - Math in fp32 (weights and bias fp32), each output rounded to the output dtype once.
 *   SiLU(v) = v / (1 + exp(-v)) with __expf and __fdividef (a few ulp in fp32).
 */
#include "vimdeploy/conv_silu.h"

#include "numeric.cuh"
#include "ptx.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

using vimdeploy::fromF;
using vimdeploy::toF;
using vimdeploy::cpAsync16;
using vimdeploy::cpAsyncCommit;
using vimdeploy::cpAsyncWait;

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
    int64_t tile, c0;
    int64_t base; // element offset of (batch row, token 0, channel c0) in x, y_fwd and y_bwd
};
__device__ __forceinline__ Where where(Args const& a, int64_t idx, int W)
{
    int64_t const g = idx % a.groups;
    int64_t const rest = idx / a.groups;
    int64_t const b = rest / a.tiles;
    return {rest % a.tiles, g * W, b * a.L * a.E + g * W};
}

// A thread's K taps and bias per channel of its run, both directions (fp32).
template <int W, int K>
struct Taps
{
    float wf[W][K], wb[W][K], bf[W], bb[W];

    __device__ __forceinline__ void load(Args const& a, int64_t c0)
    {
#pragma unroll
        for (int i = 0; i < W; ++i)
        {
#pragma unroll
            for (int j = 0; j < K; ++j)
            {
                wf[i][j] = a.wf[(c0 + i) * K + j];
                wb[i][j] = a.wb[(c0 + i) * K + j];
            }
            bf[i] = a.bf ? a.bf[c0 + i] : 0.f;
            bb[i] = a.bb ? a.bb[c0 + i] : 0.f;
        }
    }

    // The kChunk outputs of both directions for the chunk starting at token tc from the window
    // win[m] = x[tc - H + m] (m < 2H + kChunk), stored where t < L; then the window slides by
    // kChunk tokens (its last 2H packs move to the front).
    template <typename T>
    __device__ __forceinline__ void convolveChunk(
        Pack<T, W> (&win)[2 * (K - 1) + kChunk], T* yf, T* yb, int64_t tc, int64_t L, int64_t E) const
    {
        constexpr int H = K - 1;
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
            if (t < L)
            {
                *reinterpret_cast<Pack<T, W>*>(yf + t * E) = of;
                *reinterpret_cast<Pack<T, W>*>(yb + t * E) = ob;
            }
        }
#pragma unroll
        for (int m = 0; m < 2 * H; ++m)
            win[m] = win[kChunk + m];
    }
};

// k = K fixed, TILE tokens per thread, the window in registers, plain loads (the path for
// W = 1, where cp.async cannot move a single fp16/fp32 element).
template <typename T, int W, int K, int TILE>
__global__ void __launch_bounds__(kThreads) convSiluTiled(Args a)
{
    constexpr int H = K - 1;
    static_assert(TILE % kChunk == 0, "a tile is whole chunks");
    int64_t const idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (idx >= a.total)
        return;
    Where const w = where(a, idx, W);
    T const* __restrict__ x = static_cast<T const*>(a.x) + w.base;
    T* __restrict__ yf = static_cast<T*>(a.yf) + w.base;
    T* __restrict__ yb = static_cast<T*>(a.yb) + w.base;

    Taps<W, K> taps;
    taps.load(a, w.c0);

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
        taps.convolveChunk(win, yf, yb, tc, a.L, a.E);
    }
}

// convSiluTiled with the chunks' loads issued as cp.async into per-thread shared-memory slots,
// kStages - 1 chunks ahead of the one being computed: the bytes in flight no longer occupy
// registers (the window's conversions and the weights fill those), so every thread keeps two
// chunks (256 bytes) in flight while it computes. Each thread reads back only its own slots
// (no barrier); slot layout [stage][token][thread] makes a warp's reads 16 consecutive bytes
// per lane (conflict-free). 16-byte packs only (W * sizeof(T) == 16).
constexpr int kAsyncThreads = 128;
constexpr int kStages = 3; // 3 * 8 * 128 * 16 B = 48 KB of static shared memory per block

template <typename T, int W, int K, int TILE>
__global__ void __launch_bounds__(kAsyncThreads) convSiluAsync(Args a)
{
    constexpr int H = K - 1;
    constexpr int kChunks = TILE / kChunk;
    static_assert(sizeof(Pack<T, W>) == 16, "cp.async moves 16-byte packs");
    static_assert(TILE % kChunk == 0, "a tile is whole chunks");
    __shared__ Pack<T, W> slots[kStages][kChunk][kAsyncThreads];

    int64_t const idx = int64_t(blockIdx.x) * kAsyncThreads + threadIdx.x;
    if (idx >= a.total)
        return;
    Where const w = where(a, idx, W);
    T const* __restrict__ x = static_cast<T const*>(a.x) + w.base;
    T* __restrict__ yf = static_cast<T*>(a.yf) + w.base;
    T* __restrict__ yb = static_cast<T*>(a.yb) + w.base;
    int64_t const t0 = w.tile * TILE;
    int64_t const left = (a.L - t0 + kChunk - 1) / kChunk; // chunks with a token in [t0, L)
    int const chunks = left < kChunks ? static_cast<int>(left) : kChunks;

    // Chunk c's new tokens are tc + H + m (m < kChunk): the window's right end.
    auto issue = [&](int c) {
        if (c < chunks)
        {
            int64_t const tc = t0 + int64_t(c) * kChunk;
#pragma unroll
            for (int m = 0; m < kChunk; ++m)
            {
                int64_t const t = tc + H + m;
                bool const valid = t < a.L;
                cpAsync16(&slots[c % kStages][m][threadIdx.x], valid ? x + t * a.E : x, valid);
            }
        }
        cpAsyncCommit(); // an empty group past the end keeps the wait count uniform
    };
#pragma unroll
    for (int c = 0; c < kStages - 1; ++c)
        issue(c);

    Taps<W, K> taps;
    taps.load(a, w.c0);
    Pack<T, W> win[2 * H + kChunk];
#pragma unroll
    for (int m = 0; m < 2 * H; ++m)
        win[m] = loadToken<T, W>(x, t0 - H + m, a.L, a.E);

#pragma unroll 1
    for (int c = 0; c < chunks; ++c)
    {
        issue(c + kStages - 1); // into the stage read (and used) in iteration c - 1
        cpAsyncWait<kStages - 1>();
#pragma unroll
        for (int m = 0; m < kChunk; ++m)
            win[2 * H + m] = slots[c % kStages][m][threadIdx.x];
        int64_t const tc = t0 + int64_t(c) * kChunk;
        taps.convolveChunk(win, yf, yb, tc, a.L, a.E);
    }
    cpAsyncWait<0>(); // no copy may outlive the block
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
    T const* __restrict__ x = static_cast<T const*>(a.x) + w.base;
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
    *reinterpret_cast<Pack<T, W>*>(static_cast<T*>(a.yf) + w.base + t * a.E) = of;
    *reinterpret_cast<Pack<T, W>*>(static_cast<T*>(a.yb) + w.base + t * a.E) = ob;
}

bool aligned16(void const* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, int W>
int launchW(Args a, int variant, cudaStream_t stream)
{
    constexpr bool kVector = W * sizeof(T) == 16;
    a.groups = a.E / W;
    if (variant == VIMDEPLOY_CONV_SILU_AUTO)
        variant = a.k != kTiledK ? VIMDEPLOY_CONV_SILU_GENERIC
            : kVector            ? VIMDEPLOY_CONV_SILU_ASYNC_32
                                 : VIMDEPLOY_CONV_SILU_TILED_32;
    bool async = variant == VIMDEPLOY_CONV_SILU_ASYNC_32 || variant == VIMDEPLOY_CONV_SILU_ASYNC_16;
    if (async && !kVector)
    {
        variant = VIMDEPLOY_CONV_SILU_TILED_32; // cp.async moves 16-byte packs only
        async = false;
    }
    int const tile = variant == VIMDEPLOY_CONV_SILU_TILED_8 ? 8
        : variant == VIMDEPLOY_CONV_SILU_ASYNC_16           ? 16
        : variant == VIMDEPLOY_CONV_SILU_TILED_32 || async  ? 32
                                                            : 1;
    int const threads = async ? kAsyncThreads : kThreads;
    a.tiles = (a.L + tile - 1) / tile;
    a.total = a.batch * a.tiles * a.groups;
    int64_t const blocks = (a.total + threads - 1) / threads;
    if (blocks > INT_MAX)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    dim3 const grid(static_cast<unsigned>(blocks));
    switch (variant)
    {
    case VIMDEPLOY_CONV_SILU_TILED_8: convSiluTiled<T, W, kTiledK, 8><<<grid, threads, 0, stream>>>(a); break;
    case VIMDEPLOY_CONV_SILU_TILED_32: convSiluTiled<T, W, kTiledK, 32><<<grid, threads, 0, stream>>>(a); break;
    case VIMDEPLOY_CONV_SILU_ASYNC_16:
        if constexpr (kVector)
            convSiluAsync<T, W, kTiledK, 16><<<grid, threads, 0, stream>>>(a);
        break;
    case VIMDEPLOY_CONV_SILU_ASYNC_32:
        if constexpr (kVector)
            convSiluAsync<T, W, kTiledK, 32><<<grid, threads, 0, stream>>>(a);
        break;
    default: convSiluGeneric<T, W><<<grid, threads, 0, stream>>>(a); break;
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
        || variant > VIMDEPLOY_CONV_SILU_ASYNC_16)
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    if ((variant == VIMDEPLOY_CONV_SILU_TILED_8 || variant == VIMDEPLOY_CONV_SILU_TILED_32
            || variant == VIMDEPLOY_CONV_SILU_ASYNC_32 || variant == VIMDEPLOY_CONV_SILU_ASYNC_16)
        && p->k != kTiledK)
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
