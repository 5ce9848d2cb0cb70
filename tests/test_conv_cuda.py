"""The fused depthwise conv + SiLU kernel (plugins/kernels/conv_silu.cu, `torch.ops.vimdeploy.conv_silu_bidir`).

* test_reference_matches_the_model_convs: runs anywhere (CPU): the op's PyTorch form equals
  the model's `depthwise_conv` (model/front.py) + SiLU in both directions.
* test_aligned_x_proj_is_x_proj: runs anywhere: the padded x_proj weight the conv + x_proj kernel
  takes gives the model's (dt, B, C) (fp64, up to the GEMM's summation order).
* The conv + x_proj kernel (plugins/kernels/conv_xproj.cu, `conv_silu_xproj_bidir`): its conv outputs
  must equal conv_silu_bidir's bit for bit (same fp32 formula, same order); its products are
  checked against fp64 products of those fp16 outputs with |err| <= 2^-11 |ref| + 2^-24 (the
  output's rounding) + E 2^-23 sum|w y| (fp32 accumulation, one rounding per added term at worst).
* everything marked `cuda` needs a GPU; the kernel library is built for that GPU on first use
  (or taken from $VIMDEPLOY_PLUGIN_BUILD_DIR / $VIMDEPLOY_KERNEL_LIBRARY), as in test_plugin_cuda.py.

Tolerances. Ground truth is F.conv1d + SiLU in fp64 on the GPU, from the same (fp32 or fp16)
input values and the fp32 weights. The kernel sums k + 1 fp32 terms (error a few 2^-24 of
mag = |bias| + sum_j |w_j x_j|, through SiLU's slope <= 1.1) and evaluates SiLU with __expf and
__fdividef (a few 2^-24 relative, growing like |v| * 2^-24 through exp's argument):
* fp32: |out - ref| <= 2e-6 * |ref| + 1e-6 * mag;
* fp16: the output is rounded once: 2^-11 * |ref| * 1.1 + the fp32 bound + 2^-24 (half of
  fp16's smallest subnormal step, for outputs near 0).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .conftest import count_calls, golden_dir, small_model

cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda.is_available() is false)"
)


def test_reference_matches_the_model_convs():
    from vimdeploy.model.front import depthwise_conv
    from vimdeploy.ops.conv import conv_silu_bidir

    torch.manual_seed(0)
    for k in (1, 3, 4):
        cf, cb = nn.Conv1d(37, 37, k, groups=37), nn.Conv1d(37, 37, k, groups=37)
        x = torch.randn(3, 5, 37)
        y_fwd, y_bwd = conv_silu_bidir(x, cf.weight, cf.bias, cb.weight, cb.bias)
        torch.testing.assert_close(y_fwd, F.silu(depthwise_conv(x, cf, anti_causal=False)), rtol=0, atol=0)
        torch.testing.assert_close(y_bwd, F.silu(depthwise_conv(x, cb, anti_causal=True)), rtol=0, atol=0)


def test_aligned_x_proj_is_x_proj():
    from vimdeploy.model.front import split_x_proj, x_proj_weight_aligned

    torch.manual_seed(0)
    for rank, n, E in ((12, 16, 384), (24, 16, 768), (48, 16, 1536), (5, 3, 64)):
        x_proj = nn.Linear(E, rank + 2 * n, bias=False).double()
        xc = torch.randn(2, 7, E, dtype=torch.float64)
        w = x_proj_weight_aligned(x_proj.weight, rank, n)
        assert w.shape[0] % 8 == 0 and w.shape[0] == rank + (-rank % 8) + 2 * n + (-2 * n % 8)
        dt, B, C = split_x_proj(F.linear(xc, w), rank, n)
        want = x_proj(xc).split([rank, n, n], dim=-1)
        assert dt.shape[-1] % 8 == 0 and not dt[..., rank:].any(), "dt's padding columns must be zero"
        for got, ref in zip((dt[..., :rank], B, C), want):  # fp64: only the GEMM's blocking differs
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- GPU


@pytest.fixture(scope="session")
def kernel_lib(cuda_kernels):
    from vimdeploy.ops.conv import _entry

    return _entry()


def make_case(b, L, E, k, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    x = (r(b, L, E) * 1.5).to(dtype)
    w = {d: r(E, 1, k) * 0.6 for d in ("fwd", "bwd")}
    bias = {d: r(E) * 0.5 for d in ("fwd", "bwd")}
    return x, w, bias


def fp64_truth(x, w, bias):
    """(y_fwd, y_bwd, mag_fwd, mag_bwd) in fp64 from the literal index formulas via F.conv1d."""
    E, k = x.shape[-1], w["fwd"].shape[-1]
    xt = x.double().transpose(1, 2)
    out = []
    for d, pad in (("fwd", (k - 1, 0)), ("bwd", (0, k - 1))):
        wd = w[d].double()
        if d == "bwd":
            wd = wd.flip(-1)  # y[t] = b + sum_j w_j x[t + k-1 - j]: a correlation with the flipped taps, ahead
        v = F.conv1d(F.pad(xt, pad), wd, bias[d].double(), groups=E)
        mag = F.conv1d(F.pad(xt.abs(), pad), wd.abs(), bias[d].double().abs(), groups=E)
        out.append((F.silu(v).transpose(1, 2), mag.transpose(1, 2)))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def check(out, ref, mag, dtype, what):
    bound = 2e-6 * ref.abs() + 1e-6 * mag
    if dtype == torch.float16:
        bound = bound + 2.0**-11 * 1.1 * ref.abs() + 2.0**-24
    err = (out.double() - ref).abs()
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max error / bound = {worst:.3f} (max |err| {err.max().item():.3e})"
    return worst


def variants(k):
    return ["auto", "generic", "scalar"] + (["tiled8", "tiled32", "async32", "async16"] if k == 4 else [])


@cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("E", [8, 37, 384])
@pytest.mark.parametrize("L", [1, 2, 3, 5, 197, 1000])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_kernel_matches_fp64(kernel_lib, k, L, E, b, dtype):
    from vimdeploy.ops.conv import conv_silu_bidir, launch

    x, w, bias = make_case(b, L, E, k, dtype, seed=k * 1000 + L + E + b)
    ref_f, ref_b, mag_f, mag_b = fp64_truth(x, w, bias)
    y_fwd, y_bwd = conv_silu_bidir(x, w["fwd"], bias["fwd"], w["bwd"], bias["bwd"])
    assert y_fwd.dtype == y_bwd.dtype == dtype
    check(y_fwd, ref_f, mag_f, dtype, "op fwd")
    check(y_bwd, ref_b, mag_b, dtype, "op bwd")
    taps = {d: w[d][:, 0].contiguous() for d in w}
    for v in variants(k):
        yf, yb = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
        launch(x, taps["fwd"], bias["fwd"], taps["bwd"], bias["bwd"], yf, yb, variant=v)
        check(yf, ref_f, mag_f, dtype, f"{v} fwd")
        check(yb, ref_b, mag_b, dtype, f"{v} bwd")


@cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_unaligned_pointers_and_no_bias(kernel_lib, dtype):
    """E a multiple of the vector width but x and y off 16-byte alignment: the scalar path."""
    from vimdeploy.ops.conv import conv_silu_bidir, launch

    b, L, E, k = 2, 197, 384, 4
    x, w, bias = make_case(b, L, E, k, dtype, seed=5)
    ref_f, ref_b, mag_f, mag_b = fp64_truth(x, w, bias)
    storage = torch.empty(b * L * E + 1, dtype=dtype, device="cuda")
    x_off = storage[1:].view(b, L, E)
    x_off.copy_(x)
    assert x_off.data_ptr() % 16 != 0
    y_fwd, y_bwd = conv_silu_bidir(x_off, w["fwd"], bias["fwd"], w["bwd"], bias["bwd"])
    check(y_fwd, ref_f, mag_f, dtype, "unaligned x fwd")
    check(y_bwd, ref_b, mag_b, dtype, "unaligned x bwd")
    out = torch.empty(2 * b * L * E + 2, dtype=dtype, device="cuda")
    yf, yb = out[1 : 1 + b * L * E].view(b, L, E), out[1 + b * L * E : 1 + 2 * b * L * E].view(b, L, E)
    for v in variants(k):
        launch(x, w["fwd"][:, 0].contiguous(), bias["fwd"], w["bwd"][:, 0].contiguous(), bias["bwd"], yf, yb, variant=v)
        check(yf, ref_f, mag_f, dtype, f"unaligned y {v} fwd")
        check(yb, ref_b, mag_b, dtype, f"unaligned y {v} bwd")
    zero = {d: torch.zeros_like(bias[d]) for d in bias}
    ref_f, ref_b, mag_f, mag_b = fp64_truth(x, w, zero)
    y_fwd, y_bwd = conv_silu_bidir(x, w["fwd"], None, w["bwd"], None)
    check(y_fwd, ref_f, mag_f, dtype, "no bias fwd")
    check(y_bwd, ref_b, mag_b, dtype, "no bias bwd")


def assert_graphs_and_compiles(op, x, new, args):
    """op(x, *args) captured in a CUDA graph gives op(new, *args) on replay after x is overwritten
    with new, and under torch.compile(fullgraph=True) gives the eager outputs, bit for bit."""
    eager = op(x, *args)
    static = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        op(static, *args)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out = op(static, *args)
    static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(g_out, op(new, *args), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    compiled = torch.compile(lambda t: op(t, *args), fullgraph=True)
    for got, want in zip(compiled(x), eager, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@cuda
@needs_gpu
def test_op_cuda_graph_compile_and_errors(kernel_lib):
    from vimdeploy.ops.conv import conv_silu_bidir, launch
    from vimdeploy.ops.native import PluginError

    b, L, E, k = 2, 197, 384, 4
    x, w, bias = make_case(b, L, E, k, torch.float16, seed=1)
    args = (w["fwd"], bias["fwd"], w["bwd"], bias["bwd"])
    assert_graphs_and_compiles(conv_silu_bidir, x, make_case(b, L, E, k, torch.float16, seed=2)[0], args)

    taps = w["fwd"][:, 0].contiguous()
    y = torch.empty_like(x)
    with pytest.raises(PluginError, match="unsupported"):
        launch(
            x,
            w["fwd"][:, 0, :3].contiguous(),
            None,
            w["bwd"][:, 0, :3].contiguous(),
            None,
            y,
            y.clone(),
            variant="tiled32",
        )  # tiled kernels are k = 4 only
    with pytest.raises(PluginError):
        conv_silu_bidir(x, torch.zeros(E, 1, 9, device="cuda"), None, torch.zeros(E, 1, 9, device="cuda"), None)
    launch(x, taps, None, taps, None, y, y.clone())  # no bias: accepted


def _count_fused(monkeypatch):
    """Calls of either fused conv op (fp16 with E % 64 == 0 takes the one with x_proj)."""
    from vimdeploy.ops import conv as conv_ops

    return count_calls(monkeypatch, conv_ops, "conv_silu_bidir", "conv_silu_xproj_bidir")


@cuda
@needs_gpu
def test_model_fused_equals_multiply_adds(kernel_lib, monkeypatch):
    """The model's CUDA forward with the fused kernel equals the addcmul path (fp32)."""
    from vimdeploy.model import TokenMajorFront

    model = small_model(seed=3).cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    calls = _count_fused(monkeypatch)
    with torch.no_grad():
        fused = model(x)
        assert len(calls) == len(model.layers), "the fused kernel was not used"
        model.front = TokenMajorFront(conv=False)
        ref = model(x)
    assert len(calls) == len(model.layers)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


