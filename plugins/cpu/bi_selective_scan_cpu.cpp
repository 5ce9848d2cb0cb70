/*
 * vimdeploy: BiSelectiveScan CPU kernel (export/op_contract.md), portable C++17.
 *
 * Design:
 * - A task is one (batch row, block of kW = 16 channels, direction). It keeps the block's
 *   16 x 16 states in a local array and runs the recurrence sequentially over the tokens;
 *   every inner loop runs over the 16 channels of the block, so the compiler vectorizes it
 *   (one AVX-512 register, two AVX2 or four NEON registers per state row). B_t and C_t are
 *   shared by the block's channels and read as scalars.
 * - exp is a Cephes-style polynomial (max rel. error ~1 ulp on the range that matters)
 *   written with plain arithmetic so that it vectorizes like the rest; libm's expf does not
 *   vectorize without -ffast-math. softplus uses the same log1p fit as the CUDA kernel.
 * - On x86-64 the hot function is compiled for AVX-512, AVX2+FMA and baseline SSE2 and the
 *   loader picks one at run time (GCC/Clang target_clones), so one library runs everywhere.
 * - Phase 1: tasks write each direction's ungated output into fp32 scratch; phase 2 (split
 *   over rows) adds the two, applies silu(z) * out_scale and stores in the output dtype.
 *   fp32 outputs are therefore rounded once; fp16 outputs once, on the final store.
 * - Threads: a small pool of its own (no OpenMP: PyTorch and ONNX Runtime each bring their
 *   own thread pool, and a third OpenMP runtime spinning on the same cores slowed runs
 *   10-60x on a 2-core machine). Workers sleep on a condition variable between calls.
 */
#include "vimdeploy/bi_selective_scan_cpu.h"
#include "vimdeploy/scan_check.h"
#include "vimdeploy/scan_numeric.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#include <unistd.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define VIMDEPLOY_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VIMDEPLOY_CLONES
#endif

// Helpers on vectors must be inlined into the target clones of the hot functions (a call
// across targets would pass the vectors through memory).
#define VIMDEPLOY_INLINE inline __attribute__((always_inline))

