"""The native libraries of the scan: where they are, and loading them.

Two libraries implement `export/op_contract.md` behind one C struct
(`plugins/include/vimdeploy/scan_params.h`, mirrored by `vimdeploy.ops.params.ScanParams`):

* the CPU kernel (`plugins/cpu/bi_selective_scan_cpu.cpp`): built by `pip install` /
  `make setup` as `vimdeploy/ops/_scan_cpu*.so` (a setuptools extension, optional: without
  a C++ compiler vimdeploy runs on the PyTorch scan), or by CMake as libvimdeploy_cpu.so;
* the CUDA kernel (`libvimdeploy_kernels.so`) and the TensorRT plugins: built by CMake +
  nvcc with `vimdeploy plugin build` (`vimdeploy.ops.build.build()`).

Beside them, the ONNX Runtime custom-op library (plugins/onnxruntime: the CPU kernel behind
ONNX Runtime's C API, loaded by ONNX Runtime itself, not by ctypes): built by `pip install`
as `vimdeploy/ops/_scan_onnxruntime*.so` where $ONNXRUNTIME_INCLUDE_DIR holds ONNX Runtime's
C API header (setup.py), or by CMake as libvimdeploy_onnxruntime.so (`build_ort_library`).

Build directory: build_dir, else $VIMDEPLOY_PLUGIN_BUILD_DIR, else plugins/build
in a checkout, else ~/.cache/vimdeploy/plugins-<version>-<hash of the sources' path> (`default_build_dir`).
$VIMDEPLOY_KERNEL_LIBRARY / $VIMDEPLOY_CPU_LIBRARY / $VIMDEPLOY_ORT_LIBRARY may point straight
at a library.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
from pathlib import Path

from ..errors import VimdeployError
from .params import ScanParams

__all__ = [
    "PluginError",
    "library_paths",
    "load_library",
    "cpu_library_path",
    "ort_library_path",
    "load_cpu_library",
    "entry_point",
    "check_call",
    "default_build_dir",
    "PLUGIN_SRC",
    "CPU_EXTENSION",
    "ORT_EXTENSION",
]

# ---- where the sources and the libraries are (every path of the native side) --------------

# The CMake project ships inside the package (package data); in a checkout vimdeploy/plugins
# is a symlink to the repository's plugins/, so both read the same files.
PLUGIN_SRC = Path(__file__).resolve().parent.parent / "plugins"
# What CMake builds in the build folder (plugins/CMakeLists.txt's targets), by key.
LIB_NAMES = {
    "kernels": "libvimdeploy_kernels.so",
    "trt_plugin": "libvimdeploy_trt_plugin.so",
    "trt_plugin_dynamic": "libvimdeploy_trt_plugin_dynamic.so",
    "cpu": "libvimdeploy_cpu.so",
    "onnxruntime": "libvimdeploy_onnxruntime.so",
}
CPU_EXTENSION = "_scan_cpu"  # vimdeploy/ops/_scan_cpu<EXT_SUFFIX>, built by setuptools
ORT_EXTENSION = "_scan_onnxruntime"  # vimdeploy/ops/_scan_onnxruntime<EXT_SUFFIX>, where the header was given


class PluginError(VimdeployError):
    """A native scan library cannot be built, found, loaded or called."""


def _declare(lib: ctypes.CDLL, name: str, argtypes, restype) -> None:
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = argtypes, restype


_entry_points: dict[tuple[int, str], object] = {}


def entry_point(name: str, argtypes, restype=ctypes.c_int):
    """A C function of the CUDA kernel library beyond the scan's API (the conv, delta), declared
    on first use. PluginError if the library lacks it: built from sources older than that
    kernel (the scan alone still works with such a library)."""
    lib = load_library()
    key = (id(lib), name)
    if key not in _entry_points:
        try:
            _declare(lib, name, argtypes, restype)
        except AttributeError:
            raise PluginError(
                f"the CUDA kernel library has no {name}: it was built from older sources; "
                "rebuild it with `vimdeploy plugin build`"
            ) from None
        _entry_points[key] = getattr(lib, name)
    return _entry_points[key]


def check_call(name: str, rc: int) -> None:
    """PluginError for a non-zero return code of a kernel library function."""
    if rc != 0:
        raise PluginError(f"{name} failed: {load_library().vimdeploy_error_string(rc).decode()} (code {rc})")


# ---- locating ---------------------------------------------------------------------------


def default_build_dir() -> Path:
    """$VIMDEPLOY_PLUGIN_BUILD_DIR; else plugins/build in a checkout (where vimdeploy/plugins is
    the symlink); else, installed from a wheel (site-packages may be read-only, and is shared by
    users), a per-user cache folder keyed by vimdeploy's version and the installed sources'
    location (CMake refuses a build folder configured from other sources: two venvs with the
    same version must not share one)."""
    if os.environ.get("VIMDEPLOY_PLUGIN_BUILD_DIR"):
        return Path(os.environ["VIMDEPLOY_PLUGIN_BUILD_DIR"])
    if PLUGIN_SRC.is_symlink():
        return PLUGIN_SRC.resolve() / "build"
    import hashlib

    from .. import __version__

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = hashlib.sha256(str(PLUGIN_SRC.resolve()).encode()).hexdigest()[:10]
    return cache / "vimdeploy" / f"plugins-{__version__}-{where}"


def library_paths(build_dir: str | Path | None = None) -> dict[str, Path]:
    """The CMake-built libraries that exist: "kernels" (CUDA C API), "trt_plugin"
    (self-registering), "trt_plugin_dynamic" (getCreators), "cpu", "onnxruntime"."""
    d = Path(build_dir) if build_dir else default_build_dir()
    found = {key: d / name for key, name in LIB_NAMES.items() if (d / name).is_file()}
    env = os.environ.get("VIMDEPLOY_KERNEL_LIBRARY")
    if env and build_dir is None:
        if not Path(env).is_file():
            raise PluginError(f"VIMDEPLOY_KERNEL_LIBRARY={env} is not a file")
        found["kernels"] = Path(env)
    return found


def _packaged_or_built(env: str, extension: str, key: str) -> Path | None:
    """$`env`, else the setuptools extension `extension` in this package, else CMake's `key`."""
    value = os.environ.get(env)
    if value:
        if not Path(value).is_file():
            raise PluginError(f"{env}={value} is not a file")
        return Path(value)
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (here / (extension + suffix)).is_file():
            return here / (extension + suffix)
    return library_paths().get(key)


