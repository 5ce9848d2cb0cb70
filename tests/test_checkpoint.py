"""Loading the checkpoint files users have, and refusing the ones that are broken or unsafe."""

import argparse
import os
import pickle

import pytest
import torch

from vimdeploy.errors import CheckpointError
from vimdeploy.model import load_model, read_checkpoint

from .conftest import small_model


def official_training_checkpoint(
    model, ema_model, model_name="vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
):
    """Shaped like hustvl/Vim main.py's checkpoint.pth."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "lr_scheduler": {"t_initial": 300, "warmup_t": 5, "base_values": [0.001]},
        "epoch": 299,
        "model_ema": ema_model.state_dict(),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 17},
        "args": argparse.Namespace(
            model=model_name,
            input_size=224,
            batch_size=128,
            lr=5e-4,
            data_path="/data/imagenet",
            model_ema=True,
            drop_path=0.05,
        ),
    }


def run(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.fixture(scope="module")
def models():
    return small_model(seed=1), small_model(seed=2)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_official_training_checkpoint_picks_model_then_ema(tmp_path, models, x):
    model, ema = models
    path = tmp_path / "checkpoint.pth"
    torch.save(official_training_checkpoint(model, ema), path)
    loaded, ckpt = load_model(path)
    assert ckpt.source == "model" and ckpt.epoch == 299 and ckpt.args["input_size"] == 224
    torch.testing.assert_close(run(loaded, x), run(model, x), rtol=0, atol=0)
    loaded_ema, ckpt = load_model(path, ema=True)
    assert ckpt.source == "model_ema"
    torch.testing.assert_close(run(loaded_ema, x), run(ema, x), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["bare", "module_prefix", "fp16", "bf16", "state_dict_key"])
def test_other_layouts(tmp_path, models, x, layout):
    model = models[0]
    sd = model.state_dict()
    if layout == "module_prefix":
        obj = {"model": {"module." + k: v for k, v in sd.items()}}
    elif layout in ("fp16", "bf16"):
        dtype = torch.float16 if layout == "fp16" else torch.bfloat16
        obj = {"model": {k: (v if "A_log" in k or k.endswith(("D", "D_b")) else v.to(dtype)) for k, v in sd.items()}}
    elif layout == "state_dict_key":
        obj = {"state_dict": sd}
    else:
        obj = sd
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    loaded, _ = load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ref = run(model, x)
    if layout in ("fp16", "bf16"):
        # The weights themselves were rounded; the model must still be the same one.
        cos = torch.nn.functional.cosine_similarity(run(loaded, x), ref).min().item()
        assert cos > 0.99
    else:
        torch.testing.assert_close(run(loaded, x), ref, rtol=0, atol=0)


def test_variant_inferred_from_shapes(tmp_path):
    for cfg, expect in [
        ({"embed_dim": 384, "stride": 8}, (384, 8, 224, 730)),
        ({"embed_dim": 192, "stride": 16}, (192, 16, 224, 197)),
        ({"embed_dim": 192, "stride": 16, "img_size": 384}, (192, 16, 384, 577)),
    ]:
        model = small_model(**cfg)
        path = tmp_path / "m.pth"
        torch.save({"model": model.state_dict()}, path)
        loaded, _ = load_model(path)
        c = loaded.cfg
        assert (c.embed_dim, c.stride, c.img_size, c.tokens()) == expect
        assert c.depth == 2


def test_stride_override(tmp_path):
    model = small_model()
    torch.save(model.state_dict(), tmp_path / "m.pth")
    loaded, _ = load_model(tmp_path / "m.pth", stride=8)  # grid 14 at stride 8: a 120px model
    assert (loaded.cfg.stride, loaded.cfg.img_size) == (8, 120)


# --- bad files: a clear message through `vimdeploy info`, exit status 1, no traceback -------------


def assert_refused(cli, path, *needles):
    result = cli("info", path)
    assert result.exit_code == 1, result.output
    text = result.output
    assert "Traceback" not in text and text.startswith("error:"), text
    for n in needles:
        assert n in text, text
    return text


def test_mismatched_checkpoint_lists_missing_unexpected_misshaped(tmp_path, cli, models):
    sd = dict(models[0].state_dict())
    del sd["layers.1.mixer.D_b"]
    sd["layers.0.mixer.gamma"] = torch.ones(192)
    sd["layers.0.mixer.x_proj.weight"] = torch.zeros(40, 384)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    text = assert_refused(
        cli,
        tmp_path / "bad.pth",
        "missing: layers.1.mixer.D_b",
        "unexpected: layers.0.mixer.gamma",
        "mis-shaped: layers.0.mixer.x_proj.weight (40, 384) (expected (44, 384))",
    )
    assert text.count("\n") == 1  # one paragraph


def test_truncated_file_is_refused(tmp_path, cli, models):
    path = tmp_path / "full.pth"
    torch.save({"model": models[0].state_dict()}, path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert_refused(cli, tmp_path / "cut.pth", "truncated or corrupt")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch_zip", "plain_pickle"])
def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, cli, models, fmt):
    marker = tmp_path / "pwned"
    payload = {"model": models[0].state_dict(), "extra": RunsCode(marker)}
    path = tmp_path / "evil.pth"
    if fmt == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert_refused(cli, path, "refused to load", "could run code")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"this is not a checkpoint\n", "not a PyTorch checkpoint"),
        (b"", "truncated or corrupt"),
    ],
)
def test_not_a_checkpoint(tmp_path, cli, content, needle):
    (tmp_path / "x.pth").write_bytes(content)
    assert_refused(cli, tmp_path / "x.pth", needle)


def test_checkpoint_without_weights(tmp_path, cli):
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "x.pth")
    assert_refused(cli, tmp_path / "x.pth", "holds no model weights", "epoch, optimizer")


def test_missing_file(tmp_path, cli):
    assert_refused(cli, tmp_path / "nope.pth", "no such file")


def test_not_a_vim_state_dict(tmp_path, cli):
    torch.save({"model": {"conv.weight": torch.zeros(3, 3)}}, tmp_path / "x.pth")
    assert_refused(cli, tmp_path / "x.pth", "does not look like a Vim state dict")


def test_ema_requested_but_absent(tmp_path, models):
    torch.save(models[0].state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="no model_ema"):
        read_checkpoint(tmp_path / "bare.pth", ema=True)
