/*
 * vimdeploy: TensorRT plugin for the BiSelectiveScan op (export/op_contract.md).
 *
 * IPluginV3 (IPluginV3OneCore / IPluginV3OneBuild / IPluginV3OneRuntime) with an
 * IPluginCreatorV3One, as TensorRT's samples/python/onnx_custom_plugin (customHardmaxPlugin).
 * Name, version, namespace: scan_params.h (VIMDEPLOY_SCAN_OP_TYPE, ...). Fields: delta_softplus
 * (kINT32), out_scale (kFLOAT32). TensorRT's ONNX parser selects the creator by the node's op_type,
 * `plugin_version` (default "1") and `plugin_namespace` (default "") by exact match, then
 * passes only the fields getFieldNames() names (onnx-tensorrt loadFields): a node of
 * another version never reaches this creator ("Plugin not found").
 *
 * Registration (see README.md), one source compiled twice:
 *  - VIMDEPLOY_STATIC_REGISTRATION=1 (libvimdeploy_trt_plugin.so): a static initializer
 *    registers the creator with getPluginRegistry() when the library is loaded (ctypes,
 *    polygraphy --plugins, LD_PRELOAD). No getCreators export.
 *  - otherwise (libvimdeploy_trt_plugin_dynamic.so): nothing happens at load; the library
 *    exports getCreators / setLoggerFinder for IPluginRegistry::loadLibrary and
 *    trtexec --dynamicPlugins (which fail if the creator is already registered).
 * Errors, as TensorRT's own plugins report them: every noexcept method catches, logs through the
 * logger TensorRT hands the library (setLoggerFinder; stderr for the self-registering library,
 * which gets none), tells the ErrorRecorder of attachToContext's resource context when there
 * is one, and returns TensorRT's failure value (-1, nullptr, false). Shapes and types are
 * checked against the contract at build time (getOutputShapes, configurePlugin) and again in
 * enqueue, before the kernel is launched.
 * Compiles against TensorRT 10.x (>= 10.3) and 11.x headers.
 */
#include "vimdeploy/bi_selective_scan.h"

#include <NvInferRuntime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

constexpr char const* kPluginName = VIMDEPLOY_SCAN_OP_TYPE;
constexpr char const* kPluginVersion = VIMDEPLOY_SCAN_PLUGIN_VERSION;
constexpr char const* kPluginNamespace = VIMDEPLOY_SCAN_PLUGIN_NAMESPACE;
constexpr int32_t kNbInputs = VIMDEPLOY_SCAN_NUM_INPUTS;
constexpr int32_t kNbOutputs = 1;
constexpr int64_t kDState = VIMDEPLOY_SCAN_D_STATE;
constexpr char const* kInputNames[kNbInputs] = {VIMDEPLOY_SCAN_INPUT_NAMES};

// Input positions (op contract order).
enum : int32_t
{
    kZ = 0,
    kXFwd = 1,
    kAFwd = 9,  // 9..14: A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd (always fp32)
    kOut = 15   // position of the output in supportsFormatCombination's inOut
};

// The contract's shape of each input, in the sizes b, L, E, N: activations (b, L, E), B and C
// (b, L, N), A (E, N), D and dt_bias (E).
enum Size : int32_t
{
    kB = 0,
    kL = 1,
    kE = 2,
    kNState = 3
};
struct Shape
{
    int32_t rank;
    Size dims[3];
};
constexpr Shape kAct{3, {kB, kL, kE}}, kBC{3, {kB, kL, kNState}}, kA{2, {kE, kNState}}, kVec{1, {kE}};
constexpr Shape kShapes[kNbInputs] = {kAct, kAct, kAct, kBC, kBC, kAct, kAct, kBC, kBC, kA, kA, kVec, kVec, kVec, kVec};
constexpr char const* kSizeNames[] = {"batch", "L", "E", "d_state"};

