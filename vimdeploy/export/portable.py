"""The "onnx" flavor of the scan: standard ONNX ops only, a constant number of nodes.

Each direction is one `torch._higher_order_ops.scan` over the token axis, which the
dynamo exporter writes as ONE ONNX `Scan` node whose trip count is the (dynamic) sequence
length: the graph does not grow with the number of tokens, and any runtime (ONNX Runtime,
TensorRT without our plugin) runs it. The per-step body is the recurrence of the contract;
everything that does not depend on the carried state (softplus, exp(dt*A), dt*B*x) is
computed for all steps at once outside the loop.

`bi_selective_scan_onnx` is a scan backend (`fn(inputs: ScanInputs, *, delta_softplus,
out_scale)`): the exporter traces the model with it, and `VisionMamba(scan=bi_selective_scan_onnx)`
runs it in PyTorch too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._higher_order_ops.scan import scan  # prototype API (torch>=2.6); FINDINGS: exports to ONNX Scan

from ..ops import ScanInputs


def _step(h, xs):
    a_t, b_t, c_t = xs  # (b, E, N), (b, E, N), (b, N)
    h = a_t * h + b_t
    y = (h * c_t.unsqueeze(1)).sum(-1)  # (b, E)
    return h, y


def _direction(x, dt, A, B, C, D, dt_bias, delta_softplus, reverse):
    f = torch.promote_types(x.dtype, torch.float32)
    dt = dt.to(f) + dt_bias.to(f)
    if delta_softplus:
        dt = F.softplus(dt)
    xf = x.to(f)
    a = torch.exp(dt.unsqueeze(-1) * A.to(f))  # (b, L, E, N)
    b = (dt * xf).unsqueeze(-1) * B.to(f).unsqueeze(-2)  # (b, L, E, N)
    h0 = xf.new_zeros(x.shape[0], x.shape[2], A.shape[-1])
    # `reverse` runs t = L-1 .. 0 on token-ordered tensors: no flipped copies.
    _, y = scan(_step, h0, (a, b, C.to(f)), dim=1, reverse=reverse)  # y stacked along dim: (b, L, E)
    return y + xf * D.to(f)


def bi_selective_scan_onnx(inputs: ScanInputs, *, delta_softplus: bool = True, out_scale: float = 0.5):
    """The op contract with two `scan` loops (forward and reverse) of standard ops.

    (One loop over both directions stacked was tried: 24 instead of 48 `Scan` nodes for
    Vim-Ti exported 15% faster but ran 40% slower in ONNX Runtime because of the stacking
    copies, so each direction keeps its own loop.)
    """
    y_f = _direction(*inputs.direction("fwd"), delta_softplus, False)
    y_b = _direction(*inputs.direction("bwd"), delta_softplus, True)
    return ((y_f + y_b) * F.silu(inputs.z.to(y_f.dtype)) * out_scale).to(inputs.x_fwd.dtype)
