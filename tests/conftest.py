"""Shared fixtures: where the golden lives, small models, the CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def count_calls(monkeypatch, module, *names: str) -> list:
    """Wrap `module.<name>` for each name (functions the model looks up there per call) so that
    each call records the shape of its first argument; returns that one record of all of them
    (tests that a GPU path was taken)."""
    calls = []

    def counting(real):
        def wrapped(*args):
            calls.append(args[0].shape)
            return real(*args)

        return wrapped

    for name in names:
        monkeypatch.setattr(module, name, counting(getattr(module, name)))
    return calls


def golden_dir() -> Path | None:
    candidates = [os.environ.get("VIMDEPLOY_GOLDEN"), REPO.parent / "shared" / "golden", REPO / "shared" / "golden"]
    for c in candidates:
        if c and (Path(c) / "vim_t_p16_seed30.pth").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def golden():
    """The official-code golden: checkpoint path and expected input/logits/features."""
    d = golden_dir()
    if d is None:
        if os.environ.get("CI"):
            pytest.fail("the golden fixture (../shared/golden) is missing in CI")
        pytest.skip("golden fixture not found: set VIMDEPLOY_GOLDEN or put shared/ beside the repo")
    expected = np.load(d / "vim_t_p16_seed30.expected.npz")
    return {"dir": d, "checkpoint": d / "vim_t_p16_seed30.pth", **{k: expected[k] for k in expected.files}}


@pytest.fixture(scope="session")
def golden_model(golden):
    from vimdeploy.model import load_model

    model, _ = load_model(golden["checkpoint"])
    return model


@pytest.fixture(scope="session")
def cuda_kernels():
    """The CUDA kernel library (scan + conv), built for this GPU; skips without one. Always
    through CMake (incremental: a no-op when up to date), so that a library left from older
    sources is never what the tests run; $VIMDEPLOY_KERNEL_LIBRARY names a prebuilt one."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is false)")
    from vimdeploy.ops import native
    from vimdeploy.ops.build import build

    if not os.environ.get("VIMDEPLOY_KERNEL_LIBRARY"):
        major, minor = torch.cuda.get_device_capability()
        build(cuda_archs=f"{major}{minor}")
    return native.load_library()


@pytest.fixture
def cli():
    """Invoke the click CLI in-process; returns click's Result."""
    from click.testing import CliRunner

    from vimdeploy.cli import main

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def small_model(seed: int = 0, **cfg):
    """A randomly initialised, shallow Vim (fast to build and run) with noisy weights."""
    from vimdeploy.model import VimConfig, VisionMamba

    torch.manual_seed(seed)
    model = VisionMamba(VimConfig(**{"depth": 2, **cfg}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()
