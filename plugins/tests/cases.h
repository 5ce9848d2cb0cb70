/*
 * The op's tensors as the harness lays them out (the 15 inputs of export/op_contract.md in
 * order: 9 activations (b, L, E) or (b, L, 16), then A (E, 16), A, D, D, dt biases (E)), the
 * cases tests/test_plugin_conformance.py writes (case.txt: dtype, batch, L, E and the max
 * shapes of the "engine"), and fp16 decoding for the comparison.
 */
#pragma once

#include "onnx_node.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

namespace conformance
{
using namespace nvinfer1;

constexpr int32_t kIn = 15;
constexpr int32_t kN = 16;

struct Shape
{
    int64_t batch, L, E;
};

inline Dims dims(std::initializer_list<int64_t> v)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    int i = 0;
    for (int64_t x : v)
        d.d[i++] = x;
    return d;
}

inline Dims inputDims(int32_t i, Shape s)
{
    if (i < 9)
        return (i == 3 || i == 4 || i == 7 || i == 8) ? dims({s.batch, s.L, kN}) : dims({s.batch, s.L, s.E});
    return (i == 9 || i == 10) ? dims({s.E, kN}) : dims({s.E});
}

inline DataType inputType(int32_t i, DataType act) { return i < 9 ? act : DataType::kFLOAT; }

inline void setEnvSms(int sms)
{
    if (sms > 0)
        setenv("VIMDEPLOY_SM_COUNT", std::to_string(sms).c_str(), 1);
}

struct Case
{
    std::string dir;
    DataType act = DataType::kFLOAT;
    Shape shape{}, maxShape{};
};

inline Case readCase(std::string const& dir)
{
    auto kv = readKeyValues(dir + "/case.txt");
    Case c;
    c.dir = dir;
    c.act = kv["dtype"] == "fp16" ? DataType::kHALF : DataType::kFLOAT;
    c.shape = {std::stoll(kv["batch"]), std::stoll(kv["L"]), std::stoll(kv["E"])};
    c.maxShape = {std::stoll(kv["max_batch"]), std::stoll(kv["max_L"]), c.shape.E};
    return c;
}

inline float halfToFloat(uint16_t h)
{
    uint32_t const sign = uint32_t(h & 0x8000) << 16;
    int32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f)
        bits = sign | 0x7f800000 | (mant << 13);
    else if (exp == 0)
    {
        if (mant == 0)
            bits = sign;
        else
        {
            exp = 1;
            while (!(mant & 0x400))
            {
                mant <<= 1;
                --exp;
            }
            bits = sign | uint32_t(exp + 112) << 23 | (mant & 0x3ff) << 13;
        }
    }
    else
        bits = sign | uint32_t(exp + 112) << 23 | mant << 13;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

} // namespace conformance
