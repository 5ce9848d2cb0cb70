"""The mixer's front: everything a bimamba-v2 mixer computes before its scan (in_proj, the
two depthwise convs + SiLU, x_proj, dt_proj), chosen once per model as an object.

A front turns a mixer's weights and its hidden states into the activations of the scan's
inputs (export/op_contract.md). Two implementations, picked by name like a scan backend
(`get_front`), or given as an object (`TokenMajorFront(conv=False)`):

* `auto` (default), `TokenMajorFront()`: on CUDA tensors the token-major layout with every CUDA
  kernel that applies; elsewhere the PyTorch path;
* `torch`, `TorchFront()`: the transposing PyTorch path, the official model's computation, on
  every device;
* `token-major`, `TokenMajorFront(conv=False, xproj=False, delta=False)`: the token-major layout
  in PyTorch alone on CUDA tensors.

The token-major front's kernels (`ops/conv.py`, `ops/delta.py`) each run where they apply:
the kernel library is built and the tensors have the dtype and shape it takes (checked per
call: the same model runs in fp32, in fp16 and under autocast); the model's CPU forward and
every export take the PyTorch path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import conv as conv_ops
from ..ops import delta as delta_ops

__all__ = [
    "MixerFront",
    "TorchFront",
    "TokenMajorFront",
    "FRONTS",
    "get_front",
    "depthwise_conv",
    "depthwise_conv_token_major",
    "in_proj_token_major",
    "x_proj_weight_aligned",
    "split_x_proj",
    "x_proj_aligned",
    "dt_proj_aligned",
]

DIRECTIONS = (("fwd", ""), ("bwd", "_b"))  # the scan's direction, the suffix of its mixer weights


def depthwise_conv(x: torch.Tensor, conv: nn.Conv1d, anti_causal: bool) -> torch.Tensor:
    """Depthwise conv over the token axis of x (B, L, E), causal or anti-causal: the reference
    form of the mixer's conv (`ops.conv.depthwise_conv_tokens`; anti-causal with the flipped
    kernel equals flip(causal_conv(flip(x))))."""
    return conv_ops.depthwise_conv_tokens(x, conv.weight, conv.bias, anti_causal)


def depthwise_conv_token_major(x_padded: torch.Tensor, conv: nn.Conv1d, anti_causal: bool, length: int):
    """`depthwise_conv` as k multiply-adds of shifted views, with no transpose.

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