bool isActivation(int32_t pos) { return pos < kAFwd || pos == kOut; }

// ---------------------------------------------------------------------------- errors
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder{nullptr};

// What a check throws: a contract violation (kINVALID_ARGUMENT for an ErrorRecorder).
struct ContractError : std::invalid_argument
{
    using std::invalid_argument::invalid_argument;
};

void validate(bool ok, std::string const& what)
{
    if (!ok)
        throw ContractError(what);
}

// TensorRT's caughtError: the message to the logger (and the ErrorRecorder, if there is one).
void caughtError(char const* method, std::exception const& e, IErrorRecorder* recorder = nullptr) noexcept
{
    try
    {
        std::string const text = std::string("[vimdeploy ") + kPluginName + "] " + method + ": " + e.what();
        ILogger* logger = nullptr;
        {
            std::lock_guard<std::mutex> lk(gLoggerMutex);
            if (gLoggerFinder)
                logger = gLoggerFinder->findLogger();
        }
        if (logger)
            logger->log(ILogger::Severity::kERROR, text.c_str());
        else
            std::fprintf(stderr, "%s\n", text.c_str());
        if (recorder)
            recorder->reportError(dynamic_cast<ContractError const*>(&e) ? ErrorCode::kINVALID_ARGUMENT
                                                                          : ErrorCode::kINTERNAL_ERROR,
                text.c_str());
    }
    catch (...) // out of memory while reporting: nothing left to report with
    {
    }
}

// Runs f() for a noexcept method of TensorRT's interface: on an exception it is reported
// and `failed` returned.
template <typename R, typename F>
R guarded(char const* method, R failed, F&& f, IErrorRecorder* recorder = nullptr) noexcept
{
    try
    {
        return f();
    }
    catch (std::exception const& e)
    {
        caughtError(method, e, recorder);
    }
    catch (...)
    {
        caughtError(method, std::runtime_error("unknown exception"), recorder);
    }
    return failed;
}

// The contract's shapes over all 15 inputs: ranks, and every known size (>= 0; -1 = not known
// yet, e.g. a dynamic dimension at build time) equal to the same size elsewhere and N = 16.
// Throws ContractError naming the first input that disagrees. `dims(i)` is input i's Dims;
// `which`: the dims' name in the message ("dims", "max dims", ...).
template <typename GetDims>
void checkShapes(GetDims&& dims, char const* which = "dims")
{
    int64_t size[4] = {-1, -1, -1, kDState};
    int32_t from[4] = {-1, -1, -1, -1}; // the input that fixed each size
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        Dims const d = dims(i);
        Shape const& s = kShapes[i];
        std::string const input = "input " + std::to_string(i) + " (" + kInputNames[i] + ")";
        validate(d.nbDims == s.rank,
            input + " has rank " + std::to_string(d.nbDims) + " in its " + which + ", the contract's is "
                + std::to_string(s.rank));
        for (int32_t k = 0; k < s.rank; ++k)
        {
            int64_t const v = d.d[k];
            if (v < 0)
                continue;
            Size const n = s.dims[k];
            if (size[n] < 0)
            {
                size[n] = v;
                from[n] = i;
                continue;
            }
            validate(v == size[n],
                input + " has " + kSizeNames[n] + " = " + std::to_string(v) + " (dimension " + std::to_string(k)
                    + " of its " + which + "), but "
                    + (from[n] < 0 ? std::string("the contract's is") : std::string(kInputNames[from[n]]) + " has")
                    + " " + std::to_string(size[n]));
        }
    }
}

// Activations and the output of one type, fp32 or fp16; A, D and the dt biases fp32.
void checkTypes(DataType const* types)
{
    validate(types[kZ] == DataType::kFLOAT || types[kZ] == DataType::kHALF,
        "the activations must be fp32 or fp16 (z has type " + std::to_string(int(types[kZ])) + ")");
    for (int32_t i = 0; i < kNbInputs; ++i)
        validate(types[i] == (i < kAFwd ? types[kZ] : DataType::kFLOAT),
            "input " + std::to_string(i) + " (" + kInputNames[i] + ") must be "
                + (i < kAFwd ? "of z's type" : "fp32") + " (has type " + std::to_string(int(types[i])) + ")");
}

