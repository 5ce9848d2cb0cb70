/*
 * vimdeploy: BiSelectiveScan forward kernel (see export/op_contract.md).
 *
 * Design (measured on an H100, numbers in docs/kernel.md):
 *
 * - One thread (or two, kTPC) per (batch, channel, direction) runs the recurrence
 *   sequentially with the 16 states in registers (as TensorRT-LLM's Mamba kernel). The
 *   op is bound by the 16 exps per state step (MUFU ex2) more than by memory; a
 *   block-parallel scan over (a, b) pairs (mamba_ssm) needs the same exps plus the
 *   combine work, so the sequential form is used wherever enough threads are in flight.
 * - A block = 2 warps: warp 0 scans 32 / kTPC channels forward, warp 1 the same
 *   channels backward (same code, direction at run time: one hot loop in the i-cache). They meet in the middle: in the first half of the sweep each
 *   direction writes its (ungated) partial output into y, then __syncthreads(), then in
 *   the second half each direction reads the other's partial at the tokens it reaches,
 *   adds its own, applies silu(z) * out_scale and writes the final value. So z is read
 *   once, y written once (plus one partial store/load per element), nothing is flipped.
 *   For fp16 the partial is rounded to fp16 once (the official pattern rounds each gated
 *   direction to fp16 too); for fp32 it is exact.
 * - B_t and C_t are shared by all channels of a batch row: each warp stages kTC steps of
 *   them (32 values a step = one per lane, coalesced) through registers into shared memory,
 *   one chunk ahead, and every lane reads them back as float4 broadcasts. x, dt, z and the
 *   partial are per-thread, coalesced across the warp, also prefetched one chunk ahead.
 * - When batch * channels cannot fill the GPU (batch 1 at long L), L is split into chunks:
 *   a first launch computes each chunk's final state from zero and the sum of its deltas
 *   (its total decay is exp(A * sum(delta))), the second launch starts each chunk from the
 *   carried state of the chunks before it (in scan order) and runs the sweep above inside
 *   the chunk. That doubles the exps, so it is only used when the GPU would idle otherwise.
 * - Instruction issue, not memory, is the other limit: per step a thread does ~5
 *   instructions per state (FMUL, MUFU.EX2, FMUL, 2 FFMA) plus the per-step overhead, so
 *   that overhead is kept small: softplus costs one MUFU op (polynomial log1p), the two
 *   threads of a channel (kTPC = 2: 8 states each, twice the warps, which balances the
 *   warps over the 4 schedulers of an SM) split the softplus and the silu gate of a pair
 *   of steps and swap them with a shuffle, loads of full chunks are unguarded.
 * - A polynomial exp2 on the FMA pipe (FlashAttention-4's trick) to unload MUFU was
 *   tried and was slower: the kernel is as much issue-bound as MUFU-bound (docs/kernel.md).
 */
#include "vimdeploy/bi_selective_scan.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

namespace
{

constexpr int kN = 16;      // d_state (Vim); other values are rejected
constexpr int kWarp = 32;   // channels per block (one warp per direction)
constexpr int kMinChunkL = 64; // shortest chunk worth splitting L into
constexpr float kLog2e = 1.4426950408889634f;

struct Params
{
    void const* z;
    void const* x[2];
    void const* dt[2];
    void const* B[2];
    void const* C[2];
    float const* A[2];
    float const* D[2];
    float const* bias[2];
    void* y;
    float* ws; // chunk states [2][batch][chunks][kN + 1][E] (kN states + sum of deltas)
    int64_t L, E;
    int chunks, chunk_len, batch;
    int softplus;
    float scale;
};

__device__ __forceinline__ float toF(float v) { return v; }
__device__ __forceinline__ float toF(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T fromF(float v);
template <>
__device__ __forceinline__ float fromF<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromF<__half>(float v) { return __float2half_rn(v); }

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
    return v > 20.f ? v : fmaxf(v, 0.f) + w * q;
}

// silu(v) = v / (1 + exp(-v)); for v < -88 the denominator is inf and the result 0.
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.f + ex2Mufu(-v * kLog2e)); }

