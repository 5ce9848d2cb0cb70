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
 *   A sequence-parallel path in one launch (warpChunksKernel, below; forced only) measured
 *   2-11x slower at batch 1.
 * - Instruction issue, not memory, is the other limit: per step a thread does ~5
 *   instructions per state (FMUL, MUFU.EX2, FMUL, 2 FFMA) plus the per-step overhead, so
 *   that overhead is kept small: softplus costs one MUFU op (polynomial log1p), the two
 *   threads of a channel (kTPC = 2: 8 states each, twice the warps, which balances the
 *   warps over the 4 schedulers of an SM) split the per-step work by parity: each loads
 *   x, dt, z and the partial, computes softplus, delta * x and the gate, and stores y only
 *   for its own (even or odd) steps, and the pair swaps deltas and half-sums of y with
 *   shuffles; loads of full chunks are unguarded; the hot loop has no branches (a branch
 *   splits a chunk into basic blocks, and the compiler then cannot overlap steps).
 * - A polynomial exp2 on the FMA pipe (FlashAttention-4's trick) to unload MUFU was
 *   tried and was slower: the kernel is as much issue-bound as MUFU-bound (docs/kernel.md).
 */
#include "vimdeploy/bi_selective_scan.h"
#include "vimdeploy/scan_check.h"

#include "numeric.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace
{

constexpr int kN = VIMDEPLOY_SCAN_D_STATE; // other values are rejected (scan_check.h)
constexpr int kWarp = 32;   // channels per block (one warp per direction)
constexpr int kMinChunkL = 16; // shortest chunk worth splitting L into (two-launch split)

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
    int64_t bcStride; // elements between tokens of B and C (>= kN)
    int chunks, chunk_len, batch;
    int chunksLog2; // the warp-chunks path: 1 << chunksLog2 chunks per sequence
    int softplus;
    int bcVec; // B and C 16-byte aligned: full chunks stage them with vector loads
    float scale;
};

using vimdeploy::ex2Mufu;
using vimdeploy::fromF;
using vimdeploy::kLog2e;
using vimdeploy::softplus;
using vimdeploy::toF;

// silu(v) = v / (1 + exp(-v)); for v < -88 the denominator is inf and the result 0.
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.f + ex2Mufu(-v * kLog2e)); }

// Predicated store (st.global.cg: the other warp reads the partials back from L2). Written in
// PTX so that it stays one predicated instruction: as `if (ok) store`, the compiler made a
// branch per step in the 2-threads-per-channel variants, and each step became its own basic
// block (no overlap of one step's exps with the previous step's tail).
__device__ __forceinline__ void storeIf(bool ok, float* q, float v)
{
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %0, 0;\n\t@p st.global.cg.f32 [%1], %2;\n\t}" ::"r"(int(ok)),
        "l"(q), "f"(v) : "memory");
}
__device__ __forceinline__ void storeIf(bool ok, __half* q, __half v)
{
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %0, 0;\n\t@p st.global.cg.b16 [%1], %2;\n\t}" ::"r"(int(ok)),
        "l"(q), "h"(__half_as_ushort(v)) : "memory");
}

// Hints that the line of q be brought into L1 / L2 (no register; q must be a valid address).
__device__ __forceinline__ void prefetchL1(void const* q) { asm volatile("prefetch.global.L1 [%0];" ::"l"(q)); }
__device__ __forceinline__ void prefetchL2(void const* q) { asm volatile("prefetch.global.L2 [%0];" ::"l"(q)); }

// kCount consecutive elements (8, 16, 32 or 64 bytes, aligned to min(that, 16)) in 8- or
// 16-byte loads through the read-only path.
template <typename T, int kCount>
__device__ __forceinline__ void loadVec(T (&dst)[kCount], T const* src)
{
    constexpr int kBytes = kCount * int(sizeof(T));
    static_assert(kBytes == 8 || kBytes % 16 == 0, "B/C slices are 8 bytes or whole 16-byte vectors");
    if constexpr (kBytes == 8)
    {
        uint2 const v = __ldg(reinterpret_cast<uint2 const*>(src));
        memcpy(dst, &v, 8);
    }
    else
    {
#pragma unroll
        for (int q = 0; q < kBytes / 16; ++q)
        {
            uint4 const v = __ldg(reinterpret_cast<uint4 const*>(src) + q);
            memcpy(reinterpret_cast<char*>(dst) + 16 * q, &v, 16);
        }
    }
}

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
    T const* bcv; // this lane's kTC-element slice of a full chunk's B or C block (vector loads)
    int bcDst;    // where that slice goes in the chunk's staging buffer (floats)
    float A2[kN / kTPC]; // A * log2(e) of this thread's states
    float D, bias;
    int part;   // which kN / kTPC states of the channel (0..kTPC-1)
    bool store; // channel < E (inactive lanes compute on a clamped channel)
};

// Channel ec's parameters in direction dir: A * log2(e) of its states [first, first + kCount),
// D and the dt bias.
template <int kCount>
__device__ __forceinline__ void channelParams(
    Params const& p, int dir, int64_t ec, int first, float (&A2)[kCount], float& D, float& bias)
{
    float const* A = (dir == 0 ? p.A[0] : p.A[1]) + ec * kN + first;
#pragma unroll
    for (int i = 0; i < kCount; ++i)
        A2[i] = A[i] * kLog2e;
    D = (dir == 0 ? p.D[0] : p.D[1])[ec];
    bias = (dir == 0 ? p.bias[0] : p.bias[1])[ec];
}