namespace
{

constexpr int kN = VIMDEPLOY_SCAN_D_STATE;
constexpr int kV = 8;  // floats per vector: one AVX2 register, two NEON/SSE registers
constexpr int kW = 16; // channels per task: two vectors, two independent dependency chains

// ---- vectors of kV floats (GCC/Clang vector extensions) -----------------------------------
// 8 lanes: the widest that every x86-64 clone and NEON lower well (16-lane vectors made
// GCC 12 scalarize the compares and blends on AVX2).

typedef float V __attribute__((vector_size(kV * sizeof(float))));
typedef int32_t VI __attribute__((vector_size(kV * sizeof(int32_t))));
typedef uint32_t VU __attribute__((vector_size(kV * sizeof(uint32_t))));
typedef uint16_t VH __attribute__((vector_size(kV * sizeof(uint16_t))));

VIMDEPLOY_INLINE V splat(float v) { return V{} + v; }

template <typename To, typename From>
VIMDEPLOY_INLINE To bitcast(From const& v)
{
    static_assert(sizeof(To) == sizeof(From), "size mismatch");
    To t;
    std::memcpy(&t, &v, sizeof t);
    return t;
}

VIMDEPLOY_INLINE V vmax(V a, V b) { return a > b ? a : b; }
VIMDEPLOY_INLINE V vabs(V a) { return bitcast<V>(bitcast<VU>(a) & 0x7fffffffu); }

// 2^t: t = n + f, |f| <= 1/2, 2^f = 1 + f P(f) (Cephes exp2f, rel. error ~2e-7), 2^n
// added to the exponent bits. n is clamped to [-126, 127] on the integer side (one integer
// min and max instead of float compare-and-blend pairs): results below 2^-126 come out
// as about 2^-126 (an absolute error under 2e-38, for the scan's strongest decays), above
// 2^127 as about 2^127 (not inf; only outside the contract, A > 0).
VIMDEPLOY_INLINE V exp2v(V t)
{
    V const n = (t + 12582912.f) - 12582912.f; // round to nearest (1.5 * 2^23)
    V const f = t - n;
    V p = splat(1.535336188319500e-4f);
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.f;
    VI e = __builtin_convertvector(n, VI);
    e = e > -126 ? e : VI{} - 126;
    e = e < 127 ? e : VI{} + 127;
    return bitcast<V>(bitcast<VI>(p) + (e << 23));
}

constexpr float kLog2e = VIMDEPLOY_LOG2E;

VIMDEPLOY_INLINE V expv(V x) { return exp2v(x * kLog2e); }

// mamba_ssm's softplus as scan_numeric.h writes it, with the CUDA kernel's fit and steps.
VIMDEPLOY_INLINE V softplusv(V v)
{
    constexpr float kQ[] = {VIMDEPLOY_SOFTPLUS_LOG1P_COEFFS};
    V const w = expv(-vabs(v));
    V q = splat(kQ[0]);
    for (int i = 1; i <= VIMDEPLOY_SOFTPLUS_LOG1P_DEGREE; ++i)
        q = q * w + kQ[i];
    V const r = vmax(v, V{}) + w * q;
    return v > VIMDEPLOY_SOFTPLUS_THRESHOLD ? v : r;
}

// silu(v) = v / (1 + exp(-v)); exp's clamp keeps the denominator finite (v < -88 gives ~0).
VIMDEPLOY_INLINE V siluv(V v) { return v / (1.f + expv(-v)); }

// IEEE half <-> float on vectors. half -> float: the half's exponent and mantissa bits in
// float position read as the half's value times 2^-112 (normal and denormal alike); inf/nan
// get the float's all-ones exponent.
VIMDEPLOY_INLINE V halfToFloat(VH h)
{
    VU const u = __builtin_convertvector(h, VU);
    VU const bits = (u & 0x7fffu) << 13;
    V f = bitcast<V>(bits) * bitcast<float>(uint32_t(127 + 112) << 23);
    V const special = bitcast<V>(bits | 0x7f800000u);
    f = (u & 0x7c00u) == 0x7c00u ? special : f;
    return bitcast<V>(bitcast<VU>(f) | ((u & 0x8000u) << 16));
}

// float -> half, round to nearest even (as __float2half_rn; Fabian Giesen's
// float_to_half_fast3_rtne, branch-free).
VIMDEPLOY_INLINE VH floatToHalf(V f)
{
    VU u = bitcast<VU>(f);
    VU const sign = u & 0x80000000u;
    u ^= sign;
    VU const big = u > 0x7f800000u ? VU{} + 0x7e00u : VU{} + 0x7c00u;                // nan : inf
    VU const denorm = bitcast<VU>(bitcast<V>(u) + 0.5f) - bitcast<uint32_t>(0.5f);  // below 2^-14
    VU const normal = (u + ((uint32_t(15 - 127) << 23) + 0xfffu) + ((u >> 13) & 1u)) >> 13;
    VU o = u >= 0x47800000u ? big : (u < 0x38800000u ? denorm : normal);
    return __builtin_convertvector(o | (sign >> 16), VH);
}

// Loads/stores of kV consecutive elements; n < kV reads/writes only n (zeros beyond). The
// full case is a constant-size copy, i.e. one unaligned vector load or store.
template <typename T, typename Vec>
VIMDEPLOY_INLINE Vec loadRaw(T const* p, int n)
{
    Vec v{};
    if (n == kV)
        std::memcpy(&v, p, sizeof(T) * kV);
    else
        std::memcpy(&v, p, sizeof(T) * std::max(n, 0));
    return v;
}
VIMDEPLOY_INLINE V loadV(float const* p, int n) { return loadRaw<float, V>(p, n); }
VIMDEPLOY_INLINE V loadV(uint16_t const* p, int n) { return halfToFloat(loadRaw<uint16_t, VH>(p, n)); }
template <typename T, typename Vec>
VIMDEPLOY_INLINE void storeRaw(T* p, Vec v, int n)
{
    if (n == kV)
        std::memcpy(p, &v, sizeof(T) * kV);
    else
        std::memcpy(p, &v, sizeof(T) * std::max(n, 0));
}
VIMDEPLOY_INLINE void storeV(float* p, V v, int n) { storeRaw(p, v, n); }
VIMDEPLOY_INLINE void storeV(uint16_t* p, V v, int n) { storeRaw(p, floatToHalf(v), n); }

template <typename T>
VIMDEPLOY_INLINE float loadScalar(T const* p);
template <>
VIMDEPLOY_INLINE float loadScalar<float>(float const* p) { return *p; }
template <>
VIMDEPLOY_INLINE float loadScalar<uint16_t>(uint16_t const* p) { return halfToFloat(VH{} + *p)[0]; }

// ---- the recurrence ----------------------------------------------------------------------

struct Direction
{
    void const* x;
    void const* dt;
    void const* B;
    void const* C;
    float const* A;
    float const* D;
    float const* bias;
};

// One task: batch row `b`, channels [e0, e0 + w) with w = min(kW, E - e0), one direction.
// Writes y_dir[b, t, e] = sum_n h_t[n] C_t[n] + D x_t for every token into `out` (fp32).
template <typename T>
VIMDEPLOY_CLONES void scanBlock(Direction const& d, bool reverse, bool softplusOn, int64_t L, int64_t E, int64_t b,
    int64_t e0, float* out)
{
    constexpr int kHalves = kW / kV;
    int const w = int(std::min<int64_t>(kW, E - e0));
    int width[kHalves]; // valid lanes of each vector
    V a2[kN][kHalves], h[kN][kHalves], D[kHalves], bias[kHalves];
    for (int k = 0; k < kHalves; ++k)
    {
        width[k] = std::max(0, std::min(kV, w - k * kV));
        for (int n = 0; n < kN; ++n)
        {
            for (int c = 0; c < kV; ++c) // A * log2(e), transposed to channel-minor
                a2[n][k][c] = c < width[k] ? d.A[(e0 + k * kV + c) * kN + n] * kLog2e : 0.f;
            h[n][k] = V{};
        }
        D[k] = loadV(d.D + e0 + k * kV, width[k]);
        bias[k] = loadV(d.bias + e0 + k * kV, width[k]);
    }
    T const* x = static_cast<T const*>(d.x) + b * L * E + e0;
    T const* dt = static_cast<T const*>(d.dt) + b * L * E + e0;
    T const* Bm = static_cast<T const*>(d.B) + b * L * kN;
    T const* Cm = static_cast<T const*>(d.C) + b * L * kN;
    float* y = out + b * L * E + e0;

    for (int64_t s = 0; s < L; ++s)
    {
        int64_t const t = reverse ? L - 1 - s : s;
        V delta[kHalves], dx[kHalves], acc[kHalves];
        for (int k = 0; k < kHalves; ++k)
        {
            V const xv = loadV(x + t * E + k * kV, width[k]);
            delta[k] = loadV(dt + t * E + k * kV, width[k]) + bias[k];
            if (softplusOn)
                delta[k] = softplusv(delta[k]);
            dx[k] = delta[k] * xv;
            acc[k] = D[k] * xv;
        }
        T const* Bt = Bm + t * kN;
        T const* Ct = Cm + t * kN;
        for (int n = 0; n < kN; ++n)
        {
            float const Bn = loadScalar(Bt + n), Cn = loadScalar(Ct + n);
            for (int k = 0; k < kHalves; ++k)
            {
                h[n][k] = exp2v(delta[k] * a2[n][k]) * h[n][k] + dx[k] * Bn;
                acc[k] += h[n][k] * Cn;
            }
        }
        for (int k = 0; k < kHalves; ++k)
            storeV(y + t * E + k * kV, acc[k], width[k]);
    }
}

// Rows [r0, r1) of the (batch * L, E) output: y = (y_f + y_b) * silu(z) * scale.
template <typename T>
VIMDEPLOY_CLONES void combineRows(
    T const* z, float const* yf, float const* yb, T* y, int64_t E, float scale, int64_t r0, int64_t r1)
{
    for (int64_t i = r0 * E; i < r1 * E; i += kV)
    {
        int const n = int(std::min<int64_t>(kV, r1 * E - i));
        storeV(y + i, (loadV(yf + i, n) + loadV(yb + i, n)) * siluv(loadV(z + i, n)) * scale, n);
    }
}

// ---- threads -----------------------------------------------------------------------------

int cpusAvailable()
{
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return std::max(1, CPU_COUNT(&set));
#endif
    return int(std::max(1u, std::thread::hardware_concurrency()));
}

// Fork-join pool: the caller and the workers take task indices from one counter.
class Pool
{
public:
    explicit Pool(int workers)
    {
        for (int i = 0; i < workers; ++i)
            mThreads.emplace_back([this] { work(); });
    }

