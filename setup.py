"""The native libraries built by `pip install` (everything else is in pyproject.toml).

* vimdeploy/ops/_scan_cpu*.so: the native CPU scan, a plain C library that
  vimdeploy/ops/native.py loads with ctypes, built wherever a C++ compiler exists; where none
  does the install still succeeds (optional) and vimdeploy runs on the PyTorch scan.
* vimdeploy/ops/_scan_onnxruntime*.so: the ONNX Runtime custom-op library (plugins/onnxruntime,
  the CPU kernel inside), built only where $ONNXRUNTIME_INCLUDE_DIR holds ONNX Runtime's C API
  header (the include/ of an ONNX Runtime release; no package ships it). ONNX Runtime loads it
  (`register_custom_ops_library`): vimdeploy runs the plugin flavor's op with it, and any other
  ONNX Runtime application can too. Without it, vimdeploy runs that op as a Python op.

Their compile flags are plugins/cpu/compile_flags.txt, the list CMake reads too.
"""

import os
from pathlib import Path

from setuptools import Extension, setup

FLAGS = Path(__file__).parent / "plugins" / "cpu" / "compile_flags.txt"
flags = [line.strip() for line in FLAGS.read_text().splitlines() if line.strip() and not line.startswith("#")]
CPU_KERNEL = "plugins/cpu/bi_selective_scan_cpu.cpp"
ORT_HEADER = "onnxruntime_c_api.h"


def native(name: str, sources: list[str], include_dirs=(), link_args=()) -> Extension:
    return Extension(
        f"vimdeploy.ops.{name}",
        sources=sources,
        include_dirs=["plugins/include", *include_dirs],
        extra_compile_args=["-std=c++17", "-fvisibility=hidden", "-pthread", *flags],
        extra_link_args=["-pthread", *link_args],
        optional=True,
    )


def ort_include_dir() -> str | None:
    """$ONNXRUNTIME_INCLUDE_DIR (or its onnxruntime/ subfolder) where it holds the C API header."""
    given = os.environ.get("ONNXRUNTIME_INCLUDE_DIR")
    if not given:
        return None
    for d in (Path(given), Path(given) / "onnxruntime"):
        if (d / ORT_HEADER).is_file():
            return str(d.resolve())
    raise SystemExit(f"ONNXRUNTIME_INCLUDE_DIR={given} holds no {ORT_HEADER}")


extensions = [native("_scan_cpu", [CPU_KERNEL])]
if ort_include_dir():
    extensions.append(
        native(
            "_scan_onnxruntime",
            ["plugins/onnxruntime/bi_selective_scan_ort.cpp", CPU_KERNEL],
            include_dirs=[ort_include_dir()],
            # RegisterCustomOps only (plugins/onnxruntime/CMakeLists.txt says why)
            link_args=["-Wl,--version-script=plugins/onnxruntime/exports.map", "-Wl,--no-undefined"],
        )
    )

setup(ext_modules=extensions)
