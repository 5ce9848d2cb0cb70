"""Parity with what the official hustvl/Vim code computed (../shared/golden)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

TOL = 1e-4  # fp32; the golden's README: wrong semantics move logits by 0.4 or more


@pytest.mark.parametrize("scan", ["fast", "reference"])
def test_golden_through_api(golden, golden_model, scan):
    golden_model.scan = scan
    x = torch.from_numpy(golden["input"])
    with torch.inference_mode():
        features = golden_model(x, return_features=True)
        logits = golden_model.head(features)
    assert np.abs(logits.numpy() - golden["logits"]).max() <= TOL
    assert np.abs(features.numpy() - golden["features"]).max() <= TOL
    golden_model.scan = "fast"


def test_golden_through_infer_cli(golden, tmp_path):
    """The scriptable interface, run as users run it: the installed entry point."""
    np.save(tmp_path / "x.npy", golden["input"])
    out = tmp_path / "out.npz"
    cmd = [
        sys.executable,
        "-m",
        "vimdeploy",
        "infer",
        str(golden["checkpoint"]),
        "--input",
        str(tmp_path / "x.npy"),
        "-o",
        str(out),
        "--features",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    got = np.load(out)
    assert np.abs(got["logits"] - golden["logits"]).max() <= TOL
    assert np.abs(got["features"] - golden["features"]).max() <= TOL


def test_golden_semantics_matter(golden, golden_model):
    """The tolerance separates right from wrong: dropping the divide-by-2 breaks parity."""
    x = torch.from_numpy(golden["input"][:1])
    mixers = [layer.mixer for layer in golden_model.layers]
    try:
        for m in mixers:
            m.out_scale = 1.0
        with torch.inference_mode():
            wrong = golden_model(x).numpy()
    finally:
        for m in mixers:
            m.out_scale = 0.5
    assert np.abs(wrong - golden["logits"][:1]).max() > 100 * TOL