    ~Pool()
    {
        {
            std::lock_guard<std::mutex> lk(mMutex);
            mStop = true;
        }
        mWake.notify_all();
        for (auto& t : mThreads)
            t.join();
    }

    int size() const { return int(mThreads.size()) + 1; }

    // Runs fn(0..count-1) on the caller and up to `helpers` workers; returns when all are done.
    void run(int64_t count, int helpers, std::function<void(int64_t)> const& fn)
    {
        {
            std::lock_guard<std::mutex> lk(mMutex);
            mFn = &fn;
            mCount = count;
            mNext.store(0);
            mPending = count;
            mInvited = std::min<int>(helpers, int(mThreads.size()));
            ++mGeneration;
        }
        mWake.notify_all();
        drain();
        std::unique_lock<std::mutex> lk(mMutex);
        mDone.wait(lk, [this] { return mPending == 0 && mBusy == 0; });
        mFn = nullptr;
    }

private:
    void drain()
    {
        int64_t finished = 0;
        for (int64_t i; (i = mNext.fetch_add(1)) < mCount; ++finished)
            (*mFn)(i);
        if (finished)
        {
            std::lock_guard<std::mutex> lk(mMutex);
            mPending -= finished;
        }
    }

    void work()
    {
        uint64_t seen = 0;
        for (;;)
        {
            {
                std::unique_lock<std::mutex> lk(mMutex);
                mWake.wait(lk, [&] { return mStop || (mGeneration != seen && mInvited > 0); });
                if (mStop)
                    return;
                seen = mGeneration;
                --mInvited;
                ++mBusy;
            }
            drain();
            {
                std::lock_guard<std::mutex> lk(mMutex);
                --mBusy;
            }
            mDone.notify_all();
        }
    }

