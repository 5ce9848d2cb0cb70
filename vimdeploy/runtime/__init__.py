"""One way to run any vimdeploy artifact: `open_engine(path)` returns an `Engine`.

Backends by suffix: PyTorch checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt`, `.tar`, `.safetensors`), ONNX models
(ONNX Runtime) and TensorRT engines (`ENGINE_SUFFIXES`), behind one interface. An engine is a
context manager: `with open_engine(path) as engine: engine.run(batch)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ArtifactError
from ..tensorrt.sidecar import ENGINE_SUFFIXES
from .base import Engine

__all__ = ["Engine", "open_engine", "register_backend", "BACKENDS"]

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


def open_engine(path: str | Path, **options) -> Engine:
    """Open a checkpoint / model / engine file for inference, by its suffix."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"no such file: {path}")
    factory = BACKENDS.get(path.suffix.lower())
    if factory is None:
        raise ArtifactError(f"don't know how to run {path.name}: expected one of {', '.join(sorted(BACKENDS))}.")
    return factory(path, **options)
