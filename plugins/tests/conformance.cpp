/*
 * Plugin conformance harness: drives the BiSelectiveScan plugin through its TensorRT
 * interface the way TensorRT does, with no libnvinfer (tests/test_plugin_conformance.py).
 *
 *   loading    dynamic library: dlopen + setLoggerFinder + getCreators (IPluginRegistry::
 *              loadLibrary, trtexec --dynamicPlugins); self-registering library: the recording
 *              getPluginRegistry of nvinfer_stub.cpp loaded first, then the library's static
 *              initializer registers into it (ctypes.CDLL, polygraphy --plugins, LD_PRELOAD).
 *   lookup     as onnx-tensorrt's FallbackPluginImporter: op_type, plugin_version (default
 *              "1") and plugin_namespace (default "") must match the creator exactly.
 *   fields     as onnx-tensorrt's loadFields: only the fields named by getFieldNames(), from
 *              the node's attributes (INT -> kINT32, FLOAT -> kFLOAT32, STRING -> kCHAR with
 *              its NUL), read from a text dump of the real exported node (--node FILE).
 *   build      createPlugin(kBUILD); getCapabilityInterface(core, build, runtime); clone;
 *              getNbOutputs; getOutputDataTypes; getOutputShapes through a working
 *              IExprBuilder; supportsFormatCombination position by position;
 *              configurePlugin(min/opt/max); getWorkspaceSize; getFieldsToSerialize.
 *   runtime    createPlugin(kRUNTIME) from a copy of the serialized fields; attachToContext;
 *              onShapeChange; enqueue on a stream with cudaMalloc'd tensors and exactly
 *              getWorkspaceSize bytes (plus a guard region checked afterwards unless
 *              --exact-workspace), then again inside a CUDA graph capture; the output is
 *              compared with the PyTorch reference (expected.bin, bound.bin per element).
 *   devices    --build-sms / --run-sms set VIMDEPLOY_SM_COUNT (read by the kernel library)
 *              before the build calls and before enqueue: an engine built on a smaller GPU.
 *   rejections (host only, every case) what breaks the contract must fail and be reported:
 *              createPlugin with delta_softplus not 0/1, out_scale not finite or fields of the
 *              wrong type; getOutputShapes with an input of the wrong rank or a constant size
 *              that disagrees; configurePlugin with any input's size (min/opt/max) or type
 *              off; enqueue with any input's dims too short, too long, of the wrong rank or
 *              type (null tensors: it must refuse before the kernel is launched, reporting
 *              kINVALID_ARGUMENT to the context's ErrorRecorder). Each failure must reach the
 *              logger (dynamic library: the self-registering one gets no logger, stderr).
 *
 * --host-only stops before enqueue (no GPU needed). Exit status 0 when every check passed.
 */
#include "cases.h"
#include "onnx_node.h"
#include "standins.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;
using namespace conformance;

namespace conformance
{
int gChecks = 0;
int gFailures = 0;

bool check(bool ok, std::string const& what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL: %s\n", what.c_str());
    }
    return ok;
}
} // namespace conformance

