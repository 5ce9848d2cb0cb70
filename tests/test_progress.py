"""Progress that tells the truth: `vimdeploy plugin build` names each part it skips and why, and
passes the compiler's percentage lines on; `export` shows the exporter's own steps."""

from __future__ import annotations

import sys

import pytest

from vimdeploy.errors import VimdeployError
from vimdeploy.ops.build import _run

# What plugins/CMakeLists.txt and plugins/onnxruntime/CMakeLists.txt print on a machine without
# TensorRT's or ONNX Runtime's headers, then make's progress.
CMAKE_OUTPUT = """-- The CXX compiler identification is GNU 12.2.0
-- TensorRT headers not found (set TENSORRT_ROOT or TensorRT_INCLUDE_DIR): building the kernel library only
-- vimdeploy ONNX Runtime library skipped: onnxruntime_c_api.h not found (set ONNXRUNTIME_INCLUDE_DIR to ...)
-- Configuring done
[ 50%] Building CUDA object kernels/CMakeFiles/vimdeploy_kernels.dir/bi_selective_scan.cu.o
[100%] Linking CUDA shared library libvimdeploy_kernels.so
"""


def test_plugin_build_says_what_it_skipped_and_why():
    said = []
    _run([sys.executable, "-c", f"print({CMAKE_OUTPUT!r}, end='')"], said.append)
    assert said == [
        "TensorRT plugin: skipped, no NvInfer.h found (pass --tensorrt-root)",
        "ONNX Runtime library: skipped, no onnxruntime_c_api.h (set the environment variable ONNXRUNTIME_INCLUDE_DIR)",
        "[ 50%] Building CUDA object kernels/CMakeFiles/vimdeploy_kernels.dir/bi_selective_scan.cu.o",
        "[100%] Linking CUDA shared library libvimdeploy_kernels.so",
    ]


def test_a_failed_step_keeps_its_output_in_the_error():
    with pytest.raises(VimdeployError, match="plugin build failed") as e:
        _run([sys.executable, "-c", "print('nvcc fatal: bad arch'); raise SystemExit(2)"], lambda _line: None)
    assert "nvcc fatal: bad arch" in str(e.value)


def test_export_stage_lines_come_from_the_exporter():
    from vimdeploy.export.exporter import _StageLines

    said = []
    stream = _StageLines(said.append)
    stream.write("[torch.onnx] Obtain model graph for `_ExportModule([...]` with ")
    stream.write("`torch.export.export(..., strict=False)`")
    stream.write("... ❌\nsome other print\n[torch.onnx] Run decompositions... ✅\n[torch.onnx] Translate")
    assert said == [
        "Obtain model graph with `torch.export.export(..., strict=False)`: failed, trying the next way",
        "Run decompositions: done",
    ]  # the unfinished line waits for its end
