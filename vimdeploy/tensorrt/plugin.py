"""Finding and loading the BiSelectiveScan TensorRT plugin library into this process."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contract import OP_TYPE
from ..errors import ArtifactError
from ..fileio import file_sha256
from .imports import LazyModule, import_tensorrt

if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = LazyModule(import_tensorrt)

__all__ = ["find_plugin", "load_plugin", "plugin_record"]


_loaded_plugins: dict[str, str] = {}


def find_plugin(explicit: str | Path | None = None) -> Path:
    """--plugin, else the self-registering library that `vimdeploy plugin build` made."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ArtifactError(f"plugin library {path} does not exist.")
        return path.resolve()
    try:
        from ..ops.native import library_paths
    except ImportError as e:  # pragma: no cover - the native-library module imports torch
        raise ArtifactError(f"cannot locate the TensorRT plugin ({e}); pass --plugin PATH.") from None
    paths = library_paths()
    if "trt_plugin" in paths:
        return paths["trt_plugin"].resolve()
    raise ArtifactError(
        "this model has BiSelectiveScan nodes and needs the TensorRT plugin, which is not built: run "
        "`vimdeploy plugin build --tensorrt-root /path/to/TensorRT` or pass --plugin libvimdeploy_trt_plugin.so "
        "(or export with --scan onnx for a plugin-free model)."
    )


def load_plugin(path: str | Path) -> str:
    """Load a plugin library into this process once; returns how it was registered.

    libvimdeploy_trt_plugin.so registers its creator when loaded (ctypes is enough, as in
    Polygraphy's --plugins); libvimdeploy_trt_plugin_dynamic.so exports getCreators and
    must go through IPluginRegistry.load_library. Loading both would register the creator
    twice, which load_library refuses; so one library per process.
    """
    key = str(Path(path).resolve())
    if key in _loaded_plugins:
        return _loaded_plugins[key]
    if _loaded_plugins:
        other = next(iter(_loaded_plugins))
        raise ArtifactError(
            f"a plugin library is already loaded in this process ({other}); "
            f"cannot also load {key} (the creators would clash)."
        )
    trt.get_plugin_registry()  # TensorRT first: the self-registering library needs libnvinfer loaded
    try:
        lib = ctypes.CDLL(key, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ArtifactError(f"cannot load plugin library {key}: {e}") from None
    how = "static"
    if hasattr(lib, "getCreators"):
        if trt.get_plugin_registry().load_library(key) is None:
            raise ArtifactError(f"TensorRT's plugin registry refused {key} (IPluginRegistry.load_library).")
        how = "load_library"
    _loaded_plugins[key] = how
    return how


def plugin_record(path: Path | None, versions: Iterable[str]) -> dict[str, Any] | None:
    """The sidecar's `plugin` entry: which library (and which build of it) the engine needs."""
    if path is None:
        return None
    return {"path": str(path), "sha256": file_sha256(path), "plugin_versions": list(versions), "name": OP_TYPE}
