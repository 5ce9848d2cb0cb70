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
 *   The same split in one launch (warpChunksKernel, below: the chunks' blocks in a thread
 *   block cluster) and a kernel with a channel's 16 states on 16 lanes (stateLanesKernel)
 *   are forced only: measured on an H100 at batch 1, neither beats the two launches by more
 *   than 5% at any shape (docs/kernel.md).
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

#include <cooperative_groups.h>
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

// Hints that the line of q be brought into L1 (no register; q must be a valid address).
__device__ __forceinline__ void prefetchL1(void const* q) { asm volatile("prefetch.global.L1 [%0];" ::"l"(q)); }

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

// The thread of channel ec (active: ec < E, else a clamped inactive lane that stores nothing),
// direction dir and batch row bi over the tokens [t0, t1) (t0 < t1): pointers at the first
// token in scan order, its B/C staging slices, its channel's parameters.
template <typename T, int kTC, int kTPC>
__device__ __forceinline__ Lane<T, kTPC> makeLane(
    Params const& p, int dir, int bi, int64_t ec, bool active, int64_t t0, int64_t t1, int lane)
{
    constexpr int kS = kN / kTPC;
    Lane<T, kTPC> ln;
    ln.part = lane % kTPC;
    ln.store = active; // each thread stores its own steps
    int64_t const tStart = dir == 0 ? t0 : t1 - 1; // first token in scan order
    int64_t const row = int64_t(bi) * p.L + tStart;
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
    return ln;
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
    bool const active = e < p.E;
    int64_t const ec = active ? e : p.E - 1;

    Lane<T, kTPC> const ln = makeLane<T, kTC, kTPC>(p, dir, bi, ec, active, t0, t1, lane);

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
// The sequence-parallel path in one launch (VIMDEPLOY_SCAN_WARP_CHUNKS; forced only). Each
// sequence is cut into C chunks (a power of two <= kMaxWarpChunks) of p.chunk_len tokens (the
// last ones may be short or empty). A block is what the sequential kernel's block is for one
// chunk: 32 consecutive channels, warp 0 forward and warp 1 backward, so each warp runs the
// sweep above (x, dt, z, y coalesced across the lanes, B_t and C_t staged once per warp through
// shared memory and read back as broadcasts). The C blocks of the same channels and batch row
// form a thread block cluster (block rank = chunk), which exchanges the chunk maps through
// distributed shared memory. In one launch:
//   1. each warp scans its chunk from state zero (the last chunk in scan order skips this): the
//      chunk's final state and its sum of deltas, i.e. the chunk's map
//      h -> exp(A * sum) * h + state, into its block's shared memory; cluster barrier;
//   2. each warp composes the maps of the chunks before its own in scan order, read from the
//      other blocks' shared memory (at most C - 1 steps of 16 exps): the state its chunk
//      starts from;
//   3. each warp rescans its chunk from that state and writes the output, meeting the other
//      direction's warp in the middle of the chunk (partial in y, __syncthreads, gate), as
//      the sequential kernel does over the whole sequence.
// Twice the exps of the sequential kernel, C times its blocks. Clusters need sm_90: on older
// GPUs the variant runs the split over two launches instead (launchWarpChunks). C = 16 is a
// non-portable cluster size (H100 schedules it); where the GPU cannot, C = 8.
constexpr int kMaxWarpChunks = 16;     // a non-portable cluster size: taken where the GPU schedules it
constexpr int kPortableWarpChunks = 8; // else this, the portable cluster size
constexpr int kWarpChunksTC = 8;  // steps of B and C staged per warp at a time

// grid (ceil(E / 32), batch, C), clusters (1, 1, C), block 64: warp 0 forward, warp 1 backward.
template <typename T, bool kSoftplus>
__global__ void __launch_bounds__(2 * kWarp) warpChunksKernel(Params const p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    constexpr int kTC = kWarpChunksTC;
    __shared__ float4 bcSmem[2][kTC * kWarp / 4];
    __shared__ float maps[2][kN + 1][kWarp]; // per direction: the chunk's kN states, its sum of deltas
    cg::cluster_group const cluster = cg::this_cluster();
    int const nc = int(cluster.num_blocks());
    int const c = int(cluster.block_rank());
    int const dir = threadIdx.x / kWarp;
    int const lane = threadIdx.x % kWarp;
    int64_t const e = int64_t(blockIdx.x) * kWarp + lane;
    bool const active = e < p.E;
    int64_t const ec = active ? e : p.E - 1;
    int64_t const t0 = min(int64_t(c) * p.chunk_len, p.L);
    int64_t const t1 = min(t0 + p.chunk_len, p.L);
    int const n = int(t1 - t0);
    // an empty chunk (at the end of a short sequence) points at the last token: nothing is read
    Lane<T, 1> const ln
        = makeLane<T, kTC, 1>(p, dir, blockIdx.y, ec, active, n > 0 ? t0 : p.L - 1, n > 0 ? t1 : p.L, lane);
    float4* const smem = bcSmem[dir];

    float h[kN];
#pragma unroll
    for (int i = 0; i < kN; ++i)
        h[i] = 0.f;
    float dsum = 0.f;
    if (nc > 1)
    {
        if (c != (dir == 0 ? nc - 1 : 0)) // warp-uniform: the last chunk's map is never needed
        {
            sweep<T, kTC, 1, kSoftplus, kStates>(ln, p, h, dsum, 0, n, smem, lane, dir == 1);
#pragma unroll
            for (int i = 0; i < kN; ++i)
            {
                maps[dir][i][lane] = h[i];
                h[i] = 0.f;
            }
            maps[dir][kN][lane] = dsum;
        }
        cluster.sync(); // every chunk's map is visible to the cluster
        int const before = dir == 0 ? c : nc - 1 - c; // chunks before this one in scan order
        for (int j = 0; j < before; ++j)
        {
            float const* const w = cluster.map_shared_rank(&maps[dir][0][lane], dir == 0 ? j : nc - 1 - j);
            float const S = w[kN * kWarp];
#pragma unroll
            for (int i = 0; i < kN; ++i)
                h[i] = fmaf(ex2Mufu(ln.A2[i] * S), h[i], w[i * kWarp]);
        }
        // no block may exit (and free its shared memory) before the others have read its map:
        // arrive now, wait at the end
        cluster.barrier_arrive();
    }

    // Meet in the middle: forward covers the chunk's first n/2 tokens first, backward the rest.
    int const half = n / 2;
    int const split = dir == 0 ? half : n - half;
    sweep<T, kTC, 1, kSoftplus, kFirst>(ln, p, h, dsum, 0, split, smem, lane, dir == 1);
    __syncthreads(); // partials of the first half are visible to the other warp
    sweep<T, kTC, 1, kSoftplus, kSecond>(ln, p, h, dsum, split, n, smem, lane, dir == 1);
    if (nc > 1)
        cluster.barrier_wait();
#endif
}

// ---------------------------------------------------------------------------------------------
// State lanes (VIMDEPLOY_SCAN_STATE_LANES): the recurrence with its 16 states spread over 16 lanes,
// for the shapes where one thread per channel leaves the GPU idle (batch 1 at short L: Vim-Ti at
// 224 px is 768 sequences, 24 warps, for 132 SMs) and splitting L would double the exps. A warp
// is 2 channels x 16 states of one direction, lane = 16 * channel + state; a block is 2 warps
// over the same 2 channels, warp 0 forward and warp 1 backward, meeting in the middle as the
// sequential kernel does (partial in y, __syncthreads, gate). Per chunk of 16 steps:
//   0. the warp's 32 lanes load the chunk's 16 B rows and 16 C rows (one row each, vector loads),
//      park them in shared memory, and read back their own state's 32 values;
//   1. lane j of a channel computes the per-step values of step j only (delta with its softplus,
//      delta * x), and the channel's lanes read them with shuffles;
//   2. each lane runs its own state through the 16 steps: h = exp(delta A) h + delta x B,
//      keeping C h of every step in registers (16 FFMA-chain steps: the only serial work);
//   3. a butterfly reduce-scatter (15 shuffles for 16 sums) leaves in lane j the sum over the
//      states of step j, which lane j then finishes: + D x, the other direction's partial and
//      the gate, one store.
// The same exps as the sequential kernel, 16 times its threads, ~2x its instructions per state
// step (the shuffles): so it is for small grids only (autoVariant).
constexpr int kLanesTC = kN; // steps per chunk: one per lane of a channel's group

// What a lane loads for one chunk: its own step's x and dt (z and the other direction's partial
// in the second half), and one row of B or C (16 values) of the chunk's steps: lane l the B row
// (l even) or C row (l odd) of step l / 2, in vector loads where B/C rows are 16-byte aligned.
template <typename T>
struct LanesLoad
{
    T x, dt, z, part;
    T row[kN];
};

// One stage of a butterfly reduce-scatter of 2 kM sums over lanes that differ in bit kM: each lane
// keeps the half of acc[0, 2 kM) that its bit kM selects, plus the partner's copy of that half.
template <int kM>
__device__ __forceinline__ void reduceHalves(float (&acc)[kLanesTC], int j)
{
    bool const upper = j & kM;
#pragma unroll
    for (int i = 0; i < kM; ++i)
    {
        float const send = upper ? acc[i] : acc[i + kM];
        float const keep = upper ? acc[i + kM] : acc[i];
        acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, kM);
    }
}