enum Mode
{
    kStates = 0, // chunk-local final state + sum of deltas -> workspace (split pass 1)
    kFirst = 1,  // first half: store the ungated partial output into y
    kSecond = 2  // second half: combine with the other direction's partial, gate, store
};

// Everything one thread needs. kTPC threads share a channel, each holding kN / kTPC states.
template <typename T, int kTPC>
struct Lane
{
    T const* x; // x, dt, z, y at the thread's first token in scan order
    T const* dt;
    T const* z;
    T* y;
    T const* bc; // B (lanes 0..15) or C (lanes 16..31) at the first token, for the staging loads
    float A2[kN / kTPC]; // A * log2(e) of this thread's states
    float D, bias;
    int part;   // which kN / kTPC states of the channel (0..kTPC-1)
    bool store; // channel < E and part 0 (inactive lanes compute on a clamped channel)
};

// Sweeps steps [s0, s1) in scan order (step 0 = the chunk's first token in this direction;
// rev: the backward direction, tokens descending. A run-time flag, not a template
// parameter: the two warps of a block then run the same code, which halves the hot
// instruction footprint; measured faster than two specialised copies).
template <typename T, int kTC, int kTPC, Mode kMode>
__device__ __forceinline__ void sweep(Lane<T, kTPC> const& ln, Params const& p, float (&h)[kN / kTPC],
    float& dsum, int s0, int s1, float4* bcSmem, int lane, bool rev)
{
    constexpr int kS = kN / kTPC;
    constexpr bool kOut = kMode != kStates;
    int const bcStep = rev ? -kN : kN;
    static_assert(kTPC == 1 || kTC % 2 == 0, "pairs of steps are shared between the 2 threads of a channel");
    int64_t const step = rev ? -p.E : p.E; // one token in scan order
    T px[kTC], pdt[kTC], pbc[kTC], pz[kTC], pp[kTC]; // the next chunk, loaded one chunk ahead

    // Chunk base pointers in 64 bits, the steps inside a chunk as 32-bit offsets shared by
    // x, dt, z and y (same layout): one IMAD.WIDE per load instead of 64-bit pointer bumps.
    int const step32 = int(step);
    auto prefetch = [&](int s, auto guard) {
        constexpr bool kGuard = decltype(guard)::value;
        int64_t const o = s * step;
        T const* qx = ln.x + o;
        T const* qdt = ln.dt + o;
        T const* qz = ln.z + o;
        T const* qp = ln.y + o;
        T const* qbc = ln.bc + int64_t(s) * bcStep;
#pragma unroll
        for (int i = 0; i < kTC; ++i)
        {
            if (!kGuard || s + i < s1)
            {
                int const oi = i * step32;
                px[i] = qx[oi];
                pdt[i] = qdt[oi];
                if (kOut || lane < kN)
                    pbc[i] = qbc[i * bcStep];
                if (kMode == kSecond)
                {
                    pz[i] = qz[oi];
                    pp[i] = qp[oi]; // the other direction's partial (written before the barrier)
                }
            }
        }
    };
    auto prefetchFrom = [&](int s) {
        if (s + kTC <= s1)
            prefetch(s, std::false_type{});
        else if (s < s1)
            prefetch(s, std::true_type{});
    };

    // One chunk of kTC steps; kGuard only for the last, partial chunk.
    auto chunk = [&](int s, auto guard) {
        constexpr bool kGuard = decltype(guard)::value;
        // Deltas and gates first (independent across steps). The kTPC == 2 threads of a
        // channel split them: even steps on part 0, odd on part 1, then swap.
        float dl[kTC], g[kTC];
#pragma unroll
        for (int i = 0; i < kTC; i += kTPC)
        {
            int const j = kTPC == 2 && ln.part ? i + 1 : i;
            float const v = toF(kTPC == 2 && ln.part ? pdt[i + 1] : pdt[i]) + ln.bias;
            float const d = p.softplus ? softplus(v) : v;
            float gz = 0.f;
            if (kMode == kSecond)
                gz = silu(toF(kTPC == 2 && ln.part ? pz[i + 1] : pz[i])) * p.scale;
            if (kTPC == 1)
            {
                dl[i] = d;
                g[i] = gz;
            }
            else
            {
                float const dOther = __shfl_xor_sync(0xffffffffu, d, 1);
                dl[i] = ln.part ? dOther : d;
                dl[i + 1] = ln.part ? d : dOther;
                if (kMode == kSecond)
                {
                    float const gOther = __shfl_xor_sync(0xffffffffu, gz, 1);
                    g[i] = ln.part ? gOther : gz;
                    g[i + 1] = ln.part ? gz : gOther;
                }
            }
            (void) j;
        }
        T cx[kTC], cp[kTC];
#pragma unroll
        for (int i = 0; i < kTC; ++i)
        {
            cx[i] = px[i];
            cp[i] = pp[i];
        }
        __syncwarp();
        float* bcs = reinterpret_cast<float*>(bcSmem);
#pragma unroll
        for (int i = 0; i < kTC; ++i)
            bcs[i * kWarp + lane] = toF(pbc[i]);
        __syncwarp();
        prefetchFrom(s + kTC);

        [[maybe_unused]] T* const qy = ln.y + s * step; // unused when kMode == kStates
#pragma unroll
        for (int i = 0; i < kTC; ++i)
        {
            if (kGuard && s + i >= s1) // warp-uniform
                break;
            float const xv = toF(cx[i]);
            float const dx = dl[i] * xv;
            float y0 = 0.f, y1 = 0.f;
            // this thread's B at [part*kS, part*kS + kS), its C 16 floats further
            float4 const* bc = bcSmem + i * (kWarp / 4) + ln.part * (kS / 4);
#pragma unroll
            for (int q = 0; q < kS / 4; ++q)
            {
                float4 const b = bc[q];
                float const bq[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                for (int k = 0; k < 4; ++k)
                {
                    int const n = 4 * q + k;
                    h[n] = fmaf(ex2Mufu(dl[i] * ln.A2[n]), h[n], dx * bq[k]);
                }
                if (kOut)
                {
                    float4 const c = bc[kN / 4 + q];
                    y0 = fmaf(h[4 * q], c.x, y0);
                    y1 = fmaf(h[4 * q + 1], c.y, y1);
                    y0 = fmaf(h[4 * q + 2], c.z, y0);
                    y1 = fmaf(h[4 * q + 3], c.w, y1);
                }
            }
            if constexpr (kMode == kStates)
                dsum += dl[i];
            if constexpr (kOut)
            {
                float y = y0 + y1;
                if (kTPC == 2)
                    y += __shfl_xor_sync(0xffffffffu, y, 1);
                y = fmaf(ln.D, xv, y);
                if (kMode == kSecond)
                    y = (y + toF(cp[i])) * g[i];
                if (ln.store)
                    qy[i * step32] = fromF<T>(y);
            }
        }
    };

    prefetchFrom(s0);
    for (int s = s0; s < s1; s += kTC)
    {
        if (s + kTC <= s1)
            chunk(s, std::false_type{});
        else
            chunk(s, std::true_type{});
    }
}

// grid (ceil(E / channels per warp), batch, chunks), block 64: warp 0 forward, warp 1 backward
// over the same channels.
template <typename T, int kTC, int kTPC, bool kStatesPass>
__global__ void __launch_bounds__(2 * kWarp) biScanKernel(Params const p)
{
    constexpr int kS = kN / kTPC;
    constexpr int kCh = kWarp / kTPC; // channels per warp
    __shared__ float4 bcSmem[2][kTC * kWarp / 4];
    int const dir = threadIdx.x / kWarp;
    int const lane = threadIdx.x % kWarp;
    int64_t const e = int64_t(blockIdx.x) * kCh + lane / kTPC;
    int const bi = blockIdx.y;
    int const c = blockIdx.z;
    int64_t const t0 = int64_t(c) * p.chunk_len;
    int64_t const t1 = t0 + p.chunk_len < p.L ? t0 + p.chunk_len : p.L;
    int const n = int(t1 - t0);

    // The last chunk's final state (in scan order) is never needed.
    if (kStatesPass && c == (dir == 0 ? p.chunks - 1 : 0))
        return;

    Lane<T, kTPC> ln;
    ln.part = lane % kTPC;
    bool const active = e < p.E;
    ln.store = active && ln.part == 0;
    int64_t const ec = active ? e : p.E - 1;
    int64_t const tStart = dir == 0 ? t0 : t1 - 1; // first token in scan order
    int64_t const row = (int64_t(bi) * p.L + tStart);
    ln.x = static_cast<T const*>(dir == 0 ? p.x[0] : p.x[1]) + row * p.E + ec;
    ln.dt = static_cast<T const*>(dir == 0 ? p.dt[0] : p.dt[1]) + row * p.E + ec;
    ln.z = static_cast<T const*>(p.z) + row * p.E + ec;
    ln.y = static_cast<T*>(p.y) + row * p.E + ec;
    ln.bc = static_cast<T const*>(lane < kN ? (dir == 0 ? p.B[0] : p.B[1]) : (dir == 0 ? p.C[0] : p.C[1]))
        + row * kN + (lane % kN);
    float const* A = (dir == 0 ? p.A[0] : p.A[1]) + ec * kN + ln.part * kS;
#pragma unroll
    for (int i = 0; i < kS; ++i)
        ln.A2[i] = A[i] * kLog2e;
    ln.D = (dir == 0 ? p.D[0] : p.D[1])[ec];
    ln.bias = (dir == 0 ? p.bias[0] : p.bias[1])[ec];

    float h[kS];
#pragma unroll
    for (int i = 0; i < kS; ++i)
        h[i] = 0.f;
    float dsum = 0.f;
    int64_t const wsDir = (int64_t(dir) * p.batch + bi) * p.chunks;
    float4* smem = bcSmem[dir];

    if constexpr (kStatesPass)
    {
        sweep<T, kTC, kTPC, kStates>(ln, p, h, dsum, 0, n, smem, lane, dir == 1);
        if (active)
        {
            float* w = p.ws + (wsDir + c) * (kN + 1) * p.E + e;
#pragma unroll
            for (int i = 0; i < kS; ++i)
                w[(ln.part * kS + i) * p.E] = h[i];
            if (ln.part == 0)
                w[kN * p.E] = dsum;
        }
    }
    else
    {
        // Carry in the states of the chunks before this one (in scan order).
        for (int k = 0; k < p.chunks - 1; ++k)
        {
            int const cc = dir == 0 ? k : p.chunks - 1 - k;
            if (dir == 0 ? cc >= c : cc <= c)
                break;
            float const* w = p.ws + (wsDir + cc) * (kN + 1) * p.E + ec;
            float const S = w[kN * p.E];
#pragma unroll
            for (int i = 0; i < kS; ++i)
                h[i] = fmaf(ex2Mufu(ln.A2[i] * S), h[i], w[(ln.part * kS + i) * p.E]);
        }

        // Meet in the middle: forward covers tokens [t0, t0+half) first, backward [t0+half, t1).
        int const half = n / 2;
        int const split = dir == 0 ? half : n - half;
        sweep<T, kTC, kTPC, kFirst>(ln, p, h, dsum, 0, split, smem, lane, dir == 1);
        __syncthreads(); // partials of the first half are visible to the other warp
        sweep<T, kTC, kTPC, kSecond>(ln, p, h, dsum, split, n, smem, lane, dir == 1);
    }
}

int smCount()
{
    static std::atomic<int> cache[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64)
        return 132;
    int v = cache[dev].load(std::memory_order_relaxed);
    if (v == 0)
    {
        if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0)
            v = 132;
        cache[dev].store(v, std::memory_order_relaxed);
    }
    return v;
}

