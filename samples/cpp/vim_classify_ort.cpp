// vim_classify_ort: classify one image with a vimdeploy plugin-flavor ONNX on the CPU, in C++
// only: ONNX Runtime's C API and the BiSelectiveScan op library (plugins/onnxruntime), no
// Python, no TensorRT, no CUDA (an edge box without an NVIDIA GPU).
//
//   vim_classify_ort MODEL.onnx IMAGE.ppm|IMAGE.bin [LABELS.txt] [--threads N] [--repeat N] [--logits OUT.bin]
//
// 1. OrtGetApiBase()->GetApi(13): the C API table of version 13 (ONNX Runtime 1.13 or later);
// 2. session options: N intra-op threads (and N threads for the scan kernel), no spinning;
// 3. the op library's RegisterCustomOps, linked into this program, adds the trt.plugins domain;
// 4. the session; the input's size from the model (224 where it is symbolic);
// 5. preprocess (preprocess.cpp: DeiT transform, same bytes as PIL) or read a raw float32
//    tensor; run batch 1; softmax and the top-5, named from LABELS (one name a line) or by index.
// --repeat N runs the model N more times and prints the median latency; --logits writes the
// logits as raw float32. Any failure: one `error: ...` line on stderr and exit status 1.
#include "classify.h"

#include "onnxruntime_c_api.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// The op library's one export (plugins/onnxruntime/bi_selective_scan_ort.cpp), linked in.
extern "C" OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, OrtApiBase const* api);

namespace
{

// The API version this program is written against: every runtime since 1.13 serves it.
constexpr uint32_t kApiVersion = 13;
static_assert(ORT_API_VERSION >= kApiVersion, "needs onnxruntime_c_api.h of ONNX Runtime 1.13 or later");

OrtApi const* gApi = nullptr;

// An OrtStatus (nullptr = success) into an exception (the status is released).
void check(OrtStatus* status, char const* what)
{
    if (status == nullptr)
        return;
    std::string message = std::string(what) + ": " + gApi->GetErrorMessage(status);
    gApi->ReleaseStatus(status);
    throw std::runtime_error(message);
}

// Owners of ONNX Runtime's objects, released through the API table.
template <typename T, void (*OrtApi::*Release)(T*)>
struct Releaser
{
    void operator()(T* p) const
    {
        if (p)
            (gApi->*Release)(p);
    }
};
using Env = std::unique_ptr<OrtEnv, Releaser<OrtEnv, &OrtApi::ReleaseEnv>>;
using SessionOptions = std::unique_ptr<OrtSessionOptions, Releaser<OrtSessionOptions, &OrtApi::ReleaseSessionOptions>>;
using Session = std::unique_ptr<OrtSession, Releaser<OrtSession, &OrtApi::ReleaseSession>>;
using MemoryInfo = std::unique_ptr<OrtMemoryInfo, Releaser<OrtMemoryInfo, &OrtApi::ReleaseMemoryInfo>>;
using Value = std::unique_ptr<OrtValue, Releaser<OrtValue, &OrtApi::ReleaseValue>>;
using TypeInfo = std::unique_ptr<OrtTypeInfo, Releaser<OrtTypeInfo, &OrtApi::ReleaseTypeInfo>>;

struct Options
{
    std::string model, image, labels, logits;
    int threads = 0; // 0: ONNX Runtime's and the kernel's defaults
    int repeat = 0;
};

int positiveInt(std::string const& flag, char const* text)
{
    char* end = nullptr;
    long const v = std::strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v < 1 || v > 1000000)
        throw std::runtime_error(flag + " takes a positive integer, got '" + text + "'");
    return static_cast<int>(v);
}