// stage: this warp's [step][B, C][state] buffer (shared memory): the rows the lanes loaded are
// parked there once per chunk and read back by state (a transpose without address arithmetic
// per value).
template <typename T, bool kSoftplus, Mode kMode>
__device__ __forceinline__ void laneSweep(Params const& p, int dir, int64_t row0, int64_t ec, bool active, int lane,
    float A2, float D, float bias, float& h, int s0, int s1, float (*stage)[2][kN])
{
    static_assert(kMode != kStates, "the state-lanes kernel does not split L");
    unsigned const kAll = 0xffffffffu;
    int const j = lane % kN;    // this lane's state, and the step of a chunk it finishes
    int const group = lane - j; // the channel's first lane
    bool const rev = dir == 1;
    T const* const x = static_cast<T const*>(rev ? p.x[1] : p.x[0]) + row0 * p.E + ec;
    T const* const dt = static_cast<T const*>(rev ? p.dt[1] : p.dt[0]) + row0 * p.E + ec;
    T const* const z = static_cast<T const*>(p.z) + row0 * p.E + ec;
    T* const y = static_cast<T*>(p.y) + row0 * p.E + ec;
    int const rowStep = lane / 2, rowIsC = lane % 2; // the B/C row this lane loads
    T const* const bc = static_cast<T const*>(rowIsC ? (rev ? p.C[1] : p.C[0]) : (rev ? p.B[1] : p.B[0]))
        + row0 * p.bcStride;
    // token of scan step s; steps past s1 read the last valid one (their delta is zeroed)
    auto token = [&](int s) -> int64_t {
        int const c = s < s1 ? s : s1 - 1;
        return rev ? p.L - 1 - c : c;
    };
    auto load = [&](LanesLoad<T>& q, int s) {
        int64_t const o = token(s + j) * p.E;
        q.x = __ldg(x + o);
        q.dt = __ldg(dt + o);
        if (kMode == kSecond)
        {
            q.z = __ldg(z + o);
            q.part = __ldcg(y + o); // the other direction's partial, written in this launch
        }
        T const* const r = bc + token(s + rowStep) * p.bcStride;
        if (p.bcVec)
            loadVec(q.row, r);
        else
        {
#pragma unroll
            for (int k = 0; k < kN; ++k)
                q.row[k] = __ldg(r + k);
        }
    };
    if (s0 >= s1)
        return;
    // The loaded chunk is parked first, then the next chunk's loads go into the same registers
    // and stay in flight during this chunk's steps.
    LanesLoad<T> q;
    load(q, s0);
    for (int s = s0; s < s1; s += kLanesTC)
    {
        bool const own = s + j < s1;
        float const xv = toF(q.x);
        float const v = toF(q.dt) + bias;
        float const zv = kMode == kSecond ? toF(q.z) : 0.f;
        float const partial = kMode == kSecond ? toF(q.part) : 0.f;
        __syncwarp(); // every lane has read the previous chunk's rows
        {
            float4* const dst = reinterpret_cast<float4*>(stage[rowStep][rowIsC]);
#pragma unroll
            for (int k = 0; k < kN; k += 4)
                dst[k / 4] = make_float4(toF(q.row[k]), toF(q.row[k + 1]), toF(q.row[k + 2]), toF(q.row[k + 3]));
        }
        __syncwarp();
        float Bs[kLanesTC], Cs[kLanesTC];
#pragma unroll
        for (int i = 0; i < kLanesTC; ++i)
        {
            Bs[i] = stage[i][0][j];
            Cs[i] = stage[i][1][j];
        }
        if (s + kLanesTC < s1)
            load(q, s + kLanesTC);
        float const d = own ? (kSoftplus ? softplus(v) : v) : 0.f; // a step past s1 leaves h as it is
        float const dx = d * xv;
        float acc[kLanesTC];
#pragma unroll
        for (int i = 0; i < kLanesTC; ++i)
        {
            float const di = __shfl_sync(kAll, d, group + i);
            float const dxi = __shfl_sync(kAll, dx, group + i);
            h = fmaf(ex2Mufu(di * A2), h, dxi * Bs[i]);
            acc[i] = h * Cs[i];
        }
        // Reduce-scatter over the 16 lanes: lane j ends with the sum of step j.
        reduceHalves<8>(acc, j);
        reduceHalves<4>(acc, j);
        reduceHalves<2>(acc, j);
        reduceHalves<1>(acc, j);
        float yv = fmaf(D, xv, acc[0]);
        if (kMode == kSecond)
            yv = (yv + partial) * (silu(zv) * p.scale);
        storeIf(active && own, y + token(s + j) * p.E, fromF<T>(yv));
    }
}

