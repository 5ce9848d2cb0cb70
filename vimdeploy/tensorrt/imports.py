"""TensorRT and cuda-python, imported lazily with an install hint (Polygraphy's `mod.lazy_import`).

Modules of this package write `trt.Builder(...)` against a module-level `trt`: for mypy that
is the real `tensorrt` module (typed by `tensorrt-stubs`), so a misspelled API fails the type
check; at run time it is a `LazyModule` that imports TensorRT on first use and turns a
missing or stub package into one `TensorRTMissing` error that says what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..errors import VimdeployError

__all__ = [
    "TENSORRT_MISSING",
    "MIN_TENSORRT",
    "TensorRTMissing",
    "LazyModule",
    "import_tensorrt",
    "import_cudart",
    "cuda_call",
    "version_tuple",
]

MIN_TENSORRT = (10, 0)  # IPluginV3, execute_async_v3 / set_input_shape, strongly typed networks

TENSORRT_MISSING = (
    "TensorRT's Python package is not installed, so no engine can be built or run here.\n"
    "  Install it to match your CUDA version: `pip install tensorrt` (or tensorrt-cu12 / tensorrt-cu13),\n"
    "  or NVIDIA's tar/deb packages (https://docs.nvidia.com/deeplearning/tensorrt/latest/installing-tensorrt/),\n"
    "  plus `pip install 'vimdeploy[tensorrt]'` for cuda-python.\n"
    "  Without TensorRT, run the ONNX model with ONNX Runtime instead: "
    "`vimdeploy infer model.onnx --input batch.npy -o out.npz` (or `vimdeploy predict model.onnx img.jpg`)."
)


class TensorRTMissing(VimdeployError):
    """TensorRT (or cuda-python) is not importable."""


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def import_tensorrt() -> ModuleType:
    """`import tensorrt`, or a TensorRTMissing that says what to install."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise TensorRTMissing(f"{TENSORRT_MISSING}\n  (import tensorrt: {e})") from None
    except Exception as e:  # noqa: BLE001 - PyPI's stub package raises plain errors when its download failed
        raise TensorRTMissing(f"{TENSORRT_MISSING}\n  (import tensorrt: {type(e).__name__}: {e})") from None
    if getattr(trt, "__version__", None) is None:
        # `tensorrt-stubs` alone leaves a `tensorrt` folder of .pyi files: a namespace package.
        raise TensorRTMissing(
            f"{TENSORRT_MISSING}\n  (import tensorrt: only type stubs found at "
            f"{list(getattr(trt, '__path__', []))}, no TensorRT)"
        )
    if version_tuple(trt.__version__) < MIN_TENSORRT:
        raise TensorRTMissing(
            f"TensorRT {trt.__version__} is too old: vimdeploy needs TensorRT >= 10.0 "
            "(10.12+ or 11.x recommended): `pip install -U tensorrt`."
        )
    return trt


class LazyModule:
    """Stands for a module; imports it (through `loader`) at each attribute access.

    Not cached on purpose: `sys.modules` already caches a successful import, and a test
    that hides TensorRT (`sys.modules["tensorrt"] = None`) must see it missing.
    """

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader(), name)


def import_cudart() -> Any:
    """cuda-python's runtime API: `cuda.bindings.runtime` (cuda-python >= 12.6), else `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise TensorRTMissing(
                "cuda-python is not installed (TensorRT's samples use it for buffers and "
                "streams): `pip install 'cuda-python>=12'` or `pip install 'vimdeploy[tensorrt]'`."
            ) from None
    return cudart


def cuda_call(result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, unwrap the values."""
    err, *values = result
    if int(err) != 0:
        cudart = import_cudart()
        name = cudart.cudaGetErrorName(err)[1]
        raise VimdeployError(f"CUDA error {int(err)} ({name.decode() if isinstance(name, bytes) else name})")
    return values[0] if len(values) == 1 else (tuple(values) or None)
