"""Model structure: parameter counts, official key names, resolution changes."""

import math

import pytest
import torch

from vimdeploy.model import VARIANTS, VimConfig, VisionMamba, resample_pos_embed

from .conftest import small_model


def expected_parameters(embed_dim, depth=24, d_state=16, d_conv=4, patch=16, grid=14, classes=1000):
    """Counted from the architecture (hustvl/Vim + mamba-1p1p1 bimamba v2), not from our modules."""
    D, E, N, K = embed_dim, 2 * embed_dim, d_state, d_conv
    R = math.ceil(D / 16)
    per_layer = (
        D * 2 * E  # in_proj (no bias)
        + 2 * (E * K + E)  # conv1d, conv1d_b (depthwise, bias)
        + 2 * E * (R + 2 * N)  # x_proj, x_proj_b (no bias)
        + 2 * (R * E + E)  # dt_proj, dt_proj_b
        + 2 * E * N  # A_log, A_b_log
        + 2 * E  # D, D_b
        + E * D  # out_proj (no bias)
        + D  # RMSNorm weight
    )
    top = 3 * patch * patch * D + D + D + (grid * grid + 1) * D + D + D * classes + classes
    return depth * per_layer + top


@pytest.mark.parametrize(
    "variant,embed_dim,grid",
    [("tiny", 192, 14), ("small", 384, 14), ("base", 768, 14), ("tiny-s8", 192, 27), ("small-s8", 384, 27)],
)
def test_parameter_counts(variant, embed_dim, grid):
    with torch.device("meta"):
        model = VisionMamba(VARIANTS[variant])
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(embed_dim, grid=grid)


def test_vim_tiny_has_the_published_parameter_count():
    with torch.device("meta"):
        model = VisionMamba(VARIANTS["tiny"])
    assert sum(p.numel() for p in model.parameters()) == 7_148_008


def test_state_dict_keys_are_the_official_ones():
    with torch.device("meta"):
        sd = VisionMamba(VimConfig(depth=1)).state_dict()
    mixer = {
        "A_log",
        "D",
        "in_proj.weight",
        "conv1d.weight",
        "conv1d.bias",
        "x_proj.weight",
        "dt_proj.weight",
        "dt_proj.bias",
        "A_b_log",
        "conv1d_b.weight",
        "conv1d_b.bias",
        "x_proj_b.weight",
        "dt_proj_b.weight",
        "dt_proj_b.bias",
        "D_b",
        "out_proj.weight",
    }
    expected = {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "cls_token",
        "pos_embed",
        "norm_f.weight",
        "head.weight",
        "head.bias",
        "layers.0.norm.weight",
    } | {f"layers.0.mixer.{k}" for k in mixer}
    assert set(sd) == expected
    assert sd["layers.0.mixer.A_log"].shape == (384, 16) and sd["layers.0.mixer.conv1d.weight"].shape == (384, 1, 4)


def test_token_counts():
    assert VARIANTS["tiny"].tokens() == 197
    assert VARIANTS["tiny"].tokens(1248) == 6085
    assert VARIANTS["tiny-s8"].tokens() == 730


def test_resample_is_identity_at_the_native_grid():
    pe = torch.randn(1, 197, 8)
    assert resample_pos_embed(pe, 14, 14) is pe
    model = small_model()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        a = model(x)
        b = model.head(model.forward_features(x))
    torch.testing.assert_close(a, b)


def test_resample_keeps_the_class_token_apart_and_interpolates_the_grid():
    grid, c = 14, 4
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    patches = torch.stack([torch.ones_like(yy)] * c, -1).reshape(1, grid * grid, c).float() * 3.0
    cls = torch.full((1, 1, c), -7.0)
    mid = grid * grid // 2
    pe = torch.cat([patches[:, :mid], cls, patches[:, mid:]], dim=1)
    out = resample_pos_embed(pe, grid, 78)
    assert out.shape == (1, 78 * 78 + 1, c)
    new_mid = 78 * 78 // 2
    torch.testing.assert_close(out[:, new_mid], cls[:, 0])  # class token untouched, at the new middle
    rest = torch.cat([out[:, :new_mid], out[:, new_mid + 1 :]], dim=1)
    torch.testing.assert_close(rest, torch.full_like(rest, 3.0))  # a constant field stays constant


def test_set_input_size_bakes_the_resampled_embedding():
    model = small_model()
    x = torch.randn(1, 3, 256, 288)
    with torch.inference_mode():
        on_the_fly = model(x)
    trained = model.pos_embed
    model.set_input_size(256, 288)
    assert model.pos_grid == (16, 18) and model.pos_embed.shape[1] == 16 * 18 + 1
    torch.testing.assert_close(model.pos_embed.detach(), resample_pos_embed(trained.detach(), 14, (16, 18)))
    with torch.inference_mode():
        torch.testing.assert_close(model(x), on_the_fly, rtol=0, atol=0)
    model.set_input_size(256, 288)  # already baked: nothing resampled again
    assert model.pos_embed.shape[1] == 16 * 18 + 1


def test_bad_input_size_is_a_clear_error():
    from vimdeploy.errors import InputError

    model = small_model()
    with pytest.raises(InputError, match="patch grid"):
        model(torch.randn(1, 3, 225, 225))
    with pytest.raises(InputError, match="patch grid"):
        model(torch.randn(1, 3, 224, 230))