# Same bounds as test_plugin_cuda.py's golden test (see its comments for the measurements).
GOLDEN_TOL = {"fp32": 1e-4, "fp16": 5e-3}


@cuda
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_vim_tiny_golden_with_fused_conv(kernel_lib, precision, monkeypatch):
    import numpy as np

    from vimdeploy.model import load_model

    d = golden_dir()
    if d is None:
        pytest.skip("golden fixture not found: set VIMDEPLOY_GOLDEN or put shared/golden beside the repo")
    expected = np.load(d / "vim_t_p16_seed30.expected.npz")
    model, _ = load_model(d / "vim_t_p16_seed30.pth", scan="cuda")
    model = model.cuda()
    x = torch.from_numpy(expected["input"]).cuda()
    calls = _count_fused(monkeypatch)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16"):
        logits = model(x)
    assert len(calls) == len(model.layers), "the fused kernel was not used"
    err = np.abs(logits.float().cpu().numpy() - expected["logits"]).max()
    print(f"{precision}: max |logits - golden| = {err:.3e}")
    assert err <= GOLDEN_TOL[precision]


# --------------------------------------------------------------------------- conv + x_proj


def xproj_case(b, L, E, rows, seed, bias=True):
    x, w, cbias = make_case(b, L, E, 4, torch.float16, seed=seed)
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    proj = {d: (torch.randn(rows, E, generator=g, device="cuda") / E**0.5).half() for d in ("fwd", "bwd")}
    conv = (w["fwd"], cbias["fwd"] if bias else None, w["bwd"], cbias["bwd"] if bias else None)
    return x, conv, proj


