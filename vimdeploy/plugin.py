"""The BiSelectiveScan CUDA kernel (plugins/) from Python: build, locate, and a PyTorch op.

For the CLI (`vimdeploy plugin build` / `vimdeploy plugin path`):

    build(build_dir=None, cuda_archs=None, tensorrt_root=None, jobs=None) -> dict[str, Path]
        Configures and builds plugins/ with CMake (nvcc needed, TensorRT optional) and
        returns library_paths(build_dir). cuda_archs: "80;86;87;89;90" style string or
        list (default: the CMake default, Ampere..Hopper); tensorrt_root: a TensorRT
        install (the plugin is built only when its headers are found). Raises PluginError.
    library_paths(build_dir=None) -> dict[str, Path]
        The built libraries that exist: "kernels" (libvimdeploy_kernels.so, the C API),
        "trt_plugin" (self-registering, for ctypes / polygraphy --plugins) and
        "trt_plugin_dynamic" (for IPluginRegistry.load_library / trtexec --dynamicPlugins).
        Empty dict when nothing is built.

    Build directory: build_dir, else $VIMDEPLOY_PLUGIN_BUILD_DIR, else <repo>/plugins/build.
    $VIMDEPLOY_KERNEL_LIBRARY may point straight at a libvimdeploy_kernels.so.

The op: `bi_selective_scan_cuda(...)` has the signature of
`vimdeploy.model.scan.bi_selective_scan_reference` and runs the kernel on the current CUDA
stream (so CUDA graphs capture it). It is the torch.library custom op
`torch.ops.vimdeploy.bi_selective_scan_cuda` (opaque to torch.compile, with a fake impl).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from pathlib import Path

import torch

try:
    from vimdeploy.errors import VimdeployError as _Base
except ImportError:  # pragma: no cover - errors.py is optional for this module
    _Base = RuntimeError

__all__ = ["PluginError", "build", "library_paths", "load_library", "bi_selective_scan_cuda", "launch"]

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "plugins"
D_STATE = 16
_DTYPES = {torch.float32: 0, torch.float16: 1}
_LIB_NAMES = {
    "kernels": "libvimdeploy_kernels.so",
    "trt_plugin": "libvimdeploy_trt_plugin.so",
    "trt_plugin_dynamic": "libvimdeploy_trt_plugin_dynamic.so",
}


class PluginError(_Base):
    """The CUDA kernel library cannot be built, found, loaded or called."""


def default_build_dir() -> Path:
    return Path(os.environ.get("VIMDEPLOY_PLUGIN_BUILD_DIR") or PLUGIN_SRC / "build")


def library_paths(build_dir: str | Path | None = None) -> dict[str, Path]:
    d = Path(build_dir) if build_dir else default_build_dir()
    found = {key: d / name for key, name in _LIB_NAMES.items() if (d / name).is_file()}
    env = os.environ.get("VIMDEPLOY_KERNEL_LIBRARY")
    if env and build_dir is None:
        if not Path(env).is_file():
            raise PluginError(f"VIMDEPLOY_KERNEL_LIBRARY={env} is not a file")
        found["kernels"] = Path(env)
    return found


def find_nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


def build(build_dir=None, cuda_archs=None, tensorrt_root=None, jobs=None) -> dict[str, Path]:
    """Configure + build plugins/ with CMake; returns library_paths(build_dir)."""
    d = Path(build_dir) if build_dir else default_build_dir()
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginError("cmake not found: install CMake >= 3.18 to build the CUDA kernels")
    nvcc = find_nvcc()
    if nvcc is None:
        raise PluginError("nvcc not found (PATH, $CUDACXX, /usr/local/cuda/bin): install the CUDA toolkit 12.x or 13.x")
    if not (PLUGIN_SRC / "CMakeLists.txt").is_file():
        raise PluginError(f"plugin sources not found at {PLUGIN_SRC} (build from a source checkout)")
    cfg = [cmake, "-S", str(PLUGIN_SRC), "-B", str(d), f"-DCMAKE_CUDA_COMPILER={nvcc}", "-DCMAKE_BUILD_TYPE=Release"]
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


_lib = None
_lock = threading.Lock()


def load_library(path: str | Path | None = None) -> ctypes.CDLL:
    """Load libvimdeploy_kernels.so (once) and declare its C API."""
    global _lib
    with _lock:
        if _lib is not None and path is None:
            return _lib
        if path is None:
            path = library_paths().get("kernels")
            if path is None:
                raise PluginError(
                    f"{_LIB_NAMES['kernels']} not found in {default_build_dir()}: run `vimdeploy plugin build` "
                    "(or vimdeploy.plugin.build()), or set VIMDEPLOY_KERNEL_LIBRARY")
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise PluginError(f"cannot load {path}: {e}") from e
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        args = [vp] * 16 + [i64] * 4 + [ctypes.c_int, ctypes.c_int, ctypes.c_float, vp, ctypes.c_size_t, vp]
        lib.vimdeploy_bi_selective_scan.argtypes = args
        lib.vimdeploy_bi_selective_scan.restype = ctypes.c_int
        lib.vimdeploy_bi_selective_scan_ex.argtypes = args + [ctypes.c_int, ctypes.c_int]
        lib.vimdeploy_bi_selective_scan_ex.restype = ctypes.c_int
        lib.vimdeploy_bi_selective_scan_workspace_size.argtypes = [i64, i64]
        lib.vimdeploy_bi_selective_scan_workspace_size.restype = ctypes.c_size_t
        lib.vimdeploy_error_string.argtypes = [ctypes.c_int]
        lib.vimdeploy_error_string.restype = ctypes.c_char_p
        _lib = lib
        return lib


def launch(out, z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
           A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd,
           delta_softplus=True, out_scale=0.5, num_chunks=0, variant=0):
    """Run the kernel into `out` (no checks beyond the C API's: tensors must already be
    contiguous, on one GPU, activations of one dtype fp32/fp16, A/D/bias fp32)."""
    lib = load_library()
    b, L, E = x_fwd.shape
    N = A_fwd.shape[-1]
    dev = x_fwd.device
    if num_chunks > 1:
        ws_bytes = 2 * b * num_chunks * (N + 1) * E * 4
    else:
        ws_bytes = lib.vimdeploy_bi_selective_scan_workspace_size(E, N) if num_chunks == 0 else 0
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=dev)
    stream = torch.cuda.current_stream(dev).cuda_stream
    tensors = (z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
               A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd, out)
    with torch.cuda.device(dev):
        rc = lib.vimdeploy_bi_selective_scan_ex(
            *[t.data_ptr() for t in tensors], b, L, E, N, _DTYPES[x_fwd.dtype], int(bool(delta_softplus)),
            float(out_scale), ws.data_ptr(), ws_bytes, stream, int(num_chunks), int(variant))
    if rc != 0:
        raise PluginError(f"vimdeploy_bi_selective_scan failed: {lib.vimdeploy_error_string(rc).decode()} (code {rc})")
    return out


def _prepare(z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
             A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd):
    """Contiguous tensors of the kernel's dtypes; returns (tensors, compute dtype)."""
    if not x_fwd.is_cuda:
        raise PluginError("bi_selective_scan_cuda needs CUDA tensors (use scan='fast' or 'reference' on CPU)")
    if x_fwd.dim() != 3 or A_fwd.dim() != 2 or A_fwd.shape[-1] != D_STATE:
        raise PluginError(f"expected x (b, L, E) and A (E, {D_STATE}); got x {tuple(x_fwd.shape)}, A {tuple(A_fwd.shape)}")
    act = x_fwd.dtype if x_fwd.dtype in _DTYPES else torch.float32  # e.g. bf16 runs in fp32
    acts = [t.to(act).contiguous() for t in (z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd)]
    params = [t.float().contiguous() for t in (A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd)]
    b, L, E = x_fwd.shape
    for name, t, shape in zip(("z", "x_fwd", "dt_fwd", "B_fwd", "C_fwd", "x_bwd", "dt_bwd", "B_bwd", "C_bwd"),
                              acts, [(b, L, E)] * 3 + [(b, L, D_STATE)] * 2 + [(b, L, E)] * 2 + [(b, L, D_STATE)] * 2):
        if tuple(t.shape) != shape or t.device != x_fwd.device:
            raise PluginError(f"{name}: expected shape {shape} on {x_fwd.device}, got {tuple(t.shape)} on {t.device}")
    return acts + params, act


