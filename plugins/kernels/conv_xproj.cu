/*
 * vimdeploy: both directions' depthwise conv + SiLU and each direction's x_proj product in one
 * launch (vimdeploy/conv_silu.h, vimdeploy_conv_silu_xproj_bidir, has the formulas).
 *
 * Design: conv_silu.cu's kernel is bound by memory bandwidth (it reads x once and writes
 * y_fwd and y_bwd); x_proj run apart reads y_fwd and y_bwd once more for a product of
 * rows <= 80 outputs per token (Vim-Ti: 48 x 384), which is memory-bound too: on an H100 at
 * 1248 px batch 32 the two x_proj GEMMs took 0.128 ms per layer beside the conv's 0.2 ms.
 * Here a block computes the conv outputs of a tile of 64 tokens x all E channels, 64 channels
 * at a time, and feeds them to the tensor cores from shared memory while they are still there:
 * the product costs no global traffic but its small outputs.
 * - A block is 8 warps (256 threads). 2 blocks fit an SM for rows <= 64 (92 KiB of shared
 *   memory each at rows <= 48, 106 KiB at 64), 1 for rows 80 (119 KiB; Vim-B). The grid is
 *   persistent: one resident wave (SMs x occupancy) whose blocks walk tiles blockIdx.x,
 *   + gridDim.x, ..., all of a block's (tile, channel step) pairs running as one pipeline, so
 *   the next tile's first loads overlap the current tile's last step.
 * - Per step of 64 channels, cp.async brings x (the 64 tokens plus 3 halo tokens each side:
 *   70 rows of 128 bytes), both directions' x_proj weight columns, conv taps and biases into
 *   one of three shared-memory stages, two steps ahead of the one being computed.
 * - Conv: each thread owns 8 channels (one 16-byte pack) of 2 tokens; its window is the 8
 *   packs of rows 2r .. 2r+7, read from shared memory. Sums and SiLU in fp32 as in
 *   conv_silu.cu (bit-identical outputs); each output is rounded to fp16 once, stored to
 *   y_fwd / y_bwd and to the step's operand tile.
 * - Product: warp w takes direction w / 4 and tokens 16 (w % 4) .. +15; per step 4 k-steps
 *   of 16 channels, an ldmatrix for A and one per two 8-row tiles of the weights (stored
 *   n-major, k contiguous, rows padded by 16 bytes: no bank conflicts), mma.sync m16n8k16
 *   with fp32 accumulators that live across the steps. At the end of a tile each warp writes
 *   its 16 tokens' `rows` outputs (4-byte stores; the outputs are ~1/8 of y's bytes).
 * - Tokens past L: x is zero-filled on load, their y is not stored, their products are
 *   computed and dropped. Weight rows past `rows` are zero-filled, their outputs not stored.
 * - Scheduling: two cursors (the copies', kStages - 1 steps ahead, and the compute's) walk the
 *   block's (tile, step) pairs with one division per tile; a version that derived both from
 *   the step number (four 64-bit divisions per step) had twice the static instructions and was
 *   17-20% slower.
 * Measured on an H100 (benchmarks/bench_conv.py, Vim-Ti fp16, docs/kernel.md): L=6085 batch 32
 * 0.262-0.269 ms against 0.332-0.338 ms for conv_silu.cu's kernel + two cuBLAS x_proj GEMMs
 * (the conv kernel alone: 0.20 ms); L=197 batch 128 0.049 against 0.057 ms.
 */
#include "vimdeploy/conv_silu.h"

