"""Vision Mamba (Vim) in plain PyTorch, identical in function to the official model.

Reproduces hustvl/Vim `vim/models_mamba.py` with mamba-1p1p1's bimamba-v2 mixer on its
fused path (`mamba_inner_fn_no_out_proj` twice + the Triton fused add-RMSNorm), i.e. the
`*_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2` models:

* patch embedding Conv2d(kernel=patch, stride=stride), class token inserted at the middle
  of the patch sequence (index M // 2), absolute position embedding added after that;
* 24 blocks of "add -> RMSNorm -> mixer", with the residual stream kept in fp32;
* bimamba v2: the backward branch has its own conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b
  and runs on the flipped sequence; out_proj((y_f + flip(y_b)) / 2);
* final add -> RMSNorm, the middle class token read back, a linear head.

Module and parameter names are the official ones, so official state dicts load strictly.
The two directions are written without flips: the backward conv is anti-causal and the
backward scan runs in reverse, which is the same computation (see export/op_contract.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import ScanFn, ScanInputs, get_scan
from .config import VimConfig
from .front import MixerFront, get_front

__all__ = [
    "VisionMamba",
    "RMSNorm",
    "Mamba",
    "Block",
    "PatchEmbed",
    "resample_pos_embed",
    "output_names",
    "parse_output_name",
    "feature_map_name",
    "LOGITS",
    "FEATURES",
    "FEATURE_MAP",
]


class RMSNorm(nn.Module):
    """mamba_ssm's RMSNorm (weight only, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor | None):
        """mamba_ssm's fused add + RMSNorm with residual_in_fp32=True.

        Returns (normed in x's dtype, new fp32 residual = x + residual).
        """
        residual = x.float() if residual is None else residual + x.float()
        normed = residual * torch.rsqrt(residual.square().mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype), residual

    def forward(self, x):
        return self.add_norm(x, None)[0]


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VimConfig, token_major: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.stride)
        self.token_major = token_major  # on CUDA tensors, `_patch_embed_gemm` where it applies

    def forward(self, x):
        conv = self.proj
        if x.is_cuda and self.token_major and conv.kernel_size == conv.stride:
            return _patch_embed_gemm(x, conv)
        return conv(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, M, C)