def check_product(out, y, w, what):
    """out vs the fp64 product of the fp16 conv outputs y (see the module docstring's bound)."""
    ref = y.double() @ w.double().T
    mag = y.double().abs() @ w.double().abs().T
    bound = 2.0**-11 * ref.abs() + 2.0**-24 + y.shape[-1] * 2.0**-23 * mag
    err = (out.double() - ref).abs()
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max error / bound = {worst:.3f} (max |err| {err.max().item():.3e})"


@cuda
@needs_gpu
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("E,rows", [(64, 8), (384, 48), (384, 40), (768, 56), (1536, 80)])
@pytest.mark.parametrize("L", [1, 3, 5, 127, 128, 129, 197, 1000])
def test_conv_xproj_kernel(kernel_lib, L, E, rows, b, bias):
    from vimdeploy.ops.conv import conv_silu_bidir, conv_silu_xproj_bidir, fused_xproj_available

    assert fused_xproj_available(), "the kernel library lacks vimdeploy_conv_silu_xproj_bidir"
    x, conv, proj = xproj_case(b, L, E, rows, seed=L + E + rows + b, bias=bias)
    y_fwd, y_bwd, out_fwd, out_bwd = conv_silu_xproj_bidir(x, *conv, proj["fwd"], proj["bwd"])
    want_fwd, want_bwd = conv_silu_bidir(x, *conv)
    torch.testing.assert_close(y_fwd, want_fwd, rtol=0, atol=0)
    torch.testing.assert_close(y_bwd, want_bwd, rtol=0, atol=0)
    assert out_fwd.shape == out_bwd.shape == (b, L, rows) and out_fwd.dtype == torch.float16
    check_product(out_fwd, y_fwd, proj["fwd"], "fwd")
    check_product(out_bwd, y_bwd, proj["bwd"], "bwd")


