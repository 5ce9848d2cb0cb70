"""The C++ sample (samples/cpp/).

* Its preprocessing (no TensorRT, no CUDA) is compiled with the host C++ compiler and must
  give the same float32 tensor as `vimdeploy.data.preprocess` (PIL) on non-square images:
  runs wherever g++/c++ exists.
* vim_classify.cpp is compiled (objects only, `-c`) against the TensorRT headers in
  $TENSORRT_INCLUDE_DIR (several directories separated by ':' to check 10.x and 11.x), with
  CUDA's headers ($CUDA_HOME/include or /usr/local/cuda/include); skipped without them.
  libnvinfer is not needed: nothing is linked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "cpp"
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _compile(args, cwd):
    r = subprocess.run(
        [CXX, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", *args], cwd=cwd, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++ or $CXX)")
def test_preprocessing_matches_python(tmp_path):
    from PIL import Image

    from vimdeploy.data import preprocess

    tool = tmp_path / "ppm_to_tensor"
    _compile([str(SAMPLE / "preprocess.cpp"), str(SAMPLE / "tools" / "ppm_to_tensor.cpp"), "-o", str(tool)], tmp_path)
    rng = np.random.default_rng(0)
    for w, h in [(300, 200), (181, 333), (640, 480), (224, 224), (100, 90)]:  # 640x480: a .5 crop offset
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 64 * 4], -1) + rng.normal(0, 20, (h, w, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(tmp_path / "in.ppm")
        subprocess.run([str(tool), str(tmp_path / "in.ppm"), str(tmp_path / "out.bin")], check=True)
        ours = np.fromfile(tmp_path / "out.bin", np.float32).reshape(3, 224, 224)
        # Same fixed-point bicubic as Pillow and the same float32 normalisation: identical.
        np.testing.assert_array_equal(ours, preprocess(image), err_msg=f"{w}x{h}")


def _include_dirs():
    dirs = [d for d in os.environ.get("TENSORRT_INCLUDE_DIR", "").split(os.pathsep) if d]
    if not dirs:
        pytest.skip("set TENSORRT_INCLUDE_DIR to TensorRT include folder(s) (':'-separated) to compile the sample")
    cuda = [
        Path(p) / "include" for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if p
    ]
    cuda = next((p for p in cuda if (p / "cuda_runtime_api.h").is_file()), None)
    if cuda is None:
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found: set CUDA_HOME")
    return dirs, cuda


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++ or $CXX)")
def test_sample_compiles_against_tensorrt_headers(tmp_path):
    dirs, cuda = _include_dirs()
    for i, d in enumerate(dirs):
        assert (Path(d) / "NvInferRuntime.h").is_file(), f"{d} has no NvInferRuntime.h"
        # TensorRT's headers warn about their own deprecated enums: include them as system headers.
        _compile(
            [
                "-c",
                str(SAMPLE / "vim_classify.cpp"),
                "-isystem",
                d,
                "-isystem",
                str(cuda),
                "-o",
                str(tmp_path / f"vim_classify_{i}.o"),
            ],
            tmp_path,
        )
        assert (tmp_path / f"vim_classify_{i}.o").stat().st_size > 0