def cpu_library_path() -> Path | None:
    """$VIMDEPLOY_CPU_LIBRARY, else the setuptools extension in this package, else CMake's."""
    return _packaged_or_built("VIMDEPLOY_CPU_LIBRARY", CPU_EXTENSION, "cpu")


def ort_library_path() -> Path | None:
    """The ONNX Runtime custom-op library: $VIMDEPLOY_ORT_LIBRARY, else the one `pip install`
    built into this package, else CMake's; None where none is built."""
    return _packaged_or_built("VIMDEPLOY_ORT_LIBRARY", ORT_EXTENSION, "onnxruntime")


# ---- loading ------------------------------------------------------------------------------

_loaded: dict[str, ctypes.CDLL] = {}
_lock = threading.Lock()


def _load(key: str, path: Path, declare) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise PluginError(f"cannot load {path}: {e}") from e
    declare(lib)
    _loaded[key] = lib
    return lib


def load_library(path: str | Path | None = None) -> ctypes.CDLL:
    """Load the CUDA kernel library (once) and declare its C API."""
    with _lock:
        if "kernels" in _loaded and path is None:
            return _loaded["kernels"]
        if path is None:
            path = library_paths().get("kernels")
            if path is None:
                raise PluginError(
                    f"{LIB_NAMES['kernels']} not found in {default_build_dir()}: run `vimdeploy plugin build` "
                    "(or vimdeploy.ops.build.build()), or set VIMDEPLOY_KERNEL_LIBRARY"
                )

        def declare(lib):
            p, vp, i64, i32 = ctypes.POINTER(ScanParams), ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
            _declare(lib, "vimdeploy_bi_selective_scan", [p, vp, ctypes.c_size_t, vp], i32)
            _declare(lib, "vimdeploy_bi_selective_scan_ex", [p, vp, ctypes.c_size_t, vp, i32, i32], i32)
            _declare(lib, "vimdeploy_bi_selective_scan_workspace_size", [i64, i64], ctypes.c_size_t)
            _declare(lib, "vimdeploy_error_string", [i32], ctypes.c_char_p)

        return _load("kernels", Path(path), declare)


def load_cpu_library() -> ctypes.CDLL:
    """Load the CPU kernel library (once); PluginError with how to build it if it is missing."""
    with _lock:
        if "cpu" in _loaded:
            return _loaded["cpu"]
        path = cpu_library_path()
        if path is None:
            raise PluginError(
                "the native CPU scan is not built: reinstall vimdeploy with a C++ compiler present "
                "(`pip install -e .` in a checkout, or `make setup`), or run `vimdeploy plugin build`; "
                "or set VIMDEPLOY_CPU_LIBRARY"
            )

        def declare(lib):
            _declare(lib, "vimdeploy_bi_selective_scan_cpu", [ctypes.POINTER(ScanParams), ctypes.c_int], ctypes.c_int)
            _declare(lib, "vimdeploy_cpu_isa", [], ctypes.c_char_p)
            _declare(lib, "vimdeploy_cpu_error_string", [ctypes.c_int], ctypes.c_char_p)

        return _load("cpu", path, declare)


def loads(get) -> bool:
    """Whether `get()` (a library loader or an entry-point getter) succeeds: False on PluginError."""
    try:
        get()
    except PluginError:
        return False
    return True


def cpu_available() -> bool:
    return loads(load_cpu_library)


def cuda_available() -> bool:
    """The CUDA kernel library loads (loaded once; no file-system look-up after that)."""
    return loads(load_library)