def test_high_resolution_1248_is_finite_and_sensible(golden_model):
    """6,085 tokens. The same picture at 224 and at 1248 should be read alike (cosine of logits)."""
    torch.manual_seed(0)
    small = torch.nn.functional.interpolate(torch.randn(1, 3, 28, 28), size=224, mode="bilinear")
    large = torch.nn.functional.interpolate(small, size=1248, mode="bilinear")
    with torch.inference_mode():
        a = golden_model(small)
        b = golden_model(large)
    assert torch.isfinite(b).all()
    assert b.std() < 10 * a.std()
    cos = torch.nn.functional.cosine_similarity(a, b).item()
    assert cos > 0.5, cos


@pytest.mark.parametrize("anti_causal", [False, True])
def test_token_major_conv_matches_the_transposing_conv(anti_causal):
    """The GPU path's shifted multiply-adds compute the same depthwise conv (both directions)."""
    from vimdeploy.model.front import depthwise_conv, depthwise_conv_token_major

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(16, 16, 4, groups=16, padding=3)
    for L in (1, 2, 5, 33):
        x = torch.randn(3, L, 16)
        padded = torch.nn.functional.pad(x, (0, 0, 3, 3))
        torch.testing.assert_close(
            depthwise_conv_token_major(padded, conv, anti_causal, L),
            depthwise_conv(x, conv, anti_causal),
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize("size", [(224, 224), (240, 256), (230, 250)])
def test_patch_embed_as_one_gemm_matches_the_conv(size):
    """The GPU path's patch embedding (permute + GEMM) against nn.Conv2d, in fp64; sizes that do
    not divide by the patch are cropped as the conv crops them."""
    from vimdeploy.model.vim import _patch_embed_gemm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 192, 16, 16).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    want = conv(x).flatten(2).transpose(1, 2)
    got = _patch_embed_gemm(x, conv)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_aligned_projections_give_the_same_dt_B_C():
    """The GPU path's padded x_proj/dt_proj against the plain ones, in fp64; in fp16 every
    GEMM operand and output slice starts and strides at multiples of 8 halves (16 bytes)."""
    from vimdeploy.model.front import dt_proj_aligned, x_proj_aligned

    torch.manual_seed(0)
    x_proj = torch.nn.Linear(384, 12 + 2 * 16, bias=False).double()
    dt_proj = torch.nn.Linear(12, 384, bias=False).double()
    xc = torch.randn(2, 50, 384, dtype=torch.float64)
    dt, B, C = x_proj(xc).split([12, 16, 16], dim=-1)
    want = (dt_proj(dt), B, C)
    dt_padded, B, C = x_proj_aligned(xc, x_proj.weight, 12, 16)
    assert dt_padded.shape[-1] == 16 and not dt_padded[..., 12:].any()  # zero columns up to a multiple of 8
    torch.testing.assert_close(dt_padded[..., :12], dt, rtol=1e-12, atol=1e-12)
    for g, w in zip((dt_proj_aligned(dt_padded, dt_proj.weight), B, C), want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    dt16, B16, C16 = x_proj_aligned(xc.half(), x_proj.weight.half(), 12, 16)
    for t in (dt16, B16, C16, dt_proj_aligned(dt16, dt_proj.weight.half())):
        assert t.stride(1) % 8 == 0 and t.storage_offset() % 8 == 0


def test_forward_is_one_torch_compile_graph():
    """No graph break in the forward (the scan backend is resolved when set, not imported per
    layer): torch.compile then sees the whole model, as the GPU benchmarks compile it."""
    model = small_model().eval()
    model.scan = "fast"
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(torch.randn(1, 3, 224, 224))
    assert explained.graph_break_count == 0, [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_the_front_is_chosen_per_model_and_cpu_takes_the_pytorch_path():
    """Every front computes the same CPU forward bit for bit (the token-major front runs on CUDA
    tensors only); the choice is the model's, shared by its blocks and its patch embedding."""
    from vimdeploy.model import TokenMajorFront, TorchFront, vim

    assert not any(
        hasattr(vim, flag)
        for flag in ("TOKEN_MAJOR_ON_GPU", "FUSED_CONV_ON_GPU", "DELTA_KERNEL_ON_GPU", "XPROJ_IN_CONV_ON_GPU")
    )
    model = small_model(seed=2)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = model(x)
        for front in ("torch", "token-major", TokenMajorFront(delta=False), "auto"):
            model.front = front
            assert all(layer.mixer.front is model.front for layer in model.layers)
            assert torch.equal(model(x), want), front
    model.front = "torch"
    assert isinstance(model.front, TorchFront) and not model.patch_embed.token_major
    model.front = "auto"
    assert model.patch_embed.token_major
    with pytest.raises(ValueError, match="unknown mixer front 'nope'"):
        model.front = "nope"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda.is_available() is false)")
def test_the_fronts_agree_on_the_gpu(monkeypatch):
    """On CUDA tensors the PyTorch front (transposes, cuDNN's depthwise conv) and the token-major
    front without and with its kernels compute the same fp32 forward up to summation order."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convs, not TF32
    model = small_model(seed=4).cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.no_grad():
        model.front = "torch"
        want = model(x)
        for front in ("token-major", "auto"):
            model.front = front
            torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
