"""Building plugins/ with CMake + nvcc: the CUDA kernel library and the TensorRT plugins
(`vimdeploy plugin build`); and with CMake alone, the ONNX Runtime custom-op library against
ONNX Runtime's C API header (`build_ort_library`). Where the sources and the libraries are:
`vimdeploy.ops.native`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .native import LIB_NAMES, PLUGIN_SRC, PluginError, default_build_dir, library_paths

__all__ = ["build", "build_ort_library", "find_nvcc", "ORT_HEADER"]

ORT_HEADER = "onnxruntime_c_api.h"  # the one ONNX Runtime header the library is built against


def find_nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


# What CMake's configure step says about a part it leaves out (plugins/CMakeLists.txt and
# plugins/onnxruntime/CMakeLists.txt print these) -> how `plugin build` tells it.
_SKIPPED = (
    ("-- TensorRT headers not found", "TensorRT plugin: skipped, no NvInfer.h found (pass --tensorrt-root)"),
    (
        "-- vimdeploy ONNX Runtime library skipped: ",
        "ONNX Runtime library: skipped, no onnxruntime_c_api.h (set the environment variable ONNXRUNTIME_INCLUDE_DIR)",
    ),
)
_PERCENT = re.compile(r"^\[\s*\d+%\] ")  # make's "[ 42%] Building CUDA object ..."


def _run(cmd, say) -> str:
    """Run one CMake step, passing its progress lines and what it skips to `say`; its output back."""
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            skipped = next((text for start, text in _SKIPPED if line.startswith(start)), None)
            if skipped or _PERCENT.match(line):
                say(skipped or line)
    out = "\n".join(lines)
    if proc.returncode != 0:
        raise PluginError(f"plugin build failed ({' '.join(cmd[:2])} ...):\n{out[-4000:]}")
    return out


def build(build_dir=None, cuda_archs=None, tensorrt_root=None, jobs=None, progress=None) -> dict[str, Path]:
    """Configure + build plugins/ with CMake (nvcc needed, TensorRT optional); returns
    library_paths(build_dir). cuda_archs: "80;86;87;89;90" style string or list. `progress(line)`
    gets the steps, make's percentage lines and each part that is skipped, with why."""
    say = progress or (lambda _line: None)
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
    jobs = jobs or os.cpu_count() or 2
    say(f"configuring plugins/ in {d} (cmake)")
    _run(cfg, say)
    say(f"compiling ({jobs} jobs)")
    _run([cmake, "--build", str(d), "-j", str(jobs)], say)
    paths = library_paths(d)
    if "kernels" not in paths:
        raise PluginError(f"build finished but the CUDA kernel library is missing in {d}")
    return paths


def build_ort_library(include_dir, build_dir, jobs=None, progress=None) -> Path:
    """plugins/onnxruntime built with CMake (no nvcc) against the ONNX Runtime C API header in
    `include_dir` (a release archive's include/); returns the library's path. Point
    $VIMDEPLOY_ORT_LIBRARY at it for vimdeploy to use it (`vimdeploy.ops.native.ort_library_path`)."""
    include = Path(include_dir)
    if not (include / ORT_HEADER).is_file():
        raise PluginError(f"{ORT_HEADER} not found in {include}: give the include/ of an ONNX Runtime release")
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginError("cmake not found: install CMake >= 3.18 to build the ONNX Runtime library")
    d = Path(build_dir)
    source = str((PLUGIN_SRC / "onnxruntime").resolve())
    cfg = [cmake, "-S", source, "-B", str(d), f"-DONNXRUNTIME_INCLUDE_DIR={include.resolve()}"]
    say = progress or (lambda _line: None)
    _run(cfg, say)
    _run([cmake, "--build", str(d), "-j", str(jobs or os.cpu_count() or 2)], say)
    library = d / LIB_NAMES["onnxruntime"]
    if not library.is_file():
        raise PluginError(f"build finished but {library.name} is missing in {d}")
    return library