#include "ptx.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace
{

using vimdeploy::cpAsync16;
using vimdeploy::cpAsyncCommit;
using vimdeploy::cpAsyncWait;
using vimdeploy::ldmatrixX4;
using vimdeploy::mma;

constexpr int kK = 4;                  // conv width (Vim's d_conv)
constexpr int kHalo = kK - 1;
constexpr int kTokens = 64;            // per tile: 4 warps' 16-row tiles per direction
constexpr int kChannels = 64;          // per step: 4 k-steps of 16
constexpr int kPacks = kChannels / 8;  // 16-byte packs of fp16 per row
constexpr int kThreads = 4 * kTokens;  // 2 tokens x 8 channels each in the conv
// 2 blocks of 92 KiB (NT 6) or 106 KiB (NT 8) of shared memory per SM; 1 of 119 KiB (NT 10),
// which then may use all 255 registers.
constexpr int blocksPerSm(int nt) { return nt <= 8 ? 2 : 1; }
constexpr int kStages = 3;
constexpr int kRowsX = kTokens + 2 * kHalo;
constexpr int kLd = kChannels + 8;     // halves per row of the mma operands (+16 bytes: conflict-free ldmatrix)
static_assert(kTokens == 2 * (kThreads / kPacks), "the conv covers the tile with 2 tokens per thread");

struct Args
{
    __half const* x;
    float const* tf; // conv taps (E, 4) fp32
    float const* bf; // conv bias (E) fp32 or null
    float const* tb;
    float const* bb;
    __half const* wf; // x_proj weights (rows, E)
    __half const* wb;
    __half* yf; // (batch, L, E)
    __half* yb;
    __half* of; // (batch, L, rows)
    __half* ob;
    int64_t batch, L, E, rows;
    int64_t tiles; // tiles of kTokens tokens per batch row
    int64_t work;  // batch * tiles
};

template <int NT> // weight tiles of 8 rows (NT even: the ldmatrix loads two)
struct Stage
{
    __half x[kRowsX][kChannels];    // tokens t0 - 3 .. t0 + kTokens + 2
    __half w[2][8 * NT][kLd];       // both directions' x_proj weights of the step's channels
    float4 taps[2][8][kPacks];      // [direction][i][p]: channel 8p + i (lanes of one i read 128 bytes)
    float bias[2][kChannels];
};

template <int NT>
struct Smem
{
    Stage<NT> stage[kStages];
    __half xc[2][kTokens][kLd]; // the step's conv + SiLU outputs: the A operands
};

__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.f + __expf(-v)); }