Options parse(int argc, char** argv)
{
    Options o;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i)
    {
        std::string const a = argv[i];
        if (a == "--threads" || a == "--repeat" || a == "--logits")
        {
            if (i + 1 == argc)
                throw std::runtime_error(a + " needs a value");
            char const* v = argv[++i];
            if (a == "--logits")
                o.logits = v;
            else
                (a == "--threads" ? o.threads : o.repeat) = positiveInt(a, v);
        }
        else if (a.size() > 1 && a[0] == '-')
            throw std::runtime_error("unknown option " + a);
        else
            positional.push_back(a);
    }
    if (positional.size() < 2 || positional.size() > 3)
        throw std::invalid_argument("usage");
    o.model = positional[0];
    o.image = positional[1];
    if (positional.size() == 3)
        o.labels = positional[2];
    return o;
}

std::string nameOf(OrtSession* session, size_t index, bool input)
{
    OrtAllocator* allocator = nullptr;
    check(gApi->GetAllocatorWithDefaultOptions(&allocator), "allocator");
    char* name = nullptr;
    check(input ? gApi->SessionGetInputName(session, index, allocator, &name)
                : gApi->SessionGetOutputName(session, index, allocator, &name),
        "tensor name");
    std::string s = name;
    check(gApi->AllocatorFree(allocator, name), "allocator");
    return s;
}

// The element type and dimensions (-1 where symbolic) of a session input or output.
std::pair<ONNXTensorElementDataType, std::vector<int64_t>> typeOf(OrtSession* session, size_t index, bool input)
{
    OrtTypeInfo* raw = nullptr;
    check(input ? gApi->SessionGetInputTypeInfo(session, index, &raw)
                : gApi->SessionGetOutputTypeInfo(session, index, &raw),
        "type info");
    TypeInfo info(raw);
    OrtTensorTypeAndShapeInfo const* tensor = nullptr;
    check(gApi->CastTypeInfoToTensorInfo(info.get(), &tensor), "type info");
    if (tensor == nullptr)
        throw std::runtime_error("the model's " + std::string(input ? "input " : "output ") + std::to_string(index)
            + " is not a tensor");
    ONNXTensorElementDataType type;
    size_t rank = 0;
    check(gApi->GetTensorElementType(tensor, &type), "type info");
    check(gApi->GetDimensionsCount(tensor, &rank), "type info");
    std::vector<int64_t> dims(rank);
    check(gApi->GetDimensions(tensor, dims.data(), rank), "type info");
    return {type, dims};
}

