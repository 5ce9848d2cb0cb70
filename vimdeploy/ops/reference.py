"""The bidirectional selective scan of Vim (bimamba v2), in plain PyTorch.

Layout: token-major, as the rest of the model and the `BiSelectiveScan` op contract
(`export/op_contract.md`): activations are (batch, L, E), B and C are (batch, L, N),
A is (E, N), D and the dt bias are (E,). The math runs in fp32 for fp16/bf16/fp32
inputs (fp64 for fp64 inputs, a ground truth for tests) and the result is cast back to the
dtype of `x`.

One direction (mamba_ssm's `selective_scan_ref`, in our layout):

    dt_t  = softplus(dt_t + dt_bias)               (if delta_softplus)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t     (h: E x N, h_{-1} = 0)
    y_t   = <h_t, C_t> + D * x_t

The backward direction runs the same recurrence from t = L-1 down to 0 on tensors kept
in the original token order; that is exactly what the official model computes by
flipping the sequence, scanning forward and flipping the result back.

Bidirectional op (one per Vim layer):

    out = (y_fwd + y_bwd) * silu(z) * out_scale

Two implementations, both `fn(inputs: ScanInputs, *, delta_softplus, out_scale)`:
  * `bi_selective_scan_reference`: the literal sequential loop, the ground truth.
  * `bi_selective_scan_fast`: chunked associative scan. Within a chunk the pairs
    (a_t, b_t) = (exp(dt*A), dt*B*x) are combined with a log-depth (Hillis-Steele) scan,
    then chained across chunks. Only products of decays a_t in (0, 1] are formed, never
    exp of a positive number, so nothing overflows at any length (a long product may
    underflow to 0, which is also what the sequential recurrence gives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..contract import DEFAULT_DELTA_SOFTPLUS, DEFAULT_OUT_SCALE
from .inputs import ScanInputs

__all__ = ["selective_scan_reference", "bi_selective_scan_reference", "bi_selective_scan_fast"]


def _math_dtype(x):
    """fp32 for fp16/bf16/fp32 inputs; fp64 stays fp64 (a ground truth for testing fp32 code)."""
    return torch.promote_types(x.dtype, torch.float32)


def _discretize(x, dt, A, B, dt_bias, delta_softplus):
    """(decay, input) pairs of the recurrence: a = exp(dt*A), b = dt*B*x. Shapes (b, L, E, N)."""
    f = _math_dtype(x)
    dt = dt.to(f) + dt_bias.to(f)
    if delta_softplus:
        # Same threshold rule as mamba_ssm's kernel (x > 20 -> x) and torch's default.
        dt = F.softplus(dt)
    a = torch.exp(dt.unsqueeze(-1) * A.to(f))  # (b, L, E, N)
    b = (dt * x.to(f)).unsqueeze(-1) * B.to(f).unsqueeze(-2)  # (b, L, E, N)
    return a, b


def selective_scan_reference(x, dt, A, B, C, D, dt_bias, delta_softplus=True, reverse=False):
    """One direction, sequentially, in fp32 (fp64 for fp64 inputs). Returns y (b, L, E), no gate."""
    a, b = _discretize(x, dt, A, B, dt_bias, delta_softplus)
    Cf = C.to(a.dtype)
    h = a.new_zeros(a.shape[0], a.shape[2], a.shape[3])
    ys = [None] * x.shape[1]
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    for t in steps:
        h = a[:, t] * h + b[:, t]
        ys[t] = torch.einsum("ben,bn->be", h, Cf[:, t])
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape, dtype=a.dtype)
    return y + x.to(a.dtype) * D.to(a.dtype)


def _scan_chunked(x, dt, A, B, C, D, dt_bias, delta_softplus, reverse, chunk):
    """One direction with a chunked associative scan. Same result as the reference."""
    if reverse:
        # Reverse time, scan forward, reverse back: only this fp32 helper ever flips.
        flip = lambda t: t.flip(1)  # noqa: E731
        y = _scan_chunked(flip(x), flip(dt), A, flip(B), flip(C), D, dt_bias, delta_softplus, False, chunk)
        return y.flip(1)
    batch, L, E = x.shape
    N = A.shape[-1]
    f = _math_dtype(x)
    h = x.new_zeros(batch, E, N, dtype=f)
    ys = []
    for start in range(0, L, chunk):
        sl = slice(start, min(start + chunk, L))
        a, b = _discretize(x[:, sl], dt[:, sl], A, B[:, sl], dt_bias, delta_softplus)
        # Inclusive prefix of the affine maps h -> a*h + b inside the chunk, log2(T) steps:
        # (a1, b1) then (a2, b2) composes to (a2*a1, a2*b1 + b2).
        T = a.shape[1]
        shift = 1
        while shift < T:
            a_prev, b_prev = a[:, :-shift], b[:, :-shift]
            b = torch.cat([b[:, :shift], a[:, shift:] * b_prev + b[:, shift:]], dim=1)
            a = torch.cat([a[:, :shift], a[:, shift:] * a_prev], dim=1)
            shift *= 2
        hs = a * h.unsqueeze(1) + b  # states of every step of the chunk
        ys.append(torch.einsum("bten,btn->bte", hs, C[:, sl].to(f)))
        h = hs[:, -1]
    y = torch.cat(ys, dim=1) if ys else x.new_zeros(x.shape, dtype=f)
    return y + x.to(f) * D.to(f)


def _combine(y_fwd, y_bwd, z, out_scale, dtype):
    return ((y_fwd + y_bwd) * F.silu(z.to(y_fwd.dtype)) * out_scale).to(dtype)


def bi_selective_scan_reference(
    inputs: ScanInputs, *, delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE
):
    """The op contract, computed with the sequential loop (ground truth)."""
    x, dt, A, B, C, D, bias = inputs.direction("fwd")
    y_f = selective_scan_reference(x, dt, A, B, C, D, bias, delta_softplus)
    x, dt, A, B, C, D, bias = inputs.direction("bwd")
    y_b = selective_scan_reference(x, dt, A, B, C, D, bias, delta_softplus, reverse=True)
    return _combine(y_f, y_b, inputs.z, out_scale, inputs.x_fwd.dtype)


def bi_selective_scan_fast(
    inputs: ScanInputs,
    *,
    delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS,
    out_scale: float = DEFAULT_OUT_SCALE,
    chunk: int = 16,
):
    """The op contract, computed with the chunked associative scan."""
    y_f = _scan_chunked(*inputs.direction("fwd"), delta_softplus, False, chunk)
    y_b = _scan_chunked(*inputs.direction("bwd"), delta_softplus, True, chunk)
    return _combine(y_f, y_b, inputs.z, out_scale, inputs.x_fwd.dtype)
