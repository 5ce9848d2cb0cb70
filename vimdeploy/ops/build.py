"""Building plugins/ with CMake + nvcc: the CUDA kernel library and the TensorRT plugins
(`vimdeploy plugin build`). Where the sources and the libraries are: `vimdeploy.ops.native`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .native import PLUGIN_SRC, PluginError, default_build_dir, library_paths

__all__ = ["build", "find_nvcc"]


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
    cfg = [
        cmake,
        "-S",
        str(PLUGIN_SRC.resolve()),
        "-B",
        str(d),
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
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
        raise PluginError(f"build finished but the CUDA kernel library is missing in {d}")
    return paths
