"""Every scan backend of vimdeploy.ops against the sequential fp64 recurrence."""

import pytest
import torch

from vimdeploy.ops import SCANS, ScanInputs, get_scan
from vimdeploy.ops.reference import bi_selective_scan_fast, bi_selective_scan_reference, selective_scan_reference


def scan_inputs(b, L, E, N=16, seed=0, dtype=torch.float32, dt_shift=-2.0, a_scale=1.0) -> ScanInputs:
    """Realistic ranges: A = -exp(A_log) with A_log ~ log(1..N) + noise, softplus(dt + bias) ~ 0.01..1."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    act = lambda *s: r(*s).to(dtype)  # noqa: E731
    a_log = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1) + 0.3 * r(E, N)
    A = -torch.exp(a_log) * a_scale
    args = [act(b, L, E)]
    for _ in range(2):
        args += [act(b, L, E), (r(b, L, E) + dt_shift).to(dtype), act(b, L, N), act(b, L, N)]
    # ScanInputs order: z, (x, dt, B, C) fwd, (x, dt, B, C) bwd, A_fwd, A_bwd, D_fwd, D_bwd, biases
    args += [A, A.flip(0).contiguous(), r(E), r(E), 0.5 * r(E), 0.5 * r(E)]
    return ScanInputs(*args)


def close(got, ref64, rel=2e-5):
    """Max error relative to the output's scale: fp32 accumulation over L steps."""
    err = (got.double() - ref64).abs().max().item()
    return err <= rel * max(ref64.abs().max().item(), 1.0), err


def reference64(inputs, **attrs):
    return bi_selective_scan_reference(inputs.map(torch.Tensor.double), **attrs)


def test_every_name_resolves_without_other_imports():
    for name in SCANS:
        assert callable(get_scan(name)), name
    with pytest.raises(ValueError, match="unknown scan backend 'nope'"):
        get_scan("nope")


@pytest.mark.parametrize(
    "b,L,E", [(1, 1, 8), (2, 2, 8), (3, 7, 24), (2, 197, 48), (1, 730, 32), (1, 2048, 16), (1, 8192, 8)]
)
def test_fast_matches_sequential(b, L, E):
    inputs = scan_inputs(b, L, E, seed=L)
    ref64 = reference64(inputs, out_scale=0.5)
    ref32 = bi_selective_scan_reference(inputs, out_scale=0.5)
    fast = bi_selective_scan_fast(inputs, out_scale=0.5)
    assert fast.dtype == torch.float32 and fast.shape == (b, L, E)
    ok32, err32 = close(ref32, ref64)
    ok, err = close(fast, ref64)
    assert ok32, f"sequential fp32 reference off by {err32}"
    assert ok, f"fast scan off by {err} (sequential fp32: {err32})"


@pytest.mark.parametrize("chunk", [1, 3, 16, 64])
def test_chunk_size_does_not_change_result(chunk):
    inputs = scan_inputs(2, 100, 16, seed=1)
    assert close(bi_selective_scan_fast(inputs, chunk=chunk), reference64(inputs))[0]


def test_backward_direction_is_the_flipped_forward_scan():
    """What the official bimamba v2 does: flip, scan forward, flip back."""
    x, dt, B, C = scan_inputs(2, 50, 8, seed=3)[1:5]
    A, D, bias = -torch.rand(8, 16) * 4, torch.randn(8), torch.randn(8)
    rev = selective_scan_reference(x, dt, A, B, C, D, bias, reverse=True)
    flip = selective_scan_reference(x.flip(1), dt.flip(1), A, B.flip(1), C.flip(1), D, bias).flip(1)
    torch.testing.assert_close(rev, flip, rtol=0, atol=0)


@pytest.mark.parametrize("L", [6085, 12000])
def test_fast_scan_stays_finite_at_long_sequences(L):
    """Strong decays (large dt, |A| up to ~50) underflow to 0 but never produce inf/NaN."""
    inputs = scan_inputs(1, L, 8, seed=5, dt_shift=3.0, a_scale=3.0)
    fast = bi_selective_scan_fast(inputs)
    assert torch.isfinite(fast).all()
    assert close(fast, reference64(inputs))[0]


def test_half_inputs_computed_in_fp32():
    inputs = scan_inputs(2, 64, 16, seed=7, dtype=torch.float16)
    out = bi_selective_scan_fast(inputs)
    assert out.dtype == torch.float16
    # Only the final rounding to fp16 separates them (inputs are the same fp16 values).
    assert close(out, reference64(inputs), rel=1e-3)[0]