def in_proj_token_major(hidden_states: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """in_proj (weight (2E, D), no bias) of hidden_states (..., D) as one batched GEMM whose
    output is (2, tokens, E): x and z, each (..., E) and contiguous (the scan kernel wants z
    contiguous; a chunk of F.linear's (..., 2E) output is strided and would be copied). The
    weight enters as a view, no copy; the same products as F.linear with each half."""
    e2, d = weight.shape
    out = torch.matmul(hidden_states.reshape(1, -1, d), weight.view(2, e2 // 2, d).transpose(1, 2))
    shape = (*hidden_states.shape[:-1], e2 // 2)
    return out[0].view(shape), out[1].view(shape)


def _pad8(rows: int) -> int:
    return rows + -rows % 8


def x_proj_weight_aligned(x_proj_w: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    """x_proj's weight (rank + 2n, E) with dt's and (B, C)'s rows each zero-padded to a multiple
    of 8, _pad8(rank) + _pad8(2n) rows: the layout `split_x_proj` reads (Vim-Ti: 12 + 32 -> 16 + 32)."""
    dt_w, bc_w = x_proj_w.split([rank, 2 * n])
    return torch.cat([F.pad(dt_w, (0, 0, 0, _pad8(rank) - rank)), F.pad(bc_w, (0, 0, 0, _pad8(2 * n) - 2 * n))])


def split_x_proj(out: torch.Tensor, rank: int, n: int):
    """(dt, B, C) views of x_proj's output through `x_proj_weight_aligned`; dt keeps its zero
    columns up to the next multiple of 8 (dt_proj reads it with zero weight columns)."""
    r = _pad8(rank)
    return out[..., :r], out[..., r : r + n], out[..., r + n : r + 2 * n]


def x_proj_aligned(xc: torch.Tensor, x_proj_w: torch.Tensor, rank: int, n: int):
    """x_proj(xc) as (dt, B, C) with every GEMM operand 16-byte aligned: x_proj's output rows
    are padded to multiples of 8 (zero weight rows). Same values; with Vim's 12 + 16 + 16 = 44
    outputs and K = 12 cuBLAS ran its 2-byte-aligned kernels (H100, Vim-Ti at 1248 px batch
    32: ~8 ms of x_proj + dt_proj in a 59 ms forward)."""
    return split_x_proj(F.linear(xc, x_proj_weight_aligned(x_proj_w, rank, n)), rank, n)


def dt_proj_aligned(dt_padded: torch.Tensor, dt_proj_w: torch.Tensor) -> torch.Tensor:
    """dt_proj (without bias) of `x_proj_aligned`'s zero-padded dt."""
    return F.linear(dt_padded, F.pad(dt_proj_w, (0, dt_padded.shape[-1] - dt_proj_w.shape[-1])))


class MixerFront:
    """How a mixer computes the scan's activations. `activations(mixer, hidden_states)` returns
    {"z", "x_fwd", "dt_fwd", "B_fwd", "C_fwd", "x_bwd", ...} and whether dt is already delta
    (softplus(dt_proj(dt) + bias) computed, so the scan must not apply it again)."""

    name = "front"
    # The patch embedding as one GEMM over token-major patches on CUDA tensors (PatchEmbed).
    token_major = False

    def activations(self, mixer, hidden_states: torch.Tensor) -> tuple[dict[str, torch.Tensor], bool]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class TorchFront(MixerFront):
    """The official model's computation: in_proj, x transposed for cuDNN's depthwise convs,
    x_proj and dt_proj as GEMMs; the scan applies dt_proj's bias and the softplus."""

    name = "torch"

    def activations(self, mixer, hidden_states):
        x, z = mixer.in_proj(hidden_states).chunk(2, dim=-1)
        out = {"z": z}
        for direction, suffix in DIRECTIONS:
            conv = getattr(mixer, "conv1d" + suffix)
            xc = F.silu(depthwise_conv(x, conv, anti_causal=direction == "bwd"))
            # dt_proj's bias goes in the scan, in fp32
            dt, B, C = getattr(mixer, "x_proj" + suffix)(xc).split(
                [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1
            )
            dt = F.linear(dt, getattr(mixer, "dt_proj" + suffix).weight)
            out.update({f"x_{direction}": xc, f"dt_{direction}": dt, f"B_{direction}": B, f"C_{direction}": C})
        return out, False


_TORCH = TorchFront()


class TokenMajorFront(MixerFront):
    """On CUDA tensors: in_proj as one batched GEMM (contiguous x and z, `in_proj_token_major`),
    the convs on token-major x (`depthwise_conv_token_major`), x_proj and dt_proj with 16-byte
    aligned operands; and, where they apply, the CUDA kernels: `conv` both convs + SiLU as one
    kernel (fp16/fp32), `xproj` each direction's x_proj inside that kernel (fp16), `delta`
    dt_proj + dt bias + softplus of both directions as one launch (fp16). Elsewhere (CPU
    tensors) the `TorchFront`'s path."""

    token_major = True

    def __init__(self, conv: bool = True, xproj: bool = True, delta: bool = True):
        self.conv, self.xproj, self.delta = conv, xproj, delta
        kernels = [k for k, on in (("conv", conv), ("xproj", xproj), ("delta", delta)) if on]
        self.name = "auto" if len(kernels) == 3 else f"token-major({', '.join(kernels) or 'no kernels'})"

    def activations(self, mixer, hidden_states):
        if not hidden_states.is_cuda:
            return _TORCH.activations(mixer, hidden_states)
        rank, n = mixer.dt_rank, mixer.d_state
        x, z = in_proj_token_major(hidden_states, mixer.in_proj.weight)
        convs = (mixer.conv1d.weight, mixer.conv1d.bias, mixer.conv1d_b.weight, mixer.conv1d_b.bias)
        fused = dbl = None
        if self.conv and x.dtype in (torch.float16, torch.float32) and conv_ops.fused_conv_available():
            rows = _pad8(rank) + _pad8(2 * n)  # of x_proj_weight_aligned
            if (
                self.xproj
                and conv_ops.xproj_kernel_applies(x, convs[0].shape[-1], rows)
                and conv_ops.fused_xproj_available()
            ):
                y_fwd, y_bwd, out_fwd, out_bwd = conv_ops.conv_silu_xproj_bidir(
                    x, *convs, *(x_proj_weight_aligned(m.weight, rank, n) for m in (mixer.x_proj, mixer.x_proj_b))
                )
                fused, dbl = {"fwd": y_fwd, "bwd": y_bwd}, {"fwd": out_fwd, "bwd": out_bwd}
            else:
                fused = dict(zip(("fwd", "bwd"), conv_ops.conv_silu_bidir(x, *convs)))
        else:
            k = mixer.conv1d.weight.shape[-1]
            x_padded = F.pad(x, (0, 0, k - 1, k - 1))
        delta = self.delta and x.dtype == torch.float16 and delta_ops.delta_kernel_available()
        out, dts = {"z": z}, {}
        for direction, suffix in DIRECTIONS:
            if fused is not None:
                xc = fused[direction]
            else:
                xc = F.silu(
                    depthwise_conv_token_major(
                        x_padded, getattr(mixer, "conv1d" + suffix), direction == "bwd", x.shape[1]
                    )
                )
            if dbl is not None:  # x_proj ran in the conv kernel
                dts[direction], B, C = split_x_proj(dbl[direction], rank, n)
            else:
                dts[direction], B, C = x_proj_aligned(xc, getattr(mixer, "x_proj" + suffix).weight, rank, n)
            out.update({f"x_{direction}": xc, f"B_{direction}": B, f"C_{direction}": C})
        if delta:
            # both directions in one launch (the bias casts here, not inside the opaque op:
            # Inductor fuses them with the other casts, or folds them when frozen)
            both = delta_ops.delta_softplus_bidir(
                dts["fwd"][..., :rank],
                dts["bwd"][..., :rank],
                mixer.dt_proj.weight,
                mixer.dt_proj_b.weight,
                mixer.dt_proj.bias.float(),
                mixer.dt_proj_b.bias.float(),
            )
            out["dt_fwd"], out["dt_bwd"] = both[0], both[1]
        else:  # dt_proj's bias goes in the scan, in fp32
            for direction, suffix in DIRECTIONS:
                out[f"dt_{direction}"] = dt_proj_aligned(dts[direction], getattr(mixer, "dt_proj" + suffix).weight)
        return out, delta


FRONTS = {
    "auto": TokenMajorFront,
    "torch": TorchFront,
    "token-major": lambda: TokenMajorFront(conv=False, xproj=False, delta=False),
}


def get_front(front: str | MixerFront) -> MixerFront:
    """The front called `front` (a MixerFront is returned as it is)."""
    if isinstance(front, MixerFront):
        return front
    try:
        return FRONTS[front]()
    except KeyError:
        raise ValueError(f"unknown mixer front {front!r}; known: {', '.join(FRONTS)}") from None
