/*
 * vimdeploy: TensorRT plugin for the BiSelectiveScan op (export/op_contract.md).
 *
 * IPluginV3 (IPluginV3OneCore / IPluginV3OneBuild / IPluginV3OneRuntime) with an
 * IPluginCreatorV3One, as TensorRT's samples/python/onnx_custom_plugin (customHardmaxPlugin).
 * Name "BiSelectiveScan", version "1", namespace "". Fields: delta_softplus (kINT32),
 * out_scale (kFLOAT32). TensorRT's ONNX parser selects the creator by the node's op_type,
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
 * Compiles against TensorRT 10.x (>= 10.12) and 11.x headers.
 */
#include "vimdeploy/bi_selective_scan.h"

#include <NvInferRuntime.h>

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

constexpr char const* kPluginName = "BiSelectiveScan";
constexpr char const* kPluginVersion = VIMDEPLOY_BI_SELECTIVE_SCAN_VERSION;
constexpr int32_t kNbInputs = 15;
constexpr int32_t kNbOutputs = 1;
constexpr int64_t kDState = 16;

// Input positions (op contract order).
enum : int32_t
{
    kZ = 0,
    kXFwd = 1,
    kBFwd = 3,
    kAFwd = 9,  // 9..14: A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd (always fp32)
    kOut = 15   // position of the output in supportsFormatCombination's inOut
};

// ---------------------------------------------------------------------------- logging
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder{nullptr};

void logError(std::string const& msg) noexcept
{
    ILogger* logger = nullptr;
    {
        std::lock_guard<std::mutex> lk(gLoggerMutex);
        if (gLoggerFinder)
            logger = gLoggerFinder->findLogger();
    }
    std::string const text = std::string("[vimdeploy BiSelectiveScan] ") + msg;
    if (logger)
        logger->log(ILogger::Severity::kERROR, text.c_str());
    else
        std::fprintf(stderr, "%s\n", text.c_str());
}

bool isActivation(int32_t pos) { return pos < kAFwd || pos == kOut; }

// ---------------------------------------------------------------------------- plugin
class BiSelectiveScanPlugin final : public IPluginV3,
                                    public IPluginV3OneCore,
                                    public IPluginV3OneBuild,
                                    public IPluginV3OneRuntime
{
public:
    BiSelectiveScanPlugin(int32_t deltaSoftplus, float outScale)
        : mDeltaSoftplus(deltaSoftplus != 0 ? 1 : 0)
        , mOutScale(outScale)
    {
        initFields();
    }

    BiSelectiveScanPlugin(BiSelectiveScanPlugin const& other)
        : mDeltaSoftplus(other.mDeltaSoftplus)
        , mOutScale(other.mOutScale)
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
        try
        {
            return new BiSelectiveScanPlugin(*this);
        }
        catch (...)
        {
            return nullptr;
        }
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return ""; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return kNbOutputs; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
        int32_t nbOutputs) noexcept override
    {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
            return -1;
        Dims const& x = in[kXFwd].desc.dims;
        Dims const& b = in[kBFwd].desc.dims;
        if (x.nbDims != 3 || b.nbDims != 3 || (b.d[2] != -1 && b.d[2] != kDState))
        {
            logError("expected x (b, L, E) and B (b, L, 16)");
            return -1;
        }
        return 0;
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
        if (nbOutputs != kNbOutputs || nbInputs != kNbInputs)
            return -1;
        outputTypes[0] = inputTypes[kXFwd];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept override
    {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[kZ].nbDims != 3)
            return -1;
        outputs[0] = inputs[kZ]; // y has z's (b, L, E)
        return 0;
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
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
        int32_t nbOutputs) noexcept override
    {
        return nbInputs == kNbInputs && nbOutputs == kNbOutputs && in[kXFwd].dims.nbDims == 3 ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        Dims const& x = inputDesc[kXFwd].dims;
        int64_t const batch = x.d[0], L = x.d[1], E = x.d[2];
        int64_t const N = inputDesc[kBFwd].dims.d[2];
        int const dtype
            = inputDesc[kXFwd].type == DataType::kHALF ? VIMDEPLOY_DTYPE_FLOAT16 : VIMDEPLOY_DTYPE_FLOAT32;
        // What getWorkspaceSize returned at build time (same E; device-independent).
        size_t const wsBytes = workspace ? vimdeploy_bi_selective_scan_workspace_size(E, N) : 0;
        VimdeployScanParams p{};
        void const** params = &p.z; // the contract's inputs head the struct, in TensorRT's input order
        std::copy(inputs, inputs + kNbInputs, params);
        p.y = outputs[0];
        p.batch = batch;
        p.L = L;
        p.E = E;
        p.N = N;
        p.dtype = dtype;
        p.delta_softplus = mDeltaSoftplus;
        p.out_scale = mOutScale;
        int const rc = vimdeploy_bi_selective_scan(&p, workspace, wsBytes, stream);
        if (rc != VIMDEPLOY_SUCCESS)
        {
            logError(std::string("enqueue failed: ") + vimdeploy_error_string(rc));
            return -1;
        }
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

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

    int32_t mDeltaSoftplus{1};
    float mOutScale{0.5F};
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
    char const* getPluginNamespace() const noexcept override { return ""; }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mFC; }

    IPluginV3* createPlugin(char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            int32_t deltaSoftplus = 1;
            float outScale = 0.5F;
            for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
            {
                PluginField const& f = fc->fields[i];
                if (f.name == nullptr || f.data == nullptr || f.length < 1)
                    continue;
                if (std::strcmp(f.name, "delta_softplus") == 0)
                {
                    if (f.type == PluginFieldType::kINT32)
                        deltaSoftplus = *static_cast<int32_t const*>(f.data);
                    else if (f.type == PluginFieldType::kINT64)
                        deltaSoftplus = static_cast<int32_t>(*static_cast<int64_t const*>(f.data));
                    else if (f.type == PluginFieldType::kINT8)
                        deltaSoftplus = *static_cast<int8_t const*>(f.data);
                    else
                        return fail("delta_softplus must be an integer");
                }
                else if (std::strcmp(f.name, "out_scale") == 0)
                {
                    if (f.type == PluginFieldType::kFLOAT32)
                        outScale = *static_cast<float const*>(f.data);
                    else if (f.type == PluginFieldType::kFLOAT64)
                        outScale = static_cast<float>(*static_cast<double const*>(f.data));
                    else
                        return fail("out_scale must be a float");
                }
                // Other fields: ignored (the parser sends only the names above).
            }
            return new BiSelectiveScanPlugin(deltaSoftplus, outScale);
        }
        catch (...)
        {
            return nullptr;
        }
    }

private:
    static IPluginV3* fail(std::string const& msg)
    {
        logError(msg);
        return nullptr;
    }

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
        if (registry == nullptr || !registry->registerCreator(creator, ""))
            logError("could not register the creator (already registered?)");
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
