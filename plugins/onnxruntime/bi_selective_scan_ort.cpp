/*
 * vimdeploy: `trt.plugins::BiSelectiveScan` (export/op_contract.md) as an ONNX Runtime custom-op
 * library on the native CPU kernel (vimdeploy/bi_selective_scan_cpu.h), for any ONNX Runtime
 * binding (Python, C, C++, C#, Java):
 *
 *     so.register_custom_ops_library("libvimdeploy_onnxruntime.so")   # Python
 *     api->RegisterCustomOpsLibrary(so, "libvimdeploy_onnxruntime.so", &handle)   // C
 *
 * Only ONNX Runtime's C API: the library links no onnxruntime; the runtime hands it the API table
 * in RegisterCustomOps. It asks for API version 13 (ONNX Runtime 1.13), whatever header it is
 * built with: the table only grows, so every runtime since 1.13 serves it, and an OrtCustomOp of
 * version 13 tells a newer runtime to read none of the fields added later.
 *
 * Two kernels under one name: activations and output fp32, or fp16; A, D and dt_bias fp32 in
 * both. ONNX Runtime picks the kernel by the node's input types and refuses other types when
 * the session is created. Everything the types cannot say (ranks, shapes, d_state = 16, the
 * attributes' values) is checked here before the kernel reads a pointer: a bad attribute fails
 * the session's creation, a bad input the node's run (Python: an exception either way), with a
 * message naming the attribute or the input, its shape and the one expected. In API version 13 a kernel reports an error by throwing: ONNX Runtime catches
 * std::exception around kernel creation and Compute and returns it as the call's status.
 */
#include "onnxruntime_c_api.h"

#include "vimdeploy/bi_selective_scan_cpu.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#define VIMDEPLOY_ORT_API_VERSION 13
static_assert(ORT_API_VERSION >= VIMDEPLOY_ORT_API_VERSION, "needs onnxruntime_c_api.h of ONNX Runtime 1.13 or later");

namespace
{

constexpr char const* kDomain = VIMDEPLOY_SCAN_DOMAIN;
constexpr char const* kOpType = VIMDEPLOY_SCAN_OP_TYPE;
constexpr int64_t kN = VIMDEPLOY_SCAN_D_STATE; // the only d_state the CPU kernel implements
constexpr size_t kNumActivations = 9;

// The contract's inputs, in order (the field order of VimdeployScanParams).
constexpr char const* kInputNames[VIMDEPLOY_SCAN_NUM_INPUTS] = {VIMDEPLOY_SCAN_INPUT_NAMES};

// What each input's dimensions are, in terms of the node's (b, L, E) and N.
enum class Dims
{
    BLE,
    BLN,
    EN,
    E
};
constexpr Dims kInputDims[VIMDEPLOY_SCAN_NUM_INPUTS] = {Dims::BLE, Dims::BLE, Dims::BLE, Dims::BLN, Dims::BLN,
    Dims::BLE, Dims::BLE, Dims::BLN, Dims::BLN, Dims::EN, Dims::EN, Dims::E, Dims::E, Dims::E, Dims::E};

std::string shapeText(std::vector<int64_t> const& dims)
{
    std::string s = "(";
    for (size_t i = 0; i < dims.size(); ++i)
        s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + (dims.size() == 1 ? ",)" : ")");
}

std::string inputText(size_t i)
{
    return "input " + std::to_string(i) + " '" + kInputNames[i] + "'";
}

// An error of the node. ONNX Runtime reports std::exception::what() as the status message.
[[noreturn]] void fail(std::string const& message)
{
    throw std::invalid_argument(std::string(kDomain) + "::" + kOpType + ": " + message);
}

// Turns an OrtStatus of an API call into an error of the node (and releases it).
void check(OrtApi const* api, OrtStatus* status, std::string const& what = std::string())
{
    if (!status)
        return;
    std::string message = api->GetErrorMessage(status);
    api->ReleaseStatus(status);
    fail(what.empty() ? message : what + ": " + message);
}

// $VIMDEPLOY_CPU_THREADS, like the Python op: the kernel's threads; unset, 0 or not a number:
// the kernel's default (every CPU the process may run on; ONNX Runtime's pool idles meanwhile).
int threadsFromEnvironment()
{
    char const* v = std::getenv("VIMDEPLOY_CPU_THREADS");
    if (!v || !*v)
        return 0;
    char* end = nullptr;
    long const n = std::strtol(v, &end, 10);
    return (*end == '\0' && n > 0 && n < 4096) ? static_cast<int>(n) : 0;
}

struct Kernel
{
    OrtApi const* api;
    ONNXTensorElementDataType activationType;
    int32_t deltaSoftplus;
    float outScale;
    int threads;

    struct Tensor
    {
        void const* data;
        ONNXTensorElementDataType type;
        std::vector<int64_t> dims;
    };

