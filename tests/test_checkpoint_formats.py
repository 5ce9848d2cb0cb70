"""Checkpoint formats by content (safetensors, files of the wrong kind), declared shapes within
limits, and weights that hold NaN or inf."""

import io
import json
import pickle
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vimdeploy.errors import CheckpointError
from vimdeploy.formats import sniff
from vimdeploy.model import load_model, read_checkpoint
from vimdeploy.model.config import LIMITS, MAX_VALUES

from .conftest import small_model
from .test_golden import TOL


def run(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.fixture(scope="module")
def model():
    return small_model(seed=3)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def save_safetensors(sd: dict, path, prefix: str = "", metadata=None):
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def onnx_file(path):
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    onnx.save(
        helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])), str(path)
    )
    return path


# --- safetensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,prefix", [("vim_t.safetensors", ""), ("renamed.pth", "model.")])
def test_safetensors_golden_parity(golden, golden_model, tmp_path, name, prefix):
    """A safetensors copy of the golden, bare or under `model.`, and named .safetensors or .pth,
    gives the logits of the .pth exactly."""
    sd = torch.load(golden["checkpoint"], map_location="cpu", weights_only=True)["model"]
    path = save_safetensors(sd, tmp_path / name, prefix)
    assert sniff(path) == "safetensors"
    loaded, ckpt = load_model(path)
    assert ckpt.format == "safetensors" and ckpt.source == ("model" if prefix else "(top level: bare state dict)")
    x = torch.from_numpy(golden["input"])
    logits = run(loaded, x)
    torch.testing.assert_close(logits, run(golden_model, x), rtol=0, atol=0)
    assert np.abs(logits.numpy() - golden["logits"]).max() <= TOL


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "state_dict."])
def test_safetensors_prefixes(tmp_path, model, x, prefix):
    loaded, _ = load_model(save_safetensors(model.state_dict(), tmp_path / "m.safetensors", prefix))
    torch.testing.assert_close(run(loaded, x), run(model, x), rtol=0, atol=0)


def test_safetensors_flattened_training_dict_picks_model_or_ema(tmp_path, x):
    model, ema = small_model(seed=4), small_model(seed=5)
    flat = {
        **{"model." + k: v for k, v in model.state_dict().items()},
        **{"model_ema." + k: v for k, v in ema.state_dict().items()},
    }
    path = save_safetensors(flat, tmp_path / "train.safetensors")
    loaded, ckpt = load_model(path)
    assert ckpt.source == "model" and sorted(ckpt.top_level_keys) == ["model", "model_ema"]
    torch.testing.assert_close(run(loaded, x), run(model, x), rtol=0, atol=0)
    loaded, ckpt = load_model(path, ema=True)
    assert ckpt.source == "model_ema"
    torch.testing.assert_close(run(loaded, x), run(ema, x), rtol=0, atol=0)


def test_safetensors_metadata_are_the_training_arguments(tmp_path, model):
    """The pos_embed's 14x14 grid is 224px at stride 16, or 120px at stride 8: the training
    arguments decide, as in an official .pth; --stride still wins."""
    sd = model.state_dict()
    plain = save_safetensors(sd, tmp_path / "plain.safetensors")
    args = {"model": "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"}
    tagged = save_safetensors(sd, tmp_path / "tagged.safetensors", metadata={"args": json.dumps(args), "epoch": "41"})
    assert (load_model(plain)[0].cfg.stride, load_model(plain)[0].cfg.img_size) == (16, 224)
    loaded, ckpt = load_model(tagged)
    assert (loaded.cfg.stride, loaded.cfg.img_size) == (8, 120)
    assert ckpt.args["model"] == args["model"] and ckpt.epoch == 41
    assert load_model(tagged, stride=16)[0].cfg.img_size == 224


def test_safetensors_half_precision(tmp_path, model, x):
    sd = {k: v.half() for k, v in model.state_dict().items()}
    loaded, ckpt = load_model(save_safetensors(sd, tmp_path / "half.safetensors"))
    assert ckpt.dtypes == ["float16"] and all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.nn.functional.cosine_similarity(run(loaded, x), run(model, x)).min().item() > 0.99


