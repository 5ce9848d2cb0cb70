"""The "onnx" flavor of the scan: standard ONNX ops only, a constant number of nodes.

Each direction is one `torch._higher_order_ops.scan` over CHUNKS of `chunk` tokens, which
the dynamo exporter writes as ONE ONNX `Scan` node whose trip count is ceil(L / chunk): the
graph does not grow with the number of tokens (the loop body is the same for every length)
and any runtime (ONNX Runtime, TensorRT without our plugin) runs it. The body runs the
contract's recurrence for the chunk's tokens, written out `chunk` times (a fixed number
of nodes), then y for the whole chunk with one batched MatMul.

Why this form (measured with ONNX Runtime 1.31 on a 2-core CPU, one Vim-Ti layer's op,
L = 197, in docs/export.md): ORT's cost is per node run and per pass over a tensor, not
arithmetic. A `Scan` over every token runs ~5 small nodes x 197 tokens x 2 directions; the
chunked body runs 2 nodes per token (Mul, Add) plus ~10 per chunk, and computes exp(dt*A)
and dt*B*x per chunk, where they stay in cache, instead of as (b, L, E, N) tensors before
the loop. Closed forms inside a chunk (a log-depth Hillis-Steele scan, as the "fast"
PyTorch scan does) were 2-4x slower in ORT: each of their log2(chunk) steps is several
full passes with slice/concat copies. The state is kept (N, E)-major so that every
broadcast runs over E contiguous values (ORT broadcasts over a trailing size-1 axis slowly)
and y = C @ H is a MatMul.

Padding: the sequence is padded at its end with steps whose delta is 0 (decay 1, input 0),
which leave the state unchanged: the forward direction sees them after every real token,
the reverse direction first, with a zero state. There is always at least one padded token,
so the graph is the same whether or not L is a multiple of `chunk`.

`bi_selective_scan_onnx` is a scan backend (`fn(inputs: ScanInputs, *, delta_softplus,
out_scale)`): the exporter traces the model with it, and `VisionMamba(scan=bi_selective_scan_onnx)`
runs it in PyTorch too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._higher_order_ops.scan import scan  # prototype API (torch>=2.6); FINDINGS: exports to ONNX Scan

from ..ops import ScanInputs

CHUNK = 16  # tokens per loop iteration; chosen by benchmarks/bench_portable.py (docs/export.md)


def _softplus(v):
    """softplus(v) = max(v, 0) + log(1 + exp(-|v|)): the contract's softplus to fp32 rounding.

    Not F.softplus: ORT's `Softplus` kernel took 1.2 ms on one (1, 197, 384) tensor, this
    composition 0.27 ms (48 per Vim-Ti forward). For v > 20 it gives exactly v, as the
    contract's threshold does (1 + exp(-20) rounds to 1 in fp32); for v < -17 it gives 0
    where log1p would give exp(v) < 6e-8 (absolute error below that; exact in fp64).
    """
    return torch.relu(v) + torch.log(1 + torch.exp(-v.abs()))


def _direction(x, dt, A, B, C, D, dt_bias, delta_softplus, reverse, chunk):
    f = torch.promote_types(x.dtype, torch.float32)
    batch, L, E = x.shape
    N = A.shape[-1]
    delta = dt.to(f) + dt_bias.to(f)
    if delta_softplus:
        delta = _softplus(delta)
    xf = x.to(f)
    pad = chunk - L % chunk  # >= 1 identity step, see the module docstring
    n_chunks = (L + pad) // chunk

    def chunks(t, shape):  # (b, L, k) -> padded with zeros -> (b, n_chunks, chunk, *shape)
        return F.pad(t, (0, 0, 0, pad)).reshape(batch, n_chunks, chunk, *shape)

    delta_c = chunks(delta, (1, E))
    du_c = chunks(delta * xf, (1, E))
    B_c = chunks(B.to(f), (N, 1))
    C_c = chunks(C.to(f), (1, N))
    A_t = A.to(f).t().contiguous()  # (N, E)

    def body(h, xs):  # h: (b, 1, N, E)
        d, du, b_, c = xs  # (b, chunk, 1, E), (b, chunk, 1, E), (b, chunk, N, 1), (b, chunk, 1, N)
        a = torch.exp(d * A_t).split(1, dim=1)  # chunk x (b, 1, N, E)
        u = (du * b_).split(1, dim=1)
        hs = [None] * chunk
        for t in (range(chunk - 1, -1, -1) if reverse else range(chunk)):  # a fixed `chunk` steps: the body's size does not depend on L
            h = a[t] * h + u[t]
            hs[t] = h
        y = (c @ torch.cat(hs, dim=1)).squeeze(2)  # (b, chunk, 1, N) @ (b, chunk, N, E) -> (b, chunk, E)
        return h.clone(), y

    h0 = xf.new_zeros(batch, 1, N, E)
    # `reverse` walks the chunks from the last one, and the body walks each chunk backwards:
    # t = L-1 .. 0 on token-ordered tensors, no flipped copies.
    _, y = scan(body, h0, (delta_c, du_c, B_c, C_c), dim=1, reverse=reverse)  # (b, n_chunks, chunk, E)
    return y.reshape(batch, n_chunks * chunk, E)[:, :L] + xf * D.to(f)


def bi_selective_scan_onnx(inputs: ScanInputs, *, delta_softplus: bool = True, out_scale: float = 0.5,
                           chunk: int = CHUNK):
    """The op contract with two chunked `scan` loops (forward and reverse) of standard ops.

    (One loop over both directions stacked was tried with the per-token loop: 24 instead
    of 48 `Scan` nodes for Vim-Ti exported 15% faster but ran 40% slower in ONNX Runtime
    because of the stacking copies, so each direction keeps its own loop.)
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    y_f = _direction(*inputs.direction("fwd"), delta_softplus, False, chunk)
    y_b = _direction(*inputs.direction("bwd"), delta_softplus, True, chunk)
    return ((y_f + y_b) * F.silu(inputs.z.to(y_f.dtype)) * out_scale).to(inputs.x_fwd.dtype)