template <int NT>
__global__ void __launch_bounds__(kThreads, blocksPerSm(NT)) convSiluXProj(Args const a)
{
    static_assert(NT % 2 == 0, "weight tiles are loaded in pairs");
    extern __shared__ __align__(16) unsigned char raw[];
    Smem<NT>& sm = *reinterpret_cast<Smem<NT>*>(raw);
    int const tid = threadIdx.x;
    int const steps = static_cast<int>(a.E / kChannels);
    // The block's tiles are blockIdx.x, + gridDim.x, ...; its (tile, channel step) pairs run as
    // one pipeline. Two cursors walk them, the copies kStages - 1 steps ahead of the compute;
    // a division per tile, none per step.
    struct Cursor
    {
        int w;        // tile: batch row w / tiles, tokens t0 .. t0 + kTokens - 1 (work < 2^30: launch)
        int t0;       // first token in its batch row
        int s, slot;  // channel step; shared-memory stage
        int64_t tok0; // first token as an index into (batch x L) tokens

        __device__ void tile(Args const& a)
        {
            int const row = w / static_cast<int>(a.tiles);
            t0 = (w - row * static_cast<int>(a.tiles)) * kTokens;
            tok0 = int64_t(row) * a.L + t0;
        }
        __device__ void next(Args const& a, int steps)
        {
            slot = slot == kStages - 1 ? 0 : slot + 1;
            if (++s == steps)
            {
                s = 0;
                w += gridDim.x;
                tile(a);
            }
        }
    };
    Cursor at{static_cast<int>(blockIdx.x), 0, 0, 0, 0};
    at.tile(a);
    Cursor ahead = at;

    // Copies: thread tid moves 16-byte pack tid % 8 of rows tid / 8 + 32 j (x) and of weight
    // rows (tid / 8 + 32 j) % (8 NT) of direction (tid / 8 + 32 j) / (8 NT).
    static_assert(kThreads % kPacks == 0 && (2 * 8 * NT * kPacks) % kThreads == 0, "whole copy rounds");
    int const cp = tid % kPacks, cr = tid / kPacks;
    constexpr int kRowStride = kThreads / kPacks;
    auto issue = [&](Cursor const& c) {
        if (c.w < a.work)
        {
            Stage<NT>& st = sm.stage[c.slot];
            int const c0 = c.s * kChannels + 8 * cp;
            int const t = c.t0 - kHalo + cr; // token of x row cr in its batch row
            __half const* const x = a.x + (c.tok0 - kHalo + cr) * a.E + c0;
#pragma unroll
            for (int j = 0; j * kRowStride < kRowsX; ++j)
            {
                int const r = cr + j * kRowStride;
                bool const ok = t + j * kRowStride >= 0 && t + j * kRowStride < a.L;
                if (r < kRowsX)
                    cpAsync16(&st.x[r][8 * cp], ok ? x + int64_t(j * kRowStride) * a.E : a.x, ok);
            }
#pragma unroll
            for (int j = 0; j < 2 * 8 * NT / kRowStride; ++j)
            {
                int const q = cr + j * kRowStride, d = q / (8 * NT), n = q % (8 * NT);
                bool const ok = n < a.rows;
                cpAsync16(&st.w[d][n][8 * cp], ok ? (d ? a.wb : a.wf) + n * a.E + c0 : a.wf, ok);
            }
            int const e0 = c.s * kChannels;
            if (tid < 2 * kChannels) // one channel's 4 taps per copy
            {
                int const d = tid / kChannels, ch = tid % kChannels;
                cpAsync16(&st.taps[d][ch % 8][ch / 8], (d ? a.tb : a.tf) + (e0 + ch) * kK, true);
            }
            else if (tid < 2 * kChannels + 2 * kChannels / 4) // 4 biases per copy
            {
                int const j = tid - 2 * kChannels, d = j / (kChannels / 4), u4 = j % (kChannels / 4);
                float const* const b = d ? a.bb : a.bf;
                cpAsync16(&st.bias[d][4 * u4], b ? b + e0 + 4 * u4 : a.tf, b != nullptr);
            }
        }
        cpAsyncCommit(); // an empty group past the end keeps the wait count uniform
    };
#pragma unroll
    for (int u = 0; u < kStages - 1; ++u)
    {
        issue(ahead);
        ahead.next(a, steps);
    }

    int const p = tid % kPacks; // conv: channels 8p .. 8p + 7 of the step
    int const r = tid / kPacks; //       tokens 2r, 2r + 1 of the tile
    int const warp = tid / 32, lane = tid % 32;
    constexpr int kWarpsPerDir = kTokens / 16;
    int const dir = warp / kWarpsPerDir, m0 = 16 * (warp % kWarpsPerDir); // product: direction, first token
    float acc[NT][4];

#pragma unroll 1
    for (; at.w < a.work; at.next(a, steps))
    {
        cpAsyncWait<kStages - 2>(); // this thread's copies of this step have landed
        __syncthreads();            // everyone's have, and the last step is done with its stage and xc
        issue(ahead);
        ahead.next(a, steps);
        Stage<NT> const& st = sm.stage[at.slot];
        Cursor const& w = at;
        int const t0 = w.t0, c0 = w.s * kChannels;
        int64_t const tok0 = w.tok0;
        if (w.s == 0)
#pragma unroll
            for (int j = 0; j < NT; ++j)
                acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

        // Conv + SiLU, two channels at a time: win[m] = x[t0 - 3 + 2r + m] (fp32 pairs).
        __half2 out[2][2][4]; // [direction][token][channel pair]
#pragma unroll
        for (int i2 = 0; i2 < 4; ++i2)
        {
            float2 win[2 + 2 * kHalo];
#pragma unroll
            for (int m = 0; m < 2 + 2 * kHalo; ++m)
                win[m] = __half22float2(*reinterpret_cast<__half2 const*>(&st.x[2 * r + m][8 * p + 2 * i2]));
            float sum[2][2][2]; // [direction][token][channel of the pair]
#pragma unroll
            for (int c = 0; c < 2; ++c)
            {
                int const i = 2 * i2 + c;
                float4 const wf = st.taps[0][i][p], wb = st.taps[1][i][p];
                float const tapf[kK] = {wf.x, wf.y, wf.z, wf.w}, tapb[kK] = {wb.x, wb.y, wb.z, wb.w};
#pragma unroll
                for (int m = 0; m < 2; ++m)
                {
                    float sf = st.bias[0][8 * p + i], sb = st.bias[1][8 * p + i];
#pragma unroll
                    for (int j = 0; j < kK; ++j)
                    {
                        float2 const vf = win[m + j], vb = win[m + 2 * kHalo - j];
                        sf = fmaf(tapf[j], c ? vf.y : vf.x, sf);
                        sb = fmaf(tapb[j], c ? vb.y : vb.x, sb);
                    }
                    sum[0][m][c] = silu(sf);
                    sum[1][m][c] = silu(sb);
                }
            }
#pragma unroll
            for (int d = 0; d < 2; ++d)
#pragma unroll
                for (int m = 0; m < 2; ++m)
                    out[d][m][i2] = __floats2half2_rn(sum[d][m][0], sum[d][m][1]);
        }
#pragma unroll
        for (int m = 0; m < 2; ++m)
        {
            int const tt = 2 * r + m;
            uint4 const vf = *reinterpret_cast<uint4 const*>(out[0][m]);
            uint4 const vb = *reinterpret_cast<uint4 const*>(out[1][m]);
            if (t0 + tt < a.L)
            {
                int64_t const o = (tok0 + tt) * a.E + c0 + 8 * p;
                *reinterpret_cast<uint4*>(a.yf + o) = vf;
                *reinterpret_cast<uint4*>(a.yb + o) = vb;
            }
            *reinterpret_cast<uint4*>(&sm.xc[0][tt][8 * p]) = vf;
            *reinterpret_cast<uint4*>(&sm.xc[1][tt][8 * p]) = vb;
        }
        __syncthreads();

        // x_proj: acc (16 tokens x 8 NT rows) += xc (16 x 64) . w^T (64 x 8 NT)
#pragma unroll
        for (int k = 0; k < kChannels / 16; ++k)
        {
            uint32_t af[4];
            ldmatrixX4(af, &sm.xc[dir][m0 + lane % 16][16 * k + 8 * (lane / 16)]);
#pragma unroll
            for (int j = 0; j < NT / 2; ++j)
            {
                uint32_t bf[4];
                ldmatrixX4(bf, &st.w[dir][16 * j + 8 * (lane / 16) + lane % 8][16 * k + 8 * (lane / 8 % 2)]);
                uint32_t const b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
                mma(acc[2 * j], af, b0);
                mma(acc[2 * j + 1], af, b1);
            }
        }

        if (w.s == steps - 1) // the tile's products are complete: rows of `rows` outputs
        {
            int const g = lane / 4, q = lane % 4;
            __half* const out = (dir ? a.ob : a.of) + (tok0 + m0 + g) * a.rows;
#pragma unroll
            for (int j = 0; j < NT; ++j)
            {
                int const n = 8 * j + 2 * q;
                if (8 * j >= a.rows) // rows is a multiple of 8: whole tiles in or out
                    break;
#pragma unroll
                for (int h = 0; h < 2; ++h)
                {
                    if (t0 + m0 + g + 8 * h < a.L)
                        *reinterpret_cast<__half2*>(out + 8 * h * a.rows + n)
                            = __floats2half2_rn(acc[j][2 * h], acc[j][2 * h + 1]);
                }
            }
        }
    }
}