    std::vector<std::thread> mThreads;
    std::mutex mMutex;
    std::condition_variable mWake, mDone;
    std::function<void(int64_t)> const* mFn = nullptr;
    std::atomic<int64_t> mNext{0};
    int64_t mCount = 0, mPending = 0;
    int mInvited = 0, mBusy = 0;
    uint64_t mGeneration = 0;
    bool mStop = false;
};

std::mutex gPoolMutex; // one call uses the pool at a time; others run on their own thread

Pool* pool()
{
    // Created on first use, one worker per extra CPU; re-created in a forked child (the
    // parent's worker threads do not exist there; the old object is leaked on purpose).
    static Pool* p = nullptr;
#if defined(__linux__)
    static pid_t owner = 0;
    if (p && owner != getpid())
        p = nullptr;
    if (!p)
        owner = getpid();
#endif
    if (!p)
        p = new Pool(cpusAvailable() - 1);
    return p;
}

void parallelFor(int64_t count, int threads, std::function<void(int64_t)> const& fn)
{
    std::unique_lock<std::mutex> lk(gPoolMutex, std::try_to_lock);
    if (threads > 1 && count > 1 && lk.owns_lock())
    {
        Pool* p = pool();
        p->run(count, std::min<int64_t>(threads, p->size()) - 1, fn);
        return;
    }
    for (int64_t i = 0; i < count; ++i)
        fn(i);
}

template <typename T>
void runScan(VimdeployScanParams const& p, int threads)
{
    int64_t const L = p.L, E = p.E, batch = p.batch;
    int64_t const blocks = (E + kW - 1) / kW;
    Direction const dirs[2] = {
        {p.x_fwd, p.dt_fwd, p.B_fwd, p.C_fwd, static_cast<float const*>(p.A_fwd), static_cast<float const*>(p.D_fwd),
            static_cast<float const*>(p.dt_bias_fwd)},
        {p.x_bwd, p.dt_bwd, p.B_bwd, p.C_bwd, static_cast<float const*>(p.A_bwd), static_cast<float const*>(p.D_bwd),
            static_cast<float const*>(p.dt_bias_bwd)},
    };
    // Per-thread scratch, kept between calls: the two ungated directions in fp32.
    thread_local std::vector<float> scratch;
    size_t const n = size_t(batch * L * E);
    if (scratch.size() < 2 * n)
        scratch.resize(2 * n);
    float* yd[2] = {scratch.data(), scratch.data() + n};

    parallelFor(batch * blocks * 2, threads, [&](int64_t task) {
        int const dir = int(task % 2);
        int64_t const blk = (task / 2) % blocks, b = task / (2 * blocks);
        scanBlock<T>(dirs[dir], dir == 1, p.delta_softplus != 0, L, E, b, blk * kW, yd[dir]);
    });
    int64_t const rows = batch * L;
    int64_t const rowsPerTask = std::max<int64_t>(1, 4096 / std::max<int64_t>(E, 1));
    int64_t const tasks = (rows + rowsPerTask - 1) / rowsPerTask;
    parallelFor(tasks, threads, [&](int64_t task) {
        int64_t const r0 = task * rowsPerTask, r1 = std::min(rows, r0 + rowsPerTask);
        combineRows<T>(static_cast<T const*>(p.z), yd[0], yd[1], static_cast<T*>(p.y), E, p.out_scale, r0, r1);
    });
}

} // namespace