// grid (ceil(E / 2), batch), block 64: warp 0 forward, warp 1 backward over the same 2 channels.
template <typename T, bool kSoftplus>
__global__ void __launch_bounds__(2 * kWarp) stateLanesKernel(Params const p)
{
    __shared__ __align__(16) float stage[2][kLanesTC][2][kN]; // per direction (warp)
    int const dir = threadIdx.x / kWarp;
    int const lane = threadIdx.x % kWarp;
    int64_t const e = int64_t(blockIdx.x) * (kWarp / kN) + lane / kN;
    bool const active = e < p.E;
    int64_t const ec = active ? e : p.E - 1;
    int64_t const row0 = int64_t(blockIdx.y) * p.L;
    float const A2 = (dir == 0 ? p.A[0] : p.A[1])[ec * kN + lane % kN] * kLog2e;
    float const D = (dir == 0 ? p.D[0] : p.D[1])[ec];
    float const bias = (dir == 0 ? p.bias[0] : p.bias[1])[ec];
    float h = 0.f;
    int const n = int(p.L);
    int const half = n / 2;
    int const split = dir == 0 ? half : n - half;
    laneSweep<T, kSoftplus, kFirst>(p, dir, row0, ec, active, lane, A2, D, bias, h, 0, split, stage[dir]);
    __syncthreads(); // partials of the first half are visible to the other warp
    laneSweep<T, kSoftplus, kSecond>(p, dir, row0, ec, active, lane, A2, D, bias, h, split, n, stage[dir]);
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

// Chunks per sequence for the warp-chunks path when num_chunks is 0 (forced variant; not tuned):
// doubled while each chunk keeps >= kMinChunkL tokens and the grid has fewer than 4 blocks per
// SM (past that the GPU is full, and more chunks only add the second pass's exps).
int autoWarpChunks(int64_t batch, int64_t L, int64_t E)
{
    int64_t const blocks = tilesOf(E, kWarp) * batch; // with one chunk
    int c = 1;
    while (c < kMaxWarpChunks && L / (2 * c) >= kMinChunkL && 2 * c * blocks <= 4 * smCount())
        c *= 2;
    return c;
}

// Compute capability major of the current GPU (clusters need 9).
int ccMajor()
{
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess)
        return 0;
    return cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess ? v : 0;
}