int64_t tilesOf(int64_t E, int channelsPerBlock) { return (E + channelsPerBlock - 1) / channelsPerBlock; }

// Split L only when the unsplit grid has fewer than 2 blocks (4 warps) per SM; then aim
// for ~4 blocks per SM. Bounded so that batch*chunks <= 6*SMs/tiles + 2 (workspace size).
int autoChunks(int64_t batch, int64_t L, int64_t tiles)
{
    int64_t const sms = smCount();
    int64_t const blocks = tiles * batch;
    if (blocks >= 2 * sms || L < 2 * kMinChunkL)
        return 1;
    int64_t ch = (4 * sms + blocks - 1) / blocks;
    ch = std::min<int64_t>(ch, L / kMinChunkL);
    return int(std::max<int64_t>(ch, 1));
}

size_t wsBytes(int64_t batch, int64_t chunks, int64_t E)
{
    return size_t(2) * batch * chunks * (kN + 1) * E * sizeof(float);
}

// num_chunks: 0 = automatic. Falls back to one chunk when the workspace is too small.
template <typename T, int kTC, int kTPC>
cudaError_t launch(Params p, int numChunks, size_t wsAvail, cudaStream_t stream)
{
    int64_t const tiles = tilesOf(p.E, kWarp / kTPC);
    int64_t chunks = numChunks == 0 ? autoChunks(p.batch, p.L, tiles) : std::min<int64_t>(numChunks, p.L);
    chunks = std::min<int64_t>(chunks, 65535);
    if (chunks > 1 && (p.ws == nullptr || wsAvail < wsBytes(p.batch, chunks, p.E)))
        chunks = 1; // not enough scratch: unsplit is equally correct
    int64_t const chunkLen = (p.L + chunks - 1) / chunks;
    p.chunks = int((p.L + chunkLen - 1) / chunkLen);
    p.chunk_len = int(chunkLen);

    dim3 const grid(unsigned(tiles), unsigned(p.batch), unsigned(p.chunks));
    if (p.chunks > 1)
    {
        biScanKernel<T, kTC, kTPC, true><<<grid, 2 * kWarp, 0, stream>>>(p);
        cudaError_t const err = cudaGetLastError();
        if (err != cudaSuccess)
            return err;
    }
    biScanKernel<T, kTC, kTPC, false><<<grid, 2 * kWarp, 0, stream>>>(p);
    return cudaGetLastError();
}

