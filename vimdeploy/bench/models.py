"""The models `vimdeploy bench` builds: Vim (checkpoint or untrained variant, fp16 as the golden
test's autocast has it) and timm's DeiT-Ti with eager or SDPA attention."""

from __future__ import annotations

import gc

from .common import BenchError, _need
from .runners import TorchRunner

DEIT_MODES = {"deit_tiny": ("eager", "sdpa"), "deit_tiny_eager": ("eager",), "deit_tiny_sdpa": ("sdpa",)}


def _vim_fp16(model):
    """fp16 with the numerics of the fp16 golden test's torch.autocast (tests/test_plugin_cuda.py):
    linear and patch-embedding weights in fp16 once (autocast would cast them on every call),
    while the scan parameters (A_log, D, dt biases), the norm weights, the mixer's conv taps and
    class token/pos embed casts stay as autocast has them: the scan gets fp32 A, D, dt bias (and
    the fp32 zeros it takes as dt bias after the delta kernel), the fused conv kernel its fp32
    taps (cast per call inside the op, these were 96 small copies per Vim-Ti forward: 0.3 ms on
    an H100); the residual stream is fp32."""
    import torch

    keep = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if n.split(".")[-1] in ("A_log", "A_b_log", "D", "D_b")
        or n.endswith(("dt_proj.bias", "dt_proj_b.bias"))
        or (n.endswith(".weight") and ("norm" in n))
        or ".conv1d" in n
    }
    model.half()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in keep:
                p.data = keep[n].float()
        for layer in model.layers:
            layer.mixer.dt_bias_zero = layer.mixer.dt_bias_zero.float()
    return model


def vim_runner(
    source="vim_tiny",
    scan="cuda",
    dtype="fp16",
    device="cuda",
    cuda_graphs=False,
    ema=False,
    name=None,
    compile=False,
    freeze=False,
    front="auto",
) -> TorchRunner:
    """Vim from a checkpoint path, or untrained from VARIANTS ("vim_tiny", "vim_small", "vim_base").
    `freeze` (with `compile`): Inductor's freezing, see `compiled`. `front`: the mixer's front
    (vimdeploy.model.front: "auto", "torch", "token-major" or a MixerFront)."""
    import torch

    from ..model import VARIANTS, VisionMamba, load_model

    if scan == "cuda":
        if device != "cuda":
            raise BenchError("--scan cuda runs on the GPU; use --scan fast with --device cpu")
        from ..ops import native

        try:
            native.load_library()
        except native.PluginError as e:
            raise BenchError(
                f"--scan cuda needs the kernel library ({e}); build it with `vimdeploy plugin build`"
            ) from None
    key = str(source)
    if key.startswith("vim_") and key[4:] in VARIANTS:
        model = VisionMamba(VARIANTS[key[4:]], scan=scan).init_weights("untrained")
        label = "Vim-" + {"tiny": "Ti", "small": "S", "base": "B"}.get(key[4:], key[4:])
    else:
        model, _ = load_model(source, ema=ema, scan=scan)
        label = f"Vim {model.cfg.variant}"
    model.front = front
    if dtype == "fp16":
        _vim_fp16(model)
    label = name or (
        f"{label} ({scan} scan{', torch.compile' if compile else ''}"
        f"{f' {compile}' if isinstance(compile, str) else ''}{', frozen' if compile and freeze else ''}"
        f"{', CUDA graphs' if cuda_graphs and device == 'cuda' else ''})"
    )
    # At each size the position embedding is baked in once (set_input_size), as in a model
    # deployed at that resolution and as timm builds DeiT per size (deit_runner): resampling
    # it on every forward cost 0.57 ms of Vim-Ti's 50 ms at 1248 px batch 32 on an H100.
    trained = (model.pos_embed, model.pos_grid)

    def on_size(size):
        model.pos_embed, model.pos_grid = trained
        model.set_input_size(size, size)

    module = model
    if compile:
        # Inductor fuses the element-wise work around the scan (norms, SiLU, conv taps,
        # casts; half of Vim-Ti's GPU time without it, docs/bench.md); the scan stays our
        # opaque custom op. One compilation per input shape.
        module = compiled(model.to(device), compile, freeze)
    return TorchRunner(
        label,
        module,
        device=device,
        input_dtype=torch.float16 if dtype == "fp16" else torch.float32,
        cuda_graphs=cuda_graphs,
        on_size=on_size,
        patch=model.cfg.patch_size,
        stride=model.cfg.stride,
        info={"model": key, "scan": scan, "dtype": dtype, "params_m": _params_m(model), "depth": len(model.layers)}
        | {"freeze": bool(compile and freeze)},
    )


