"""The token-major front's pieces that run on any device (vimdeploy/model/front.py), and the
model's branch for a front that computes delta itself (vimdeploy/model/vim.py, scan_inputs).

* in_proj as one batched GEMM (`in_proj_token_major`) against the two F.linear it replaced (and
  the official chunk of one F.linear): equal within fp32 rounding, x and z contiguous.
* the scan's zero dt bias, made once (a buffer outside the state_dict): the model with delta from
  the front equals the scan's own softplus; zeros after a meta-device load and in fp16 models.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vimdeploy.model import VisionMamba
from vimdeploy.model.front import DIRECTIONS, TorchFront, in_proj_token_major

from .conftest import small_model


@pytest.mark.parametrize("shape,E", [((2, 197, 192), 384), ((1, 5, 16), 8), ((7, 32), 24)])
def test_in_proj_token_major_equals_two_linears(shape, E):
    torch.manual_seed(0)
    hidden = torch.randn(*shape)
    weight = torch.randn(2 * E, shape[-1]) / shape[-1] ** 0.5
    x, z = in_proj_token_major(hidden, weight)
    assert x.shape == z.shape == (*shape[:-1], E)
    assert x.is_contiguous() and z.is_contiguous()
    want_x, want_z = F.linear(hidden, weight[:E]), F.linear(hidden, weight[E:])
    # fp32 sums of D products in another order: a few ulps of the sum of |terms|
    mag_x = F.linear(hidden.abs(), weight[:E].abs())
    mag_z = F.linear(hidden.abs(), weight[E:].abs())
    eps = torch.finfo(torch.float32).eps
    assert ((x - want_x).abs() <= 4 * shape[-1] * eps * mag_x).all()
    assert ((z - want_z).abs() <= 4 * shape[-1] * eps * mag_z).all()
    official_x, official_z = F.linear(hidden, weight).chunk(2, dim=-1)
    torch.testing.assert_close(x, official_x)
    torch.testing.assert_close(z, official_z)


class _DeltaInFront(TorchFront):
    """The PyTorch front, with delta = softplus(dt_proj(dt) + bias) computed in the front as the
    CUDA path's delta kernel does: the model's branch for a front that returns delta (zero dt
    bias, no softplus in the scan) run on the CPU."""

    name = "delta-in-front"

    def activations(self, mixer, hidden_states):
        out, _ = super().activations(mixer, hidden_states)
        for direction, suffix in DIRECTIONS:
            dt_proj = getattr(mixer, "dt_proj" + suffix)
            out[f"dt_{direction}"] = F.softplus(out[f"dt_{direction}"] + dt_proj.bias)
        return out, True


def test_model_with_delta_from_the_front_equals_the_scan_softplus():
    model = small_model(seed=3)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = model.forward_features(x)
        model.front = _DeltaInFront()
        got = model.forward_features(x)
        inputs, softplus = model.layers[0].mixer.scan_inputs(torch.randn(1, 5, model.cfg.embed_dim))
    assert not softplus
    assert inputs.dt_bias_fwd.dtype == torch.float32 and not inputs.dt_bias_fwd.any()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_zero_dt_bias_is_not_in_the_state_dict_and_is_zero_after_a_load():
    """Checkpoints load strictly with the same keys; a model built on the meta device and
    materialised with to_empty (load_model's way) has its zeros back after load_state_dict."""
    model = small_model(seed=4)
    state = model.state_dict()
    assert not [k for k in state if "dt_bias_zero" in k]
    with torch.device("meta"):
        empty = VisionMamba(model.cfg)
    empty = empty.to_empty(device="cpu")
    for layer in empty.layers:
        layer.mixer.dt_bias_zero.fill_(1.0)
    empty.load_state_dict(state, strict=True)
    assert all(not layer.mixer.dt_bias_zero.any() for layer in empty.layers)
    mixer = small_model(seed=4).half().layers[0].mixer  # the zeros in fp16 now
    mixer.front = _DeltaInFront()
    inputs, _ = mixer.scan_inputs(torch.randn(1, 5, model.cfg.embed_dim).half())
    assert inputs.dt_bias_bwd.dtype == torch.float32 and not inputs.dt_bias_bwd.any()


# --------------------------------------------------------------------------- GPU

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda.is_available() is false)"
)


@pytest.mark.cuda
@needs_gpu
def test_in_proj_token_major_fp16_on_the_gpu(monkeypatch):
    """On the GPU in fp16 (one cuBLAS batched GEMM) against fp64 products of the same fp16 values:
    an fp32 sum of K exact products (K 2^-24 of the sum of |terms|), rounded once to fp16 (half
    an ulp, 2^-11 relative; 2^-25 below the normal range). fp16 reductions in split-K (PyTorch's
    default allows them) are turned off, as the bound assumes fp32 sums."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", False)
    torch.manual_seed(0)
    hidden = torch.randn(1, 197, 192, device="cuda").half()
    weight = (torch.randn(768, 192, device="cuda") / 192**0.5).half()
    x, z = in_proj_token_major(hidden, weight)
    assert x.is_contiguous() and z.is_contiguous() and x.dtype == torch.float16
    for got, half in ((x, weight[:384]), (z, weight[384:])):
        want = F.linear(hidden.double(), half.double())
        mag = F.linear(hidden.double().abs(), half.double().abs())
        gamma = 192 * 2.0**-24 * mag
        assert ((got.double() - want).abs() <= 2.0**-11 * (want.abs() + gamma) + gamma + 2.0**-25).all()


@pytest.mark.cuda
@needs_gpu
def test_frozen_compiled_fp16_model_equals_eager_on_the_gpu(cuda_kernels):
    """The deployed form the edge benchmark times (fp16 as vim_runner makes it, torch.compile with
    Inductor's freezing: weight-only work folded, the zero dt bias a constant) against the same
    model eager, both through the conv, delta and scan kernels: fp16-level agreement (the bound of
    tests/test_delta_cuda.py's model test)."""
    from vimdeploy.bench.models import _vim_fp16, compiled

    model = _vim_fp16(small_model(seed=6)).cuda()
    model.scan = "cuda"
    assert all(layer.mixer.dt_bias_zero.dtype == torch.float32 for layer in model.layers)
    x = torch.randn(1, 3, 224, 224, device="cuda").half()
    with torch.inference_mode():
        eager = model(x).float()
        frozen = compiled(model, True, freeze=True)(x).float()
    torch.testing.assert_close(frozen, eager, rtol=2e-2, atol=2e-2 * eager.abs().max().item())
