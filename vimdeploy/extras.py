"""What each optional install is for, and the one-line hint when one is missing.

The base install runs ONNX artifacts (numpy, onnx, onnxruntime and the native CPU scan); the
extras of pyproject.toml add the rest. `reraise(error)` turns the ModuleNotFoundError of a
module that the export extra provides into a `MissingDependency` that says which install adds
it: the CLI prints it as its one `error:` line, the Python API raises it (still an ImportError).
(TensorRT, Triton and the bench's modules say so where they are imported.)
"""

from __future__ import annotations

from typing import NoReturn

from .errors import VimdeployError

__all__ = ["EXTRAS", "MissingDependency", "reraise", "install_hint"]

# PyTorch's CPU build (no CUDA libraries), the version CI tests (pyproject.toml's export extra).
TORCH_CPU = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

# top-level module -> (what needs it, the package that provides it, the extra that installs it)
EXTRAS: dict[str, tuple[str, str, str]] = {
    "torch": ("reading a checkpoint or exporting", "PyTorch", "export"),
    "onnxscript": ("exporting to ONNX", "onnxscript", "export"),
    "onnxconverter_common": ("FP16 conversion", "onnxconverter-common", "export"),
    "safetensors": ("reading a .safetensors checkpoint", "safetensors", "export"),
}


class MissingDependency(VimdeployError, ModuleNotFoundError):
    """An optional dependency is not installed; the message says which install adds it."""


def install_hint(module: str | None) -> str | None:
    """'<what> needs <package>, which is not installed: pip install ...', or None for a module
    that no extra provides."""
    top = (module or "").split(".")[0]
    if top not in EXTRAS:
        return None
    what, package, extra = EXTRAS[top]
    hint = f"{what} needs {package}, which is not installed: pip install 'vimdeploy[{extra}]'"
    if top == "torch":
        hint += f" (PyTorch's CPU build first, to keep it small: {TORCH_CPU})"
    return hint


def reraise(error: ModuleNotFoundError) -> NoReturn:
    """Raise `error` as a MissingDependency where an extra provides the module, else as it is."""
    hint = install_hint(error.name)
    if hint is None:
        raise error
    raise MissingDependency(hint, name=error.name) from error