// num_chunks: 0 = automatic, else the largest power of two <= min(num_chunks, kMaxWarpChunks, L).
template <typename T>
cudaError_t launchWarpChunks(Params p, int numChunks, size_t wsAvail, cudaStream_t stream)
{
    int nc = 1;
    if (numChunks == 0)
        nc = autoWarpChunks(p.batch, p.L, p.E);
    else
        while (2 * nc <= kMaxWarpChunks && 2 * nc <= numChunks && 2 * nc <= p.L)
            nc *= 2;
    if (ccMajor() < 9) // no clusters: the same chunks over two launches (as many as the workspace holds)
        return launch<T, kWarpChunksTC, 1>(p, nc, wsAvail, stream);
    void (*const kernel)(Params) = p.softplus ? warpChunksKernel<T, true> : warpChunksKernel<T, false>;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    auto const configure = [&](int chunks) {
        p.chunk_len = int((p.L + chunks - 1) / chunks);
        cfg.gridDim = dim3(unsigned(tilesOf(p.E, kWarp)), unsigned(p.batch), unsigned(chunks));
        cfg.blockDim = dim3(2 * kWarp);
        cfg.stream = stream;
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = 1;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = unsigned(chunks);
        cfg.attrs = attr;
        cfg.numAttrs = 1;
    };
    if (nc > kPortableWarpChunks)
    {
        // Asked once per device and kernel (then no API call but the launch, e.g. inside a CUDA
        // graph capture): 1 = clusters of kMaxWarpChunks blocks are scheduled, 2 = they are not.
        static std::atomic<int> fits[2][64];
        int dev = 0;
        int v = cudaGetDevice(&dev) == cudaSuccess && dev >= 0 && dev < 64 ? fits[p.softplus][dev].load() : 2;
        if (v == 0)
        {
            configure(nc);
            int clusters = 0;
            auto const nonPortable = cudaFuncAttributeNonPortableClusterSizeAllowed;
            bool const ok = cudaFuncSetAttribute(kernel, nonPortable, 1) == cudaSuccess
                && cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0;
            (void) cudaGetLastError(); // a refusal is not an error of this call: it takes the portable size
            v = ok ? 1 : 2;
            fits[p.softplus][dev].store(v);
        }
        if (v != 1)
            nc = kPortableWarpChunks;
    }
    configure(nc);
    return cudaLaunchKernelEx(&cfg, kernel, p);
}

// The state-lanes kernel (num_chunks does not apply: it never splits L).
template <typename T>
cudaError_t launchStateLanes(Params const& p, cudaStream_t stream)
{
    dim3 const grid(unsigned(tilesOf(p.E, kWarp / kN)), unsigned(p.batch));
    if (p.softplus)
        stateLanesKernel<T, true><<<grid, 2 * kWarp, 0, stream>>>(p);
    else
        stateLanesKernel<T, false><<<grid, 2 * kWarp, 0, stream>>>(p);
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
// WARP_CHUNKS and STATE_LANES are never chosen: at batch 1 the cluster form of WARP_CHUNKS was on
// par with the two-launch split at L=197 and slower at L=6085, STATE_LANES 5% faster at Vim-Ti
// L=197 fp16 and slower at every other shape measured (docs/kernel.md).
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
    case VIMDEPLOY_SCAN_WARP_CHUNKS: return launchWarpChunks<T>(p, numChunks, wsAvail, stream);
    case VIMDEPLOY_SCAN_STATE_LANES: return launchStateLanes<T>(p, stream);
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
