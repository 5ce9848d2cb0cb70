"""`Engine.run`: the checks and the batching every backend gets, on a fake backend; the devices
`open_engine` puts the real backends on (`--device auto|cpu|cuda`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vimdeploy.errors import InputError
from vimdeploy.runtime import Engine


class Recorder(Engine):
    """Logits = the mean pixel of each image, repeated; records every batch size it is called with."""

    outputs = ["logits", "features"]

    def __init__(self, batch_range=None, input_hw=None, grid=None):
        self.batch_range, self.input_hw, self.grid = batch_range, input_hw, grid
        self.calls, self.closed = [], False

    def _infer(self, images, names):
        self.calls.append(len(images))
        mean = images.reshape(len(images), -1).mean(-1, keepdims=True)
        return {n: np.repeat(mean, 3 if n == "logits" else 2, axis=1) for n in names}

    def close(self):
        self.closed = True


def batch(n, size=32):
    return np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 3, size, size), np.float32)


@pytest.mark.parametrize("n, calls", [(7, [4, 3]), (8, [4, 4]), (1, [2]), (9, [4, 4, 2])])
def test_chunks_of_max_and_padding_to_min(n, calls):
    engine = Recorder(batch_range=(2, 4))
    out = engine.run(batch(n), features=True)
    assert engine.calls == calls
    assert out["logits"].shape == (n, 3) and out["features"].shape == (n, 2)
    np.testing.assert_array_equal(out["logits"][:, 0], np.arange(n))  # image order kept, padding dropped


def test_any_batch_is_one_call():
    engine = Recorder()
    assert engine.run(batch(5))["logits"].shape == (5, 3) and engine.calls == [5]


@pytest.mark.parametrize(
    "images, needle",
    [
        (np.zeros((2, 3, 32)), "NCHW"),
        (np.zeros((2, 1, 32, 32)), "NCHW"),
        (np.zeros((0, 3, 32, 32)), "empty"),
        (np.zeros((1, 3, 32, 32), np.int64), "float32"),
        ([[1.0]], "NCHW"),
    ],
)
def test_checks_before_any_call(images, needle):
    engine = Recorder()
    with pytest.raises(InputError, match=needle):
        engine.run(images)
    assert engine.calls == []


def test_size_and_grid_checks():
    with pytest.raises(InputError, match="takes 32x32"):
        Recorder(input_hw=(32, 32)).run(batch(1, 48))
    with pytest.raises(InputError, match="patch grid"):
        Recorder(grid=(16, 16)).run(batch(1, 40))
    assert Recorder(grid=(16, 16)).run(batch(1, 48))["logits"].shape == (1, 3)


def test_unknown_output_is_refused():
    with pytest.raises(InputError, match="no output feature_map"):
        Recorder().run(batch(1), outputs=["logits", "feature_map"])


def test_context_manager_closes():
    with Recorder() as engine:
        engine.run(batch(1))
    assert engine.closed


# ---- devices: open_engine(path, device=...) on the real backends (CPU machine: no GPU, CPU onnxruntime)


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    """The shipped digits model (4 layers, 32 px) exported in both flavors, dynamic batch."""
    from vimdeploy.digits import WEIGHTS
    from vimdeploy.export import export_onnx

    d = tmp_path_factory.mktemp("digits_onnx")
    return {
        flavor: export_onnx(WEIGHTS, d / f"digits_{flavor}.onnx", batch="dynamic", scan=flavor)["output"]
        for flavor in ("plugin", "onnx")
    }


def test_an_unknown_device_is_refused(digits_onnx):
    from vimdeploy.runtime import open_engine

    with pytest.raises(InputError, match="unknown device 'gpu'"):
        open_engine(digits_onnx["onnx"], device="gpu")


@pytest.mark.parametrize("flavor", ["plugin", "onnx"])
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_onnx_runs_on_the_cpu_where_onnxruntime_has_no_cuda(digits_onnx, flavor, device, monkeypatch):
    import onnxruntime as ort

    from vimdeploy.runtime import open_engine

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with open_engine(digits_onnx[flavor], device=device) as engine:
        about = engine.describe()
        assert engine.run(batch(2))["logits"].shape == (2, 10)
    assert (about["provider"], about["device"]) == ("CPUExecutionProvider", "cpu")
    assert ("scan_op" in about) == (flavor == "plugin")


def test_cuda_is_refused_where_onnxruntime_has_none(digits_onnx, monkeypatch):
    import onnxruntime as ort

    from vimdeploy.errors import ArtifactError
    from vimdeploy.runtime import open_engine

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ArtifactError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        open_engine(digits_onnx["onnx"], device="cuda")


def test_cuda_is_refused_where_onnxruntime_offers_it_but_cannot_start_it(digits_onnx, monkeypatch):
    """onnxruntime-gpu without a GPU or CUDA libraries: ONNX Runtime falls back to the CPU on its
    own; "cuda" must say so, "auto" takes the CPU."""
    import onnxruntime as ort

    from vimdeploy.errors import ArtifactError
    from vimdeploy.runtime import open_engine

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if "CUDAExecutionProvider" in ort.InferenceSession(digits_onnx["onnx"]).get_providers():
        pytest.skip("this onnxruntime runs CUDAExecutionProvider here")
    with pytest.raises(ArtifactError, match="could not start CUDAExecutionProvider"):
        open_engine(digits_onnx["onnx"], device="cuda")
    assert open_engine(digits_onnx["onnx"], device="auto").describe()["provider"] == "CPUExecutionProvider"


def test_the_plugin_flavor_is_refused_on_cuda_even_where_onnxruntime_has_it(digits_onnx, monkeypatch):
    import onnxruntime as ort

    from vimdeploy.errors import ArtifactError
    from vimdeploy.runtime import open_engine

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ArtifactError, match="plugin-flavor export.*CPU only"):
        open_engine(digits_onnx["plugin"], device="cuda")
    assert open_engine(digits_onnx["plugin"], device="auto").describe()["device"] == "cpu"


def test_a_checkpoint_follows_pytorchs_gpu(monkeypatch):
    import torch

    from vimdeploy.digits import WEIGHTS
    from vimdeploy.errors import ArtifactError
    from vimdeploy.runtime import open_engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert open_engine(WEIGHTS).describe()["device"] == "cpu"  # auto, the default
    with pytest.raises(ArtifactError, match="sees no CUDA GPU"):
        open_engine(WEIGHTS, device="cuda")


def test_cli_device_cuda_on_this_machine_is_one_error_line(cli, digits_onnx, tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    np.save(tmp_path / "x.npy", batch(1))
    infer = ("infer", digits_onnx["onnx"], "--input", tmp_path / "x.npy", "-o", tmp_path / "o.npz")
    result = cli(*infer, "--device", "cuda")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --device cuda:") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()
    result = cli(*infer, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["engine"]["device"] == "cpu"


def test_bench_on_an_onnx_runs_where_it_can_by_default(cli, digits_onnx, tmp_path):
    out = tmp_path / "bench.json"
    args = ("--sizes", "32", "--batch", "1", "--warmup", "1", "--iters", "2", "--seconds", "0", "--json-out", out)
    result = cli("bench", digits_onnx["plugin"], *args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["rows"][0]["status"] == "ok" and data["rows"][0]["device"] == "cpu"
    assert data["runners"][0]["provider"] == "CPUExecutionProvider"


@pytest.mark.cuda
def test_a_checkpoint_runs_on_the_gpu_by_default_where_pytorch_has_one():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is false)")
    from vimdeploy.digits import WEIGHTS, digit_batch
    from vimdeploy.runtime import open_engine

    x = digit_batch()[0][:8]
    with open_engine(WEIGHTS) as gpu, open_engine(WEIGHTS, device="cpu") as cpu:
        assert gpu.describe()["device"].startswith("cuda") and cpu.describe()["device"] == "cpu"
        np.testing.assert_allclose(gpu.run(x)["logits"], cpu.run(x)["logits"], rtol=0, atol=1e-4)