// Variants (tuned on an H100, docs/kernel.md): <time steps staged per chunk, threads per channel>.
// Measured on an H100 (docs/kernel.md): one thread per channel (variants 1, 2) wins when
// the grid has >= 4 blocks per SM, and when a long sequence is split into chunks (batch 1);
// two threads per channel (variant 4: twice the warps, spread evenly over an SM's 4
// schedulers) wins when few channels are in flight and L is not split (Vim-Ti at batch 32)
// and for short sequences at batch 1.
int autoVariant(int64_t batch, int64_t L, int64_t E)
{
    int64_t const blocks = tilesOf(E, kWarp) * batch;
    bool const split = autoChunks(batch, L, tilesOf(E, kWarp)) > 1;
    if (split)
        return L >= 2048 ? 2 : 4;
    return blocks >= 4 * smCount() ? 1 : 4;
}

template <typename T>
cudaError_t dispatch(Params const& p, int variant, int numChunks, size_t wsAvail, cudaStream_t stream)
{
    switch (variant == 0 ? autoVariant(p.batch, p.L, p.E) : variant)
    {
    case 1: return launch<T, 4, 1>(p, numChunks, wsAvail, stream);
    case 2: return launch<T, 8, 1>(p, numChunks, wsAvail, stream);
    case 3: return launch<T, 4, 2>(p, numChunks, wsAvail, stream);
    case 4:
    default: return launch<T, 8, 2>(p, numChunks, wsAvail, stream);
    }
}

} // namespace