int run(Options const& o)
{
    gApi = OrtGetApiBase()->GetApi(kApiVersion);
    if (gApi == nullptr)
        throw std::runtime_error("the ONNX Runtime library loaded (" + std::string(OrtGetApiBase()->GetVersionString())
            + ") does not serve C API version 13 (ONNX Runtime 1.13 or later needed)");

    OrtEnv* env = nullptr;
    check(gApi->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "vim_classify_ort", &env), "CreateEnv");
    Env envOwner(env);
    OrtSessionOptions* so = nullptr;
    check(gApi->CreateSessionOptions(&so), "CreateSessionOptions");
    SessionOptions soOwner(so);
    if (o.threads > 0)
    {
        check(gApi->SetIntraOpNumThreads(so, o.threads), "SetIntraOpNumThreads");
        // The scan kernel's own pool reads this when the session creates its kernels.
        setenv("VIMDEPLOY_CPU_THREADS", std::to_string(o.threads).c_str(), 1);
    }
    // ONNX Runtime's pool sleeps while the scan kernel's pool runs (as vimdeploy's sessions).
    check(gApi->AddSessionConfigEntry(so, "session.intra_op.allow_spinning", "0"), "session options");
    check(gApi->AddSessionConfigEntry(so, "session.inter_op.allow_spinning", "0"), "session options");
    check(RegisterCustomOps(so, OrtGetApiBase()), "registering the BiSelectiveScan op library");

    OrtSession* session = nullptr;
    check(gApi->CreateSession(env, o.model.c_str(), so, &session), "cannot load the model");
    Session sessionOwner(session);

    size_t inputs = 0, outputs = 0;
    check(gApi->SessionGetInputCount(session, &inputs), "model inputs");
    check(gApi->SessionGetOutputCount(session, &outputs), "model outputs");
    if (inputs != 1 || outputs == 0)
        throw std::runtime_error(o.model + ": expected one image input and a logits output, got "
            + std::to_string(inputs) + " inputs and " + std::to_string(outputs) + " outputs");
    auto [inputType, dims] = typeOf(session, 0, true);
    if (inputType != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || dims.size() != 4 || (dims[1] != 3 && dims[1] != -1))
        throw std::runtime_error(o.model + ": expected a float32 input of shape (batch, 3, size, size)");
    size_t logitsIndex = 0; // the output named `logits` (vimdeploy's exports), else the first
    for (size_t i = 0; i < outputs; ++i)
        if (nameOf(session, i, false) == "logits")
            logitsIndex = i;
    if (typeOf(session, logitsIndex, false).first != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        throw std::runtime_error(o.model + ": expected float32 logits");
    std::string const inputName = nameOf(session, 0, true), logitsName = nameOf(session, logitsIndex, false);

    int const size = dims[3] > 0 ? static_cast<int>(dims[3]) : 224;
    std::vector<float> pixels = vimdeploy::loadInput(o.image, size);
    std::vector<std::string> const labels = o.labels.empty() ? std::vector<std::string>() : vimdeploy::readLabels(o.labels);

    OrtMemoryInfo* memory = nullptr;
    check(gApi->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), "memory info");
    MemoryInfo memoryOwner(memory);
    int64_t const shape[4] = {1, 3, size, size};
    OrtValue* input = nullptr;
    check(gApi->CreateTensorWithDataAsOrtValue(memory, pixels.data(), pixels.size() * sizeof(float), shape, 4,
              ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &input),
        "input tensor");
    Value inputOwner(input);

    char const* inputNames[] = {inputName.c_str()};
    char const* outputNames[] = {logitsName.c_str()};
    auto infer = [&]() {
        OrtValue* out = nullptr;
        check(gApi->Run(session, nullptr, inputNames, &input, 1, outputNames, 1, &out), "inference failed");
        return Value(out);
    };
    Value logitsValue = infer();
    std::vector<double> ms;
    for (int i = 0; i < o.repeat; ++i)
    {
        auto const t0 = std::chrono::steady_clock::now();
        logitsValue = infer();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }

    OrtTensorTypeAndShapeInfo* info = nullptr;
    check(gApi->GetTensorTypeAndShape(logitsValue.get(), &info), "logits");
    size_t count = 0;
    OrtStatus* status = gApi->GetTensorShapeElementCount(info, &count);
    gApi->ReleaseTensorTypeAndShapeInfo(info);
    check(status, "logits");
    float* data = nullptr;
    check(gApi->GetTensorMutableData(logitsValue.get(), reinterpret_cast<void**>(&data)), "logits");
    std::vector<float> const logits(data, data + count);

    vimdeploy::printTop5(o.image, logits, labels);
    if (!ms.empty())
    {
        std::sort(ms.begin(), ms.end());
        std::printf("latency: median %.2f ms (%.2f..%.2f) over %d runs, batch 1\n", ms[ms.size() / 2], ms.front(),
            ms.back(), o.repeat);
    }
    if (!o.logits.empty())
    {
        std::string const tmp = o.logits + ".tmp";
        {
            std::ofstream f(tmp, std::ios::binary);
            f.write(reinterpret_cast<char const*>(logits.data()), static_cast<std::streamsize>(logits.size() * 4));
            if (!f)
                throw std::runtime_error("cannot write " + tmp);
        }
        if (std::rename(tmp.c_str(), o.logits.c_str()) != 0)
            throw std::runtime_error("cannot write " + o.logits);
        std::printf("wrote %s (%zu float32 logits)\n", o.logits.c_str(), logits.size());
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    Options options;
    try
    {
        options = parse(argc, argv);
    }
    catch (std::invalid_argument const&)
    {
        std::fprintf(stderr,
            "usage: %s MODEL.onnx IMAGE.ppm|IMAGE.bin [LABELS.txt] [--threads N] [--repeat N] [--logits OUT.bin]\n",
            argv[0]);
        return 2;
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
    try
    {
        return run(options);
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
