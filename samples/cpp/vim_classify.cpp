// vim_classify: classify one image with a vimdeploy TensorRT engine, in C++ only.
//
//   vim_classify ENGINE.plan PLUGIN.so|none IMAGE.ppm|IMAGE.bin [LABELS.txt]
//
// 1. load the BiSelectiveScan plugin library: dlopen registers the self-registering
//    libvimdeploy_trt_plugin.so; a library exporting getCreators (the _dynamic one) goes
//    through IPluginRegistry::loadLibrary instead (never both: the creator would clash);
// 2. deserialize the engine; 3. preprocess (preprocess.cpp: DeiT transform, same bytes
//    as PIL) or read a raw float32 tensor; 4. setInputShape / setTensorAddress /
//    enqueueV3 on a CUDA stream; 5. softmax and the top-5, named from LABELS (one name a
//    line) or by index. Builds against TensorRT 10.x and 11.x (the I/O is fp32 or fp16).
#include "classify.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

#define CHECK_CUDA(call)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const status_ = (call);                                                                            \
        if (status_ != cudaSuccess)                                                                                    \
            throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(status_) + " in " #call);       \
    } while (0)

class Logger : public nvinfer1::ILogger
{
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
            std::cerr << "[TensorRT] " << msg << "\n";
    }
};

void loadPlugin(std::string const& path, nvinfer1::IRuntime& runtime)
{
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (handle == nullptr)
        throw std::runtime_error(std::string("cannot load plugin library: ") + dlerror());
    if (dlsym(handle, "getCreators") != nullptr && runtime.getPluginRegistry().loadLibrary(path.c_str()) == nullptr)
        throw std::runtime_error("IPluginRegistry::loadLibrary refused " + path);
}

std::vector<char> readFile(std::string const& path)
{
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f)
        throw std::runtime_error("cannot open " + path);
    std::vector<char> data(static_cast<size_t>(f.tellg()));
    f.seekg(0);
    f.read(data.data(), static_cast<std::streamsize>(data.size()));
    return data;
}

// IEEE half <-> float on the host, so the sample needs no cuda_fp16.h host support.
uint16_t toHalf(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t const sign = (x >> 16) & 0x8000u;
    int32_t const exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (exp <= 0)
        return static_cast<uint16_t>(sign); // normalised inputs never get this small: flush
    if (exp >= 31)
        return static_cast<uint16_t>(sign | 0x7c00u);
    uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    uint32_t const rest = mant & 0x1fffu; // round to nearest even
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        ++h;
    return static_cast<uint16_t>(h);
}

float fromHalf(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t const exp = (h >> 10) & 0x1fu;
    uint32_t const mant = h & 0x3ffu;
    float f;
    if (exp == 0)
        f = std::ldexp(static_cast<float>(mant), -24);
    else if (exp == 31)
        f = mant ? NAN : INFINITY;
    else
        f = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
    return sign ? -f : f;
}

size_t elementSize(nvinfer1::DataType t)
{
    switch (t)
    {
    case nvinfer1::DataType::kFLOAT: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    default: throw std::runtime_error("this sample handles fp32 and fp16 engine inputs/outputs only");
    }
}

int64_t volume(nvinfer1::Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
        v *= d.d[i];
    return v;
}

struct DeviceBuffer
{
    void* ptr = nullptr;
    ~DeviceBuffer() { cudaFree(ptr); }
};

int run(int argc, char** argv)
{
    if (argc < 4)
    {
        std::fprintf(stderr, "usage: %s ENGINE.plan PLUGIN.so|none IMAGE.ppm|IMAGE.bin [LABELS.txt]\n", argv[0]);
        return 2;
    }
    std::string const enginePath = argv[1], pluginPath = argv[2], imagePath = argv[3];
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (pluginPath != "none")
        loadPlugin(pluginPath, *runtime);
    std::vector<char> const blob = readFile(enginePath);
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(blob.data(), blob.size())};
    if (!engine)
        throw std::runtime_error("cannot deserialize " + enginePath + " (TensorRT version, GPU or plugin mismatch?)");
    std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};

    // The input: one image, batch 1 (the profile's min must allow it; vimdeploy's default is 1:8:32).
    std::string inputName, logitsName = "logits";
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
        if (engine->getTensorIOMode(engine->getIOTensorName(i)) == nvinfer1::TensorIOMode::kINPUT)
            inputName = engine->getIOTensorName(i);
    nvinfer1::Dims inputDims = engine->getTensorShape(inputName.c_str());
    int32_t const size = inputDims.d[3] > 0 ? static_cast<int32_t>(inputDims.d[3]) : 224;
    inputDims.d[0] = 1;
    inputDims.d[2] = inputDims.d[3] = size;
    if (!context->setInputShape(inputName.c_str(), inputDims))
        throw std::runtime_error("the engine's profile does not accept batch 1 at " + std::to_string(size) + "px");

    std::vector<float> const pixels = vimdeploy::loadInput(imagePath, size);

    cudaStream_t stream;
    CHECK_CUDA(cudaStreamCreate(&stream));
    // Every I/O tensor needs an address (features too, even if unused here).
    std::vector<DeviceBuffer> buffers(engine->getNbIOTensors());
    std::vector<char> hostLogits;
    nvinfer1::DataType logitsType = nvinfer1::DataType::kFLOAT;
    int64_t numClasses = 0;
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
    {
        char const* name = engine->getIOTensorName(i);
        nvinfer1::DataType const type = engine->getTensorDataType(name);
        nvinfer1::Dims const dims = context->getTensorShape(name);
        size_t const bytes = static_cast<size_t>(volume(dims)) * elementSize(type);
        CHECK_CUDA(cudaMalloc(&buffers[i].ptr, bytes));
        context->setTensorAddress(name, buffers[i].ptr);
        if (name == inputName)
        {
            std::vector<uint16_t> half;
            void const* src = pixels.data();
            if (type == nvinfer1::DataType::kHALF)
            {
                half.resize(pixels.size());
                std::transform(pixels.begin(), pixels.end(), half.begin(), toHalf);
                src = half.data();
            }
            CHECK_CUDA(cudaMemcpyAsync(buffers[i].ptr, src, bytes, cudaMemcpyHostToDevice, stream));
        }
        else if (logitsName == name)
        {
            hostLogits.resize(bytes);
            logitsType = type;
            numClasses = dims.d[dims.nbDims - 1];
        }
    }
    if (hostLogits.empty())
        throw std::runtime_error("the engine has no `logits` output");
    if (!context->enqueueV3(stream))
        throw std::runtime_error("enqueueV3 failed");
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
        if (logitsName == engine->getIOTensorName(i))
            CHECK_CUDA(cudaMemcpyAsync(hostLogits.data(), buffers[i].ptr, hostLogits.size(), cudaMemcpyDeviceToHost, stream));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    CHECK_CUDA(cudaStreamDestroy(stream));

    std::vector<float> logits(static_cast<size_t>(numClasses));
    for (int64_t c = 0; c < numClasses; ++c)
        logits[c] = logitsType == nvinfer1::DataType::kHALF ? fromHalf(reinterpret_cast<uint16_t*>(hostLogits.data())[c])
                                                             : reinterpret_cast<float*>(hostLogits.data())[c];
    vimdeploy::printTop5(imagePath, logits, argc > 4 ? vimdeploy::readLabels(argv[4]) : std::vector<std::string>());
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    try
    {
        return run(argc, argv);
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
