"""The C++ sample (samples/cpp/).

* Its preprocessing (no TensorRT, no CUDA) is compiled with the host C++ compiler and must
  give the same float32 tensor as `vimdeploy.data.preprocess` (PIL) on non-square images:
  runs wherever g++/c++ exists.
* vim_classify.cpp is compiled (objects only, `-c`) against the TensorRT headers in
  $TENSORRT_INCLUDE_DIR (several directories separated by ':' to check 10.x and 11.x), with
  CUDA's headers ($CUDA_HOME/include or /usr/local/cuda/include); skipped without them.
  libnvinfer is not needed: nothing is linked.
* vim_classify_ort.cpp (ONNX Runtime's C API + the op library, on the CPU) is built with CMake
  against the C API header (as tests/test_ort_library.py finds it) and the onnxruntime wheel's
  libonnxruntime ($ONNXRUNTIME_LIBRARY names another), then run on the golden checkpoint's
  plugin-flavor export: its logits against the official code's (the golden) and, on photos
  through its own preprocessing, against the PyTorch model's; skipped, saying why, without the
  header. Broken inputs must end it with one `error:` line and exit status 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .test_golden import TOL
from .test_ort_library import export_plugin_onnx, header_dir

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


# ---- vim_classify_ort: ONNX Runtime + the op library on the CPU ----------------------------------


def onnxruntime_library() -> Path | None:
    """$ONNXRUNTIME_LIBRARY, else the onnxruntime wheel's libonnxruntime.so.<version>."""
    if os.environ.get("ONNXRUNTIME_LIBRARY"):
        return Path(os.environ["ONNXRUNTIME_LIBRARY"])
    import onnxruntime

    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def ort_sample(tmp_path_factory) -> Path:
    include, library = header_dir(), onnxruntime_library()
    if include is None:
        pytest.skip(
            "ONNX Runtime's C API header (onnxruntime_c_api.h) not found: set ONNXRUNTIME_INCLUDE_DIR "
            "to the include/ of an ONNX Runtime release to build vim_classify_ort"
        )
    if library is None:
        pytest.skip("libonnxruntime not found (set ONNXRUNTIME_LIBRARY)")
    if shutil.which("cmake") is None or CXX is None:
        pytest.skip("cmake or a C++ compiler not found")
    build = tmp_path_factory.mktemp("sample_build")
    for cmd in (
        [
            "cmake",
            "-S",
            str(SAMPLE),
            "-B",
            str(build),
            f"-DONNXRUNTIME_INCLUDE_DIR={include}",
            f"-DONNXRUNTIME_LIBRARY={library}",
        ],
        ["cmake", "--build", str(build), "--target", "vim_classify_ort", "-j", "2"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return build / "vim_classify_ort"


@pytest.fixture(scope="module")
def golden_onnx(golden, tmp_path_factory) -> Path:
    return export_plugin_onnx(golden["checkpoint"], tmp_path_factory.mktemp("golden_onnx") / "vim_t_plugin.onnx")


def classify(sample: Path, model: Path, image: Path, tmp_path: Path) -> tuple[np.ndarray, list[int]]:
    """The sample's logits (--logits) and the classes of its top-5 lines, best first."""
    logits = tmp_path / "logits.bin"
    done = subprocess.run(
        [str(sample), str(model), str(image), "--logits", str(logits)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "logit " in line]
    return np.fromfile(logits, np.float32), [int(line.rsplit("(", 1)[1].split(",")[0]) for line in lines]


def assert_same_classification(logits: np.ndarray, top5: list[int], reference: np.ndarray) -> None:
    assert logits.shape == reference.shape
    assert np.abs(logits - reference).max() <= TOL
    # The printed classes are the reference's top-5 (a swap only between logits within TOL).
    assert len(top5) == 5 and np.abs(reference[top5] - np.sort(reference)[::-1][:5]).max() <= TOL, top5


def test_ort_sample_reproduces_the_golden_logits(ort_sample, golden, golden_onnx, tmp_path):
    """The official code's logits for the golden input tensors, fed as raw .bin files."""
    for i, image in enumerate(golden["input"]):
        image.astype("<f4").tofile(tmp_path / f"golden_{i}.bin")
        logits, top5 = classify(ort_sample, golden_onnx, tmp_path / f"golden_{i}.bin", tmp_path)
        assert_same_classification(logits, top5, golden["logits"][i])


def _photo():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.chelsea()  # 451 x 300


def _digit():
    return next((SAMPLE.parents[1] / "vimdeploy" / "assets" / "calibration" / "digits").glob("*.png"))


@pytest.mark.parametrize("source", [_photo, _digit], ids=["photo", "digit"])
def test_ort_sample_classifies_an_image_as_pytorch_does(ort_sample, golden_model, golden_onnx, tmp_path, source):
    """A real image as a PPM through the sample's own preprocessing, against the PyTorch model
    on `vimdeploy.data.preprocess` of the same image."""
    import torch
    from PIL import Image

    from vimdeploy.data import preprocess

    picture = source()
    image = (Image.open(picture) if isinstance(picture, Path) else Image.fromarray(picture)).convert("RGB")
    image.save(tmp_path / "image.ppm")
    with torch.no_grad():
        reference = golden_model(torch.from_numpy(preprocess(image))[None])[0].numpy()
    logits, top5 = classify(ort_sample, golden_onnx, tmp_path / "image.ppm", tmp_path)
    assert_same_classification(logits, top5, reference)


BROKEN = {
    "missing model": (lambda d, m: (d / "absent.onnx", d / "x.bin"), "cannot load the model"),
    "model of garbage": (lambda d, m: (_write(d / "bad.onnx", b"not a model" * 100), d / "x.bin"), "cannot load"),
    "missing image": (lambda d, m: (m, d / "absent.ppm"), "absent.ppm"),
    "image not a PPM": (lambda d, m: (m, _write(d / "x.ppm", b"\x89PNG\r\n\x1a\n" + bytes(64))), "x.ppm"),
    "truncated PPM": (lambda d, m: (m, _write(d / "t.ppm", b"P6\n640 480\n255\n" + bytes(1000))), "t.ppm"),
    "tensor of the wrong size": (lambda d, m: (m, _write(d / "s.bin", bytes(4 * 100))), "s.bin"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(BROKEN), ids=str)
def test_ort_sample_fails_cleanly(ort_sample, golden_onnx, tmp_path, case):
    """One `error: ...` line naming the problem, exit status 1, never a crash."""
    make, message = BROKEN[case]
    np.zeros(3 * 224 * 224, np.float32).tofile(tmp_path / "x.bin")
    model, image = make(tmp_path, golden_onnx)
    done = subprocess.run([str(ort_sample), str(model), str(image)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def test_ort_sample_refuses_bad_arguments(ort_sample):
    for args in ([], ["model.onnx"], ["m.onnx", "x.ppm", "--threads", "0"], ["m.onnx", "x.ppm", "--what"]):
        done = subprocess.run([str(ort_sample), *args], capture_output=True, text=True)
        assert done.returncode == 2 and ("usage:" in done.stderr or "error:" in done.stderr), done.stderr


@pytest.mark.skipif(shutil.which("cmake") is None or CXX is None, reason="cmake or a C++ compiler not found")
@pytest.mark.parametrize("missing", ["header", "library"])
def test_cmake_says_why_the_ort_sample_is_not_built(tmp_path, missing):
    """Without the C API header, or without libonnxruntime, the configure step succeeds (the
    other programs still build) and says which piece is missing."""
    include = header_dir() if missing == "library" else tmp_path / "no_headers"
    if include is None:
        pytest.skip("ONNX Runtime's C API header not found (set ONNXRUNTIME_INCLUDE_DIR)")
    # NOTFOUND: CMake searches again (and finds no libonnxruntime in the system's paths here).
    library = (missing == "header" and onnxruntime_library()) or "ONNXRUNTIME_LIBRARY-NOTFOUND"
    args = [f"-DONNXRUNTIME_INCLUDE_DIR={include}", f"-DONNXRUNTIME_LIBRARY={library}"]
    done = subprocess.run(
        ["cmake", "-S", str(SAMPLE), "-B", str(tmp_path / "build"), *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ONNXRUNTIME_")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    expected = "onnxruntime_c_api.h not found" if missing == "header" else "libonnxruntime not found"
    assert "vim_classify_ort not built" in said and expected in said, said
