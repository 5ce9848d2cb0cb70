"""vimdeploy: Vision Mamba (Vim) checkpoints to validated ONNX / TensorRT inference engines.

The public API, imported lazily so that `import vimdeploy` stays light (no torch, onnx or
TensorRT until a function is used). Running ONNX artifacts needs the base install only;
reading checkpoints and exporting need PyTorch (`pip install 'vimdeploy[export]'`):

    model, checkpoint = vimdeploy.load_model("vim_t.pth")
    vimdeploy.export_onnx("vim_t.pth", "vim_t.onnx", img_size="dynamic", feature_map=True)
    vimdeploy.convert_precision("vim_t.onnx", "vim_t_fp16.onnx", "fp16")
    report = vimdeploy.validate_artifact("vim_t.onnx", ref="vim_t.pth")
    results = vimdeploy.evaluate(["vim_t.pth", "vim_t.onnx"], data="val/")
    engine = vimdeploy.open_engine("vim_t.onnx", device="auto"); engine.run(batch, outputs="all")
    vimdeploy.build_engine("vim_t.onnx", "vim_t.plan")  # needs TensorRT
"""

import importlib

__version__ = "0.1.0"

# public name -> the modules that may define it (first one that has it wins)
_API = {
    "load_model": ("vimdeploy.model",),
    "VisionMamba": ("vimdeploy.model",),
    "VimConfig": ("vimdeploy.model",),
    "export_onnx": ("vimdeploy.export",),
    "convert_precision": ("vimdeploy.export.precision",),
    "validate_artifact": ("vimdeploy.validation",),
    "evaluate": ("vimdeploy.evaluation",),
    "open_engine": ("vimdeploy.runtime",),
    "build_engine": ("vimdeploy.tensorrt.builder",),
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'vimdeploy' has no attribute {name!r}")
    for module_name in _API[name]:
        try:
            value = getattr(importlib.import_module(module_name), name, None)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue
            from .extras import reraise

            reraise(e)  # an optional dependency of the module: say which install adds it
        if value is not None:
            globals()[name] = value
            return value
    raise AttributeError(f"vimdeploy.{name} is not available in this installation")


def __dir__():
    return sorted(__all__)
