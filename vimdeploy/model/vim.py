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

import torch
import torch.nn.functional as F
from torch import nn

from .config import VimConfig
from ..ops import ScanFn, ScanInputs, get_scan

__all__ = ["VisionMamba", "RMSNorm", "Mamba", "Block", "PatchEmbed", "resample_pos_embed"]


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
    def __init__(self, cfg: VimConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.stride)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, M, C)


def _depthwise_conv(x: torch.Tensor, conv: nn.Conv1d, anti_causal: bool) -> torch.Tensor:
    """Depthwise conv over the token axis of x (B, L, E), causal or anti-causal.

    Anti-causal with the flipped kernel equals flip(causal_conv(flip(x))): what the
    official backward branch computes on its flipped sequence.
    """
    k = conv.weight.shape[-1]
    x = x.transpose(1, 2)
    if anti_causal:
        out = F.conv1d(F.pad(x, (0, k - 1)), conv.weight.flip(-1), conv.bias, groups=x.shape[1])
    else:
        out = F.conv1d(F.pad(x, (k - 1, 0)), conv.weight, conv.bias, groups=x.shape[1])
    return out.transpose(1, 2)


# The GPU layout of the mixer's front (two in_proj GEMMs, shifted multiply-adds for the
# convs); False restores the transposing path, for side-by-side measurement.
TOKEN_MAJOR_ON_GPU = True


def _depthwise_conv_token_major(x_padded: torch.Tensor, conv: nn.Conv1d, anti_causal: bool, length: int):
    """`_depthwise_conv` as k multiply-adds of shifted views, with no transpose.

    `x_padded` is x (B, L, E) padded by k-1 tokens on BOTH sides, so that one copy serves
    both directions: causal y_t = b + sum_j w_j x_{t-(k-1)+j} reads x_padded[t + j];
    anti-causal y_t = b + sum_j w_j x_{t+(k-1)-j} reads x_padded[t + 2(k-1) - j].
    Used on GPUs, where it replaced two transposes and cuDNN's generic depthwise kernel
    (measured in docs/bench.md: those copies and that kernel were 60-70% of Vim-Ti's time).
    """
    w = conv.weight[:, 0, :].to(x_padded.dtype)  # (E, k)
    k = w.shape[-1]
    out = conv.bias.to(x_padded.dtype).expand(x_padded.shape[0], length, -1)
    for j in range(k):
        start = 2 * (k - 1) - j if anti_causal else j
        out = torch.addcmul(out, x_padded[:, start : start + length], w[:, j])
    return out


class Mamba(nn.Module):
    """The bimamba-v2 mixer (inference only)."""

    def __init__(self, cfg: VimConfig, scan: str | ScanFn = "auto"):
        super().__init__()
        d, e, n, r, k = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        self.d_state, self.dt_rank, self.out_scale = n, r, cfg.out_scale
        self.scan = scan
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

    def scan_inputs(self, hidden_states: torch.Tensor) -> ScanInputs:
        """Everything the BiSelectiveScan op consumes (export/op_contract.md)."""
        token_major = hidden_states.is_cuda and TOKEN_MAJOR_ON_GPU  # see _depthwise_conv_token_major
        if token_major:
            # Two GEMMs give contiguous x and z (the scan kernel wants z contiguous; a chunk
            # of one GEMM's output would be copied).
            x, z = (F.linear(hidden_states, w) for w in self.in_proj.weight.chunk(2, dim=0))
            k = self.conv1d.weight.shape[-1]
            x_padded = F.pad(x, (0, 0, k - 1, k - 1))
        else:
            x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        inputs = {"z": z}
        for direction, suffix in (("fwd", ""), ("bwd", "_b")):
            conv = getattr(self, "conv1d" + suffix)
            x_proj = getattr(self, "x_proj" + suffix)
            dt_proj = getattr(self, "dt_proj" + suffix)
            if token_major:
                xc = F.silu(_depthwise_conv_token_major(x_padded, conv, direction == "bwd", x.shape[1]))
            else:
                xc = F.silu(_depthwise_conv(x, conv, anti_causal=direction == "bwd"))
            dt, B, C = x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
            inputs[f"x_{direction}"] = xc
            inputs[f"dt_{direction}"] = F.linear(dt, dt_proj.weight)  # bias goes in the scan, in fp32
            inputs[f"B_{direction}"] = B
            inputs[f"C_{direction}"] = C
        inputs["A_fwd"] = -torch.exp(self.A_log.float())
        inputs["A_bwd"] = -torch.exp(self.A_b_log.float())
        inputs["D_fwd"], inputs["D_bwd"] = self.D.float(), self.D_b.float()
        inputs["dt_bias_fwd"], inputs["dt_bias_bwd"] = self.dt_proj.bias.float(), self.dt_proj_b.bias.float()
        return ScanInputs(**inputs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        y = get_scan(self.scan)(self.scan_inputs(hidden_states), delta_softplus=True, out_scale=self.out_scale)
        return self.out_proj(y)


class Block(nn.Module):
    """Add -> RMSNorm -> mixer; returns (mixer output, fp32 residual)."""

    def __init__(self, cfg: VimConfig, scan: str | ScanFn = "auto"):
        super().__init__()
        self.mixer = Mamba(cfg, scan)
        self.norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)

    def forward(self, hidden_states, residual=None):
        hidden_states, residual = self.norm.add_norm(hidden_states, residual)
        return self.mixer(hidden_states), residual