namespace
{

// ---------------------------------------------------------------------------- the checks

struct Plugin
{
    IPluginV3* v3 = nullptr;
    IPluginV3OneCore* core = nullptr;
    IPluginV3OneBuild* build = nullptr;
    IPluginV3OneRuntime* runtime = nullptr;
};

Plugin capabilities(IPluginV3* p, bool needBuild, std::string const& what)
{
    Plugin r;
    r.v3 = p;
    if (!check(p != nullptr, what + ": plugin created"))
        return r;
    r.core = dynamic_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    r.runtime = dynamic_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(r.core != nullptr, what + ": getCapabilityInterface(kCORE) is an IPluginV3OneCore");
    check(r.runtime != nullptr, what + ": getCapabilityInterface(kRUNTIME) is an IPluginV3OneRuntime");
    if (needBuild)
    {
        r.build = dynamic_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
        check(r.build != nullptr, what + ": getCapabilityInterface(kBUILD) is an IPluginV3OneBuild");
    }
    return r;
}

void checkFormats(IPluginV3OneBuild* b, DataType act)
{
    std::vector<DynamicPluginTensorDesc> io(kIn + 1);
    Shape const s{2, 64, 32};
    for (int32_t i = 0; i <= kIn; ++i)
    {
        io[i].desc.dims = i < kIn ? inputDims(i, s) : dims({s.batch, s.L, s.E});
        io[i].desc.type = i < kIn ? inputType(i, act) : act;
        io[i].desc.format = TensorFormat::kLINEAR;
    }
    // TensorRT asks position by position; positions before `pos` are already chosen.
    for (int32_t pos = 0; pos <= kIn; ++pos)
        check(b->supportsFormatCombination(pos, io.data(), kIn, 1),
            "supportsFormatCombination accepts position " + std::to_string(pos) + " of the linear combination");
    auto rejects = [&](int32_t pos, DataType type, TensorFormat format, std::string const& what) {
        auto const saved = io[pos].desc;
        io[pos].desc.type = type;
        io[pos].desc.format = format;
        check(!b->supportsFormatCombination(pos, io.data(), kIn, 1), "supportsFormatCombination rejects " + what);
        io[pos].desc = saved;
    };
    rejects(0, DataType::kINT8, TensorFormat::kLINEAR, "an INT8 z");
    rejects(1, act == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT, TensorFormat::kLINEAR,
        "an x of another type than z");
    rejects(9, DataType::kHALF, TensorFormat::kLINEAR, "an fp16 A (A, D, dt bias are fp32)");
    rejects(kIn, act == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT, TensorFormat::kLINEAR,
        "an output of another type than the activations");
    rejects(0, act, TensorFormat::kCHW32, "a vectorized format");
}

// The inputs' dims as getOutputShapes gets them: batch and L the given symbols, the rest constants.
std::vector<DimsExprs> inputExprs(ExprBuilder& eb, IDimensionExpr const* batch, IDimensionExpr const* L, Shape s)
{
    std::vector<DimsExprs> exprs(kIn);
    for (int32_t i = 0; i < kIn; ++i)
    {
        Dims const d = inputDims(i, s);
        exprs[i].nbDims = d.nbDims;
        for (int32_t k = 0; k < d.nbDims; ++k)
            exprs[i].d[k] = (i < 9 && k == 0) ? batch : (i < 9 && k == 1) ? L : eb.constant(d.d[k]);
    }
    return exprs;
}

// ---------------------------------------------------------------------------- rejections

LoggerFinder gFinder; // handed to the dynamic library through setLoggerFinder

// `call()` returns whether the plugin refused; then it must have logged an error (where it
// has a logger: `logs`).
template <typename F>
void rejects(std::string const& what, bool logs, F&& call)
{
    int const before = gFinder.logger.errors;
    check(call(), what + ": refused");
    if (logs)
        check(gFinder.logger.errors > before, what + ": reported through TensorRT's logger");
}

template <typename T>
void addField(Fields& f, char const* name, PluginFieldType type, T value)
{
    f.storage.emplace_back(reinterpret_cast<char const*>(&value), reinterpret_cast<char const*>(&value) + sizeof value);
    f.fields.emplace_back(name, f.storage.back().data(), type, 1);
    f.fc.nbFields = static_cast<int32_t>(f.fields.size());
    f.fc.fields = f.fields.data();
}

void checkAttributeRejections(IPluginCreatorV3One* creator, std::string const& name, bool logs)
{
    float const nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    std::deque<std::pair<std::string, Fields>> bad; // a deque: Fields point into themselves, never moved
    auto add = [&](std::string const& what, auto build) {
        bad.emplace_back(what, Fields{});
        build(bad.back().second);
    };
    for (int32_t v : {2, -1})
        add("delta_softplus " + std::to_string(v), [&](Fields& f) { addField(f, "delta_softplus", PluginFieldType::kINT32, v); });
    for (int64_t v : {int64_t(2), (int64_t(1) << 32) + 1})
        add("delta_softplus " + std::to_string(v) + " (kINT64)",
            [&](Fields& f) { addField(f, "delta_softplus", PluginFieldType::kINT64, v); });
    add("delta_softplus as kFLOAT32", [&](Fields& f) { addField(f, "delta_softplus", PluginFieldType::kFLOAT32, 1.0F); });
    for (float v : {nan, inf, -inf})
        add("out_scale " + std::to_string(v), [&](Fields& f) { addField(f, "out_scale", PluginFieldType::kFLOAT32, v); });
    add("out_scale 1e300 (kFLOAT64, inf as float)",
        [&](Fields& f) { addField(f, "out_scale", PluginFieldType::kFLOAT64, 1e300); });
    add("out_scale as kINT32", [&](Fields& f) { addField(f, "out_scale", PluginFieldType::kINT32, int32_t(1)); });
    for (auto& [what, fields] : bad)
        for (TensorRTPhase phase : {TensorRTPhase::kBUILD, TensorRTPhase::kRUNTIME})
            rejects("createPlugin(" + what + (phase == TensorRTPhase::kBUILD ? ", kBUILD)" : ", kRUNTIME)"), logs, [&] {
                IPluginV3* p = creator->createPlugin(name.c_str(), &fields.fc, phase);
                delete p;
                return p == nullptr;
            });
    Fields good; // the contract's other values are accepted
    addField(good, "delta_softplus", PluginFieldType::kINT32, int32_t(0));
    addField(good, "out_scale", PluginFieldType::kFLOAT32, -2.0F);
    std::unique_ptr<IPluginV3> p(creator->createPlugin(name.c_str(), &good.fc, TensorRTPhase::kBUILD));
    check(p != nullptr, "createPlugin(delta_softplus 0, out_scale -2) is accepted");
}

// getOutputShapes / configurePlugin / enqueue with one input's shape or type off the contract.
void checkShapeRejections(Plugin const& b, IPluginV3OneRuntime* runtime, ErrorRecorder& recorder, Case const& c,
    bool logs)
{
    std::string const tag = "[" + c.dir + "] ";
    ExprBuilder eb;
    IDimensionExpr const* batch = eb.impl.symbol();
    IDimensionExpr const* L = eb.impl.symbol();
    std::vector<DimsExprs> exprs = inputExprs(eb, batch, L, c.shape);
    auto outputShapesFail = [&]() {
        DimsExprs out{};
        return b.build->getOutputShapes(exprs.data(), kIn, nullptr, 0, &out, 1, eb) != 0;
    };

    std::vector<DynamicPluginTensorDesc> in(kIn), out(1);
    for (int32_t i = 0; i < kIn; ++i)
    {
        in[i].desc = {inputDims(i, c.shape), inputType(i, c.act), TensorFormat::kLINEAR, 1.0F};
        in[i].min = in[i].opt = in[i].max = inputDims(i, c.shape);
    }
    out[0].desc = {dims({c.shape.batch, c.shape.L, c.shape.E}), c.act, TensorFormat::kLINEAR, 1.0F};
    out[0].min = out[0].opt = out[0].max = out[0].desc.dims;
    auto configureFails = [&]() { return b.build->configurePlugin(in.data(), kIn, out.data(), 1) != 0; };
    check(!configureFails(), tag + "configurePlugin accepts the contract's shapes (the control case)");

    std::vector<PluginTensorDesc> inDesc(kIn), outDesc(1);
    for (int32_t i = 0; i < kIn; ++i)
        inDesc[i] = in[i].desc;
    outDesc[0] = out[0].desc;
    std::vector<void const*> nullInputs(kIn, nullptr);
    void* nullOutput = nullptr;
    // Null tensors: a plugin that let the shapes through would reach the kernel, which refuses
    // null pointers itself (kINTERNAL_ERROR from the plugin); a plugin that refuses first
    // reports kINVALID_ARGUMENT.
    auto enqueueRefuses = [&]() {
        size_t const before = recorder.errors.size();
        int32_t const rc = runtime->enqueue(inDesc.data(), outDesc.data(), nullInputs.data(), &nullOutput, nullptr, nullptr);
        return rc != 0 && recorder.errors.size() > before && recorder.errors.back().first == ErrorCode::kINVALID_ARGUMENT;
    };

    DataType const other = c.act == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
    for (int32_t i = 0; i < kIn; ++i)
    {
        std::string const input = "input " + std::to_string(i);
        // wrong rank
        --exprs[i].nbDims;
        rejects(tag + "getOutputShapes with " + input + " of rank one less", logs, outputShapesFail);
        ++exprs[i].nbDims;
        --in[i].desc.dims.nbDims;
        rejects(tag + "configurePlugin with " + input + " of rank one less", logs, configureFails);
        ++in[i].desc.dims.nbDims;
        --inDesc[i].dims.nbDims;
        rejects(tag + "enqueue with " + input + " of rank one less", logs, enqueueRefuses);
        ++inDesc[i].dims.nbDims;
        for (int32_t k = 0; k < inDesc[i].dims.nbDims; ++k)
        {
            std::string const dim = input + " dimension " + std::to_string(k);
            if (exprs[i].d[k]->isConstant()) // batch and L are symbols at this stage
            {
                IDimensionExpr const* saved = exprs[i].d[k];
                exprs[i].d[k] = eb.constant(saved->getConstantValue() + 1);
                rejects(tag + "getOutputShapes with " + dim + " one too long", logs, outputShapesFail);
                exprs[i].d[k] = saved;
            }
            for (Dims* d : {&in[i].min, &in[i].opt, &in[i].max})
            {
                ++d->d[k];
                rejects(tag + "configurePlugin with " + dim + " one too long in a profile", logs, configureFails);
                --d->d[k];
            }
            for (int64_t delta : {int64_t(-1), int64_t(1)})
            {
                inDesc[i].dims.d[k] += delta;
                rejects(tag + "enqueue with " + dim + (delta < 0 ? " one too short" : " one too long"), logs,
                    enqueueRefuses);
                inDesc[i].dims.d[k] -= delta;
            }
        }
        // wrong type: an activation of another type than z, a parameter not fp32
        DataType const wrong = i < 9 ? other : DataType::kHALF;
        if (i > 0)
        {
            in[i].desc.type = wrong;
            rejects(tag + "configurePlugin with " + input + " of the wrong type", logs, configureFails);
            in[i].desc.type = inputType(i, c.act);
        }
        inDesc[i].type = i == 0 ? DataType::kINT8 : wrong;
        rejects(tag + "enqueue with " + input + " of the wrong type", logs, enqueueRefuses);
        inDesc[i].type = inputType(i, c.act);
    }
    ++outDesc[0].dims.d[1];
    rejects(tag + "enqueue with an output longer than z", logs, enqueueRefuses);
    --outDesc[0].dims.d[1];
    size_t const before = recorder.errors.size();
    check(runtime->enqueue(inDesc.data(), outDesc.data(), nullInputs.data(), &nullOutput, nullptr, nullptr) != 0
            && recorder.errors.size() > before,
        tag + "enqueue with the contract's shapes but null tensors fails (the kernel's own check) and is reported");
}

#define CUDA_OK(call) check((call) == cudaSuccess, std::string(#call) + ": " + cudaGetErrorString(cudaGetLastError()))

constexpr size_t kGuard = 1 << 20;
constexpr unsigned char kGuardByte = 0xA5;

// One case: build-time calls at the case's max shape, then run at its shape.
void runCase(IPluginCreatorV3One* creator, Fields const& nodeFields, std::string const& nodeName, Case const& c,
    bool hostOnly, bool exactWorkspace, int buildSms, int runSms, bool logs)
{
    std::string const tag = "[" + c.dir + "] ";
    setEnvSms(buildSms);
    Plugin b = capabilities(creator->createPlugin(nodeName.c_str(), &nodeFields.fc, TensorRTPhase::kBUILD), true,
        tag + "createPlugin(kBUILD)");
    if (!b.build || !b.core || !b.runtime)
        return;
    check(std::strcmp(b.core->getPluginName(), creator->getPluginName()) == 0
            && std::strcmp(b.core->getPluginVersion(), creator->getPluginVersion()) == 0
            && std::strcmp(b.core->getPluginNamespace(), creator->getPluginNamespace()) == 0,
        tag + "the plugin's name/version/namespace are its creator's");
    std::unique_ptr<IPluginV3> cloned(b.v3->clone());
    check(cloned && capabilities(cloned.get(), true, tag + "clone").build, tag + "clone() gives a full plugin");

    check(b.build->getNbOutputs() == 1, tag + "getNbOutputs() == 1");
    std::vector<DataType> inTypes(kIn);
    for (int32_t i = 0; i < kIn; ++i)
        inTypes[i] = inputType(i, c.act);
    DataType outType{};
    check(b.build->getOutputDataTypes(&outType, 1, inTypes.data(), kIn) == 0 && outType == c.act,
        tag + "getOutputDataTypes: the output has the activations' type");

    ExprBuilder eb;
    IDimensionExpr const* batch = eb.impl.symbol();
    IDimensionExpr const* L = eb.impl.symbol();
    std::vector<DimsExprs> inExprs = inputExprs(eb, batch, L, c.shape);
    DimsExprs outExprs{};
    check(b.build->getOutputShapes(inExprs.data(), kIn, nullptr, 0, &outExprs, 1, eb) == 0, tag + "getOutputShapes");
    check(outExprs.nbDims == 3 && outExprs.d[0] == batch && outExprs.d[1] == L && outExprs.d[2]->isConstant()
            && outExprs.d[2]->getConstantValue() == c.shape.E,
        tag + "getOutputShapes: y is (batch, L, E) with z's symbolic batch and L");

    checkFormats(b.build, c.act);

    Shape const minShape{1, 1, c.shape.E};
    std::vector<DynamicPluginTensorDesc> in(kIn), out(1);
    for (int32_t i = 0; i < kIn; ++i)
    {
        in[i].desc.dims = inputDims(i, {-1, -1, c.shape.E});
        if (i >= 9)
            in[i].desc.dims = inputDims(i, c.shape);
        in[i].desc.type = inTypes[i];
        in[i].desc.format = TensorFormat::kLINEAR;
        in[i].min = inputDims(i, minShape);
        in[i].opt = inputDims(i, c.shape);
        in[i].max = inputDims(i, c.maxShape);
    }
    out[0].desc.dims = dims({-1, -1, c.shape.E});
    out[0].desc.type = c.act;
    out[0].desc.format = TensorFormat::kLINEAR;
    out[0].min = dims({1, 1, c.shape.E});
    out[0].opt = dims({c.shape.batch, c.shape.L, c.shape.E});
    out[0].max = dims({c.maxShape.batch, c.maxShape.L, c.shape.E});
    check(b.build->configurePlugin(in.data(), kIn, out.data(), 1) == 0, tag + "configurePlugin(min/opt/max)");
    size_t const workspace = b.build->getWorkspaceSize(in.data(), kIn, out.data(), 1);
    std::printf("%sworkspace %zu bytes (built with %d SMs)\n", tag.c_str(), workspace, buildSms);

    Fields serialized;
    copyFields(serialized, b.runtime->getFieldsToSerialize());
    delete b.v3;
    cloned.reset();

    // ---- runtime: a deserialized engine, another process, maybe another GPU
    setEnvSms(runSms);
    Plugin r = capabilities(creator->createPlugin(nodeName.c_str(), &serialized.fc, TensorRTPhase::kRUNTIME), false,
        tag + "createPlugin(kRUNTIME) from the serialized fields");
    if (!r.runtime)
        return;
    Fields again;
    copyFields(again, r.runtime->getFieldsToSerialize());
    check(again.fields.size() == serialized.fields.size(), tag + "a deserialized plugin serializes the same fields");
    for (size_t i = 0; i < again.fields.size() && i < serialized.fields.size(); ++i)
        check(std::strcmp(again.fields[i].name, serialized.fields[i].name) == 0
                && std::memcmp(again.fields[i].data, serialized.fields[i].data, again.storage[2 * i].size()) == 0,
            tag + "field " + serialized.fields[i].name + " round-trips");
    ResourceContext context;
    Plugin x = capabilities(r.runtime->attachToContext(&context), false, tag + "attachToContext");
    delete r.v3;
    if (!x.runtime)
        return;

    std::vector<PluginTensorDesc> inDesc(kIn), outDesc(1);
    for (int32_t i = 0; i < kIn; ++i)
        inDesc[i] = {inputDims(i, c.shape), inTypes[i], TensorFormat::kLINEAR, 1.0F};
    outDesc[0] = {dims({c.shape.batch, c.shape.L, c.shape.E}), c.act, TensorFormat::kLINEAR, 1.0F};
    check(x.runtime->onShapeChange(inDesc.data(), kIn, outDesc.data(), 1) == 0, tag + "onShapeChange");

    Plugin rb = capabilities(creator->createPlugin(nodeName.c_str(), &nodeFields.fc, TensorRTPhase::kBUILD), true,
        tag + "createPlugin(kBUILD) for the rejections");
    if (rb.build)
        checkShapeRejections(rb, x.runtime, context.recorder, c, logs);
    delete rb.v3;

    if (hostOnly)
    {
        delete x.v3;
        return;
    }

    // ---- enqueue on a stream, then inside a CUDA graph capture
    size_t const actBytes = c.act == DataType::kHALF ? 2 : 4;
    std::vector<void*> dIn(kIn, nullptr);
    for (int32_t i = 0; i < kIn; ++i)
    {
        std::vector<char> host = readBytes(c.dir + "/in" + std::to_string(i) + ".bin");
        Dims const d = inputDims(i, c.shape);
        size_t n = 1;
        for (int32_t k = 0; k < d.nbDims; ++k)
            n *= size_t(d.d[k]);
        check(host.size() == n * (i < 9 ? actBytes : 4), tag + "input " + std::to_string(i) + " file size");
        CUDA_OK(cudaMalloc(&dIn[i], host.size()));
        CUDA_OK(cudaMemcpy(dIn[i], host.data(), host.size(), cudaMemcpyHostToDevice));
    }
    size_t const nOut = size_t(c.shape.batch * c.shape.L * c.shape.E);
    void* dOut = nullptr;
    void* dWs = nullptr;
    CUDA_OK(cudaMalloc(&dOut, nOut * actBytes));
    size_t const wsAlloc = workspace + (exactWorkspace ? 0 : kGuard);
    if (wsAlloc > 0)
        CUDA_OK(cudaMalloc(&dWs, wsAlloc));
    std::vector<double> expected(nOut), bound(nOut);
    std::vector<char> e = readBytes(c.dir + "/expected.bin"), bd = readBytes(c.dir + "/bound.bin");
    check(e.size() == nOut * 8 && bd.size() == nOut * 8, tag + "expected.bin / bound.bin sizes");
    std::memcpy(expected.data(), e.data(), std::min(e.size(), nOut * 8));
    std::memcpy(bound.data(), bd.data(), std::min(bd.size(), nOut * 8));

    cudaStream_t stream{};
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    auto compare = [&](std::string const& how) {
        std::vector<char> host(nOut * actBytes);
        CUDA_OK(cudaMemcpy(host.data(), dOut, host.size(), cudaMemcpyDeviceToHost));
        double worst = 0;
        size_t bad = 0;
        for (size_t k = 0; k < nOut; ++k)
        {
            double v;
            if (actBytes == 2)
            {
                uint16_t h;
                std::memcpy(&h, host.data() + 2 * k, 2);
                v = halfToFloat(h);
            }
            else
            {
                float f;
                std::memcpy(&f, host.data() + 4 * k, 4);
                v = f;
            }
            double const ratio = std::fabs(v - expected[k]) / bound[k];
            if (!(ratio <= 1.0))
                ++bad;
            if (ratio > worst || std::isnan(ratio))
                worst = std::isnan(ratio) ? INFINITY : ratio;
        }
        std::printf("%s%s: worst err/bound %.3f\n", tag.c_str(), how.c_str(), worst);
        check(bad == 0, tag + how + ": " + std::to_string(bad) + " elements outside the bound (worst " + std::to_string(worst) + "x)");
        if (!exactWorkspace && dWs)
        {
            std::vector<unsigned char> guard(kGuard);
            CUDA_OK(cudaMemcpy(guard.data(), static_cast<char*>(dWs) + workspace, kGuard, cudaMemcpyDeviceToHost));
            size_t touched = 0;
            for (unsigned char g : guard)
                touched += g != kGuardByte;
            check(touched == 0, tag + how + ": the kernel wrote " + std::to_string(touched)
                    + " bytes past the getWorkspaceSize() bytes it was given");
        }
    };
    auto reset = [&]() {
        CUDA_OK(cudaMemset(dOut, 0xFF, nOut * actBytes)); // NaN: an unwritten element fails the comparison
        if (dWs && !exactWorkspace)
            CUDA_OK(cudaMemset(static_cast<char*>(dWs) + workspace, kGuardByte, kGuard));
        CUDA_OK(cudaDeviceSynchronize());
    };

    reset();
    check(x.runtime->enqueue(inDesc.data(), outDesc.data(), dIn.data(), &dOut, dWs, stream) == 0, tag + "enqueue");
    CUDA_OK(cudaStreamSynchronize(stream));
    compare("enqueue");

    reset();
    cudaGraph_t graph{};
    cudaGraphExec_t exec{};
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    int const rc = x.runtime->enqueue(inDesc.data(), outDesc.data(), dIn.data(), &dOut, dWs, stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    check(rc == 0, tag + "enqueue inside a CUDA graph capture");
    if (graph && CUDA_OK(cudaGraphInstantiate(&exec, graph, 0)))
    {
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        compare("CUDA graph replay");
        cudaGraphExecDestroy(exec);
    }
    if (graph)
        cudaGraphDestroy(graph);

    cudaStreamDestroy(stream);
    for (void* p : dIn)
        cudaFree(p);
    cudaFree(dOut);
    cudaFree(dWs);
    delete x.v3;
}

IPluginCreatorV3One* asV3One(IPluginCreatorInterface* c)
{
    if (c == nullptr)
        return nullptr;
    InterfaceInfo const info = c->getInterfaceInfo();
    if (std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") != 0 || info.major != 1)
        return nullptr;
    return static_cast<IPluginCreatorV3One*>(c);
}

int usage()
{
    std::fprintf(stderr,
        "usage: conformance --plugin LIB (--dynamic | --stub LIBNVINFER_STUB) --node NODE.txt [--case DIR]...\n"
        "                   [--host-only] [--exact-workspace] [--build-sms N] [--run-sms N] [--expect-missing]\n");
    return 2;
}

} // namespace

int main(int argc, char** argv)
{
    std::string pluginPath, stubPath, nodePath;
    std::vector<std::string> caseDirs;
    bool dynamicLib = false, hostOnly = false, exactWorkspace = false, expectMissing = false;
    int buildSms = 0, runSms = 0;
    for (int i = 1; i < argc; ++i)
    {
        std::string const a = argv[i];
        auto next = [&]() { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
        if (a == "--plugin")
            pluginPath = next();
        else if (a == "--stub")
            stubPath = next();
        else if (a == "--dynamic")
            dynamicLib = true;
        else if (a == "--node")
            nodePath = next();
        else if (a == "--case")
            caseDirs.push_back(next());
        else if (a == "--host-only")
            hostOnly = true;
        else if (a == "--exact-workspace")
            exactWorkspace = true;
        else if (a == "--expect-missing")
            expectMissing = true;
        else if (a == "--build-sms")
            buildSms = std::stoi(next());
        else if (a == "--run-sms")
            runSms = std::stoi(next());
        else
            return usage();
    }
    if (pluginPath.empty() || nodePath.empty() || (!dynamicLib && stubPath.empty()))
        return usage();
    std::printf("conformance: TensorRT headers %d.%d, %s library %s\n", NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR,
        dynamicLib ? "dynamic" : "self-registering", pluginPath.c_str());

    // ---- load the library as TensorRT's two mechanisms do
    std::vector<std::pair<IPluginCreatorInterface*, std::string>> creators;
    if (dynamicLib)
    {
        void* lib = dlopen(pluginPath.c_str(), RTLD_LAZY | RTLD_LOCAL);
        if (!check(lib != nullptr, std::string("dlopen: ") + (lib ? "" : dlerror())))
            return 1;
        auto setLoggerFinder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(lib, "setLoggerFinder"));
        auto getCreators = reinterpret_cast<IPluginCreatorInterface* const* (*) (int32_t&)>(dlsym(lib, "getCreators"));
        check(setLoggerFinder != nullptr, "the dynamic library exports setLoggerFinder");
        if (!check(getCreators != nullptr, "the dynamic library exports getCreators"))
            return 1;
        if (setLoggerFinder)
            setLoggerFinder(&gFinder);
        int32_t n = 0;
        IPluginCreatorInterface* const* list = getCreators(n);
        for (int32_t i = 0; i < n; ++i)
            creators.emplace_back(list[i], "");
    }
    else
    {
        void* stub = dlopen(stubPath.c_str(), RTLD_NOW | RTLD_GLOBAL);
        if (!check(stub != nullptr, std::string("dlopen stub: ") + (stub ? "" : dlerror())))
            return 1;
        void* lib = dlopen(pluginPath.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!check(lib != nullptr, std::string("dlopen: ") + (lib ? "" : dlerror())))
            return 1;
        check(dlsym(lib, "getCreators") == nullptr, "the self-registering library does not also export getCreators");
        auto registered = reinterpret_cast<IPluginCreatorInterface* (*) (int32_t, char const**)>(
            dlsym(stub, "vimdeploy_stub_registered"));
        char const* ns = nullptr;
        for (int32_t i = 0; registered && registered(i, &ns) != nullptr; ++i)
            creators.emplace_back(registered(i, &ns), ns);
        check(creators.size() == 1, "loading the library registered exactly one creator (registered "
                + std::to_string(creators.size()) + ")");
    }

    // ---- onnx-tensorrt's lookup: op_type, plugin_version, plugin_namespace, exact match
    Node const node = readNode(nodePath);
    auto attr = [&](char const* name, char const* dflt) {
        auto it = node.attrs.find(name);
        return it == node.attrs.end() ? std::string(dflt) : it->second.value;
    };
    std::string const version = attr("plugin_version", "1"), ns = attr("plugin_namespace", "");
    IPluginCreatorV3One* creator = nullptr;
    for (auto const& [c, registeredNs] : creators)
    {
        IPluginCreatorV3One* v3 = asV3One(c);
        check(v3 != nullptr, "the creator is an IPluginCreatorV3One (interface \"PLUGIN CREATOR_V3ONE\" 1.x)");
        if (v3 && node.opType == v3->getPluginName() && version == v3->getPluginVersion()
            && ns == v3->getPluginNamespace() && (dynamicLib || ns == registeredNs))
            creator = v3;
    }
    if (expectMissing)
    {
        check(creator == nullptr, "no creator matches " + node.opType + " version " + version + " namespace '" + ns + "'");
        std::printf("conformance: %d checks, %d failures\n", gChecks, gFailures);
        return gFailures ? 1 : 0;
    }
    if (!check(creator != nullptr,
            "Plugin not found: " + node.opType + " version " + version + " namespace '" + ns + "'"))
        return 1;

    Fields nodeFields;
    loadFields(nodeFields, node, creator->getFieldNames());
    std::string const nodeName = node.name.empty() ? node.opType : node.name;
    checkAttributeRejections(creator, nodeName, dynamicLib);
    for (auto const& dir : caseDirs)
        runCase(creator, nodeFields, nodeName, readCase(dir), hostOnly, exactWorkspace, buildSms, runSms, dynamicLib);

    std::printf("conformance: %d checks, %d failures\n", gChecks, gFailures);
    return gFailures ? 1 : 0;
}