def _patch_embed_gemm(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(x).flatten(2).transpose(1, 2)` for non-overlapping patches (kernel == stride), as
    one GEMM over the patches laid out token-major (one permute copy). On an H100 cuDNN ran
    an implicit-GEMM kernel that took 1.7 ms of Vim-Ti's 59 ms at 1248 px batch 32."""
    (ph, pw), b, c = conv.kernel_size, x.shape[0], x.shape[1]
    gh, gw = (x.shape[2] - ph) // ph + 1, (x.shape[3] - pw) // pw + 1
    x = x[:, :, : gh * ph, : gw * pw].reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
    return F.linear(x.reshape(b, gh * gw, c * ph * pw), conv.weight.reshape(conv.out_channels, -1), conv.bias)


def _zero_dt_bias(module, _incompatible_keys) -> None:
    module.dt_bias_zero.zero_()


class Mamba(nn.Module):
    """The bimamba-v2 mixer (inference only)."""

    def __init__(self, cfg: VimConfig, scan: str | ScanFn = "auto", front: str | MixerFront = "auto"):
        super().__init__()
        d, e, n, r, k = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        self.d_state, self.dt_rank, self.out_scale = n, r, cfg.out_scale
        self.scan = scan  # the backend's name (or a function); resolved once, see the setter
        self.front = front  # what computes the scan's activations (model/front.py)
        self.in_proj = nn.Linear(d, 2 * e, bias=False)
        self.out_proj = nn.Linear(e, d, bias=False)
        for suffix in ("", "_b"):
            setattr(self, "conv1d" + suffix, nn.Conv1d(e, e, k, groups=e, padding=k - 1))
            setattr(self, "x_proj" + suffix, nn.Linear(e, r + 2 * n, bias=False))
            setattr(self, "dt_proj" + suffix, nn.Linear(r, e, bias=True))
            setattr(self, "D" + suffix, nn.Parameter(torch.ones(e)))
        # mamba_ssm's S4D-real initialisation: A = -(1..N) per channel.
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1)
        self.A_log = nn.Parameter(a_log.clone())
        self.A_b_log = nn.Parameter(a_log.clone())
        # The scan's dt bias where the front computed delta: zeros made once, not per forward
        # (not in the state_dict: checkpoints load as they are). Zeroed again after every
        # load_state_dict: load_model builds on the meta device, and to_empty leaves it unset.
        self.register_buffer("dt_bias_zero", torch.zeros(e), persistent=False)
        self.register_load_state_dict_post_hook(_zero_dt_bias)

    @property
    def scan(self) -> str | ScanFn:
        return self._scan

    @scan.setter
    def scan(self, name: str | ScanFn):
        # Resolved here, not per forward: get_scan imports the backend's module, and an import
        # inside forward is a torch.compile graph break (one per layer).
        self._scan, self._scan_fn = name, get_scan(name)

    @property
    def front(self) -> MixerFront:
        return self._front

    @front.setter
    def front(self, front: str | MixerFront):
        self._front = get_front(front)

    def scan_inputs(self, hidden_states: torch.Tensor) -> tuple[ScanInputs, bool]:
        """Everything the BiSelectiveScan op consumes (export/op_contract.md), and its
        delta_softplus: True, except where the front computed delta itself (its delta kernel)."""
        inputs, delta = self.front.activations(self, hidden_states)
        inputs["A_fwd"] = -torch.exp(self.A_log.float())
        inputs["A_bwd"] = -torch.exp(self.A_b_log.float())
        inputs["D_fwd"], inputs["D_bwd"] = self.D.float(), self.D_b.float()
        if delta:  # already in delta; .float(): a model in .half() has the zeros in fp16
            inputs["dt_bias_fwd"] = inputs["dt_bias_bwd"] = self.dt_bias_zero.float()
        else:
            inputs["dt_bias_fwd"], inputs["dt_bias_bwd"] = self.dt_proj.bias.float(), self.dt_proj_b.bias.float()
        return ScanInputs(**inputs), not delta

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        inputs, delta_softplus = self.scan_inputs(hidden_states)
        y = self._scan_fn(inputs, delta_softplus=delta_softplus, out_scale=self.out_scale)
        return self.out_proj(y)


class Block(nn.Module):
    """Add -> RMSNorm -> mixer; returns (mixer output, fp32 residual)."""

    def __init__(self, cfg: VimConfig, scan: str | ScanFn = "auto", front: str | MixerFront = "auto"):
        super().__init__()
        self.mixer = Mamba(cfg, scan, front)
        self.norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)

    def forward(self, hidden_states, residual=None):
        hidden_states, residual = self.norm.add_norm(hidden_states, residual)
        return self.mixer(hidden_states), residual


def _pair(grid) -> tuple:
    return tuple(grid) if isinstance(grid, (tuple, list)) else (grid, grid)


def resample_pos_embed(pos_embed: torch.Tensor, old_grid, new_grid) -> torch.Tensor:
    """Resample a middle-class-token position embedding (1, gh*gw + 1, C) to a new patch grid.

    Grids are (rows, cols) or one int for a square. The patch positions are interpolated
    bicubically over the 2-D grid, as the official repo does when it changes resolution
    (main.py: F.interpolate, bicubic, align_corners=False); the class token's own embedding
    is kept apart and re-inserted at the new middle. (The official main.py keeps index 0
    apart, which is the class token only for head-class-token models; for the middle-token
    models it is the one at M // 2.)

    `new_grid` may be symbolic (torch.export with a dynamic resolution): then the resize is
    always in the graph (ONNX Resize, cubic); at the trained size it is the identity.
    """
    (oh, ow), (nh, nw) = _pair(old_grid), _pair(new_grid)
    if all(isinstance(g, int) for g in (nh, nw)) and (oh, ow) == (nh, nw):
        return pos_embed
    old_mid = oh * ow // 2
    cls = pos_embed[:, old_mid : old_mid + 1]
    patches = torch.cat([pos_embed[:, :old_mid], pos_embed[:, old_mid + 1 :]], dim=1)
    c = patches.shape[-1]
    patches = patches.reshape(1, oh, ow, c).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(nh, nw), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, nh * nw, c).to(pos_embed.dtype)
    new_mid = nh * nw // 2
    return torch.cat([patches[:, :new_mid], cls, patches[:, new_mid:]], dim=1)


# Graph outputs a model can give (`VisionMamba.forward_outputs`), by name.
LOGITS, FEATURES, FEATURE_MAP = "logits", "features", "feature_map"


def feature_map_name(block: int) -> str:
    return f"{FEATURE_MAP}_{block}"


def parse_output_name(name: str) -> tuple[str, int | None]:
    """ "logits" -> ("logits", None); "feature_map_11" -> ("feature_map", 11)."""
    if name in (LOGITS, FEATURES, FEATURE_MAP):
        return name, None
    prefix = FEATURE_MAP + "_"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return FEATURE_MAP, int(name[len(prefix) :])
    from ..errors import InputError

    raise InputError(f"unknown output {name!r}: expected logits, features, feature_map or feature_map_<block>.")


def output_names(features: bool = True, feature_map: bool = False, out_indices=()) -> list[str]:
    """The ordered output list of an export: logits, features, feature_map, feature_map_<i>..."""
    names = [LOGITS] + ([FEATURES] if features else []) + ([FEATURE_MAP] if feature_map else [])
    return names + [feature_map_name(i) for i in out_indices]


class VisionMamba(nn.Module):
    """Vim for image classification. `scan` picks the selective-scan backend: a name of
    `vimdeploy.ops.SCANS` ("auto", "reference", "fast", "cpu", "cuda") or a function; `front`
    what computes the scan's inputs: a name of `vimdeploy.model.front.FRONTS` ("auto",
    "torch", "token-major") or a `MixerFront`. Both can be changed later (`model.scan = ...`,
    `model.front = ...`)."""

    def __init__(self, cfg: VimConfig = VimConfig(), scan: str | ScanFn = "auto", front: str | MixerFront = "auto"):
        super().__init__()
        self.cfg = cfg
        front = get_front(front)  # one object, shared by the blocks
        self.patch_embed = PatchEmbed(cfg, front.token_major)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens(), cfg.embed_dim))
        self.layers = nn.ModuleList(Block(cfg, scan, front) for _ in range(cfg.depth))
        self.norm_f = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        # The patch grid `pos_embed` is laid out for: the trained one, unless an exporter baked
        # the embedding for its fixed resolution (then other grids resample from that one).
        self.pos_grid = (cfg.grid(), cfg.grid())

    @property
    def scan(self) -> str | ScanFn:
        return self.layers[0].mixer.scan

    @scan.setter
    def scan(self, name: str | ScanFn):
        get_scan(name)  # fail early on an unknown name
        for layer in self.layers:
            layer.mixer.scan = name

    def init_weights(self, mode: str = "official", seed: int = 0) -> VisionMamba:
        """Initialise the weights in place (as timm's `init_weights`); returns the model.

        "official": hustvl/Vim's start of training for what the modules leave at zero: pos_embed
        and cls_token truncated normal (std 0.02), from torch's global generator (seed it before
        building the model: `vimdeploy.digits` trains from this).
        "untrained": weights at a trained model's scale, for models that run without training
        (the demo, benchmarks; fp16 neither overflows nor underflows): every matrix and pos_embed
        normal (std 0.02), the dt biases as mamba_ssm initialises them (softplus^-1 of dt
        log-uniform in [1e-3, 1e-1]), the other biases zero; the scan's A_log, D, the norms and
        cls_token as built. All drawn from a generator seeded with `seed`: one seed, one set of weights.
        """
        if mode not in ("official", "untrained"):
            raise ValueError(f"unknown init mode {mode!r}; known: official, untrained")
        with torch.no_grad():
            if mode == "official":
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
                nn.init.trunc_normal_(self.cls_token, std=0.02)
                return self
            g = torch.Generator().manual_seed(seed)
            lo, hi = math.log(1e-3), math.log(0.1)
            for name, p in self.named_parameters():
                if name.endswith(("dt_proj.bias", "dt_proj_b.bias")):
                    dt = torch.exp(torch.rand(p.shape, generator=g) * (hi - lo) + lo)
                    p.copy_(dt + torch.log(-torch.expm1(-dt)))
                elif (name.endswith("weight") and p.dim() >= 2) or name == "pos_embed":
                    p.normal_(0, 0.02, generator=g)
                elif name.endswith("bias"):
                    p.zero_()
        return self

    @property
    def front(self) -> MixerFront:
        return self.layers[0].mixer.front

    @front.setter
    def front(self, front: str | MixerFront):
        front = get_front(front)
        self.patch_embed.token_major = front.token_major
        for layer in self.layers:
            layer.mixer.front = front

    def grid_for(self, height, width) -> tuple:
        """(rows, cols) of the patch grid for an input of height x width pixels.

        Any size whose sides are patch + k*stride pixels; symbolic sizes (torch.export with a
        dynamic resolution, constrained to the grid by the exporter) pass unchecked.
        """
        cfg = self.cfg
        if isinstance(height, int) and isinstance(width, int):
            ok = all(side >= cfg.patch_size and (side - cfg.patch_size) % cfg.stride == 0 for side in (height, width))
            if not ok:
                from ..errors import InputError

                raise InputError(
                    f"input {height}x{width} does not fit the patch grid: each side of a Vim input must be "
                    f"{cfg.patch_size} + k*{cfg.stride} pixels (e.g. {cfg.img_size}, "
                    f"{cfg.img_size + 2 * cfg.stride * 4})."
                )
        return cfg.grid(height), cfg.grid(width)

    def pos_embed_for(self, grid) -> torch.Tensor:
        """The position embedding for a patch grid (rows, cols), resampled when it is not the trained one."""
        return resample_pos_embed(self.pos_embed, self.pos_grid, grid)

    def set_input_size(self, height: int, width: int) -> VisionMamba:
        """Bake the position embedding for height x width inputs into the model (resampled once,
        as timm's `set_input_size`), so that a forward at that size does no resize: what a model
        deployed at one resolution has (the exporter's fixed-size graphs). Other sizes still
        work, resampled from the baked grid."""
        grid = self.grid_for(height, width)  # InputError for a size off the patch grid
        if grid != self.pos_grid:
            with torch.no_grad():
                self.pos_embed = nn.Parameter(self.pos_embed_for(grid), requires_grad=self.pos_embed.requires_grad)
            self.pos_grid = grid
        return self

    def forward_tokens(self, x: torch.Tensor, out_indices=()) -> tuple[torch.Tensor, dict, tuple]:
        """The token sequence after the final add + norm (B, gh*gw + 1, C), the class token at
        index gh*gw // 2; the outputs of the blocks in `out_indices` (the mixer outputs, before
        they join the residual stream: what hustvl/Vim's segmentation backbone takes, see
        docs/backbone.md); and the grid (gh, gw)."""
        grid = self.grid_for(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        b, m, _ = x.shape
        mid = m // 2
        x = torch.cat([x[:, :mid], self.cls_token.expand(b, -1, -1).to(x.dtype), x[:, mid:]], dim=1)
        x = x + self.pos_embed_for(grid).to(x.dtype)
        hidden, residual, taken = x, None, {}
        wanted = set(out_indices)
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual)
            if i in wanted:
                taken[i] = hidden
        hidden, _ = self.norm_f.add_norm(hidden, residual)
        return hidden, taken, grid

    @staticmethod
    def to_feature_map(tokens: torch.Tensor, grid) -> torch.Tensor:
        """(B, gh*gw + 1, C) with the middle class token -> (B, C, gh, gw), patches in image order."""
        gh, gw = grid
        mid = gh * gw // 2
        patches = torch.cat([tokens[:, :mid], tokens[:, mid + 1 :]], dim=1)
        return patches.reshape(tokens.shape[0], gh, gw, tokens.shape[-1]).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _, (gh, gw) = self.forward_tokens(x)
        return hidden[:, gh * gw // 2]

    def forward_outputs(self, x: torch.Tensor, names=(LOGITS,)) -> dict[str, torch.Tensor]:
        """The named outputs (see `output_names`) from one pass over the blocks."""
        parsed = {name: parse_output_name(name) for name in names}
        blocks = sorted({i for kind, i in parsed.values() if i is not None})
        bad = [i for i in blocks if not 0 <= i < self.cfg.depth]
        if bad:
            from ..errors import InputError

            raise InputError(f"out indices {bad} outside this model's blocks 0..{self.cfg.depth - 1}.")
        hidden, taken, grid = self.forward_tokens(x, blocks)
        features = hidden[:, grid[0] * grid[1] // 2]
        out = {}
        for name, (kind, i) in parsed.items():
            if kind == LOGITS:
                out[name] = self.head(features)
            elif kind == FEATURES:
                out[name] = features
            else:
                out[name] = self.to_feature_map(hidden if i is None else taken[i], grid)
        return out

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = self.forward_features(x)
        return features if return_features else self.head(features)
