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
from ..ops import conv as conv_ops
from ..ops import delta as delta_ops

__all__ = ["VisionMamba", "RMSNorm", "Mamba", "Block", "PatchEmbed", "resample_pos_embed", "output_names",
           "parse_output_name", "feature_map_name", "LOGITS", "FEATURES", "FEATURE_MAP"]


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
        conv = self.proj
        if x.is_cuda and TOKEN_MAJOR_ON_GPU and conv.kernel_size == conv.stride:
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


def _depthwise_conv(x: torch.Tensor, conv: nn.Conv1d, anti_causal: bool) -> torch.Tensor:
    """Depthwise conv over the token axis of x (B, L, E), causal or anti-causal.

    Anti-causal with the flipped kernel equals flip(causal_conv(flip(x))): what the
    official backward branch computes on its flipped sequence.
    """
    k = conv.weight.shape[-1]
    x = x.transpose(1, 2)
    w, b = conv.weight.to(x.dtype), conv.bias.to(x.dtype)  # fp32 taps in an fp16 model (bench's)
    if anti_causal:
        out = F.conv1d(F.pad(x, (0, k - 1)), w.flip(-1), b, groups=x.shape[1])
    else:
        out = F.conv1d(F.pad(x, (k - 1, 0)), w, b, groups=x.shape[1])
    return out.transpose(1, 2)


# The GPU layout of the mixer's front (two in_proj GEMMs, shifted multiply-adds for the
# convs); False restores the transposing path, for side-by-side measurement.
TOKEN_MAJOR_ON_GPU = True
# On that path, both convs + SiLU as one CUDA kernel (ops/conv.py) where the kernel library is
# built and x is fp16/fp32; False (or no library) keeps the multiply-adds, for side-by-side
# measurement (benchmarks/bench_conv.py).
FUSED_CONV_ON_GPU = True
# On that path in fp16, dt_proj + dt bias + softplus as one CUDA kernel (ops/delta.py), so that
# the scan gets delta (delta_softplus=False) and skips its per-step softplus; False keeps
# dt_proj's GEMM and the scan's softplus, for side-by-side measurement (bench_layout.py).
DELTA_KERNEL_ON_GPU = True
# With the fused conv in fp16, each direction's x_proj in the same kernel (ops/conv.py,
# conv_silu_xproj_bidir: the product reads the conv outputs from shared memory, not once more
# from global memory); False keeps x_proj as a GEMM, for side-by-side measurement (bench_layout.py).
XPROJ_IN_CONV_ON_GPU = True


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


def _pad8(rows: int) -> int:
    return rows + -rows % 8