template <int NT>
int launch(Args a, cudaStream_t stream)
{
    constexpr int kBytes = sizeof(Smem<NT>); // > 48 KB: opted in once per device
    static bool opted[64] = {};
    static int sms[64] = {};
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess)
        return int(err);
    if (device >= 64 || !opted[device])
    {
        int n = 0;
        err = cudaFuncSetAttribute(convSiluXProj<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
        if (err == cudaSuccess)
            err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
        int per = 0;
        if (err == cudaSuccess)
            err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, convSiluXProj<NT>, kThreads, kBytes);
        if (err != cudaSuccess)
            return int(err);
        if (device < 64)
        {
            sms[device] = n * (per > 0 ? per : 1);
            opted[device] = true;
        }
    }
    a.tiles = (a.L + kTokens - 1) / kTokens;
    a.work = a.tiles * a.batch;
    if (a.work > (int64_t(1) << 30)) // the kernel counts tiles in 32 bits (2^36 tokens: never in memory)
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    int64_t blocks = a.work;
    if (device < 64 && sms[device] > 0 && blocks > sms[device])
        blocks = sms[device]; // one resident wave; each block walks its tiles as one pipeline
    convSiluXProj<NT><<<static_cast<unsigned>(blocks), kThreads, kBytes, stream>>>(a);
    err = cudaGetLastError();
    return err == cudaSuccess ? VIMDEPLOY_SUCCESS : int(err);
}

