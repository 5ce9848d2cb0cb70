/*
 * What TensorRT hands a plugin, stood in for by the conformance harness: a logger (and the
 * finder a dynamic plugin library gets through setLoggerFinder) that counts the errors logged,
 * the resource context of attachToContext with an ErrorRecorder that keeps what it is told, and a working IExprBuilder (constants fold; anything involving a symbol
 * is a new symbol) for getOutputShapes. TensorRT's IExprBuilder / IDimensionExpr forward to
 * an implementation object (apiv::VExprBuilder / VDimensionExpr), which is what is built here.
 */
#pragma once

#include <NvInferRuntime.h>

#include <cstdio>
#include <deque>
#include <string>
#include <utility>
#include <vector>

namespace conformance
{
using namespace nvinfer1;

class Logger final : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        std::printf("[plugin log %d] %s\n", static_cast<int>(severity), msg);
        if (severity <= Severity::kERROR)
            ++errors;
    }
    int errors = 0; // messages of severity kERROR or worse
};

class LoggerFinder final : public ILoggerFinder
{
public:
    ILogger* findLogger() override { return &logger; }
    Logger logger;
};

class ErrorRecorder final : public IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override { return static_cast<int32_t>(errors.size()); }
    ErrorCode getErrorCode(int32_t i) const noexcept override { return errors.at(i).first; }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override { return errors.at(i).second.c_str(); }
    bool hasOverflowed() const noexcept override { return false; }
    void clear() noexcept override { errors.clear(); }
    bool reportError(ErrorCode code, ErrorDesc desc) noexcept override
    {
        errors.emplace_back(code, desc ? desc : "");
        return true;
    }
    RefCount incRefCount() noexcept override { return 1; }
    RefCount decRefCount() noexcept override { return 1; }
    std::vector<std::pair<ErrorCode, std::string>> errors;
};

class ResourceContext final : public IPluginResourceContext
{
public:
    IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    IErrorRecorder* getErrorRecorder() const noexcept override { return const_cast<ErrorRecorder*>(&recorder); }
    ErrorRecorder recorder;
};

// A working IExprBuilder: constants fold, anything involving a symbol is a new symbol.
class ExprImpl final : public apiv::VDimensionExpr
{
public:
    ExprImpl(bool constant, int64_t value) : mConstant(constant), mValue(value) {}
    bool isConstant() const override { return mConstant; }
    int64_t getConstantValue() const override { return mConstant ? mValue : -1; }
    bool isSizeTensor() const override { return false; }

private:
    bool mConstant;
    int64_t mValue;
};

class Expr final : public IDimensionExpr
{
public:
    explicit Expr(apiv::VDimensionExpr* impl) { mImpl = impl; }
    ~Expr() override = default;
};

class ExprBuilderImpl final : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override { return make(true, value); }
    IDimensionExpr const* symbol() { return make(false, 0); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        if (!a.isConstant() || !b.isConstant())
            return make(false, 0);
        int64_t const x = a.getConstantValue(), y = b.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return constant(x + y);
        case DimensionOperation::kPROD: return constant(x * y);
        case DimensionOperation::kMAX: return constant(x > y ? x : y);
        case DimensionOperation::kMIN: return constant(x < y ? x : y);
        case DimensionOperation::kSUB: return constant(x - y);
        case DimensionOperation::kEQUAL: return constant(x == y);
        case DimensionOperation::kLESS: return constant(x < y);
        case DimensionOperation::kFLOOR_DIV: return y ? constant(x / y) : nullptr;
        case DimensionOperation::kCEIL_DIV: return y ? constant((x + y - 1) / y) : nullptr;
        }
        return nullptr;
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr; // our plugin declares no size tensors
    }

private:
    IDimensionExpr const* make(bool constant, int64_t value)
    {
        mImpls.emplace_back(constant, value);
        mExprs.emplace_back(&mImpls.back());
        return &mExprs.back();
    }
    std::deque<ExprImpl> mImpls;
    std::deque<Expr> mExprs;
};

class ExprBuilder final : public IExprBuilder
{
public:
    ExprBuilder() { mImpl = &impl; }
    ~ExprBuilder() override = default;
    ExprBuilderImpl impl;
};

} // namespace conformance
