"""One way to run any vimdeploy artifact: `open_engine(path, device=...)` returns an `Engine`.

Backends by suffix: PyTorch checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt`, `.tar`, `.safetensors`), ONNX models
(ONNX Runtime) and TensorRT engines (`ENGINE_SUFFIXES`), behind one interface. An engine is a
context manager: `with open_engine(path) as engine: engine.run(batch)`.

`device` (DEVICES): "cpu", "cuda", or "auto" = CUDA where the artifact's runtime has it here
(PyTorch with a GPU for a checkpoint; ONNX Runtime's CUDAExecutionProvider for a portable
ONNX; a TensorRT engine always), else the CPU. "cuda" where that is impossible is an
ArtifactError that says why. `engine.describe()` reports the device that runs it.
ONNX models need no PyTorch: numpy, onnxruntime and the native CPU scan.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ArtifactError, InputError
from ..tensorrt.sidecar import ENGINE_SUFFIXES
from .base import Engine

__all__ = ["Engine", "open_engine", "register_backend", "BACKENDS", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda")

# suffix -> factory(path, **options) -> Engine. Imports happen inside the factories so
# that `vimdeploy infer model.onnx` never imports torch's CUDA bits and vice versa.
BACKENDS: dict[str, Callable[..., Engine]] = {}


def register_backend(suffixes, factory: Callable[..., Engine]):
    for suffix in suffixes:
        BACKENDS[suffix.lower()] = factory


def _torch_engine(path, **options):
    from .torch_backend import TorchEngine

    return TorchEngine(path, **options)


register_backend([".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors"], _torch_engine)


def _onnx_engine(path, **options):
    from .onnx_backend import OnnxEngine

    return OnnxEngine(path, **options)


register_backend([".onnx"], _onnx_engine)


def _tensorrt_engine(path, **options):
    from .tensorrt_backend import TensorRTEngine

    return TensorRTEngine(path, **options)


register_backend(ENGINE_SUFFIXES, _tensorrt_engine)


def open_engine(path: str | Path, device: str = "auto", **options) -> Engine:
    """Open a checkpoint / model / engine file for inference, by its suffix, on `device`
    (one of DEVICES)."""
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"no such file: {path}")
    factory = BACKENDS.get(path.suffix.lower())
    if factory is None:
        raise ArtifactError(f"don't know how to run {path.name}: expected one of {', '.join(sorted(BACKENDS))}.")
    return factory(path, device=device, **options)