def test_safetensors_via_infer_cli(tmp_path, cli, model, x):
    """`infer` opens a .safetensors with the PyTorch engine."""
    path = save_safetensors(model.state_dict(), tmp_path / "m.safetensors")
    np.save(tmp_path / "x.npy", x.numpy())
    result = cli("infer", path, "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["logits"], run(model, x).numpy())


# --- what a file is, by its content ---------------------------------------------------------------


def numpy_bytes(save, **arrays) -> bytes:
    buffer = io.BytesIO()
    save(buffer, *arrays.values()) if save is np.save else save(buffer, **arrays)
    return buffer.getvalue()


def zip_bytes(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(name, "text")
    return buffer.getvalue()


def test_sniff(tmp_path, model):
    sd = model.state_dict()
    files = {
        "torch": lambda p: torch.save({"model": sd}, p),
        "torch-legacy": lambda p: torch.save(sd, p, _use_new_zipfile_serialization=False),
        "pickle": lambda p: p.write_bytes(pickle.dumps({"a": [1, 2]})),
        "safetensors": lambda p: save_safetensors(sd, p),
        "onnx": onnx_file,
        "tensorrt": lambda p: p.write_bytes(b"ftrt" + bytes(range(256))),
        "npy": lambda p: p.write_bytes(numpy_bytes(np.save, a=np.zeros(3))),
        "npz": lambda p: p.write_bytes(numpy_bytes(np.savez, a=np.zeros(3))),
        "zip": lambda p: p.write_bytes(zip_bytes("readme.txt")),
        "empty": lambda p: p.write_bytes(b""),
        "unknown": lambda p: p.write_bytes(b"GIF89a" + bytes(100)),
    }
    for kind, make in files.items():
        path = tmp_path / f"{kind}.bin"  # one suffix for all: only the content may tell them apart
        make(path)
        assert sniff(path) == kind, kind
    # A plan behind a length-prefixed JSON block (as Ultralytics writes them).
    meta = json.dumps({"imgsz": [224, 224]}).encode()
    (tmp_path / "prefixed.engine").write_bytes(len(meta).to_bytes(4, "little") + meta + b"ftrt" + bytes(64))
    assert sniff(tmp_path / "prefixed.engine") == "tensorrt"
    # A truncated torch zip is still a torch file (its loader says it is truncated).
    data = (tmp_path / "torch.bin").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert sniff(tmp_path / "cut.pth") == "torch"


def cli_info(path):
    """`vimdeploy info PATH` as users run it: the installed entry point, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "vimdeploy", "info", str(path)], capture_output=True, text=True)


@pytest.mark.parametrize(
    "case,needles",
    [
        ("onnx", ["is an ONNX model, not a PyTorch checkpoint", "vimdeploy inspect"]),
        ("plan", ["is a TensorRT engine (plan), not a PyTorch checkpoint", "vimdeploy inspect"]),
        ("random", ["is not a PyTorch checkpoint", "nor any file vimdeploy reads", "it starts with bytes"]),
        ("truncated_safetensors", ["safetensors file that is truncated or corrupt"]),
        ("truncated_zip", ["truncated or corrupt"]),
    ],
)
def test_wrong_or_broken_file_given_to_info(tmp_path, model, case, needles):
    path = tmp_path / "model.pth"
    if case == "onnx":
        onnx_file(path)
    elif case == "plan":
        path.write_bytes(b"ftrt" + np.random.default_rng(1).bytes(4096))
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        full = tmp_path / "full"
        save_safetensors(model.state_dict(), full) if case == "truncated_safetensors" else torch.save(
            model.state_dict(), full
        )
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    if case in ("onnx", "plan"):
        # `info` (= `inspect`) describes an ONNX or an engine; `export` takes only checkpoints and names the kind
        described = cli_info(path)
        assert described.returncode == 0 and ("(onnx)" in described.stdout or "no sidecar" in described.stdout)
        args = [sys.executable, "-m", "vimdeploy", "export", str(path), "-o", str(tmp_path / "out.onnx")]
        result = subprocess.run(args, capture_output=True, text=True)
        assert result.returncode == 1, result
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and result.stderr.endswith(lines[0] + "\n"), result.stderr  # the last line
    else:
        result = cli_info(path)
        assert result.returncode == 1, result
        lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "could run code" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_plain_pickle_is_refused_without_unpickling(tmp_path, model):
    path = tmp_path / "sd.pkl"
    path.write_bytes(pickle.dumps(model.state_dict()))
    with pytest.raises(CheckpointError, match="plain Python pickle"):
        read_checkpoint(path)


# --- declared shapes within limits ----------------------------------------------------------------


def with_head(model, classes: int) -> dict:
    """The model's weights with a head of `classes` rows declared: one stored value, broadcast
    (the file stays small, its shapes say what it would take to build)."""
    sd = dict(model.state_dict())
    sd["head.weight"] = torch.zeros(1).expand(classes, model.cfg.embed_dim)
    sd["head.bias"] = torch.zeros(1).expand(classes)
    return sd


@pytest.mark.parametrize(
    "classes,needles",
    [
        (50_000_000, ["head.weight (50000000, 192)", f"at most {MAX_VALUES:,}"]),
        (LIMITS["num_classes"] + 1, ["head.weight declares num_classes", f"<= {LIMITS['num_classes']:,}"]),
    ],
)
def test_huge_head_is_refused_before_allocating(tmp_path, model, cli, classes, needles):
    path = tmp_path / "huge.pth"
    torch.save({"model": with_head(model, classes)}, path)
    assert path.stat().st_size < 10_000_000
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert time.perf_counter() - start < 2.0
    for needle in needles:
        assert needle in str(info.value), info.value
    result = cli("info", path)
    assert result.exit_code == 1 and result.output.startswith("error:") and result.output.count("\n") == 1


def test_absurd_depth_is_refused(tmp_path, model):
    sd = dict(model.state_dict())
    sd["layers.500.mixer.D"] = torch.ones(384)
    torch.save(sd, tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match=r"layers\.500\.mixer\.D declares depth = 501"):
        load_model(tmp_path / "deep.pth")


def test_safetensors_header_declaring_more_than_its_data(tmp_path):
    header = json.dumps({"head.weight": {"dtype": "F32", "shape": [50_000_000, 192], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)
    assert time.perf_counter() - start < 2.0


# --- NaN / inf weights ----------------------------------------------------------------------------


def nonfinite_weights(model) -> dict:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["head.bias"][[3, 7]] = float("nan")
    sd["layers.1.mixer.D_b"][0] = float("inf")
    return sd


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_nonfinite_weights_refused_naming_them_unless_allowed(tmp_path, model, fmt):
    path = tmp_path / f"bad.{fmt}"
    sd = nonfinite_weights(model)
    torch.save(sd, path) if fmt == "pth" else save_safetensors(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    text = str(info.value)
    assert "2 tensors hold NaN/inf" in text and "head.bias (2)" in text and "layers.1.mixer.D_b (1)" in text
    assert "--allow-nonfinite" in text
    loaded, ckpt = load_model(path, allow_nonfinite=True)
    assert ckpt.nonfinite == {"head.bias": 2, "layers.1.mixer.D_b": 1}
    assert torch.isnan(loaded.head.bias).sum() == 2


def test_many_nonfinite_keys_are_counted_not_all_listed(tmp_path, model):
    sd = {k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=rf"{len(sd)} tensors hold NaN/inf values: .* and {len(sd) - 5} more"):
        load_model(tmp_path / "nan.pth")


def test_nonfinite_weights_through_the_cli(tmp_path, cli, model, x):
    """`info` describes the file (exit 0, the keys named); `infer` refuses unless --allow-nonfinite."""
    path = tmp_path / "bad.pth"
    torch.save(nonfinite_weights(model), path)
    result = cli("info", path)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("  non-finite"))
    assert "2 tensors hold NaN/inf values:" in line and "head.bias (2)" in line and "layers.1.mixer.D_b (1)" in line
    clean = cli("info", save_safetensors(model.state_dict(), tmp_path / "ok.safetensors"))
    assert "non-finite   none" in clean.output and "(safetensors, stored as float32)" in clean.output

    np.save(tmp_path / "x.npy", x.numpy())
    refused = cli("infer", path, "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert refused.exit_code == 1 and "head.bias (2)" in refused.output and not (tmp_path / "out.npz").exists()
    allowed = cli("infer", path, "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz", "--allow-nonfinite")
    assert allowed.exit_code == 0, allowed.output
    assert np.isnan(np.load(tmp_path / "out.npz")["logits"][:, [3, 7]]).all()


def test_large_finite_weights_are_not_nonfinite(tmp_path, model):
    """Weights whose sum overflows fp32 (and fp16) are still finite."""
    sd = dict(model.state_dict())
    sd["head.bias"] = torch.full_like(sd["head.bias"], 3e38)
    sd["layers.0.mixer.D"] = torch.full_like(sd["layers.0.mixer.D"], 6e4).half()
    torch.save(sd, tmp_path / "big.pth")
    assert read_checkpoint(tmp_path / "big.pth").nonfinite == {}