@torch.library.custom_op("vimdeploy::bi_selective_scan_cuda", mutates_args=())
def _bi_selective_scan_op(
    z: torch.Tensor, x_fwd: torch.Tensor, dt_fwd: torch.Tensor, B_fwd: torch.Tensor, C_fwd: torch.Tensor,
    x_bwd: torch.Tensor, dt_bwd: torch.Tensor, B_bwd: torch.Tensor, C_bwd: torch.Tensor,
    A_fwd: torch.Tensor, A_bwd: torch.Tensor, D_fwd: torch.Tensor, D_bwd: torch.Tensor,
    dt_bias_fwd: torch.Tensor, dt_bias_bwd: torch.Tensor, delta_softplus: bool = True, out_scale: float = 0.5,
) -> torch.Tensor:
    tensors, act = _prepare(z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
                            A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd)
    out = torch.empty(x_fwd.shape, dtype=act, device=x_fwd.device)
    launch(out, *tensors, delta_softplus=delta_softplus, out_scale=out_scale)
    return out if act == x_fwd.dtype else out.to(x_fwd.dtype)


@_bi_selective_scan_op.register_fake
def _(z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
      A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd, delta_softplus=True, out_scale=0.5):
    return torch.empty_like(x_fwd, memory_format=torch.contiguous_format)


def bi_selective_scan_cuda(
    z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
    A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd,
    delta_softplus: bool = True, out_scale: float = 0.5,
):
    """The op contract on the CUDA kernel; same signature as bi_selective_scan_reference."""
    return torch.ops.vimdeploy.bi_selective_scan_cuda(
        z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
        A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd, bool(delta_softplus), float(out_scale))


def _register_backend():
    """Make `VisionMamba(..., scan="cuda")` work once this module is imported (the model
    package may also register it lazily; both give the same function)."""
    try:
        from vimdeploy.model.scan import SCAN_BACKENDS
    except ImportError:  # pragma: no cover
        return
    SCAN_BACKENDS.setdefault("cuda", bi_selective_scan_cuda)


_register_backend()