def _params_m(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def compiled(module, compile, freeze=False):
    """torch.compile as Vim and DeiT get it here: one graph per input shape. `compile`: True =
    Inductor's default mode, or a mode name such as "max-autotune-no-cudagraphs" (Triton GEMM
    templates, autotuned; the runners capture CUDA graphs themselves).

    `freeze`: Inductor's freezing (default mode only): parameters become constants, so the
    weight-only work of a forward (Vim: -exp(A_log), the padded x_proj weights, dtype casts)
    is folded at compile time, as a model deployed for inference would have it. A parameter
    that changes (Vim's position embedding, baked per size) is then a guard failure and a
    recompilation, so the recompile limit is raised (in this process) to one graph per shape.
    Freezing is switched on around each call (`torch._inductor.config.patch`), where Dynamo sees
    it: given as torch.compile's `options` it reaches Inductor only, Dynamo lifts the parameters
    as graph inputs and nothing is frozen (torch 2.11 and 2.13; TORCH_LOGS=output_code shows
    -exp(A_log) recomputed per call). Dynamo caches graphs per code object, and one compiled
    without freezing serves any instance of the class, a frozen model included: so Dynamo's
    caches are reset here (models compiled before recompile on their next call), and a frozen
    model is to be timed before an unfrozen one of its class is compiled (the runners of
    bench_layout.py and bench_e2e_edge.py are built and timed one after another)."""
    import torch

    if not freeze:
        return torch.compile(module, dynamic=False, mode=None if compile is True else str(compile))
    if compile is not True:
        raise BenchError(f"freezing is measured with Inductor's default mode only, not {compile!r}")
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))
    torch._dynamo.reset()
    return _frozen(torch.compile(module, dynamic=False))


def _frozen(compiled_module):
    """`compiled_module` called with Inductor's freezing on; other attributes are its own."""
    import torch

    class Frozen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.compiled = compiled_module

        def forward(self, *args, **kwargs):
            with torch._inductor.config.patch(freezing=True):
                return self.compiled(*args, **kwargs)

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.compiled, name)

    return Frozen()


def deit_runner(
    mode="eager", dtype="fp16", device="cuda", cuda_graphs=False, compile=False, freeze=False
) -> DeiTRunner:
    return DeiTRunner(mode, dtype, device, cuda_graphs, compile, freeze)


class DeiTRunner(TorchRunner):
    """timm's deit_tiny_patch16_224 (untrained), rebuilt per resolution with img_size=size
    (pos-embed at that grid, as an interpolated trained one would be); attention eager
    (`fused_attn=False`: q@k^T, softmax, @v, the Vim paper's setting) or SDPA (FlashAttention
    where PyTorch picks it). fp16: the model in .half(). `compile`: torch.compile (Inductor), the
    treatment the Vim runner gets in the side-by-side comparison; `freeze` (with `compile`):
    Inductor's freezing as `compiled` gives Vim (each size is a model built anew, so no
    recompilation beyond one per size)."""

    def __init__(self, mode="eager", dtype="fp16", device="cuda", cuda_graphs=False, compile=False, freeze=False):
        import torch

        self.timm = _need("timm", "--compare deit_tiny")
        self.mode = mode
        self.compile = compile
        self.freeze = bool(compile) and freeze
        self.device = device  # _build needs it before Runner.__init__ sets it
        self.dtype = torch.float16 if dtype == "fp16" else torch.float32
        self._size = None
        label = (
            ("eager attention" if mode == "eager" else "SDPA")
            + (", torch.compile" if compile else "")
            + (f" {compile}" if isinstance(compile, str) else "")
            + (", frozen" if self.freeze else "")
            + (", CUDA graphs" if cuda_graphs else "")
        )
        super().__init__(
            f"DeiT-Ti ({label})",
            self._build(224),
            device=device,
            input_dtype=self.dtype,
            cuda_graphs=cuda_graphs,
            info={
                "model": "deit_tiny_patch16_224",
                "attention": mode,
                "dtype": dtype,
                "compile": compile,
                "freeze": self.freeze,
            },
        )
        self._size = 224
        self.info["params_m"] = _params_m(self.module)
        self.info["depth"] = len(self.module.blocks) if hasattr(self.module, "blocks") else None

    def _build(self, size):
        m = self.timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=size)
        for blk in m.blocks:
            blk.attn.fused_attn = self.mode == "sdpa"
        m = m.eval().to(self.dtype)
        if self.compile:
            return compiled(m.to(self.device), self.compile, self.freeze)
        return m

    def prepare(self, size, batch):
        if size != self._size:
            self.module = None
            gc.collect()
            self.module = self._build(size).to(self.device)
            self._size = size
        return super().prepare(size, batch)
