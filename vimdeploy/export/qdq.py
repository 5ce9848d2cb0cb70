"""QuantizeLinear/DequantizeLinear placement, shared by INT8 and FP8 (E4M3).

Where: the inputs of MatMul, Gemm and Conv (the GEMMs), nothing else. The activation input
gets a Q/DQ pair (one per tensor, per-tensor scale); the weight initializer is stored
quantized, per output channel, behind a DequantizeLinear; biases stay float (TensorRT's
IDequantizeLayer takes no INT32, and an fp32 bias Add costs nothing). The BiSelectiveScan,
the norms and the residual stream have no Q/DQ: they run in float.

TensorRT's rules, which every graph here keeps: symmetric (zero point a constant 0 of the
quantized type), scales > 0, per-channel scales only on weights. A format is its element
type and its largest value: INT8 [-127, 127] (scale = amax / 127), FP8 E4M3 +-448
(scale = amax / 448, as NVIDIA's ModelOpt writes it: opset 19+ Q/DQ with float8e4m3fn
zero points). `amax` comes from calibration (int8.py); the same amax gives both formats.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError

__all__ = ["QFormat", "FORMATS", "Site", "quant_sites", "insert_before", "insert_qdq", "round_e4m3", "quantize_weight"]

GEMM_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class QFormat:
    name: str
    elem_type: int  # onnx.TensorProto type of the quantized tensors and zero points
    qmax: float  # the largest magnitude: amax maps to it
    min_opset: int  # the opset whose QuantizeLinear takes the type


FORMATS = {
    "int8": QFormat("int8", TensorProto.INT8, 127.0, 13),
    "fp8": QFormat("fp8", TensorProto.FLOAT8E4M3FN, 448.0, 19),
}


@dataclass(frozen=True)
class Site:
    """One quantized GEMM input: `node`'s input `index`, the tensor `tensor`."""

    node: str
    index: int
    tensor: str
    weight: bool
    axis: int | None = None  # the weight's output-channel axis


def _weight_axis(node: onnx.NodeProto, index: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans = next((a.i for a in node.attribute if a.name == ("transB" if index == 1 else "transA")), 0)
        return 0 if trans else 1
    return 1  # MatMul's (K, N) weight: N is the output channel


def quant_sites(model: onnx.ModelProto, skip: Iterable[str] = ()) -> list[Site]:
    """The inputs of every MatMul/Gemm/Conv not named in `skip`: activations and weights
    (a weight is an initializer; a GEMM whose two inputs are both activations is skipped)."""
    skip = set(skip)
    inits = {i.name for i in model.graph.initializer}
    sites = []
    for node in model.graph.node:
        if node.op_type not in GEMM_OPS or node.name in skip:
            continue
        a, w = node.input[0], node.input[1]
        if a in inits or w not in inits:
            continue
        sites.append(Site(node.name, 0, a, False))
        sites.append(Site(node.name, 1, w, True, _weight_axis(node, 1)))
    return sites


def round_e4m3(x: np.ndarray) -> np.ndarray:
    """fp32 -> the nearest E4M3 value (round half to even, saturating at +-448), as fp32.

    Emulates QuantizeLinear to float8e4m3fn (saturate=1) after the division by the scale:
    3 mantissa bits for normal values (|x| >= 2^-6), a fixed step of 2^-9 below.
    """
    x = np.clip(np.asarray(x, dtype=np.float32), -448.0, 448.0)
    mag = np.abs(x)
    exponent = np.floor(np.log2(np.maximum(mag, 2.0**-6)))
    step = np.exp2(exponent - 3).astype(np.float32)
    return (np.round(x / step) * step).astype(np.float32)


def _e4m3_bytes(values: np.ndarray) -> bytes:
    """Values already on the E4M3 grid -> their float8e4m3fn bytes."""
    import ml_dtypes

    return np.asarray(values, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn).tobytes()


def quantize_weight(w: np.ndarray, axis: int, fmt: QFormat) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric quantization: (quantized values as fp32 on the format's grid, scales)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other)
    scale = (np.where(amax > 0, amax, 1.0) / fmt.qmax).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = w / scale.reshape(shape)
    q = np.clip(np.round(q), -127, 127) if fmt.name == "int8" else round_e4m3(q)
    return q.astype(np.float32), scale


def _tensor(name: str, values: np.ndarray, fmt: QFormat) -> onnx.TensorProto:
    values = np.asarray(values)
    if fmt.elem_type == TensorProto.INT8:
        return numpy_helper.from_array(values.astype(np.int8), name)
    return helper.make_tensor(name, fmt.elem_type, values.shape, _e4m3_bytes(values), raw=True)


def insert_before(graph: onnx.GraphProto, new_nodes: Mapping[str, list[onnx.NodeProto]]) -> None:
    """Put `new_nodes[name]` just before the node called `name`, in place (keeps the order topological)."""
    ordered = []
    for node in graph.node:
        ordered += new_nodes.get(node.name, [])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)


def insert_qdq(
    model: onnx.ModelProto, sites: Iterable[Site], amax: Mapping[str, float], fmt: QFormat
) -> onnx.ModelProto:
    """A copy of `model` with Q/DQ at `sites`: activations per tensor (scale amax[tensor] / qmax;
    one pair per tensor, used by the quantized consumers only), weights per channel."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < fmt.min_opset:
        raise InputError(f"{fmt.name} Q/DQ needs opset {fmt.min_opset}+; this export is opset {opset} (--opset).")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    nodes = {n.name: n for n in g.node}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # consumer name -> Q/DQ nodes to put before it
    done: dict[str, str] = {}  # quantized tensor -> its DequantizeLinear output
    for site in sites:
        node = nodes[site.node]
        if site.tensor not in done:
            base = site.tensor.replace("/", "_").replace(":", "_")
            dq_out = f"{base}_{fmt.name}_dq"
            zero_name, scale_name = f"{base}_{fmt.name}_zero", f"{base}_{fmt.name}_scale"
            if site.weight:
                w = numpy_helper.to_array(inits[site.tensor]).astype(np.float32)
                q, scale = quantize_weight(w, site.axis, fmt)
                g.initializer.extend(
                    [
                        _tensor(f"{base}_{fmt.name}", q, fmt),
                        numpy_helper.from_array(scale, scale_name),
                        _tensor(zero_name, np.zeros(scale.shape, np.float32), fmt),
                    ]
                )
                inputs = [f"{base}_{fmt.name}", scale_name, zero_name]
                nodes_here = [helper.make_node("DequantizeLinear", inputs, [dq_out], f"{base}_DQ", axis=site.axis)]
            else:
                value = float(amax[site.tensor])
                scale = np.array(max(value, 1e-12) / fmt.qmax, np.float32)
                g.initializer.extend(
                    [numpy_helper.from_array(scale, scale_name), _tensor(zero_name, np.zeros((), np.float32), fmt)]
                )
                q_out = f"{base}_{fmt.name}_q"
                nodes_here = [
                    helper.make_node("QuantizeLinear", [site.tensor, scale_name, zero_name], [q_out], f"{base}_Q"),
                    helper.make_node("DequantizeLinear", [q_out, scale_name, zero_name], [dq_out], f"{base}_DQ"),
                ]
            new_nodes.setdefault(site.node, []).extend(nodes_here)
            done[site.tensor] = dq_out
        node.input[site.index] = done[site.tensor]
    insert_before(g, new_nodes)
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return out
