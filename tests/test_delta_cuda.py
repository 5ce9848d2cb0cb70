"""The delta kernel (plugins/kernels/delta_softplus.cu, `torch.ops.vimdeploy.delta_softplus` and its
two-direction form `delta_softplus_bidir`) and the model's path through it (dt_proj + bias + softplus
before the scan, the scan without softplus).

* test_reference_is_mamba_softplus_of_dt_proj, test_bidir_cpu_*: run anywhere (CPU).
* test_bidir_c_entry_rejects_*: the C entry's checks, where the kernel library loads (built for
  this GPU; without one, the library named by $VIMDEPLOY_KERNEL_LIBRARY: no launch happens).
* everything else marked `cuda` needs a GPU (the kernel library is built for it on first use).

Tolerance of the kernel against fp64 from the same fp16 inputs: the products of fp16 values are
exact in fp32 and summed in fp32 with the bias (R + 1 terms: a few 2^-24 of mag = |bias| +
sum_k |w_k dt_k|), through softplus' slope <= 1; the kernel's softplus polynomial is good to
1.9e-5 relative (fp16-level: it stays under the output's rounding budget); the output is rounded
once to fp16 (2^-12 relative, or half the smallest subnormal 2^-25). So 2^-12 + 1.9e-5 < 2^-11:
|out - ref| <= 2^-11 |ref| + 1e-6 (|ref| + mag) + 2^-25.
"""

from __future__ import annotations

import math

import pytest
import torch

from vimdeploy.contract import DTYPES

from .conftest import count_calls, golden_dir, small_model

cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda.is_available() is false)"
)


def mamba_softplus(v):
    return torch.where(v <= 20, torch.log1p(torch.exp(v)), v)