@cuda
@needs_gpu
@pytest.mark.parametrize("E,rows", [(384, 48), (768, 56), (1536, 80)])
def test_conv_xproj_kernel_many_tiles(kernel_lib, E, rows):
    """More 64-token tiles (65 x 5) than the persistent grid has blocks (at most 2 per SM): each
    block walks several tiles, batch rows and channel steps as one pipeline."""
    from vimdeploy.ops.conv import conv_silu_bidir, conv_silu_xproj_bidir

    blocks = 2 * torch.cuda.get_device_properties(0).multi_processor_count
    L, b = 4099, 5
    assert b * -(-L // 64) > blocks, "the case must give some blocks more than one tile"
    x, conv, proj = xproj_case(b, L, E, rows, seed=E + rows, bias=True)
    y_fwd, y_bwd, out_fwd, out_bwd = conv_silu_xproj_bidir(x, *conv, proj["fwd"], proj["bwd"])
    want_fwd, want_bwd = conv_silu_bidir(x, *conv)
    torch.testing.assert_close(y_fwd, want_fwd, rtol=0, atol=0)
    torch.testing.assert_close(y_bwd, want_bwd, rtol=0, atol=0)
    check_product(out_fwd, y_fwd, proj["fwd"], "fwd")
    check_product(out_bwd, y_bwd, proj["bwd"], "bwd")


@cuda
@needs_gpu
def test_conv_xproj_fallbacks_graph_and_compile(kernel_lib):
    """Shapes the kernel does not take run the conv op and F.linear; the kernel is capturable
    in a CUDA graph and one opaque node under torch.compile."""
    from vimdeploy.ops.conv import conv_silu_bidir, conv_silu_xproj_bidir, xproj_kernel_applies

    for dtype, E, rows in (
        (torch.float32, 384, 48),
        (torch.float16, 96, 48),
        (torch.float16, 384, 88),
        (torch.float16, 384, 44),
    ):
        x, conv, proj = xproj_case(2, 197, E, rows, seed=E + rows)
        x = x.to(dtype)
        assert not xproj_kernel_applies(x, 4, rows)
        y_fwd, y_bwd, out_fwd, out_bwd = conv_silu_xproj_bidir(x, *conv, proj["fwd"], proj["bwd"])
        want_fwd, want_bwd = conv_silu_bidir(x, *conv)
        torch.testing.assert_close(y_fwd, want_fwd, rtol=0, atol=0)
        torch.testing.assert_close(y_bwd, want_bwd, rtol=0, atol=0)
        for out, y, w in ((out_fwd, y_fwd, proj["fwd"]), (out_bwd, y_bwd, proj["bwd"])):
            torch.testing.assert_close(out, F.linear(y, w.to(dtype)), rtol=0, atol=0)

    x, conv, proj = xproj_case(2, 197, 384, 48, seed=11)
    args = (*conv, proj["fwd"], proj["bwd"])
    assert_graphs_and_compiles(conv_silu_xproj_bidir, x, xproj_case(2, 197, 384, 48, seed=12)[0], args)


@cuda
@needs_gpu
def test_model_xproj_in_conv_equals_gemm(kernel_lib, monkeypatch):
    """The fp16 model on the GPU with x_proj inside the conv kernel against x_proj as a GEMM:
    the same up to the products' summation order (fp16-level agreement)."""
    from vimdeploy.model import TokenMajorFront
    from vimdeploy.ops import conv as conv_ops

    model = small_model(seed=7).cuda().half()
    x = torch.randn(2, 3, 224, 224, device="cuda").half()
    calls = count_calls(monkeypatch, conv_ops, "conv_silu_xproj_bidir")
    with torch.no_grad():
        fused = model.forward_features(x).float()
        assert len(calls) == len(model.layers), "the conv + x_proj kernel was not used"
        model.front = TokenMajorFront(xproj=False)
        ref = model.forward_features(x).float()
    assert len(calls) == len(model.layers)
    torch.testing.assert_close(fused, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