// Sweeps steps [s0, s1) in scan order (step 0 = the chunk's first token in this direction;
// rev: the backward direction, tokens descending. A run-time flag, not a template
// parameter: the two warps of a block then run the same code, which halves the hot
// instruction footprint; measured faster than two specialised copies).
// kSoftplus: delta = softplus(dt + bias) (the op's delta_softplus), else dt + bias.
template <typename T, int kTC, int kTPC, bool kSoftplus, Mode kMode>
__device__ __forceinline__ void sweep(Lane<T, kTPC> const& ln, Params const& p, float (&h)[kN / kTPC],
    float& dsum, int s0, int s1, float4* bcSmem, int lane, bool rev)
{
    constexpr int kS = kN / kTPC;
    constexpr bool kOut = kMode != kStates;
    // Vector staging of B/C (below) measured on an H100: 5% faster for two threads per channel
    // (Vim-Ti L=6085 b=32 fp16, 1.10 vs 1.16 ms), 2-28% slower with one (more registers:
    // Vim-S b=32 2.44 vs 1.90 ms), so only there.
    constexpr bool kVecBC = kTPC == 2;
    bool const full = !kVecBC || p.bcVec; // else every chunk takes the element-wise staging
    int const bcStep = rev ? -int(p.bcStride) : int(p.bcStride);
    static_assert(kTPC == 1 || kTC % 2 == 0, "pairs of steps are shared between the 2 threads of a channel");
    int64_t const step = rev ? -p.E : p.E; // one token in scan order
    // Per-thread data (x, dt, z, the partial, y) is loaded, gated and stored only for the
    // thread's OWN steps: all steps when kTPC == 1; with kTPC == 2 part 0 owns the even
    // steps of a chunk and part 1 the odd ones (its pointers start one token later), and the
    // pair swaps deltas, delta * x and the half-sums of y with shuffles. So the two threads
    // of a channel split the per-step overhead instead of both doing all of it.
    constexpr int kO = kTC / kTPC; // own steps per chunk
    // the next chunk, loaded one chunk ahead (zeroed: a partial chunk leaves some unloaded)
    T px[kO] = {}, pdt[kO] = {}, pz[kO] = {}, pp[kO] = {}, pbc[kTC] = {};

    // Chunk base pointers in 64 bits, the steps inside a chunk as 32-bit offsets shared by
    // x, dt, z and y (same layout).
    int const step32 = int(step);
    auto prefetch = [&](int s, auto guard) {
        constexpr bool kGuard = decltype(guard)::value;
        int64_t const o = s * step;
        T const* qx = ln.x + o;
        T const* qdt = ln.dt + o;
        T const* qz = ln.z + o;
        T const* qp = ln.y + o;
#pragma unroll
        for (int k = 0; k < kO; ++k)
        {
            if (!kGuard || s + k * kTPC + ln.part < s1)
            {
                int const oi = k * kTPC * step32;
                px[k] = __ldg(qx + oi);
                pdt[k] = __ldg(qdt + oi);
                if (kMode == kSecond)
                {
                    pz[k] = __ldg(qz + oi);
                    // the other direction's partial, written in this launch before the barrier:
                    // an L2 load, not the non-coherent read-only path
                    pp[k] = __ldcg(qp + oi);
                }
            }
        }
        if constexpr (!kGuard && kVecBC)
        {
            // A full chunk's B (C) rows are kTC * kN contiguous values: lanes 0..15 (16..31)
            // each load kTC of them in one or two vector loads (was kTC 2-byte loads each).
            if (kOut || lane < kN)
                loadVec(pbc, ln.bcv + int64_t(s) * bcStep);
        }
        else
        {
            T const* qbc = ln.bc + int64_t(s) * bcStep;
#pragma unroll
            for (int i = 0; i < kTC; ++i)
                if ((!kGuard || s + i < s1) && (kOut || lane < kN))
                    pbc[i] = __ldg(qbc + i * bcStep);
        }
    };
    auto prefetchFrom = [&](int s) {
        if (full && s + kTC <= s1)
            prefetch(s, std::false_type{});
        else if (s < s1)
            prefetch(s, std::true_type{});
    };

    // One chunk of kTC steps; kGuard only for the last, partial chunk.
    auto chunk = [&](int s, auto guard) {
        constexpr bool kGuard = decltype(guard)::value;
        // Own steps first (independent across steps): delta, delta * x, gate; then swap.
        float dl[kTC], dx[kTC], xo[kO], go[kO];
#pragma unroll
        for (int k = 0; k < kO; ++k)
        {
            float const xv = toF(px[k]);
            float const v = toF(pdt[k]) + ln.bias;
            float const d = kSoftplus ? softplus(v) : v;
            float const dxv = d * xv;
            xo[k] = xv;
            go[k] = kMode == kSecond ? silu(toF(pz[k])) * p.scale : 0.f;
            if constexpr (kTPC == 1)
            {
                dl[k] = d;
                dx[k] = dxv;
            }
            else
            {
                float const dO = __shfl_xor_sync(0xffffffffu, d, 1);
                float const dxO = __shfl_xor_sync(0xffffffffu, dxv, 1);
                dl[2 * k] = ln.part ? dO : d;
                dl[2 * k + 1] = ln.part ? d : dO;
                dx[2 * k] = ln.part ? dxO : dxv;
                dx[2 * k + 1] = ln.part ? dxv : dxO;
            }
        }
        T cp[kO];
#pragma unroll
        for (int k = 0; k < kO; ++k)
            cp[k] = pp[k];
        __syncwarp();
        float* bcs = reinterpret_cast<float*>(bcSmem);
        if constexpr (!kGuard && kVecBC)
        {
            float4* d = reinterpret_cast<float4*>(bcs + ln.bcDst);
#pragma unroll
            for (int k = 0; k < kTC; k += 4)
                d[k / 4] = make_float4(toF(pbc[k]), toF(pbc[k + 1]), toF(pbc[k + 2]), toF(pbc[k + 3]));
        }
        else
        {
#pragma unroll
            for (int i = 0; i < kTC; ++i)
                bcs[i * kWarp + lane] = toF(pbc[i]);
        }
        __syncwarp();
        prefetchFrom(s + kTC);

        [[maybe_unused]] T* const qy = ln.y + s * step; // unused when kMode == kStates
#pragma unroll
        for (int k = 0; k < kO; ++k)
        {
            float yp[kTPC]; // this thread's half-sums of y at steps k*kTPC + q
#pragma unroll
            for (int q = 0; q < kTPC; ++q)
            {
                int const i = k * kTPC + q;
                yp[q] = 0.f;
                if (kGuard && s + i >= s1) // warp-uniform
                    break;
                float y0 = 0.f, y1 = 0.f;
                // this thread's B at [part*kS, part*kS + kS), its C 16 floats further
                float4 const* bc = bcSmem + i * (kWarp / 4) + ln.part * (kS / 4);
#pragma unroll
                for (int qq = 0; qq < kS / 4; ++qq)
                {
                    float4 const b = bc[qq];
                    float const bq[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                    {
                        int const n = 4 * qq + j;
                        h[n] = fmaf(ex2Mufu(dl[i] * ln.A2[n]), h[n], dx[i] * bq[j]);
                    }
                    if (kOut)
                    {
                        float4 const c = bc[kN / 4 + qq];
                        y0 = fmaf(h[4 * qq], c.x, y0);
                        y1 = fmaf(h[4 * qq + 1], c.y, y1);
                        y0 = fmaf(h[4 * qq + 2], c.z, y0);
                        y1 = fmaf(h[4 * qq + 3], c.w, y1);
                    }
                }
                if constexpr (kMode == kStates)
                    dsum += dl[i];
                yp[q] = y0 + y1;
            }
            if constexpr (kOut)
            {
                float y;
                if constexpr (kTPC == 1)
                    y = yp[0];
                else
                {
                    // send the partner the half-sum of ITS step, get the other half of mine
                    float const recv = __shfl_xor_sync(0xffffffffu, ln.part ? yp[0] : yp[1], 1);
                    y = (ln.part ? yp[1] : yp[0]) + recv;
                }
                y = fmaf(ln.D, xo[k], y);
                if (kMode == kSecond)
                    y = (y + toF(cp[k])) * go[k];
                bool const ok = ln.store && (!kGuard || s + k * kTPC + ln.part < s1);
                storeIf(ok, qy + k * kTPC * step32, fromF<T>(y));
            }
            if (kGuard && s + (k + 1) * kTPC >= s1) // warp-uniform
                break;
        }
    };

    prefetchFrom(s0);
    for (int s = s0; s < s1; s += kTC)
    {
        if (full && s + kTC <= s1)
            chunk(s, std::false_type{});
        else
            chunk(s, std::true_type{});
    }
}

// grid (ceil(E / channels per warp), batch, chunks), block 64: warp 0 forward, warp 1 backward
// over the same channels.
// kCarryIn: the second launch of a split (p.chunks > 1), its own instantiation so that the
// unsplit kernel's code stays as it was tuned.
template <typename T, int kTC, int kTPC, bool kSoftplus, bool kStatesPass, bool kCarryIn = false>
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
    ln.store = active; // each thread stores its own steps
    int64_t const ec = active ? e : p.E - 1;
    int64_t const tStart = dir == 0 ? t0 : t1 - 1; // first token in scan order
    int64_t const row = (int64_t(bi) * p.L + tStart);
    ln.x = static_cast<T const*>(dir == 0 ? p.x[0] : p.x[1]) + row * p.E + ec;
    ln.dt = static_cast<T const*>(dir == 0 ? p.dt[0] : p.dt[1]) + row * p.E + ec;
    ln.z = static_cast<T const*>(p.z) + row * p.E + ec;
    ln.y = static_cast<T*>(p.y) + row * p.E + ec;
    if (kTPC == 2) // part 1 owns the odd steps of each chunk: its pointers start one token later
    {
        int64_t const own = (dir == 0 ? p.E : -p.E) * ln.part;
        ln.x += own;
        ln.dt += own;
        ln.z += own;
        ln.y += own;
    }
    ln.bc = static_cast<T const*>(lane < kN ? (dir == 0 ? p.B[0] : p.B[1]) : (dir == 0 ? p.C[0] : p.C[1]))
        + row * p.bcStride + (lane % kN);
    {
        // Vector staging of a full chunk (memory rows ascending: in the backward direction the
        // block starts kTC - 1 tokens before the chunk's first token, and row r is step kTC-1-r).
        int const j = lane % kN;
        int const r = j * kTC / kN;
        ln.bcv = ln.bc - j + (r - (dir == 1 ? kTC - 1 : 0)) * p.bcStride + (j * kTC) % kN;
        ln.bcDst = (dir == 1 ? kTC - 1 - r : r) * kWarp + (lane / kN) * kN + (j * kTC) % kN;
    }
    channelParams(p, dir, ec, ln.part * kS, ln.A2, ln.D, ln.bias);

    float h[kS];
#pragma unroll
    for (int i = 0; i < kS; ++i)
        h[i] = 0.f;
    float dsum = 0.f;
    int64_t const wsDir = (int64_t(dir) * p.batch + bi) * p.chunks;
    float4* smem = bcSmem[dir];

    if constexpr (kStatesPass)
    {
        sweep<T, kTC, kTPC, kSoftplus, kStates>(ln, p, h, dsum, 0, n, smem, lane, dir == 1);
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
        // Carry in the states of the chunks before this one (in scan order). With kCarryIn the
        // state of the chunk kCarryAhead further on is asked into L1 meanwhile: the chunks come
        // one after another, and each one's loads would otherwise wait out an L2 round trip.
        constexpr int kCarryAhead = 4;
        auto warmChunk = [&](int k) {
            int const cc = dir == 0 ? k : p.chunks - 1 - k;
            if (k < p.chunks - 1 && (dir == 0 ? cc < c : cc > c)) // warp-uniform
            {
                float const* w = p.ws + (wsDir + cc) * (kN + 1) * p.E + ec;
                prefetchL1(w + kN * p.E);
#pragma unroll
                for (int i = 0; i < kS; ++i)
                    prefetchL1(w + (ln.part * kS + i) * p.E);
            }
        };
        if constexpr (kCarryIn)
            for (int k = 0; k < kCarryAhead; ++k)
                warmChunk(k);
        for (int k = 0; k < p.chunks - 1; ++k)
        {
            int const cc = dir == 0 ? k : p.chunks - 1 - k;
            if (dir == 0 ? cc >= c : cc <= c)
                break;
            if constexpr (kCarryIn)
                warmChunk(k + kCarryAhead);
            float const* w = p.ws + (wsDir + cc) * (kN + 1) * p.E + ec;
            float const S = w[kN * p.E];
#pragma unroll
            for (int i = 0; i < kS; ++i)
                h[i] = fmaf(ex2Mufu(ln.A2[i] * S), h[i], w[(ln.part * kS + i) * p.E]);
        }

        // Meet in the middle: forward covers tokens [t0, t0+half) first, backward [t0+half, t1).
        int const half = n / 2;
        int const split = dir == 0 ? half : n - half;
        sweep<T, kTC, kTPC, kSoftplus, kFirst>(ln, p, h, dsum, 0, split, smem, lane, dir == 1);
        __syncthreads(); // partials of the first half are visible to the other warp
        sweep<T, kTC, kTPC, kSoftplus, kSecond>(ln, p, h, dsum, split, n, smem, lane, dir == 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The sequence-parallel path (VIMDEPLOY_SCAN_WARP_CHUNKS; forced only: measured on an H100 at
// batch 1 it is 2-11x slower than the split over two launches, docs/kernel.md). Each sequence
// is cut into C chunks (C a power of two <= 32) and one thread runs one (channel, chunk,
// direction). A warp holds the C chunks of 32 / C channels (lane = channel * C + chunk), a block
// the forward warp and the backward warp of the same channels. One launch, no workspace:
//   1. each thread scans its chunk from state zero: the chunk's final state and its sum of
//      deltas, i.e. the chunk's map h -> exp(A * sum) * h + state;
//   2. the C maps of a channel are combined by a log-depth scan over the lanes (shuffles of
//      width C, in scan order: ascending lanes forward, descending backward), then shifted by
//      one chunk: each thread gets the state its chunk starts from;
//   3. each thread rescans its chunk from that state and writes the output, meeting the other
//      direction's thread of the same (channel, chunk) in the middle of the chunk (partial in
//      y, __syncthreads, gate), as the sequential sweep does over the whole sequence.
// Why it loses: the lanes of a warp are at different tokens, so each thread loads its own B and
// C rows and every per-thread load touches up to C cache lines, and the loads are issued one
// step ahead (the sweep stages 8): ~1,000 cycles per step even with one chunk. A short (last)
// chunk's thread runs the same number of steps as the others, the extra ones masked: delta 0
// (the state is unchanged), no store, loads clamped to the chunk's last token.

template <typename T>
struct StepData
{
    T x, dt, z, part;
    T b[kN], c[kN];
};

template <typename T>
struct ChunkLane
{
    T const* x; // x, dt, z, y at the chunk's first token in scan order
    T const* dt;
    T const* z;
    T* y;
    T const* B; // B and C rows at that token
    T const* C;
    int64_t tokE, tokBC; // elements from one step to the next (negative backward)
    int last;            // the chunk's last step (0 for an empty chunk: every step masked)
    float A2[kN];        // A * log2(e)
    float D, bias;
    bool store; // channel < E
};

// `steps` steps (the same count in every lane) from step s0 of the chunk; the first cnt of
// them are real (cnt <= steps), the rest masked. kStates: only the state and the sum of
// deltas; kFirst: store the ungated partial output; kSecond: add the other direction's
// partial, gate, store the final output.
template <typename T, bool kSoftplus, bool kVecBC, Mode kMode>
__device__ __forceinline__ void chunkSweep(
    ChunkLane<T> const& q, Params const& p, float (&h)[kN], float& dsum, int s0, int cnt, int steps)
{
    constexpr bool kOut = kMode != kStates;
    auto load = [&](int k) {
        StepData<T> d;
        int64_t const i = min(s0 + k, q.last);
        int64_t const o = i * q.tokE;
        d.x = __ldg(q.x + o);
        d.dt = __ldg(q.dt + o);
        d.z = d.part = fromF<T>(0.f);
        if (kMode == kSecond)
        {
            d.z = __ldg(q.z + o);
            // the other direction's partial (an L2 load: written in this launch), only where
            // it was written: real steps of a real channel
            if (k < cnt && q.store)
                d.part = __ldcg(q.y + o);
        }
        T const* qb = q.B + i * q.tokBC;
        T const* qc = q.C + i * q.tokBC;
        if constexpr (kVecBC)
        {
            loadVec(d.b, qb);
            if (kOut)
                loadVec(d.c, qc);
        }
        else
        {
#pragma unroll
            for (int n = 0; n < kN; ++n)
            {
                d.b[n] = __ldg(qb + n);
                if (kOut)
                    d.c[n] = __ldg(qc + n);
            }
        }
        return d;
    };

    // Registers hold one step ahead; the rows kAhead steps ahead are asked into L2 (a hint, no
    // registers): the x, dt and z rows a thread reads are first touched in DRAM, and one step
    // of compute does not cover that latency. z is needed only in the second half of the chunk,
    // C not in the first pass: both are warmed there for the later sweeps.
    constexpr int kAhead = 8;
    auto warm = [&](int k) {
        int64_t const i = min(s0 + k, q.last);
        prefetchL2(q.x + i * q.tokE);
        prefetchL2(q.dt + i * q.tokE);
        prefetchL2(q.B + i * q.tokBC);
        prefetchL2(q.C + i * q.tokBC);
        if (kMode != kFirst)
            prefetchL2(q.z + i * q.tokE);
    };
#pragma unroll
    for (int k = 1; k < kAhead; ++k)
        warm(k);
    StepData<T> cur = load(0);
#pragma unroll 2
    for (int k = 0; k < steps; ++k)
    {
        warm(k + kAhead);
        StepData<T> const nxt = load(k + 1); // one step ahead (clamped: always a valid address)
        bool const real = k < cnt;
        float const xv = toF(cur.x);
        float const v = toF(cur.dt) + q.bias;
        float const dRaw = kSoftplus ? softplus(v) : v;
        float const d = real ? dRaw : 0.f;
        float const dx = real ? dRaw * xv : 0.f;
        float y0 = 0.f, y1 = 0.f;
#pragma unroll
        for (int n = 0; n < kN; ++n)
        {
            h[n] = fmaf(ex2Mufu(d * q.A2[n]), h[n], dx * toF(cur.b[n]));
            if (kOut)
            {
                if (n % 2 == 0)
                    y0 = fmaf(h[n], toF(cur.c[n]), y0);
                else
                    y1 = fmaf(h[n], toF(cur.c[n]), y1);
            }
        }
        if constexpr (kMode == kStates)
            dsum += d;
        if constexpr (kOut)
        {
            float y = fmaf(q.D, xv, y0 + y1);
            if (kMode == kSecond)
                y = (y + toF(cur.part)) * (silu(toF(cur.z)) * p.scale);
            storeIf(real && q.store, q.y + int64_t(min(s0 + k, q.last)) * q.tokE, fromF<T>(y));
        }
        cur = nxt;
    }
}

// grid (ceil(E / (32 / C)), batch), block 64: warp 0 forward, warp 1 backward over the same
// channels and chunks; C = 1 << p.chunksLog2 chunks of p.chunk_len tokens.
template <typename T, bool kSoftplus, bool kVecBC>
__global__ void __launch_bounds__(2 * kWarp) warpChunksKernel(Params const p)
{
    int const dir = threadIdx.x / kWarp;
    int const lane = threadIdx.x % kWarp;
    int const lg = p.chunksLog2;
    int const nc = 1 << lg;
    int const c = lane & (nc - 1);
    int64_t const e = int64_t(blockIdx.x) * (kWarp >> lg) + (lane >> lg);
    bool const active = e < p.E;
    int64_t const ec = active ? e : p.E - 1;
    int64_t const t0 = min(int64_t(c) * p.chunk_len, p.L);
    int64_t const t1 = min(t0 + p.chunk_len, p.L);
    int const n = int(t1 - t0);
    // the chunk's first token in scan order (for an empty chunk any valid token: all masked)
    int64_t const first = n == 0 ? p.L - 1 : (dir == 0 ? t0 : t1 - 1);
    int64_t const row = int64_t(blockIdx.y) * p.L + first;

    ChunkLane<T> q;
    q.store = active;
    q.last = n > 0 ? n - 1 : 0;
    q.tokE = dir == 0 ? p.E : -p.E;
    q.tokBC = dir == 0 ? p.bcStride : -p.bcStride;
    q.x = static_cast<T const*>(dir == 0 ? p.x[0] : p.x[1]) + row * p.E + ec;
    q.dt = static_cast<T const*>(dir == 0 ? p.dt[0] : p.dt[1]) + row * p.E + ec;
    q.z = static_cast<T const*>(p.z) + row * p.E + ec;
    q.y = static_cast<T*>(p.y) + row * p.E + ec;
    q.B = static_cast<T const*>(dir == 0 ? p.B[0] : p.B[1]) + row * p.bcStride;
    q.C = static_cast<T const*>(dir == 0 ? p.C[0] : p.C[1]) + row * p.bcStride;
    channelParams(p, dir, ec, 0, q.A2, q.D, q.bias);

    float h[kN];
#pragma unroll
    for (int i = 0; i < kN; ++i)
        h[i] = 0.f;
    float dsum = 0.f;
    if (lg > 0)
    {
        chunkSweep<T, kSoftplus, kVecBC, kStates>(q, p, h, dsum, 0, n, p.chunk_len);
        // Inclusive scan of the chunks' maps in scan order: after the round with offset `off`,
        // (dsum, h) is the map of the up to 2 * off chunks ending at this one. The earlier
        // part's state h' goes through this part's decay: h = exp(A * dsum) * h' + h.
        unsigned const all = 0xffffffffu;
        for (int off = 1; off < nc; off *= 2)
        {
            int const src = (dir == 0 ? c - off : c + off) & (nc - 1);
            bool const take = dir == 0 ? c >= off : c + off < nc;
            float const so = __shfl_sync(all, dsum, src, nc);
#pragma unroll
            for (int i = 0; i < kN; ++i)
            {
                float const ho = __shfl_sync(all, h[i], src, nc);
                h[i] = fmaf(take ? ex2Mufu(q.A2[i] * dsum) : 0.f, ho, h[i]);
            }
            dsum += take ? so : 0.f;
        }
        // The state this chunk starts from: the previous chunk's (in scan order) inclusive one.
        int const src = (dir == 0 ? c - 1 : c + 1) & (nc - 1);
        bool const head = dir == 0 ? c == 0 : c == nc - 1;
#pragma unroll
        for (int i = 0; i < kN; ++i)
        {
            float const ho = __shfl_sync(all, h[i], src, nc);
            h[i] = head ? 0.f : ho;
        }
    }

    // Meet in the middle inside the chunk: forward covers its first n/2 tokens first, backward
    // the rest; the step counts are per warp (from the full chunk length), the excess masked.
    int const len = p.chunk_len;
    int const steps1 = dir == 0 ? len / 2 : len - len / 2;
    int const split = dir == 0 ? n / 2 : n - n / 2;
    chunkSweep<T, kSoftplus, kVecBC, kFirst>(q, p, h, dsum, 0, split, steps1);
    __syncthreads(); // partials of the first half are visible to the other warp
    chunkSweep<T, kSoftplus, kVecBC, kSecond>(q, p, h, dsum, split, n - split, len - steps1);
}

// VIMDEPLOY_SM_COUNT=N makes the library act as on a GPU of N SMs, for tests of an engine
// built on one GPU and run on another (tests/test_plugin_conformance.py). Read at every
// call so that a test can change it between "build" and "run".
int smCount()
{
    if (char const* fake = std::getenv("VIMDEPLOY_SM_COUNT"))
    {
        int const v = std::atoi(fake);
        if (v > 0)
            return v;
    }
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

// The SM count the workspace size assumes (more than any GPU vimdeploy targets: H100 SXM
// has 132, B200 148); see vimdeploy_bi_selective_scan_workspace_size.
constexpr int64_t kWorkspaceSms = 160;

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

// num_chunks: 0 = automatic. Capped at the chunks the given workspace holds (down to one).
template <typename T, int kTC, int kTPC>
cudaError_t launch(Params p, int numChunks, size_t wsAvail, cudaStream_t stream)
{
    int64_t const tiles = tilesOf(p.E, kWarp / kTPC);
    int64_t chunks = numChunks == 0 ? autoChunks(p.batch, p.L, tiles) : std::min<int64_t>(numChunks, p.L);
    chunks = std::min<int64_t>(chunks, 65535);
    // Never more chunks than the given workspace holds: it may have been sized at build
    // time for another GPU. Fewer chunks (down to unsplit) are equally correct.
    size_t const perChunk = wsBytes(p.batch, 1, p.E);
    int64_t const fit = p.ws != nullptr && perChunk > 0 ? int64_t(wsAvail / perChunk) : 0;
    chunks = std::max<int64_t>(std::min(chunks, fit), 1);
    int64_t const chunkLen = (p.L + chunks - 1) / chunks;
    p.chunks = int((p.L + chunkLen - 1) / chunkLen);
    p.chunk_len = int(chunkLen);

    dim3 const grid(unsigned(tiles), unsigned(p.batch), unsigned(p.chunks));
    // The softplus is a template parameter, not a run-time select: with delta given (the model
    // computes it with vimdeploy_delta_softplus, delta_softplus = 0) the scan skips its ~13
    // instructions and one MUFU op per channel-step.
    auto const kernel = [&](auto states, auto carry) {
        constexpr bool kStatesPass = decltype(states)::value;
        constexpr bool kCarryIn = decltype(carry)::value;
        if (p.softplus)
            biScanKernel<T, kTC, kTPC, true, kStatesPass, kCarryIn><<<grid, 2 * kWarp, 0, stream>>>(p);
        else
            biScanKernel<T, kTC, kTPC, false, kStatesPass, kCarryIn><<<grid, 2 * kWarp, 0, stream>>>(p);
        return cudaGetLastError();
    };
    if (p.chunks > 1)
    {
        cudaError_t const err = kernel(std::true_type{}, std::false_type{});
        if (err != cudaSuccess)
            return err;
        return kernel(std::false_type{}, std::true_type{});
    }
    return kernel(std::false_type{}, std::false_type{});
}

// Chunks per sequence (log2) for the warp-chunks path when num_chunks is 0: the count (a power
// of two <= 32, chunks of >= kMinWarpChunkL tokens) with the least estimated time per SM, the
// larger of two estimates in cycles (arithmetic from the kernel's code, not fitted to timings):
// - issue: a scheduler runs its warps' steps (~260 instructions per token over the two passes,
//   ~200 per combine round) one after another;
// - L1: a warp's per-thread loads and stores (~12 per token over the two passes) each touch one
//   cache line per chunk of the warp (its lanes sit at C different tokens): warps x L x 12.
// More chunks: more warps in flight and shorter chunks, but more L1 traffic per SM. 0 = C of 1
// (the caller then takes the sequential sweep).
constexpr int kMinWarpChunkL = 4;
int autoWarpChunksLog2(int64_t batch, int64_t L, int64_t E)
{
    int64_t const sms = smCount();
    int best = 0;
    int64_t bestCycles = 0;
    for (int lg = 1; lg <= 5 && (L >> lg) >= kMinWarpChunkL; ++lg)
    {
        int64_t const blocks = tilesOf(E, kWarp >> lg) * batch;
        int64_t const warps = 2 * ((blocks + sms - 1) / sms); // per SM
        int64_t const len = (L + (1 << lg) - 1) >> lg;
        int64_t const issue = (warps + 3) / 4 * (len * 260 + lg * 200);
        int64_t const l1 = warps * len * 12 * (1 << lg);
        int64_t const cycles = std::max(issue, l1);
        if (best == 0 || cycles < bestCycles)
        {
            best = lg;
            bestCycles = cycles;
        }
    }
    return best;
}

// num_chunks: 0 = automatic, else the largest power of two <= min(num_chunks, 32, L).
template <typename T>
cudaError_t launchWarpChunks(Params p, int numChunks, cudaStream_t stream)
{
    int lg = 0;
    if (numChunks == 0)
        lg = autoWarpChunksLog2(p.batch, p.L, p.E);
    else
        while (lg < 5 && (2 << lg) <= numChunks && (2 << lg) <= p.L)
            ++lg;
    int const nc = 1 << lg;
    p.chunksLog2 = lg;
    p.chunk_len = int((p.L + nc - 1) / nc);
    dim3 const grid(unsigned(tilesOf(p.E, kWarp >> lg)), unsigned(p.batch));
    auto const go = [&](auto softplus, auto vec) {
        warpChunksKernel<T, decltype(softplus)::value, decltype(vec)::value><<<grid, 2 * kWarp, 0, stream>>>(p);
    };
    if (p.softplus)
        p.bcVec ? go(std::true_type{}, std::true_type{}) : go(std::true_type{}, std::false_type{});
    else
        p.bcVec ? go(std::false_type{}, std::true_type{}) : go(std::false_type{}, std::false_type{});
    return cudaGetLastError();
}

// When each variant wins, measured on an H100 (bench_scan.py --variants, docs/kernel.md):
// - the grid has >= 4 blocks per SM (L=197 batch 128, Vim-S/B at batch 32): one thread per
//   channel; 8 steps per chunk for long sequences (STEPS8_THREADS1: L=6085 batch 32 3-8% faster
//   than STEPS4_THREADS1), 4 for short ones (STEPS4_THREADS1: L=197 batch 128 1-4% faster);
// - L split into chunks (batch 1): STEPS8_THREADS1 for L >= 2048, else STEPS8_THREADS2;
// - few blocks and L not split (Vim-Ti at batch 32): fp16 two threads per channel
//   (STEPS8_THREADS2: twice the warps, spread evenly over an SM's 4 schedulers; 1.16 vs 1.34 ms
//   for STEPS8_THREADS1), fp32 STEPS8_THREADS1 (1.28 vs 1.40 ms for STEPS8_THREADS2).
// WARP_CHUNKS is never chosen: at batch 1 it was 2-11x slower than the split over two launches
// (docs/kernel.md).
int autoVariant(int64_t batch, int64_t L, int64_t E, bool fp32)
{
    int64_t const blocks = tilesOf(E, kWarp) * batch;
    bool const split = autoChunks(batch, L, tilesOf(E, kWarp)) > 1;
    if (split)
        return L >= 2048 ? VIMDEPLOY_SCAN_STEPS8_THREADS1 : VIMDEPLOY_SCAN_STEPS8_THREADS2;
    if (blocks >= 4 * smCount())
        return L >= 2048 ? VIMDEPLOY_SCAN_STEPS8_THREADS1 : VIMDEPLOY_SCAN_STEPS4_THREADS1;
    return fp32 ? VIMDEPLOY_SCAN_STEPS8_THREADS1 : VIMDEPLOY_SCAN_STEPS8_THREADS2;
}

// launch<T, steps staged per chunk, threads per channel> of each variant (bi_selective_scan.h).
template <typename T>
cudaError_t dispatch(Params const& p, int variant, int numChunks, size_t wsAvail, cudaStream_t stream)
{
    switch (variant == VIMDEPLOY_SCAN_AUTO ? autoVariant(p.batch, p.L, p.E, std::is_same<T, float>::value) : variant)
    {
    case VIMDEPLOY_SCAN_STEPS4_THREADS1: return launch<T, 4, 1>(p, numChunks, wsAvail, stream);
    case VIMDEPLOY_SCAN_STEPS8_THREADS1: return launch<T, 8, 1>(p, numChunks, wsAvail, stream);
    case VIMDEPLOY_SCAN_STEPS4_THREADS2: return launch<T, 4, 2>(p, numChunks, wsAvail, stream);
    case VIMDEPLOY_SCAN_STEPS8_THREADS2: return launch<T, 8, 2>(p, numChunks, wsAvail, stream);
    case VIMDEPLOY_SCAN_STEPS16_THREADS1: return launch<T, 16, 1>(p, numChunks, wsAvail, stream);
    case VIMDEPLOY_SCAN_STEPS16_THREADS2: return launch<T, 16, 2>(p, numChunks, wsAvail, stream);
    case VIMDEPLOY_SCAN_WARP_CHUNKS: return launchWarpChunks<T>(p, numChunks, stream);
    }
    return cudaErrorInvalidValue; // unreachable: vimdeploy_bi_selective_scan_ex checks the id
}

} // namespace

extern "C" {

size_t vimdeploy_bi_selective_scan_workspace_size(int64_t E, int64_t N)
{
    if (E <= 0 || N != kN)
        return 0;
    // autoChunks splits only if batch * tiles < 2 * SMs, into at most 4 * SMs / (tiles * batch)
    // + 1 chunks: batch * chunks <= 6 * SMs / tiles + 2, and E / tiles <= 32. So
    // wsBytes(batch, chunks, E) <= 2 * (N + 1) * 4 * (6 * 32 * SMs + 2 * E). With SMs fixed at
    // kWorkspaceSms, not the current GPU's, the size depends on E alone: TensorRT sizes the
    // workspace at build time and enqueue (maybe on another GPU) computes the same number.
    // On a GPU with more SMs, launch() splits into fewer chunks than it would like.
    return size_t(2) * (kN + 1) * sizeof(float) * size_t(6 * kWarp * kWorkspaceSms + 2 * E);
}

int vimdeploy_bi_selective_scan_ex(VimdeployScanParams const* a, void* workspace, size_t workspace_bytes,
    cudaStream_t stream, int num_chunks, int variant)
{
    int const rc = vimdeploy_scan_params_check(a);
    if (rc != VIMDEPLOY_SUCCESS)
        return rc;
    // This kernel's own limits: grid.y = batch, 32-bit token indices, the tuning knobs.
    if (num_chunks < 0 || variant < 0 || variant >= VIMDEPLOY_SCAN_NUM_VARIANTS
        || a->batch > 65535 || a->L > (int64_t(1) << 31) - 1 || a->bc_stride > (int64_t(1) << 24))
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (vimdeploy_scan_is_empty(a))
        return VIMDEPLOY_SUCCESS;

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
    p.chunksLog2 = 0;
    p.softplus = a->delta_softplus;
    p.bcStride = a->bc_stride == 0 ? a->N : a->bc_stride;
    size_t const elem = a->dtype == VIMDEPLOY_DTYPE_FLOAT16 ? 2 : 4;
    p.bcVec = ((reinterpret_cast<uintptr_t>(a->B_fwd) | reinterpret_cast<uintptr_t>(a->B_bwd)
                   | reinterpret_cast<uintptr_t>(a->C_fwd) | reinterpret_cast<uintptr_t>(a->C_bwd)
                   | uintptr_t(p.bcStride * elem))
                  % 16) == 0;
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
    case VIMDEPLOY_ERROR_INVALID_ARGUMENT:
        return "invalid argument (null pointer, negative size, delta_softplus not 0/1, out_scale not finite, bc_stride < "
               "d_state, unknown variant, batch > 65535)";
    case VIMDEPLOY_ERROR_UNSUPPORTED:
        return "unsupported (dtype must be float32 or float16; scan: d_state 16; conv: k 1..8, a tiled variant k 4)";
    default: return code > 0 ? cudaGetErrorString(static_cast<cudaError_t>(code)) : "unknown error";
    }
}

} // extern "C"
