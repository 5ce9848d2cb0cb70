"""SmoothQuant-style migration of activation outliers into weights, as an exact rewrite of
the fp32 graph (before Q/DQ).

A GEMM y = X W computes the same with X' = X / s and W' = diag(s) W for any per-channel
s > 0; with s = amax(X_c)^alpha / amax(W_c)^(1 - alpha) the activation's channels become
alike, so one per-tensor INT8/FP8 scale loses less on the quiet channels. The division by s
must be exact and cheap, so it is only placed where the graph allows it:

* in_proj (Vim's RMSNorm then in_proj): the norm ends in `* weight`, a per-channel
  initializer that only in_proj reads, so 1/s is folded into the norm's weight: no new op.
  The residual stream (the fused add of Vim's add-norm) is before the norm and unchanged.
* out_proj: its input is the BiSelectiveScan's output, y_c = (C h_c + D_c x_c) * silu(z_c)
  summed over both directions, with h_c linear in x_c (dt, B and C are computed from x by
  x_proj before the scan, so they are untouched). Scaling x_fwd and x_bwd's channel c by
  1/s_c on their way into the scan scales y_c by 1/s_c: one Mul per direction before the
  scan (the plugin stays as it is; x_proj still reads the unscaled x). TensorRT fuses such a
  Mul into the pointwise SiLU kernel before it.

The head is not smoothed: the final norm also feeds the `features` output, which would change.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..contract import INPUT_NAMES, OP_TYPE
from .ort_op import scan_errors
from .qdq import insert_before

__all__ = ["SMOOTH_TARGETS", "smoothing_plan", "smooth", "tensor_values"]

SMOOTH_TARGETS = ("in_proj", "out_proj")
X_INPUTS = (INPUT_NAMES.index("x_fwd"), INPUT_NAMES.index("x_bwd"))


def tensor_values(model: onnx.ModelProto, names: Iterable[str], images: np.ndarray, batch: int = 16) -> dict:
    """Intermediate tensors of `model` on `images` (run in ONNX Runtime, batch by batch, concatenated)."""
    import onnxruntime as ort

    from .ort_op import session_options

    names = list(names)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    parts = []
    with scan_errors():
        for i in range(0, len(images), batch):
            parts.append(session.run(None, {model.graph.input[0].name: images[i : i + batch]}))
    return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def _initializer_array(inits: dict, name: str) -> np.ndarray:
    return numpy_helper.to_array(inits[name]).astype(np.float32)


def smoothing_plan(model: onnx.ModelProto, targets: Iterable[str] = SMOOTH_TARGETS) -> list[dict]:
    """The GEMMs that can be smoothed exactly: one dict per GEMM with its node, activation
    tensor, weight initializer and where 1/s goes (`fold`: a norm weight; `scan`: the scan
    node's x inputs)."""
    targets = set(targets)
    g = model.graph
    inits = {i.name for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    plan = []
    for node in g.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[0] not in prod:
            continue
        a, source = node.input[0], prod[node.input[0]]
        alone = [u.name for u in users[a]] == [node.name] and a not in outputs
        if "out_proj" in targets and source.op_type == OP_TYPE and alone:
            plan.append({"node": node.name, "x": a, "w": node.input[1], "scan": source.name})
        elif "in_proj" in targets and source.op_type == "Mul" and alone:
            norm_w = [i for i in source.input if i in inits]
            if len(norm_w) == 1 and len(users[norm_w[0]]) == 1:
                plan.append({"node": node.name, "x": a, "w": node.input[1], "fold": norm_w[0]})
    return plan


def smooth(
    model: onnx.ModelProto,
    images: np.ndarray,
    alpha: float = 0.5,
    targets: Iterable[str] = SMOOTH_TARGETS,
) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` with the activation outliers of `targets` moved into their weights,
    s from the per-channel amax of the activations on `images` (the calibration images).
    Returns (model, info)."""
    plan = smoothing_plan(model, targets)
    if not plan:
        return model, {"smoothed": []}
    acts = tensor_values(model, [p["x"] for p in plan], images)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    nodes = {n.name: n for n in g.node}
    extra: dict[str, list] = {}
    for p in plan:
        x = acts[p["x"]]
        x_amax = np.abs(x).reshape(-1, x.shape[-1]).max(0)
        w = _initializer_array(inits, p["w"])  # MatMul (K, N): row c is input channel c
        w_amax = np.abs(w).max(1)
        s = np.power(np.maximum(x_amax, 1e-5), alpha) / np.power(np.maximum(w_amax, 1e-5), 1 - alpha)
        s = (s / np.exp(np.log(s).mean())).astype(np.float32)  # geometric mean 1: the sizes stay
        inits[p["w"]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), p["w"]))
        if "fold" in p:
            norm_w = _initializer_array(inits, p["fold"])
            inits[p["fold"]].CopyFrom(numpy_helper.from_array((norm_w / s).astype(np.float32), p["fold"]))
            continue
        scan = nodes[p["scan"]]
        inv = f"{p['scan']}_smooth_inv"
        g.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        for index in X_INPUTS:
            scaled = f"{scan.input[index]}_smoothed"
            extra.setdefault(scan.name, []).append(
                helper.make_node("Mul", [scan.input[index], inv], [scaled], f"{scan.name}_smooth_{index}")
            )
            scan.input[index] = scaled
    insert_before(g, extra)
    return out, {"smoothed": [p["node"] for p in plan], "alpha": alpha}
