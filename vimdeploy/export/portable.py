"""The "onnx" flavor of the scan: standard ONNX ops only, a constant number of nodes.

Each layer's op is one `torch._higher_order_ops.scan` over CHUNKS of `chunk` tokens, which
the dynamo exporter writes as ONE ONNX `Scan` node whose trip count is ceil(L / chunk): the
graph does not grow with the number of tokens (the loop body is the same for every length)
and any runtime (ONNX Runtime, TensorRT without our plugin) runs it. The body runs the
contract's recurrence for the chunk's tokens, written out `chunk` times (a fixed number of
nodes), for both directions at once (a state of (b, 2, N, E)), then y for the whole chunk
with one batched MatMul.

Why this form (measured with ONNX Runtime 1.31 on a 2-core CPU, docs/export.md): ORT's
cost here is per node run and per pass over a tensor, not arithmetic.
* The per-token `Scan` ran ~5 small nodes per token and direction, and built exp(dt*A) and
  dt*B*x as (b, L, E, N) tensors before the loop. The chunked body runs 2 nodes per token
  (Mul, Add) for both directions together plus ~10 per chunk, and builds exp(dt*A) and
  dt*B*x per chunk, where they stay in cache.
* Both directions in one loop: the backward direction's (b, L, E) / (b, L, N) inputs are
  flipped along the tokens (cheap: no N axis), so both run t = 0..L-1 in the same nodes;
  y of the backward direction is flipped back. Half the node runs, and half the traced
  loop bodies (export time), against two separate loops walking t = L-1..0 unflipped.
* Closed forms inside a chunk (a log-depth Hillis-Steele scan, as the "fast" PyTorch scan
  does; or states carried between chunks only) were 2-4x slower in ORT: each of their
  log2(chunk) steps is several full passes with slice/concat copies.
* The state is (N, E)-major so that every broadcast runs over E contiguous values (ORT
  broadcasts over a trailing size-1 axis slowly) and y = C @ H is a MatMul.

Padding: the sequence is padded at its end (in processing order, for both directions)
with steps whose delta is 0 (decay 1, input 0), which leave the state unchanged; their
outputs are dropped. There is always at least one padded token, so the graph is the same
whether or not L is a multiple of `chunk`.

`bi_selective_scan_onnx` is a scan backend (`fn(inputs: ScanInputs, *, delta_softplus,
out_scale)`): the exporter traces the model with it, and `VisionMamba(scan=bi_selective_scan_onnx)`
runs it in PyTorch too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._higher_order_ops.scan import scan  # prototype API (torch>=2.6); FINDINGS: exports to ONNX Scan

from ..contract import DEFAULT_DELTA_SOFTPLUS, DEFAULT_OUT_SCALE
from ..ops import ScanInputs

CHUNK = 8  # tokens per loop iteration; chosen by benchmarks/bench_portable.py (docs/export.md)


def _softplus(v):
    """softplus(v) = max(v, 0) + log(1 + exp(-|v|)): the contract's softplus to fp32 rounding.

    Not F.softplus: ORT's `Softplus` kernel took 1.2 ms on one (1, 197, 384) tensor, this
    composition 0.27 ms (48 per Vim-Ti forward). For v > 20 it gives exactly v, as the
    contract's threshold does (1 + exp(-20) rounds to 1 in fp32); for v < -17 it gives 0
    where log1p would give exp(v) < 6e-8 (absolute error below that; exact in fp64).
    """
    return torch.relu(v) + torch.log(1 + torch.exp(-v.abs()))


def _prepare(x, dt, B, C, dt_bias, delta_softplus, f):
    """(delta, delta * x, B, C) of one direction in the math dtype f, (b, L, .) each."""
    delta = dt.to(f) + dt_bias.to(f)
    if delta_softplus:
        delta = _softplus(delta)
    return delta, delta * x.to(f), B.to(f), C.to(f)


def bi_selective_scan_onnx(
    inputs: ScanInputs,
    *,
    delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS,
    out_scale: float = DEFAULT_OUT_SCALE,
    chunk: int = CHUNK,
):
    """The op contract as ONE `scan` over chunks of `chunk` tokens carrying both directions' states."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    x_f, dt_f, A_f, B_f, C_f, D_f, bias_f = inputs.direction("fwd")
    x_b, dt_b, A_b, B_b, C_b, D_b, bias_b = inputs.direction("bwd")
    f = torch.promote_types(x_f.dtype, torch.float32)  # fp32 math; fp64 stays fp64 (tests)
    batch, L, E = x_f.shape
    N = A_f.shape[-1]
    fwd = _prepare(x_f, dt_f, B_f, C_f, bias_f, delta_softplus, f)
    bwd = [t.flip(1) for t in _prepare(x_b, dt_b, B_b, C_b, bias_b, delta_softplus, f)]
    pad = chunk - L % chunk  # >= 1 identity step, see the module docstring
    n_chunks = (L + pad) // chunk

    def chunks(t_fwd, t_bwd, shape):  # 2 x (b, L, k) -> (b, n_chunks, chunk, 2, *shape), zero-padded
        t = F.pad(torch.stack([t_fwd, t_bwd], dim=2), (0, 0, 0, 0, 0, pad))
        return t.reshape(batch, n_chunks, chunk, 2, *shape)

    xs = (
        chunks(fwd[0], bwd[0], (1, E)),
        chunks(fwd[1], bwd[1], (1, E)),
        chunks(fwd[2], bwd[2], (N, 1)),
        chunks(fwd[3], bwd[3], (1, N)),
    )
    A_t = torch.stack([A_f.to(f).t(), A_b.to(f).t()]).contiguous()  # (2, N, E)

    def body(h, xs):  # h: (b, 1, 2, N, E)
        delta, du, B_, C_ = xs  # (b, chunk, 2, 1, E), (b, chunk, 2, 1, E), (b, chunk, 2, N, 1), (b, chunk, 2, 1, N)
        a = torch.exp(delta * A_t).split(1, dim=1)  # chunk x (b, 1, 2, N, E)
        u = (du * B_).split(1, dim=1)
        hs = []
        for t in range(chunk):  # a fixed `chunk` steps: the body's size does not depend on L
            h = a[t] * h + u[t]
            hs.append(h)
        y = (C_ @ torch.cat(hs, dim=1)).squeeze(3)  # (b, chunk, 2, 1, N) @ (b, chunk, 2, N, E) -> (b, chunk, 2, E)
        return h.clone(), y

    h0 = x_f.new_zeros(batch, 1, 2, N, E, dtype=f)
    _, y = scan(body, h0, xs, dim=1)  # (b, n_chunks, chunk, 2, E)
    y = y.reshape(batch, n_chunks * chunk, 2, E)[:, :L]
    y_f = y[:, :, 0] + x_f.to(f) * D_f.to(f)
    y_b = y[:, :, 1].flip(1) + x_b.to(f) * D_b.to(f)
    return ((y_f + y_b) * F.silu(inputs.z.to(f)) * out_scale).to(x_f.dtype)
