/*
 * A recording stand-in for libnvinfer's plugin registry, for the conformance harness only.
 *
 * Built as libnvinfer.so.<TensorRT major> (same soname as TensorRT's) in the build tree's
 * conformance/ folder and never installed. The self-registering plugin library calls
 * getPluginRegistry()->registerCreator(...) from a static initializer; when the harness
 * loads this stub first (RTLD_GLOBAL), that call lands here and is recorded, so the harness
 * can check what a library registers at load time without TensorRT. The registry's vtable
 * differs between TensorRT 10 and 11 (10 still declares the IPluginCreator overloads), so
 * the stub is compiled against the same headers as the plugin it stands in for.
 */
#include <NvInferRuntime.h>

#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

struct Registered
{
    IPluginCreatorInterface* creator;
    std::string pluginNamespace;
};

class RecordingRegistry final : public IPluginRegistry
{
public:
    std::vector<Registered> creators;
    std::vector<IPluginCreatorInterface*> list;

    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override
    {
        creators.push_back({&creator, ns ? ns : ""});
        list.push_back(&creator);
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = static_cast<int32_t>(list.size());
        return list.data();
    }
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 10 // added in TensorRT 10.10
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        return getAllCreators(n);
    }
#endif
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr; // the harness selects creators itself, as the ONNX parser's lookup does
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return -1; }
#if NV_TENSORRT_MAJOR < 11
    // TensorRT 10's deprecated IPluginV2 overloads: still in the vtable there.
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#endif
};

RecordingRegistry& registry()
{
    static RecordingRegistry* r = new RecordingRegistry(); // never destroyed: creators outlive main
    return *r;
}

} // namespace

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

// For the harness: what was registered, with its namespace (nullptr past the end).
extern "C" __attribute__((visibility("default"))) IPluginCreatorInterface* vimdeploy_stub_registered(
    int32_t i, char const** pluginNamespace)
{
    auto const& c = registry().creators;
    if (i < 0 || i >= static_cast<int32_t>(c.size()))
        return nullptr;
    *pluginNamespace = c[i].pluginNamespace.c_str();
    return c[i].creator;
}