def resample_pos_embed(pos_embed: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """Resample a middle-class-token position embedding (1, old_grid**2 + 1, C) to a new grid.

    The patch positions are interpolated bicubically over the 2-D grid, as the official
    repo does when it changes resolution (main.py: F.interpolate, bicubic,
    align_corners=False); the class token's own embedding is kept apart and re-inserted at
    the new middle. (The official main.py keeps index 0 apart, which is the class token only
    for head-class-token models; for the middle-token models it is the one at M // 2.)
    """
    if old_grid == new_grid:
        return pos_embed
    old_mid, new_mid = old_grid * old_grid // 2, new_grid * new_grid // 2
    cls = pos_embed[:, old_mid : old_mid + 1]
    patches = torch.cat([pos_embed[:, :old_mid], pos_embed[:, old_mid + 1 :]], dim=1)
    c = patches.shape[-1]
    patches = patches.reshape(1, old_grid, old_grid, c).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, c).to(pos_embed.dtype)
    return torch.cat([patches[:, :new_mid], cls, patches[:, new_mid:]], dim=1)


class VisionMamba(nn.Module):
    """Vim for image classification. `scan` picks the selective-scan backend: a name of
    `vimdeploy.ops.SCANS` ("auto", "reference", "fast", "cpu", "cuda") or a function."""

    def __init__(self, cfg: VimConfig = VimConfig(), scan: str | ScanFn = "auto"):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens(), cfg.embed_dim))
        self.layers = nn.ModuleList(Block(cfg, scan) for _ in range(cfg.depth))
        self.norm_f = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)

    @property
    def scan(self) -> str | ScanFn:
        return self.layers[0].mixer.scan

    @scan.setter
    def scan(self, name: str | ScanFn):
        get_scan(name)  # fail early on an unknown name
        for layer in self.layers:
            layer.mixer.scan = name

    def grid_for(self, height: int, width: int) -> int:
        cfg = self.cfg
        ok = height == width and height >= cfg.patch_size and (height - cfg.patch_size) % cfg.stride == 0
        if not ok:
            from ..errors import InputError

            raise InputError(
                f"input {height}x{width} does not fit the patch grid: Vim takes square images whose side "
                f"is {cfg.patch_size} + k*{cfg.stride} pixels (e.g. {cfg.img_size}, "
                f"{cfg.img_size + 2 * cfg.stride * 4})."
            )
        return cfg.grid(height)

    def pos_embed_for(self, grid: int) -> torch.Tensor:
        """The position embedding for a patch grid, resampled when it is not the trained one."""
        return resample_pos_embed(self.pos_embed, self.cfg.grid(), grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid_for(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        b, m, _ = x.shape
        mid = m // 2
        x = torch.cat([x[:, :mid], self.cls_token.expand(b, -1, -1).to(x.dtype), x[:, mid:]], dim=1)
        x = x + self.pos_embed_for(grid).to(x.dtype)
        hidden, residual = x, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        hidden, _ = self.norm_f.add_norm(hidden, residual)
        return hidden[:, mid]

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = self.forward_features(x)
        return features if return_features else self.head(features)