def test_reference_is_mamba_softplus_of_dt_proj():
    from vimdeploy.ops.delta import delta_softplus

    torch.manual_seed(0)
    dt_proj = torch.nn.Linear(12, 37)
    dt = torch.randn(3, 5, 12) * 4
    dt[0, 0] = 30.0  # v > 20: the identity branch
    want = mamba_softplus(dt_proj(dt))
    torch.testing.assert_close(delta_softplus(dt, dt_proj.weight, dt_proj.bias), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(delta_softplus(dt, dt_proj.weight, None), mamba_softplus(dt @ dt_proj.weight.T))


def test_bidir_cpu_is_the_reference_per_direction():
    from vimdeploy.ops.delta import delta_softplus_bidir, delta_softplus_reference

    torch.manual_seed(1)
    dts = [torch.randn(2, 7, 12) * 4 for _ in range(2)]
    ws = [torch.randn(37, 12) / 4 for _ in range(2)]
    bias = torch.randn(37)
    got = delta_softplus_bidir(dts[0], dts[1], ws[0], ws[1], bias, None)
    assert got.shape == (2, 2, 7, 37)
    torch.testing.assert_close(got[0], mamba_softplus(dts[0] @ ws[0].T + bias), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[1], mamba_softplus(dts[1] @ ws[1].T), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[1], delta_softplus_reference(dts[1], ws[1], None), rtol=0, atol=0)


def test_bidir_cpu_rejects_mismatched_directions():
    from vimdeploy.ops.delta import delta_softplus_bidir
    from vimdeploy.ops.native import PluginError

    dt, w = torch.randn(5, 12), torch.randn(37, 12)
    with pytest.raises(PluginError, match="same dt and weight shapes"):
        delta_softplus_bidir(dt, dt[:4], w, w, None, None)
    with pytest.raises(PluginError, match="same dt and weight shapes"):
        delta_softplus_bidir(dt, dt, w, w[:36], None, None)
    with pytest.raises(PluginError, match="same dt and weight shapes"):
        delta_softplus_bidir(dt, dt.double(), w, w, None, None)
    with pytest.raises(PluginError, match="bias"):
        delta_softplus_bidir(dt, dt, w, w, None, torch.zeros(36))


# --------------------------------------------------------------------------- GPU


@pytest.fixture(scope="session")
def kernel_lib(cuda_kernels):
    from vimdeploy.ops.delta import _entry

    return _entry()


@pytest.fixture(scope="session")
def delta_entries(request):
    """(vimdeploy_delta_softplus, vimdeploy_delta_softplus_bidir) of the kernel library: built for
    this GPU, or without one the library that loads ($VIMDEPLOY_KERNEL_LIBRARY); else a skip."""
    from vimdeploy.ops.delta import _entry, _entry_bidir
    from vimdeploy.ops.native import PluginError

    if torch.cuda.is_available():
        request.getfixturevalue("cuda_kernels")
    try:
        return _entry(), _entry_bidir()
    except (PluginError, OSError) as e:
        pytest.skip(f"the kernel library with the two-direction delta entry does not load: {e}")


def make_case(tokens, R, E, stride, seed=0):
    """dt rows (tokens, R) as a slice of (tokens, stride) (x_proj's output), Vim-like values:
    weight ~ N(0, 1/R) (dt_proj's init scale), bias = inverse softplus of 0.001..0.1, dt ~ N(0, 2);
    2% of the bias large (-30..30) for both sides of the v > 20 rule and deep underflow."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    rows = torch.randn(tokens, stride, generator=g, device="cuda") * 2.0
    dt = rows.half()[:, :R]
    weight = (torch.randn(E, R, generator=g, device="cuda") / math.sqrt(R)).half()
    u = torch.rand(E, generator=g, device="cuda")
    d0 = torch.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
    bias = d0 + torch.log(-torch.expm1(-d0))
    big = torch.rand(E, generator=g, device="cuda") < 0.02
    bias = torch.where(big, torch.rand(E, generator=g, device="cuda") * 60 - 30, bias)
    return dt, weight, bias


def check(out, dt, weight, bias, what):
    v = dt.double() @ weight.double().T + (0 if bias is None else bias.double())
    ref = mamba_softplus(v)
    mag = dt.double().abs() @ weight.double().abs().T + (0 if bias is None else bias.double().abs())
    assert out.dtype == torch.float16 and out.shape == ref.shape
    o = out.double()
    assert torch.isfinite(o).all(), f"{what}: non-finite output (unwritten element?)"
    bound = 2.0**-11 * ref.abs() + 1e-6 * (ref.abs() + mag) + 2.0**-25
    worst = ((o - ref).abs() / bound).max().item()
    assert worst <= 1.0, f"{what}: {worst:.2f}x the bound (max err {(o - ref).abs().max().item():.3e})"


# (tokens, R, E, row stride): Vim-Ti/S/B ranks and widths (12/24/48 -> 384/768/1536) as the model
# calls it (a slice of x_proj's padded rows), and odd sizes: tokens not a multiple of 16 or of a
# block's 256, E not a multiple of 64 or odd (2-byte stores), R odd or past 48 (4 k-steps), 1 token.
CASES = [
    (3 * 197, 12, 384, 48),
    (1001, 24, 768, 64),
    (517, 48, 1536, 96),
    (300, 64, 200, 64),
    (33, 5, 37, 7),
    (1, 12, 384, 12),
    (257, 17, 130, 17),
]


@cuda
@needs_gpu
@pytest.mark.parametrize("tokens,R,E,stride", CASES)
def test_kernel_matches_fp64(kernel_lib, tokens, R, E, stride):
    from vimdeploy.ops.delta import delta_softplus

    dt, weight, bias = make_case(tokens, R, E, stride, seed=tokens + R + E)
    check(delta_softplus(dt, weight, bias), dt, weight, bias, f"tokens={tokens} R={R} E={E}")
    check(delta_softplus(dt, weight, None), dt, weight, None, f"no bias, tokens={tokens} R={R} E={E}")


@cuda
@needs_gpu
def test_every_element_written_and_batched_shapes(kernel_lib):
    """A (b, L, R) slice gives (b, L, E); an output poisoned with NaN first is fully written."""
    import ctypes

    from vimdeploy.contract import DTYPES
    from vimdeploy.ops.delta import DeltaParams, _entry, delta_softplus

    dt, weight, bias = make_case(2 * 301, 12, 100, 48, seed=7)
    got = delta_softplus(dt.reshape(2, 301, 12), weight, bias)
    assert got.shape == (2, 301, 100)
    check(got.reshape(-1, 100), dt, weight, bias, "batched")
    out = torch.full((dt.shape[0], 100), float("nan"), dtype=torch.float16, device="cuda")
    p = DeltaParams(
        dt.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(), dt.shape[0], 100, 12, 48, DTYPES["float16"]
    )
    assert _entry()(ctypes.byref(p), torch.cuda.current_stream().cuda_stream) == 0
    check(out, dt, weight, bias, "poisoned output")


@cuda
@needs_gpu
def test_op_cuda_graph_compile_fallbacks_and_errors(kernel_lib):
    from vimdeploy.ops.delta import delta_softplus, delta_softplus_reference
    from vimdeploy.ops.native import PluginError

    dt, weight, bias = make_case(197, 12, 384, 48, seed=3)
    eager = delta_softplus(dt, weight, bias)
    static = dt.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        delta_softplus(static, weight, bias)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out = delta_softplus(static, weight, bias)
    new, _, _ = make_case(197, 12, 384, 48, seed=4)
    static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(g_out, delta_softplus(new, weight, bias), rtol=0, atol=0)
    compiled = torch.compile(lambda t: delta_softplus(t, weight, bias), fullgraph=True)
    torch.testing.assert_close(compiled(dt), eager, rtol=0, atol=0)
    # fp32, or a rank past the kernel's 64: the PyTorch form
    torch.testing.assert_close(
        delta_softplus(dt.float(), weight.float(), bias), delta_softplus_reference(dt.float(), weight.float(), bias)
    )
    wide, w_wide = torch.randn(10, 65, device="cuda").half(), torch.randn(8, 65, device="cuda").half()
    torch.testing.assert_close(
        delta_softplus(wide, w_wide, None), delta_softplus_reference(wide, w_wide, None), rtol=0, atol=0
    )
    with pytest.raises(PluginError, match="weight"):
        delta_softplus(dt, weight[:, :5], bias)
    with pytest.raises(PluginError, match="bias"):
        delta_softplus(dt, weight, bias[:5])


@cuda
@needs_gpu
@pytest.mark.parametrize("tokens,R,E,stride", CASES)
def test_bidir_is_the_one_direction_kernel_bit_for_bit(kernel_lib, tokens, R, E, stride):
    """One launch for both directions: each direction's output equals the one-direction kernel's
    on the same inputs bit for bit (the same code per z-slice), and fp64's within the bound;
    different dt row strides, weights and biases (one of them absent) per direction."""
    from vimdeploy.ops.delta import delta_softplus, delta_softplus_bidir

    dt_f, w_f, b_f = make_case(tokens, R, E, stride, seed=tokens + R)
    dt_b, w_b, b_b = make_case(tokens, R, E, stride + 8, seed=tokens + E)
    for bias_b in (b_b, None):
        both = delta_softplus_bidir(dt_f, dt_b, w_f, w_b, b_f, bias_b)
        assert both.shape == (2, tokens, E) and both[0].is_contiguous() and both[1].is_contiguous()
        assert torch.equal(both[0], delta_softplus(dt_f, w_f, b_f)), "forward differs from the one-direction kernel"
        assert torch.equal(both[1], delta_softplus(dt_b, w_b, bias_b)), "backward differs from the one-direction kernel"
        check(both[0], dt_f, w_f, b_f, f"bidir fwd tokens={tokens} R={R} E={E}")
        check(both[1], dt_b, w_b, bias_b, f"bidir bwd tokens={tokens} R={R} E={E}")


@cuda
@needs_gpu
def test_bidir_batched_graph_compile_and_fallback(kernel_lib):
    """(b, L, R) slices -> (2, b, L, E); under a CUDA graph and torch.compile the same bits;
    fp32 or a rank past 64: the reference per direction."""
    from vimdeploy.ops.delta import delta_softplus_bidir, delta_softplus_reference

    dt_f, w_f, b_f = make_case(2 * 197, 12, 384, 48, seed=11)
    dt_b, w_b, b_b = make_case(2 * 197, 12, 384, 48, seed=12)
    args = (dt_f.reshape(2, 197, 12), dt_b.reshape(2, 197, 12), w_f, w_b, b_f, b_b)
    eager = delta_softplus_bidir(*args)
    assert eager.shape == (2, 2, 197, 384)
    check(eager[1].reshape(-1, 384), dt_b, w_b, b_b, "batched bwd")
    compiled = torch.compile(lambda f, b: delta_softplus_bidir(f, b, w_f, w_b, b_f, b_b), fullgraph=True)
    assert torch.equal(compiled(args[0], args[1]), eager)
    static = [a.clone() for a in args[:2]]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        delta_softplus_bidir(*static, *args[2:])
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out = delta_softplus_bidir(*static, *args[2:])
    static[0].copy_(args[1])
    static[1].copy_(args[0])
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g_out, delta_softplus_bidir(args[1], args[0], *args[2:]))
    f32 = delta_softplus_bidir(dt_f.float(), dt_b.float(), w_f.float(), w_b.float(), b_f, None)
    torch.testing.assert_close(f32[1], delta_softplus_reference(dt_b.float(), w_b.float(), None), rtol=0, atol=0)
    wide = [torch.randn(10, 65, device="cuda").half() for _ in range(2)]
    w_wide = torch.randn(8, 65, device="cuda").half()
    got = delta_softplus_bidir(wide[0], wide[1], w_wide, w_wide, None, None)
    torch.testing.assert_close(got[0], delta_softplus_reference(wide[0], w_wide, None), rtol=0, atol=0)


def _pair(changed=1, **changes):
    """Two valid parameter sets (tokens 4, E 16, R 12) pointing at fake addresses (never
    dereferenced: every case here is rejected before a launch), set `changed` with `changes`."""
    from vimdeploy.contract import DTYPES
    from vimdeploy.ops.delta import DeltaParams

    def params(base):
        return DeltaParams(base, base + 0x1000, None, base + 0x2000, 4, 16, 12, 16, DTYPES["float16"])

    pair = (DeltaParams * 2)(params(0x10000), params(0x20000))
    for name, value in changes.items():
        setattr(pair[changed], name, value)
    return pair


INVALID, UNSUPPORTED = -1, -2  # VIMDEPLOY_ERROR_* of plugins/include/vimdeploy/scan_params.h


@cuda
@pytest.mark.parametrize(
    "changes,want",
    [
        ({"R": 0}, UNSUPPORTED),
        ({"R": 65}, UNSUPPORTED),
        ({"dtype": DTYPES["float32"]}, UNSUPPORTED),
        ({"E": 24}, INVALID),  # E differs between the directions
        ({"tokens": 5}, INVALID),
        ({"R": 11, "dt_stride": 16}, INVALID),  # R differs
        ({"dt_stride": 11}, INVALID),  # < R
        ({"tokens": -1}, INVALID),
        ({"E": 65535 * 64 + 1}, INVALID),
        ({"dt": None}, INVALID),
        ({"weight": None}, INVALID),
        ({"delta": None}, INVALID),
    ],
)
def test_bidir_c_entry_rejects_hostile_params(delta_entries, changes, want):
    import ctypes

    from vimdeploy.ops.delta import DeltaParams

    bidir = delta_entries[1]
    assert bidir(_pair(1, **changes), None) == want, f"{changes} in the backward set"
    assert bidir(_pair(0, **changes), None) == want, f"{changes} in the forward set"
    assert bidir(ctypes.POINTER(DeltaParams)(), None) == INVALID  # p == NULL


@cuda
def test_bidir_c_entry_empty_is_success_without_pointers(delta_entries):
    """tokens or E zero in both directions: nothing to write, success, null pointers allowed."""
    for changes in ({"tokens": 0}, {"E": 0}):
        pair = _pair(**changes)
        for name, value in changes.items():
            setattr(pair[0], name, value)
        for p in pair:
            p.dt = p.weight = p.delta = None
        assert delta_entries[1](pair, None) == 0, changes


def _count_delta(monkeypatch):
    from vimdeploy.ops import delta as delta_ops

    return count_calls(monkeypatch, delta_ops, "delta_softplus_bidir")


@cuda
@needs_gpu
@pytest.mark.parametrize("scan", ["cuda", "reference"])
def test_model_with_delta_equals_without(kernel_lib, scan, monkeypatch):
    """The fp16 model on the GPU through the delta kernel (the scan without softplus) against the
    same model with dt_proj's GEMM and the scan's softplus: fp16-level agreement, any backend."""
    from vimdeploy.model import TokenMajorFront

    model = small_model(seed=5).cuda().half()
    model.scan = scan
    x = torch.randn(2, 3, 224, 224, device="cuda").half()
    calls = _count_delta(monkeypatch)
    with torch.no_grad():
        with_delta = model.forward_features(x).float()
        assert len(calls) == len(model.layers), "the delta kernel was not used (one call per layer)"
        model.front = TokenMajorFront(delta=False)
        without = model.forward_features(x).float()
    assert len(calls) == len(model.layers)
    torch.testing.assert_close(with_delta, without, rtol=2e-2, atol=2e-2 * without.abs().max().item())


@cuda
@needs_gpu
def test_vim_tiny_golden_fp16_through_the_delta_kernel(kernel_lib, monkeypatch):
    """The official Vim-Tiny's logits under fp16 autocast, with delta computed by the kernel:
    the bound of the golden fp16 tests (5e-3; wrong semantics move logits by >= 0.4)."""
    import numpy as np

    from vimdeploy.model import load_model

    d = golden_dir()
    if d is None:
        pytest.skip("golden fixture not found: set VIMDEPLOY_GOLDEN or put shared/golden beside the repo")
    expected = np.load(d / "vim_t_p16_seed30.expected.npz")
    model, _ = load_model(d / "vim_t_p16_seed30.pth", scan="cuda")
    model = model.cuda()
    x = torch.from_numpy(expected["input"]).cuda()
    calls = _count_delta(monkeypatch)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        logits = model(x)
    assert len(calls) == len(model.layers), "the delta kernel was not used (one call per layer)"
    err = np.abs(logits.float().cpu().numpy() - expected["logits"]).max()
    assert err <= 5e-3, f"fp16 logits off the official ones by {err:.2e}"