extern "C" {

int vimdeploy_bi_selective_scan_cpu(VimdeployScanParams const* p, int num_threads)
{
    int const rc = vimdeploy_scan_params_check(p);
    if (rc != VIMDEPLOY_SUCCESS)
        return rc;
    if (p->bc_stride != 0 && p->bc_stride != p->N) // dense B and C only (scan_params.h)
        return VIMDEPLOY_ERROR_UNSUPPORTED;
    if (vimdeploy_scan_is_empty(p))
        return VIMDEPLOY_SUCCESS;
    int const threads = num_threads > 0 ? num_threads : cpusAvailable();
    if (p->dtype == VIMDEPLOY_DTYPE_FLOAT16)
        runScan<uint16_t>(*p, threads);
    else
        runScan<float>(*p, threads);
    return VIMDEPLOY_SUCCESS;
}

char const* vimdeploy_cpu_isa(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return "avx512f";
    if (__builtin_cpu_supports("x86-64-v3"))
        return "avx2";
    return "sse2";
#elif defined(__aarch64__)
    return "neon";
#else
    return "scalar";
#endif
}

char const* vimdeploy_cpu_error_string(int code)
{
    switch (code)
    {
    case VIMDEPLOY_SUCCESS: return "success";
    case VIMDEPLOY_ERROR_INVALID_ARGUMENT:
        return "invalid argument (null pointer, negative size, delta_softplus not 0/1, out_scale not finite, bc_stride < "
               "d_state)";
    case VIMDEPLOY_ERROR_UNSUPPORTED: return "unsupported (d_state must be 16, dtype float32 or float16, B and C dense)";
    default: return "unknown error";
    }
}

} // extern "C"