bool aligned16(void const* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

} // namespace

extern "C" {

int vimdeploy_conv_silu_xproj_bidir(VimdeployConvSiluParams const* p, VimdeployXProjParams const* xp, cudaStream_t stream)
{
    if (!p || !xp)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (p->batch < 0 || p->L < 0 || p->E < 0 || xp->rows < 0)
        return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    if (p->dtype != VIMDEPLOY_DTYPE_FLOAT16 || p->k != kK || p->E % kChannels != 0 || xp->rows % 8 != 0
        || xp->rows == 0 || xp->rows > VIMDEPLOY_CONV_XPROJ_MAX_ROWS)
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    if (p->batch == 0 || p->L == 0 || p->E == 0)
        return VIMDEPLOY_SUCCESS;
    void const* const pointers[] = {p->x, p->weight_fwd, p->weight_bwd, p->y_fwd, p->y_bwd, xp->weight_fwd,
        xp->weight_bwd, xp->out_fwd, xp->out_bwd};
    for (void const* q : pointers)
        if (!q)
            return VIMDEPLOY_ERROR_INVALID_ARGUMENT;
    for (void const* q : pointers)
        if (!aligned16(q))
            return VIMDEPLOY_ERROR_UNSUPPORTED;
    if ((p->bias_fwd && !aligned16(p->bias_fwd)) || (p->bias_bwd && !aligned16(p->bias_bwd)))
        return VIMDEPLOY_ERROR_UNSUPPORTED;

    Args a{};
    a.x = static_cast<__half const*>(p->x);
    a.tf = p->weight_fwd;
    a.bf = p->bias_fwd;
    a.tb = p->weight_bwd;
    a.bb = p->bias_bwd;
    a.wf = static_cast<__half const*>(xp->weight_fwd);
    a.wb = static_cast<__half const*>(xp->weight_bwd);
    a.yf = static_cast<__half*>(p->y_fwd);
    a.yb = static_cast<__half*>(p->y_bwd);
    a.of = static_cast<__half*>(xp->out_fwd);
    a.ob = static_cast<__half*>(xp->out_bwd);
    a.batch = p->batch;
    a.L = p->L;
    a.E = p->E;
    a.rows = xp->rows;
    return xp->rows <= 48 ? launch<6>(a, stream) : xp->rows <= 64 ? launch<8>(a, stream) : launch<10>(a, stream);
}

} // extern "C"