extern "C" {

size_t vimdeploy_bi_selective_scan_workspace_size(int64_t E, int64_t N)
{
    if (E <= 0 || N != kN)
        return 0;
    int64_t const sms = smCount();
    // autoChunks: split only if batch < 2*sms/tiles, and chunks <= 4*sms/(tiles*batch) + 1.
    int64_t const batchTimesChunks = 6 * sms / tilesOf(E, kWarp) + 2; // the largest tile gives the bound
    return wsBytes(1, batchTimesChunks, E);
}

int vimdeploy_bi_selective_scan_ex(VimdeployScanParams const* a, void* workspace, size_t workspace_bytes,
    cudaStream_t stream, int num_chunks, int variant)
{
    if (!a)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (a->N != kN || (a->dtype != VIMDEPLOY_DTYPE_FLOAT32 && a->dtype != VIMDEPLOY_DTYPE_FLOAT16))
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    if (a->batch < 0 || a->L < 0 || a->E < 0 || num_chunks < 0 || a->batch > 65535 || a->L > (int64_t(1) << 31) - 1)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (a->batch == 0 || a->L == 0 || a->E == 0)
        return VIMDEPLOY_SUCCESS;
    void const* const* inputs = &a->z; // the 15 input pointers head the struct, in contract order
    for (int i = 0; i < VIMDEPLOY_SCAN_NUM_INPUTS; ++i)
        if (!inputs[i])
            return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (!a->y)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;

    Params p;
    p.z = a->z;
    p.x[0] = a->x_fwd;
    p.x[1] = a->x_bwd;
    p.dt[0] = a->dt_fwd;
    p.dt[1] = a->dt_bwd;
    p.B[0] = a->B_fwd;
    p.B[1] = a->B_bwd;
    p.C[0] = a->C_fwd;
    p.C[1] = a->C_bwd;
    auto f32 = [](void const* q) { return static_cast<float const*>(q); };
    p.A[0] = f32(a->A_fwd);
    p.A[1] = f32(a->A_bwd);
    p.D[0] = f32(a->D_fwd);
    p.D[1] = f32(a->D_bwd);
    p.bias[0] = f32(a->dt_bias_fwd);
    p.bias[1] = f32(a->dt_bias_bwd);
    p.y = a->y;
    p.ws = static_cast<float*>(workspace);
    p.L = a->L;
    p.E = a->E;
    p.batch = int(a->batch);
    p.chunks = 1;
    p.chunk_len = int(a->L);
    p.softplus = a->delta_softplus != 0;
    p.scale = a->out_scale;

    cudaError_t const err = a->dtype == VIMDEPLOY_DTYPE_FLOAT16
        ? dispatch<__half>(p, variant, num_chunks, workspace_bytes, stream)
        : dispatch<float>(p, variant, num_chunks, workspace_bytes, stream);
    return err == cudaSuccess ? VIMDEPLOY_SUCCESS : int(err);
}

int vimdeploy_bi_selective_scan(
    VimdeployScanParams const* p, void* workspace, size_t workspace_bytes, cudaStream_t stream)
{
    return vimdeploy_bi_selective_scan_ex(p, workspace, workspace_bytes, stream, 0, 0);
}

char const* vimdeploy_error_string(int code)
{
    switch (code)
    {
    case VIMDEPLOY_SUCCESS: return "success";
    case VIMDEPLOY_ERROR_INVALID_ARGUMENT: return "invalid argument (null pointer, negative size, batch > 65535)";
    case VIMDEPLOY_ERROR_UNSUPPORTED: return "unsupported (d_state must be 16, dtype float32 or float16)";
    default: return code > 0 ? cudaGetErrorString(static_cast<cudaError_t>(code)) : "unknown error";
    }
}

} // extern "C"
