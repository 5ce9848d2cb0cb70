"""The native libraries of the scan: build, locate, load, and the C params struct.

Two libraries implement `export/op_contract.md` behind one C struct
(`plugins/include/vimdeploy/scan_params.h`, mirrored here as `ScanParams`):

* the CPU kernel (`plugins/cpu/bi_selective_scan_cpu.cpp`): built by `pip install` /
  `make setup` as `vimdeploy/ops/_scan_cpu*.so` (a setuptools extension, optional: without
  a C++ compiler vimdeploy runs on the PyTorch scan), or by CMake as libvimdeploy_cpu.so;
* the CUDA kernel (`libvimdeploy_kernels.so`) and the TensorRT plugins: built by CMake +
  nvcc with `vimdeploy plugin build` (`build()` here).

Build directory of `build()`: build_dir, else $VIMDEPLOY_PLUGIN_BUILD_DIR, else plugins/build
in a checkout, else ~/.cache/vimdeploy/plugins-<version>-<hash of the sources' path> (`default_build_dir`).
$VIMDEPLOY_KERNEL_LIBRARY / $VIMDEPLOY_CPU_LIBRARY may point straight at a library.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import shutil
import subprocess
import threading
from pathlib import Path

from ..errors import VimdeployError
from .inputs import INPUT_NAMES, ScanInputs

__all__ = [
    "PluginError", "ScanParams", "build", "library_paths", "load_library", "cpu_library_path", "load_cpu_library",
    "find_nvcc", "entry_point", "check_call",
]

# The CMake project ships inside the package (package data); in a checkout vimdeploy/plugins
# is a symlink to the repository's plugins/, so both read the same files.
PLUGIN_SRC = Path(__file__).resolve().parent.parent / "plugins"
DTYPES = {"float32": 0, "float16": 1}  # VIMDEPLOY_DTYPE_*
_LIB_NAMES = {
    "kernels": "libvimdeploy_kernels.so",
    "trt_plugin": "libvimdeploy_trt_plugin.so",
    "trt_plugin_dynamic": "libvimdeploy_trt_plugin_dynamic.so",
    "cpu": "libvimdeploy_cpu.so",
}
CPU_EXTENSION = "_scan_cpu"  # vimdeploy/ops/_scan_cpu<EXT_SUFFIX>, built by setuptools


class PluginError(VimdeployError):
    """A native scan library cannot be built, found, loaded or called."""


class ScanParams(ctypes.Structure):
    """`VimdeployScanParams`: the contract's inputs by name, then y and the sizes."""

    _fields_ = [(name, ctypes.c_void_p) for name in INPUT_NAMES] + [
        ("y", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("L", ctypes.c_int64),
        ("E", ctypes.c_int64),
        ("N", ctypes.c_int64),
        ("dtype", ctypes.c_int32),
        ("delta_softplus", ctypes.c_int32),
        ("out_scale", ctypes.c_float),
        ("bc_stride", ctypes.c_int64),  # 0: dense B/C
    ]

    @classmethod
    def from_pointers(cls, pointers: ScanInputs, y: int, batch: int, L: int, E: int, N: int, dtype: str,
                      delta_softplus: bool, out_scale: float, bc_stride: int = 0) -> "ScanParams":
        """`pointers`: a ScanInputs of addresses (ints) of dense row-major buffers (B and C:
        `bc_stride` elements between tokens, 0 = dense; CUDA kernel only)."""
        return cls(*pointers, y, batch, L, E, N, DTYPES[dtype], int(bool(delta_softplus)), float(out_scale),
                   int(bc_stride))


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
            raise PluginError(f"the CUDA kernel library has no {name}: it was built from older sources; "
                              "rebuild it with `vimdeploy plugin build`") from None
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
    from .. import __version__

    import hashlib

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = hashlib.sha256(str(PLUGIN_SRC.resolve()).encode()).hexdigest()[:10]
    return cache / "vimdeploy" / f"plugins-{__version__}-{where}"


def library_paths(build_dir: str | Path | None = None) -> dict[str, Path]:
    """The CMake-built libraries that exist: "kernels" (CUDA C API), "trt_plugin"
    (self-registering), "trt_plugin_dynamic" (getCreators), "cpu"."""
    d = Path(build_dir) if build_dir else default_build_dir()
    found = {key: d / name for key, name in _LIB_NAMES.items() if (d / name).is_file()}
    env = os.environ.get("VIMDEPLOY_KERNEL_LIBRARY")
    if env and build_dir is None:
        if not Path(env).is_file():
            raise PluginError(f"VIMDEPLOY_KERNEL_LIBRARY={env} is not a file")
        found["kernels"] = Path(env)
    return found


def cpu_library_path() -> Path | None:
    """$VIMDEPLOY_CPU_LIBRARY, else the setuptools extension in this package, else CMake's."""
    env = os.environ.get("VIMDEPLOY_CPU_LIBRARY")
    if env:
        if not Path(env).is_file():
            raise PluginError(f"VIMDEPLOY_CPU_LIBRARY={env} is not a file")
        return Path(env)
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (here / (CPU_EXTENSION + suffix)).is_file():
            return here / (CPU_EXTENSION + suffix)
    return library_paths().get("cpu")


# ---- building -----------------------------------------------------------------------------

def find_nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


def build(build_dir=None, cuda_archs=None, tensorrt_root=None, jobs=None) -> dict[str, Path]:
    """Configure + build plugins/ with CMake (nvcc needed, TensorRT optional); returns
    library_paths(build_dir). cuda_archs: "80;86;87;89;90" style string or list."""
    d = Path(build_dir) if build_dir else default_build_dir()
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginError("cmake not found: install CMake >= 3.18 to build the CUDA kernels")
    nvcc = find_nvcc()
    if nvcc is None:
        raise PluginError("nvcc not found (PATH, $CUDACXX, /usr/local/cuda/bin): install the CUDA toolkit 12.x or 13.x")
    if not (PLUGIN_SRC / "CMakeLists.txt").is_file():
        raise PluginError(f"plugin sources not found at {PLUGIN_SRC} (reinstall vimdeploy, or build from a checkout)")
    cfg = [cmake, "-S", str(PLUGIN_SRC.resolve()), "-B", str(d), f"-DCMAKE_CUDA_COMPILER={nvcc}", "-DCMAKE_BUILD_TYPE=Release"]
    if cuda_archs:
        archs = cuda_archs if isinstance(cuda_archs, str) else ";".join(str(a) for a in cuda_archs)
        cfg.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
    if tensorrt_root:
        cfg.append(f"-DTENSORRT_ROOT={Path(tensorrt_root).resolve()}")
    steps = [cfg, [cmake, "--build", str(d), "-j", str(jobs or os.cpu_count() or 2)]]
    for cmd in steps:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise PluginError(f"plugin build failed ({' '.join(cmd[:2])} ...):\n{r.stdout[-4000:]}")
    paths = library_paths(d)
    if "kernels" not in paths:
        raise PluginError(f"build finished but {_LIB_NAMES['kernels']} is missing in {d}")
    return paths


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
                    f"{_LIB_NAMES['kernels']} not found in {default_build_dir()}: run `vimdeploy plugin build` "
                    "(or vimdeploy.ops.native.build()), or set VIMDEPLOY_KERNEL_LIBRARY")

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
                "or set VIMDEPLOY_CPU_LIBRARY")

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