    Tensor input(OrtKernelContext* context, size_t i) const
    {
        OrtValue const* value = nullptr;
        check(api, api->KernelContext_GetInput(context, i, &value));
        if (!value)
            fail(inputText(i) + " is missing");
        OrtTensorTypeAndShapeInfo* info = nullptr;
        check(api, api->GetTensorTypeAndShape(value, &info));
        Tensor t{nullptr, ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, {}};
        size_t rank = 0;
        OrtStatus* status = api->GetTensorElementType(info, &t.type);
        if (!status)
            status = api->GetDimensionsCount(info, &rank);
        if (!status)
        {
            t.dims.resize(rank);
            status = api->GetDimensions(info, t.dims.data(), rank);
        }
        api->ReleaseTensorTypeAndShapeInfo(info);
        check(api, status);
        void* data = nullptr;
        check(api, api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
        t.data = data;
        return t;
    }

    void compute(OrtKernelContext* context) const
    {
        size_t count = 0;
        check(api, api->KernelContext_GetInputCount(context, &count));
        if (count != VIMDEPLOY_SCAN_NUM_INPUTS)
            fail("expected " + std::to_string(VIMDEPLOY_SCAN_NUM_INPUTS) + " inputs, got " + std::to_string(count));

        Tensor t[VIMDEPLOY_SCAN_NUM_INPUTS];
        for (size_t i = 0; i < VIMDEPLOY_SCAN_NUM_INPUTS; ++i)
            t[i] = input(context, i);

        // (b, L, E) from z; every other shape must follow from it and N = 16.
        if (t[0].dims.size() != 3)
            fail(inputText(0) + " must have rank 3 (b, L, E), got shape " + shapeText(t[0].dims));
        int64_t const b = t[0].dims[0], L = t[0].dims[1], E = t[0].dims[2];
        for (size_t i = 0; i < VIMDEPLOY_SCAN_NUM_INPUTS; ++i)
        {
            ONNXTensorElementDataType const want
                = i < kNumActivations ? activationType : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
            if (t[i].type != want)
                fail(inputText(i) + " has element type " + std::to_string(t[i].type) + ", expected "
                    + std::to_string(want) + (i < kNumActivations ? " (the type of z)" : " (float32)"));
            std::vector<int64_t> expected;
            char const* letters = "";
            switch (kInputDims[i])
            {
            case Dims::BLE: expected = {b, L, E}, letters = "(b, L, E)"; break;
            case Dims::BLN: expected = {b, L, kN}, letters = "(b, L, N)"; break;
            case Dims::EN: expected = {E, kN}, letters = "(E, N)"; break;
            case Dims::E: expected = {E}, letters = "(E,)"; break;
            }
            if (t[i].dims != expected)
                fail(inputText(i) + " has shape " + shapeText(t[i].dims) + ", expected " + letters + " = "
                    + shapeText(expected) + " with (b, L, E) = " + shapeText({b, L, E}) + " from input 0 'z' and N = "
                    + std::to_string(kN));
        }

        int64_t const outDims[3] = {b, L, E};
        OrtValue* out = nullptr;
        check(api, api->KernelContext_GetOutput(context, 0, outDims, 3, &out));
        void* y = nullptr;
        check(api, api->GetTensorMutableData(out, &y));

        VimdeployScanParams p;
        std::memset(&p, 0, sizeof p); // bc_stride 0: dense B and C
        void const** inputs = &p.z;   // the 15 input pointers are contiguous (scan_params.h)
        for (size_t i = 0; i < VIMDEPLOY_SCAN_NUM_INPUTS; ++i)
            inputs[i] = t[i].data;
        p.y = y;
        p.batch = b;
        p.L = L;
        p.E = E;
        p.N = kN;
        p.dtype = activationType == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? VIMDEPLOY_DTYPE_FLOAT16
                                                                          : VIMDEPLOY_DTYPE_FLOAT32;
        p.delta_softplus = deltaSoftplus;
        p.out_scale = outScale;
        int const rc = vimdeploy_bi_selective_scan_cpu(&p, threads);
        if (rc != VIMDEPLOY_SUCCESS)
            fail(std::string("the CPU kernel failed: ") + vimdeploy_cpu_error_string(rc));
    }
};

// ---- OrtCustomOp of API version 13, filled by hand ---------------------------------------------

struct Op
{
    OrtCustomOp base; // first member: ONNX Runtime hands back &base
    ONNXTensorElementDataType activationType;
};

Op const& opOf(OrtCustomOp const* op)
{
    return *reinterpret_cast<Op const*>(op);
}

// The node's attributes: every one the contract declares must be on the node (the exporter
// writes all four), as the Python op requires.
float attributeFloat(OrtApi const* api, OrtKernelInfo const* info, char const* name)
{
    float v = 0.f;
    check(api, api->KernelInfoGetAttribute_float(info, name, &v), std::string("attribute ") + name);
    return v;
}

int64_t attributeInt(OrtApi const* api, OrtKernelInfo const* info, char const* name)
{
    int64_t v = 0;
    check(api, api->KernelInfoGetAttribute_int64(info, name, &v), std::string("attribute ") + name);
    return v;
}

std::string attributeString(OrtApi const* api, OrtKernelInfo const* info, char const* name)
{
    size_t size = 0;
    check(api, api->KernelInfoGetAttribute_string(info, name, nullptr, &size), std::string("attribute ") + name);
    std::string v(size, '\0');
    check(api, api->KernelInfoGetAttribute_string(info, name, &v[0], &size), std::string("attribute ") + name);
    v.resize(std::strlen(v.c_str()));
    return v;
}

void* ORT_API_CALL createKernel(OrtCustomOp const* op, OrtApi const* api, OrtKernelInfo const* info)
{
    int64_t const deltaSoftplus = attributeInt(api, info, "delta_softplus");
    float const outScale = attributeFloat(api, info, "out_scale");
    std::string const version = attributeString(api, info, "plugin_version");
    attributeString(api, info, "plugin_namespace");
    if (deltaSoftplus != 0 && deltaSoftplus != 1)
        fail("attribute delta_softplus must be 0 or 1, got " + std::to_string(deltaSoftplus));
    if (!std::isfinite(outScale))
        fail("attribute out_scale must be a finite number, got " + std::to_string(outScale));
    if (version != VIMDEPLOY_SCAN_PLUGIN_VERSION)
        fail("attribute plugin_version is '" + version + "', this library implements version '"
            + VIMDEPLOY_SCAN_PLUGIN_VERSION + "'");
    return new Kernel{api, opOf(op).activationType, static_cast<int32_t>(deltaSoftplus), outScale,
        threadsFromEnvironment()};
}

void ORT_API_CALL kernelCompute(void* kernel, OrtKernelContext* context)
{
    static_cast<Kernel const*>(kernel)->compute(context);
}

Op makeOp(ONNXTensorElementDataType activationType)
{
    Op op;
    std::memset(&op, 0, sizeof op);
    op.base.version = VIMDEPLOY_ORT_API_VERSION;
    // The fields of API version 13, in the struct's order. ORT_API_CALL is empty outside Windows
    // (and the build is GCC/Clang on ELF): captureless lambdas convert to the callbacks.
    op.base.CreateKernel = createKernel;
    op.base.GetName = [](OrtCustomOp const*) -> char const* { return kOpType; };
    op.base.GetExecutionProviderType = [](OrtCustomOp const*) -> char const* { return nullptr; }; // CPU
    op.base.GetInputType = [](OrtCustomOp const* self, size_t index) {
        return index < kNumActivations ? opOf(self).activationType : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    };
    op.base.GetInputTypeCount = [](OrtCustomOp const*) -> size_t { return VIMDEPLOY_SCAN_NUM_INPUTS; };
    op.base.GetOutputType = [](OrtCustomOp const* self, size_t) { return opOf(self).activationType; };
    op.base.GetOutputTypeCount = [](OrtCustomOp const*) -> size_t { return 1; };
    op.base.KernelCompute = kernelCompute;
    op.base.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
    op.base.GetInputCharacteristic = [](OrtCustomOp const*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    op.base.GetOutputCharacteristic = [](OrtCustomOp const*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    op.base.GetInputMemoryType = [](OrtCustomOp const*, size_t) { return OrtMemTypeDefault; };
    op.activationType = activationType;
    return op;
}

Op const kFloat32Op = makeOp(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
Op const kFloat16Op = makeOp(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);

} // namespace

extern "C" {

/*
 * The library's one export: ONNX Runtime calls it from RegisterCustomOpsLibrary /
 * SessionOptions.register_custom_ops_library. Each call adds a trt.plugins domain (VIMDEPLOY_SCAN_DOMAIN) with both
 * kernels to `options`. The domain must outlive every session made from `options`, which the
 * library cannot know: domains are kept until the process ends (one small object per call).
 */
__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(
    OrtSessionOptions* options, OrtApiBase const* apiBase)
{
    if (!apiBase)
        return nullptr;
    OrtApi const* api = apiBase->GetApi(VIMDEPLOY_ORT_API_VERSION);
    if (!api)
    {
        // A runtime older than 1.13: report through its version-1 table (CreateStatus heads every version).
        OrtApi const* v1 = apiBase->GetApi(1);
        return v1 ? v1->CreateStatus(ORT_FAIL, "libvimdeploy_onnxruntime needs ONNX Runtime 1.13 or later") : nullptr;
    }
    static std::mutex mutex;
    static std::vector<OrtCustomOpDomain*> domains;
    std::lock_guard<std::mutex> lock(mutex);
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* status = api->CreateCustomOpDomain(kDomain, &domain))
        return status;
    OrtStatus* status = api->CustomOpDomain_Add(domain, &kFloat32Op.base);
    if (!status)
        status = api->CustomOpDomain_Add(domain, &kFloat16Op.base);
    if (!status)
        status = api->AddCustomOpDomain(options, domain);
    if (status)
    {
        api->ReleaseCustomOpDomain(domain);
        return status;
    }
    domains.push_back(domain);
    return nullptr;
}

} // extern "C"