// y has z's shape.
void checkOutput(Dims const& y, Dims const& z)
{
    bool same = y.nbDims == z.nbDims;
    for (int32_t k = 0; same && k < z.nbDims; ++k)
        same = y.d[k] == z.d[k];
    validate(same, "the output's shape is not z's (b, L, E)");
}

void checkCounts(int32_t nbInputs, int32_t nbOutputs)
{
    validate(nbInputs == kNbInputs && nbOutputs == kNbOutputs,
        std::string("expected ") + std::to_string(kNbInputs) + " inputs and 1 output, got "
            + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
}

// The attributes' contract: delta_softplus 0 or 1, out_scale finite.
void checkAttributes(int32_t deltaSoftplus, float outScale)
{
    validate(deltaSoftplus == 0 || deltaSoftplus == 1,
        "delta_softplus must be 0 or 1, got " + std::to_string(deltaSoftplus));
    validate(std::isfinite(outScale), "out_scale must be finite, got " + std::to_string(outScale));
}

// ---------------------------------------------------------------------------- plugin
class BiSelectiveScanPlugin final : public IPluginV3,
                                    public IPluginV3OneCore,
                                    public IPluginV3OneBuild,
                                    public IPluginV3OneRuntime
{
public:
    BiSelectiveScanPlugin(int32_t deltaSoftplus, float outScale)
        : mDeltaSoftplus(deltaSoftplus)
        , mOutScale(outScale)
    {
        checkAttributes(deltaSoftplus, outScale);
        initFields();
    }

    BiSelectiveScanPlugin(BiSelectiveScanPlugin const& other)
        : mDeltaSoftplus(other.mDeltaSoftplus)
        , mOutScale(other.mOutScale)
        , mRecorder(other.mRecorder)
    {
        initFields();
    }

    BiSelectiveScanPlugin& operator=(BiSelectiveScanPlugin const&) = delete;
    ~BiSelectiveScanPlugin() override = default;

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override
    {
        return guarded<IPluginV3*>("clone", nullptr, [&] { return new BiSelectiveScanPlugin(*this); }, mRecorder);
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return kNbOutputs; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
        int32_t nbOutputs) noexcept override
    {
        return guarded<int32_t>("configurePlugin", -1, [&] {
            checkCounts(nbInputs, nbOutputs);
            checkShapes([&](int32_t i) { return in[i].desc.dims; });
            checkShapes([&](int32_t i) { return in[i].min; }, "min dims");
            checkShapes([&](int32_t i) { return in[i].opt; }, "opt dims");
            checkShapes([&](int32_t i) { return in[i].max; }, "max dims");
            DataType types[kNbInputs];
            for (int32_t i = 0; i < kNbInputs; ++i)
                types[i] = in[i].desc.type;
            checkTypes(types);
            return 0;
        });
    }

    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos > kOut)
            return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
            return false;
        if (!isActivation(pos))
            return d.type == DataType::kFLOAT; // A, D, dt bias: always fp32
        if (pos == kZ)
            return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
        return d.type == inOut[kZ].desc.type; // every activation and y: the type of z
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
        int32_t nbInputs) const noexcept override
    {
        return guarded<int32_t>("getOutputDataTypes", -1, [&] {
            checkCounts(nbInputs, nbOutputs);
            checkTypes(inputTypes);
            outputTypes[0] = inputTypes[kXFwd];
            return 0;
        });
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept override
    {
        return guarded<int32_t>("getOutputShapes", -1, [&] {
            checkCounts(nbInputs, nbOutputs);
            // The sizes known as constants (typically E, N; batch and L when the network fixes
            // them); symbolic ones are checked in configurePlugin on their profile's ranges.
            checkShapes(
                [&](int32_t i) {
                    Dims d{};
                    d.nbDims = inputs[i].nbDims;
                    for (int32_t k = 0; k < d.nbDims && k < Dims::MAX_DIMS; ++k)
                        d.d[k] = inputs[i].d[k]->isConstant() ? inputs[i].d[k]->getConstantValue() : -1;
                    return d;
                },
                "dims");
            outputs[0] = inputs[kZ]; // y has z's (b, L, E)
            return 0;
        });
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        if (nbInputs != kNbInputs)
            return 0;
        // A function of E alone (not of batch, L or the GPU): enqueue, maybe on another GPU
        // after deserialization, computes the same number from the same E and passes it to
        // the kernel, which never uses more. Lets the kernel split L when batch * E is small.
        return vimdeploy_bi_selective_scan_workspace_size(inputs[kXFwd].max.d[2], kDState);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override
    {
        return guarded<int32_t>(
            "onShapeChange", -1,
            [&] {
                checkCounts(nbInputs, nbOutputs);
                checkShapes([&](int32_t i) { return in[i].dims; });
                checkOutput(out[0].dims, in[kZ].dims);
                return 0;
            },
            mRecorder);
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        return guarded<int32_t>(
            "enqueue", -1,
            [&] {
                // Nothing reaches the kernel unless every input has the contract's shape and type.
                checkShapes([&](int32_t i) { return inputDesc[i].dims; });
                checkOutput(outputDesc[0].dims, inputDesc[kZ].dims);
                DataType types[kNbInputs];
                for (int32_t i = 0; i < kNbInputs; ++i)
                    types[i] = inputDesc[i].type;
                checkTypes(types);
                Dims const& x = inputDesc[kXFwd].dims;
                VimdeployScanParams p{};
                void const** params = &p.z; // the contract's inputs head the struct, in TensorRT's input order
                std::copy(inputs, inputs + kNbInputs, params);
                p.y = outputs[0];
                p.batch = x.d[0];
                p.L = x.d[1];
                p.E = x.d[2];
                p.N = kDState;
                p.dtype = types[kXFwd] == DataType::kHALF ? VIMDEPLOY_DTYPE_FLOAT16 : VIMDEPLOY_DTYPE_FLOAT32;
                p.delta_softplus = mDeltaSoftplus;
                p.out_scale = mOutScale;
                // What getWorkspaceSize returned at build time (same E; device-independent).
                size_t const wsBytes = workspace ? vimdeploy_bi_selective_scan_workspace_size(p.E, p.N) : 0;
                int const rc = vimdeploy_bi_selective_scan(&p, workspace, wsBytes, stream);
                if (rc != VIMDEPLOY_SUCCESS)
                    throw std::runtime_error(std::string("the kernel failed: ") + vimdeploy_error_string(rc));
                return 0;
            },
            mRecorder);
    }

    IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override
    {
        return guarded<IPluginV3*>(
            "attachToContext", nullptr,
            [&] {
                auto* p = new BiSelectiveScanPlugin(*this);
                p->mRecorder = context ? context->getErrorRecorder() : nullptr;
                return p;
            },
            mRecorder);
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mFC; }

private:
    void initFields()
    {
        mFields.clear();
        mFields.emplace_back("delta_softplus", &mDeltaSoftplus, PluginFieldType::kINT32, 1);
        mFields.emplace_back("out_scale", &mOutScale, PluginFieldType::kFLOAT32, 1);
        mFC.nbFields = static_cast<int32_t>(mFields.size());
        mFC.fields = mFields.data();
    }

    int32_t mDeltaSoftplus{VIMDEPLOY_SCAN_DEFAULT_DELTA_SOFTPLUS};
    float mOutScale{VIMDEPLOY_SCAN_DEFAULT_OUT_SCALE};
    IErrorRecorder* mRecorder{nullptr}; // the execution context's, from attachToContext
    std::vector<PluginField> mFields;
    PluginFieldCollection mFC{};
};

// ---------------------------------------------------------------------------- creator
class BiSelectiveScanPluginCreator final : public IPluginCreatorV3One
{
public:
    BiSelectiveScanPluginCreator()
    {
        mAttrs.emplace_back("delta_softplus", nullptr, PluginFieldType::kINT32, 1);
        mAttrs.emplace_back("out_scale", nullptr, PluginFieldType::kFLOAT32, 1);
        mFC.nbFields = static_cast<int32_t>(mAttrs.size());
        mFC.fields = mAttrs.data();
    }

    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mFC; }

    // The contract's defaults, then one pass over the fields; the plugin's constructor checks
    // the values (checkAttributes).
    IPluginV3* createPlugin(char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override
    {
        return guarded<IPluginV3*>("createPlugin", nullptr, [&] {
            int32_t deltaSoftplus = VIMDEPLOY_SCAN_DEFAULT_DELTA_SOFTPLUS;
            float outScale = VIMDEPLOY_SCAN_DEFAULT_OUT_SCALE;
            for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
            {
                PluginField const& f = fc->fields[i];
                if (f.name == nullptr)
                    continue;
                bool const isSoftplus = std::strcmp(f.name, "delta_softplus") == 0;
                bool const isScale = std::strcmp(f.name, "out_scale") == 0;
                if (!isSoftplus && !isScale)
                    continue; // other fields: ignored (the parser sends only the names above)
                validate(f.data != nullptr && f.length == 1, std::string(f.name) + " must be one value");
                if (isSoftplus)
                {
                    if (f.type == PluginFieldType::kINT32)
                        deltaSoftplus = *static_cast<int32_t const*>(f.data);
                    else if (f.type == PluginFieldType::kINT64)
                    {
                        int64_t const v = *static_cast<int64_t const*>(f.data);
                        validate(v == 0 || v == 1, "delta_softplus must be 0 or 1, got " + std::to_string(v));
                        deltaSoftplus = static_cast<int32_t>(v);
                    }
                    else if (f.type == PluginFieldType::kINT8)
                        deltaSoftplus = *static_cast<int8_t const*>(f.data);
                    else
                        validate(false, "delta_softplus must be an integer");
                }
                else if (f.type == PluginFieldType::kFLOAT32)
                    outScale = *static_cast<float const*>(f.data);
                else if (f.type == PluginFieldType::kFLOAT64)
                    outScale = static_cast<float>(*static_cast<double const*>(f.data));
                else
                    validate(false, "out_scale must be a float");
            }
            return new BiSelectiveScanPlugin(deltaSoftplus, outScale);
        });
    }

private:
    std::vector<PluginField> mAttrs;
    PluginFieldCollection mFC{};
};

} // namespace

#if defined(VIMDEPLOY_STATIC_REGISTRATION) && VIMDEPLOY_STATIC_REGISTRATION
// Registers the creator when the library is loaded (like REGISTER_TENSORRT_PLUGIN, which
// also takes V3 creators through registerCreator(IPluginCreatorInterface&, namespace)).
namespace
{
struct StaticRegistration
{
    StaticRegistration()
    {
        static BiSelectiveScanPluginCreator creator;
        IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(creator, kPluginNamespace))
            caughtError("registerCreator", std::runtime_error("could not register the creator (already registered?)"));
    }
} const gStaticRegistration;
} // namespace
#else
extern "C" __attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static BiSelectiveScanPluginCreator creator;
    static IPluginCreatorInterface* const kCreators[] = {&creator};
    nbCreators = 1;
    return kCreators;
}

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lk(gLoggerMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
        gLoggerFinder = finder;
}
#endif
