/*
 * vimdeploy: a C++ test driver for the BiSelectiveScan CPU kernel, with no Python and no
 * framework, so that it runs wherever the kernel is built (an ARM board, or qemu-aarch64 in CI).
 *
 * - Checks the kernel against an fp64 loop of the contract's semantics (export/op_contract.md)
 *   on deterministic inputs, with the bounds of the Python tests (tests/test_scan.py `close`):
 *   max |error| <= 2e-5 * max(max |reference|, 1) for fp32, 1e-3 for fp16 activations.
 * - Checks that the contract's invalid arguments are refused with the documented codes.
 * - `--dump FILE` also writes every case's output (fp32, native byte order) so that two builds
 *   (x86-64 and aarch64) can be compared: `--compare A B` reports the largest difference.
 *
 * Usage: cpu_scan_test [--dump FILE] | cpu_scan_test --compare A B [REL]
 * Exit status 0 when every check passes.
 */
#include "vimdeploy/bi_selective_scan_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace
{

constexpr int64_t kN = VIMDEPLOY_SCAN_D_STATE;

// ---- deterministic inputs ---------------------------------------------------------------

struct Rng
{
    uint64_t s;
    uint64_t next() // splitmix64
    {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    double uniform() { return double((next() >> 11) + 1) / 9007199254740993.0; } // (0, 1]
    float normal() { return float(std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform())); }
};

uint16_t toHalf(float f) // round to nearest even; the inputs stay well inside fp16's normal range
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t const sign = (u >> 16) & 0x8000u;
    int32_t const exp = int32_t((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = u & 0x7fffffu;
    if (exp <= 0)
        return uint16_t(sign); // flush (not reached by these inputs)
    uint32_t h = (uint32_t(exp) << 10) | (mant >> 13);
    uint32_t const rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        ++h;
    return uint16_t(sign | h);
}

float fromHalf(uint16_t h)
{
    uint32_t const sign = uint32_t(h & 0x8000u) << 16;
    uint32_t const exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
    uint32_t u = exp == 0 ? sign : sign | ((exp - 15 + 127) << 23) | (mant << 13); // no subnormals here
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

struct Case
{
    int64_t b, L, E;
    bool softplus;
    float scale;
    bool half;
};

// The 15 inputs as floats (already rounded to fp16 where the case is fp16), in contract order.
struct Inputs
{
    std::vector<float> t[VIMDEPLOY_SCAN_NUM_INPUTS];
};

Inputs makeInputs(Case const& c, uint64_t seed)
{
    Rng r{seed};
    Inputs in;
    int64_t const act = c.b * c.L * c.E, bc = c.b * c.L * kN;
    auto fill = [&](std::vector<float>& v, int64_t n, float shift, float mul) {
        v.resize(size_t(n));
        for (auto& x : v)
            x = r.normal() * mul + shift;
    };
    // z, then (x, dt, B, C) for each direction: the ranges of tests/test_scan.py `scan_inputs`
    fill(in.t[0], act, 0.f, 1.f);
    for (int d = 0; d < 2; ++d)
    {
        fill(in.t[1 + 4 * d], act, 0.f, 1.f);
        fill(in.t[2 + 4 * d], act, c.softplus ? -2.f : 0.f, 1.f);
        if (!c.softplus) // without softplus dt must already be a positive step size
            for (auto& x : in.t[2 + 4 * d])
                x = std::fabs(x) * 0.3f;
        fill(in.t[3 + 4 * d], bc, 0.f, 1.f);
        fill(in.t[4 + 4 * d], bc, 0.f, 1.f);
    }
    for (int d = 0; d < 2; ++d) // A = -exp(log(1..N) + noise)
    {
        auto& A = in.t[9 + d];
        A.resize(size_t(c.E * kN));
        for (int64_t e = 0; e < c.E; ++e)
            for (int64_t n = 0; n < kN; ++n)
                A[size_t(e * kN + n)] = -std::exp(std::log(float(n + 1)) + 0.3f * r.normal());
    }
    fill(in.t[11], c.E, 0.f, 1.f);
    fill(in.t[12], c.E, 0.f, 1.f);
    fill(in.t[13], c.E, 0.f, 0.5f);
    fill(in.t[14], c.E, 0.f, 0.5f);
    if (!c.softplus)
        for (int i : {13, 14})
            for (auto& x : in.t[i])
                x = std::fabs(x);
    if (c.half)
        for (int i = 0; i < 9; ++i)
            for (auto& x : in.t[i])
                x = fromHalf(toHalf(x));
    return in;
}

// ---- the contract in fp64 -----------------------------------------------------------------

std::vector<double> reference(Case const& c, Inputs const& in)
{
    int64_t const L = c.L, E = c.E;
    std::vector<double> y(size_t(c.b * L * E), 0.0), h(kN);
    for (int d = 0; d < 2; ++d)
    {
        auto const &x = in.t[1 + 4 * d], &dt = in.t[2 + 4 * d], &B = in.t[3 + 4 * d], &C = in.t[4 + 4 * d];
        auto const &A = in.t[9 + d], &D = in.t[11 + d], &bias = in.t[13 + d];
        for (int64_t b = 0; b < c.b; ++b)
            for (int64_t e = 0; e < E; ++e)
            {
                std::fill(h.begin(), h.end(), 0.0);
                for (int64_t s = 0; s < L; ++s)
                {
                    int64_t const t = d == 0 ? s : L - 1 - s, i = (b * L + t) * E + e;
                    double delta = double(dt[size_t(i)]) + bias[size_t(e)];
                    if (c.softplus)
                        delta = delta > 20.0 ? delta : std::log1p(std::exp(delta));
                    double acc = double(D[size_t(e)]) * x[size_t(i)];
                    for (int64_t n = 0; n < kN; ++n)
                    {
                        int64_t const j = (b * L + t) * kN + n;
                        h[size_t(n)] = std::exp(delta * A[size_t(e * kN + n)]) * h[size_t(n)]
                            + delta * B[size_t(j)] * x[size_t(i)];
                        acc += h[size_t(n)] * C[size_t(j)];
                    }
                    y[size_t(i)] += acc;
                }
            }
    }
    for (size_t i = 0; i < y.size(); ++i)
    {
        double const z = in.t[0][i];
        y[i] *= z / (1.0 + std::exp(-z)) * c.scale;
    }
    return y;
}

// ---- running the kernel -------------------------------------------------------------------

struct Buffers // the kernel's view of the inputs: fp16 activations stored as half
{
    std::vector<uint16_t> half[9];
    VimdeployScanParams p{};
    std::vector<float> yf;
    std::vector<uint16_t> yh;
};

void bind(Buffers& buf, Case const& c, Inputs const& in)
{
    void const** ptrs = &buf.p.z;
    for (int i = 0; i < VIMDEPLOY_SCAN_NUM_INPUTS; ++i)
    {
        if (c.half && i < 9)
        {
            buf.half[i].resize(in.t[i].size());
            for (size_t k = 0; k < in.t[i].size(); ++k)
                buf.half[i][k] = toHalf(in.t[i][k]);
            ptrs[i] = buf.half[i].data();
        }
        else
            ptrs[i] = in.t[i].data();
    }
    size_t const n = size_t(c.b * c.L * c.E);
    if (c.half)
        buf.yh.assign(n, 0), buf.p.y = buf.yh.data();
    else
        buf.yf.assign(n, 0.f), buf.p.y = buf.yf.data();
    buf.p.batch = c.b;
    buf.p.L = c.L;
    buf.p.E = c.E;
    buf.p.N = kN;
    buf.p.dtype = c.half ? VIMDEPLOY_DTYPE_FLOAT16 : VIMDEPLOY_DTYPE_FLOAT32;
    buf.p.delta_softplus = c.softplus ? 1 : 0;
    buf.p.out_scale = c.scale;
}

std::vector<float> output(Buffers const& buf, Case const& c)
{
    if (!c.half)
        return buf.yf;
    std::vector<float> y(buf.yh.size());
    for (size_t i = 0; i < y.size(); ++i)
        y[i] = fromHalf(buf.yh[i]);
    return y;
}

int gFailures = 0, gPasses = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    (ok ? gPasses : gFailures) += 1;
}

std::string describe(Case const& c)
{
    char s[128];
    std::snprintf(s, sizeof s, "b=%lld L=%lld E=%lld %s softplus=%d scale=%g", (long long) c.b, (long long) c.L,
        (long long) c.E, c.half ? "fp16" : "fp32", int(c.softplus), double(c.scale));
    return s;
}

Case const kCases[] = {
    {1, 1, 16, true, 0.5f, false},
    {2, 2, 8, true, 0.5f, false},
    {3, 7, 24, true, 0.5f, false},
    {1, 197, 384, true, 0.5f, false},
    {2, 197, 50, false, 1.0f, false},
    {1, 730, 32, true, 0.5f, false},
    {1, 2048, 16, false, 1.0f, false},
    {2, 300, 40, true, 0.5f, true},
    {1, 197, 192, true, 0.5f, true},
};

int runChecks(char const* dumpPath)
{
    std::printf("vector ISA: %s\n", vimdeploy_cpu_isa());
#if defined(__aarch64__)
    check(std::strcmp(vimdeploy_cpu_isa(), "neon") == 0, "aarch64 build runs the NEON path");
#endif
    std::FILE* dump = dumpPath ? std::fopen(dumpPath, "wb") : nullptr;
    if (dumpPath && !dump)
    {
        std::perror(dumpPath);
        return 2;
    }
    uint64_t seed = 1;
    for (Case const& c : kCases)
    {
        Inputs const in = makeInputs(c, seed++);
        Buffers buf;
        bind(buf, c, in);
        for (int threads : {1, 2})
        {
            int const rc = vimdeploy_bi_selective_scan_cpu(&buf.p, threads);
            std::vector<float> const got = output(buf, c);
            std::vector<double> const ref = reference(c, in);
            double err = 0, scale = 1;
            bool finite = true;
            for (size_t i = 0; i < ref.size(); ++i)
            {
                finite = finite && std::isfinite(got[i]);
                err = std::fmax(err, std::fabs(got[i] - ref[i]));
                scale = std::fmax(scale, std::fabs(ref[i]));
            }
            double const bound = (c.half ? 1e-3 : 2e-5) * scale;
            char what[96];
            std::snprintf(what, sizeof what, " threads=%d: max |error| %.3g (bound %.3g)", threads, err, bound);
            check(rc == VIMDEPLOY_SUCCESS && finite && err <= bound, describe(c) + what);
            if (dump && threads == 1)
                std::fwrite(got.data(), sizeof(float), got.size(), dump);
        }
    }
    if (dump)
        std::fclose(dump);

    // The contract's invalid arguments: refused with the documented codes, y untouched.
    Case const c{1, 4, 16, true, 0.5f, false};
    Inputs const in = makeInputs(c, 99);
    auto refused = [&](char const* what, int expected, auto&& breakIt) {
        Buffers buf;
        bind(buf, c, in);
        breakIt(buf.p);
        std::vector<float> const before = buf.yf;
        int const rc = vimdeploy_bi_selective_scan_cpu(&buf.p, 1);
        check(rc == expected && buf.yf == before, std::string("refused: ") + what);
    };
    check(vimdeploy_bi_selective_scan_cpu(nullptr, 1) == VIMDEPLOY_ERROR_INVALID_ARGUMENT, "refused: null params");
    refused("d_state 8", VIMDEPLOY_ERROR_UNSUPPORTED, [](VimdeployScanParams& p) { p.N = 8; });
    refused("dtype 7", VIMDEPLOY_ERROR_UNSUPPORTED, [](VimdeployScanParams& p) { p.dtype = 7; });
    refused("negative L", VIMDEPLOY_ERROR_INVALID_ARGUMENT, [](VimdeployScanParams& p) { p.L = -1; });
    refused("null D_bwd", VIMDEPLOY_ERROR_INVALID_ARGUMENT, [](VimdeployScanParams& p) { p.D_bwd = nullptr; });
    refused("null y", VIMDEPLOY_ERROR_INVALID_ARGUMENT, [](VimdeployScanParams& p) { p.y = nullptr; });
    refused("strided B/C", VIMDEPLOY_ERROR_UNSUPPORTED, [](VimdeployScanParams& p) { p.bc_stride = 32; });
    refused("B/C stride below N", VIMDEPLOY_ERROR_INVALID_ARGUMENT, [](VimdeployScanParams& p) { p.bc_stride = 8; });
    refused("delta_softplus 2", VIMDEPLOY_ERROR_INVALID_ARGUMENT, [](VimdeployScanParams& p) { p.delta_softplus = 2; });
    refused("out_scale NaN", VIMDEPLOY_ERROR_INVALID_ARGUMENT, [](VimdeployScanParams& p) { p.out_scale = NAN; });
    refused("out_scale inf", VIMDEPLOY_ERROR_INVALID_ARGUMENT, [](VimdeployScanParams& p) { p.out_scale = INFINITY; });
    std::printf("%d passed, %d failed\n", gPasses, gFailures);
    return gFailures == 0 ? 0 : 1;
}

std::vector<float> readFloats(char const* path)
{
    std::vector<float> v;
    if (std::FILE* f = std::fopen(path, "rb"))
    {
        float buf[4096];
        size_t n;
        while ((n = std::fread(buf, sizeof(float), 4096, f)) > 0)
            v.insert(v.end(), buf, buf + n);
        std::fclose(f);
    }
    return v;
}

// Two builds' dumps agree within `rel` of the outputs' scale (the vector ISAs round the same
// operations in a different order only where FMA contraction differs).
int compare(char const* a, char const* b, double rel)
{
    std::vector<float> const x = readFloats(a), y = readFloats(b);
    if (x.empty() || x.size() != y.size())
    {
        std::printf("FAIL compare: %s has %zu values, %s has %zu\n", a, x.size(), b, y.size());
        return 1;
    }
    double err = 0, scale = 1;
    for (size_t i = 0; i < x.size(); ++i)
    {
        err = std::fmax(err, std::fabs(double(x[i]) - y[i]));
        scale = std::fmax(scale, std::fabs(double(x[i])));
    }
    bool const ok = err <= rel * scale;
    std::printf("%s compare %s vs %s: %zu values, max |difference| %.3g (bound %.3g)\n", ok ? "ok  " : "FAIL", a, b,
        x.size(), err, rel * scale);
    return ok ? 0 : 1;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc >= 4 && std::strcmp(argv[1], "--compare") == 0)
        return compare(argv[2], argv[3], argc > 4 ? std::atof(argv[4]) : 1e-5);
    if (argc == 3 && std::strcmp(argv[1], "--dump") == 0)
        return runChecks(argv[2]);
    if (argc == 1)
        return runChecks(nullptr);
    std::fprintf(stderr, "usage: %s [--dump FILE] | --compare A B [REL]\n", argv[0]);
    return 2;
}