def _x_proj_weight_aligned(x_proj_w: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    """x_proj's weight (rank + 2n, E) with dt's and (B, C)'s rows each zero-padded to a multiple
    of 8, _pad8(rank) + _pad8(2n) rows: the layout `_split_x_proj` reads (Vim-Ti: 12 + 32 -> 16 + 32)."""
    dt_w, bc_w = x_proj_w.split([rank, 2 * n])
    return torch.cat([F.pad(dt_w, (0, 0, 0, _pad8(rank) - rank)), F.pad(bc_w, (0, 0, 0, _pad8(2 * n) - 2 * n))])


def _split_x_proj(out: torch.Tensor, rank: int, n: int):
    """(dt, B, C) views of x_proj's output through `_x_proj_weight_aligned`; dt keeps its zero
    columns up to the next multiple of 8 (dt_proj reads it with zero weight columns)."""
    r = _pad8(rank)
    return out[..., :r], out[..., r : r + n], out[..., r + n : r + 2 * n]


def _x_proj_aligned(xc: torch.Tensor, x_proj_w: torch.Tensor, rank: int, n: int):
    """x_proj(xc) as (dt, B, C) with every GEMM operand 16-byte aligned: x_proj's output rows
    are padded to multiples of 8 (zero weight rows). Same values; with Vim's 12 + 16 + 16 = 44
    outputs and K = 12 cuBLAS ran its 2-byte-aligned kernels (H100, Vim-Ti at 1248 px batch
    32: ~8 ms of x_proj + dt_proj in a 59 ms forward)."""
    return _split_x_proj(F.linear(xc, _x_proj_weight_aligned(x_proj_w, rank, n)), rank, n)


def _dt_proj_aligned(dt_padded: torch.Tensor, dt_proj_w: torch.Tensor) -> torch.Tensor:
    """dt_proj (without bias) of `_x_proj_aligned`'s zero-padded dt."""
    return F.linear(dt_padded, F.pad(dt_proj_w, (0, dt_padded.shape[-1] - dt_proj_w.shape[-1])))


class Mamba(nn.Module):
    """The bimamba-v2 mixer (inference only)."""

    def __init__(self, cfg: VimConfig, scan: str | ScanFn = "auto"):
        super().__init__()
        d, e, n, r, k = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        self.d_state, self.dt_rank, self.out_scale = n, r, cfg.out_scale
        self.scan = scan  # the backend's name (or a function); resolved once, see the setter
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

    @property
    def scan(self) -> str | ScanFn:
        return self._scan

    @scan.setter
    def scan(self, name: str | ScanFn):
        # Resolved here, not per forward: get_scan imports the backend's module, and an import
        # inside forward is a torch.compile graph break (one per layer).
        self._scan, self._scan_fn = name, get_scan(name)

    def scan_inputs(self, hidden_states: torch.Tensor) -> tuple[ScanInputs, bool]:
        """Everything the BiSelectiveScan op consumes (export/op_contract.md), and its
        delta_softplus: True, except where dt is already delta (DELTA_KERNEL_ON_GPU)."""
        token_major = hidden_states.is_cuda and TOKEN_MAJOR_ON_GPU  # see _depthwise_conv_token_major
        fused = dbl = None
        if token_major:
            # Two GEMMs give contiguous x and z (the scan kernel wants z contiguous; a chunk
            # of one GEMM's output would be copied).
            x, z = (F.linear(hidden_states, w) for w in self.in_proj.weight.chunk(2, dim=0))
            convs = (self.conv1d.weight, self.conv1d.bias, self.conv1d_b.weight, self.conv1d_b.bias)
            if FUSED_CONV_ON_GPU and x.dtype in (torch.float16, torch.float32) and conv_ops.fused_conv_available():
                rows = _pad8(self.dt_rank) + _pad8(2 * self.d_state)  # of _x_proj_weight_aligned
                if (XPROJ_IN_CONV_ON_GPU and conv_ops.xproj_kernel_applies(x, convs[0].shape[-1], rows)
                        and conv_ops.fused_xproj_available()):
                    y_fwd, y_bwd, out_fwd, out_bwd = conv_ops.conv_silu_xproj_bidir(x, *convs, *(
                        _x_proj_weight_aligned(m.weight, self.dt_rank, self.d_state) for m in (self.x_proj, self.x_proj_b)))
                    fused, dbl = {"fwd": y_fwd, "bwd": y_bwd}, {"fwd": out_fwd, "bwd": out_bwd}
                else:
                    fused = dict(zip(("fwd", "bwd"), conv_ops.conv_silu_bidir(x, *convs)))
            else:
                k = self.conv1d.weight.shape[-1]
                x_padded = F.pad(x, (0, 0, k - 1, k - 1))
        else:
            x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        delta = token_major and DELTA_KERNEL_ON_GPU and x.dtype == torch.float16 and delta_ops.delta_kernel_available()
        inputs = {"z": z}
        for direction, suffix in (("fwd", ""), ("bwd", "_b")):
            conv = getattr(self, "conv1d" + suffix)
            x_proj = getattr(self, "x_proj" + suffix)
            dt_proj = getattr(self, "dt_proj" + suffix)
            if fused is not None:
                xc = fused[direction]
            elif token_major:
                xc = F.silu(_depthwise_conv_token_major(x_padded, conv, direction == "bwd", x.shape[1]))
            else:
                xc = F.silu(_depthwise_conv(x, conv, anti_causal=direction == "bwd"))
            # dt_proj's bias goes in the scan, in fp32 (or, with `delta`, into delta_softplus)
            if dbl is not None:  # x_proj ran in the conv kernel
                dt, B, C = _split_x_proj(dbl[direction], self.dt_rank, self.d_state)
            elif token_major:
                dt, B, C = _x_proj_aligned(xc, x_proj.weight, self.dt_rank, self.d_state)
            if token_major:
                if delta:
                    # (the bias cast here, not inside the opaque op: Inductor fuses it with the other casts)
                    dt = delta_ops.delta_softplus(dt[..., : self.dt_rank], dt_proj.weight, dt_proj.bias.float())
                else:
                    dt = _dt_proj_aligned(dt, dt_proj.weight)
            else:
                dt, B, C = x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
                dt = F.linear(dt, dt_proj.weight)
            inputs[f"x_{direction}"] = xc
            inputs[f"dt_{direction}"] = dt
            inputs[f"B_{direction}"] = B
            inputs[f"C_{direction}"] = C
        inputs["A_fwd"] = -torch.exp(self.A_log.float())
        inputs["A_bwd"] = -torch.exp(self.A_b_log.float())
        inputs["D_fwd"], inputs["D_bwd"] = self.D.float(), self.D_b.float()
        if delta:  # already in delta
            inputs["dt_bias_fwd"] = inputs["dt_bias_bwd"] = inputs["D_fwd"].new_zeros(inputs["D_fwd"].shape)
        else:
            inputs["dt_bias_fwd"], inputs["dt_bias_bwd"] = self.dt_proj.bias.float(), self.dt_proj_b.bias.float()
        return ScanInputs(**inputs), not delta

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        inputs, delta_softplus = self.scan_inputs(hidden_states)
        y = self._scan_fn(inputs, delta_softplus=delta_softplus, out_scale=self.out_scale)
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
    """"logits" -> ("logits", None); "feature_map_11" -> ("feature_map", 11)."""
    if name in (LOGITS, FEATURES, FEATURE_MAP):
        return name, None
    prefix = FEATURE_MAP + "_"
    if name.startswith(prefix) and name[len(prefix):].isdigit():
        return FEATURE_MAP, int(name[len(prefix):])
    from ..errors import InputError

    raise InputError(f"unknown output {name!r}: expected logits, features, feature_map or feature_map_<block>.")


def output_names(features: bool = True, feature_map: bool = False, out_indices=()) -> list[str]:
    """The ordered output list of an export: logits, features, feature_map, feature_map_<i>..."""
    names = [LOGITS] + ([FEATURES] if features else []) + ([FEATURE_MAP] if feature_map else [])
    return names + [feature_map_name(i) for i in out_indices]


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

    def set_input_size(self, height: int, width: int) -> "VisionMamba":
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
        patches = torch.cat([tokens[:, :mid], tokens[:, mid + 1:]], dim=1)
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
