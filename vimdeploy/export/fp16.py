"""The FP16 pass on an exported fp32 ONNX: fp16 tensors and Casts, with the parts that
measurement says must stay fp32 kept there.

Library, and why: `onnxconverter_common.float16.convert_float_to_float16` (Microsoft's
converter, the one ONNX Runtime documents). It takes a node block list, which is how the
fp32 parts are kept. NVIDIA ModelOpt's AutoCast does the same with more automation, but
`nvidia-modelopt[onnx]` pins onnx 1.21 and pulls onnxruntime-gpu and CuPy, which we cannot
carry as a core dependency.

What stays fp32 and why (see docs/precision.md for the measurements):
* the scan's A, D and dt biases: fp32 by the op contract (`export/op_contract.md`);
* the BiSelectiveScan math and state: fp32 inside the op; in an FP16 model its
  activations are fp16 (the TensorRT plugin reads and writes fp16);
* the RMSNorms and the residual stream (`keep_fp32="norm,residual"`, the default): the
  residual grows through 24 blocks and its squares overflow fp16 (Vim training in AMP is
  known to overflow there: hustvl/Vim #30).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import onnx
from onnx import TensorProto, helper

from ..contract import ACTIVATION_INDICES, OP_TYPE
from ..errors import InputError, VimdeployError

__all__ = ["to_fp16", "sensitive_nodes"]


# --------------------------------------------------------------------------------------------
# Finding the parts to keep in fp32


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {out: n for n in graph.node for out in n.output}


def _consumers(graph) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def sensitive_nodes(model: onnx.ModelProto, keep: Iterable[str] = ("norm", "residual")) -> list[str]:
    """Names of the nodes of the RMSNorms ("norm") and of the residual additions ("residual").

    An RMSNorm as exported is x -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Reciprocal,
    then x * rstd * weight; the residual stream is the Add that produces its x.
    """
    keep = set(keep)
    unknown = keep - {"norm", "residual"}
    if unknown:
        raise InputError(f"--keep-fp32 takes 'norm' and/or 'residual'; got {', '.join(sorted(unknown))}.")
    g = model.graph
    prod, users = _producers(g), _consumers(g)
    names: list[str] = []
    for mean in (n for n in g.node if n.op_type == "ReduceMean"):
        pow_node = prod.get(mean.input[0])
        if pow_node is None or pow_node.op_type != "Pow":
            continue
        x = pow_node.input[0]
        if "norm" in keep:
            chain, node = [pow_node, mean], mean
            for op in ("Add", "Sqrt", "Reciprocal"):
                nxt = [u for u in users.get(node.output[0], []) if u.op_type == op]
                if not nxt:
                    break
                node = nxt[0]
                chain.append(node)
            scale = [u for u in users.get(node.output[0], []) if u.op_type == "Mul"]
            for mul in scale:
                chain.append(mul)
                chain += [u for u in users.get(mul.output[0], []) if u.op_type == "Mul"]  # * weight
            names += [n.name for n in chain]
        if "residual" in keep and x in prod and prod[x].op_type == "Add":
            names.append(prod[x].name)
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------
# FP16


def _scan_nodes(graph):
    return [n for n in graph.node if n.op_type == OP_TYPE]


def _make_scan_activations_fp16(model: onnx.ModelProto) -> None:
    """Let each BiSelectiveScan read and write fp16 activations (A/D/bias stay fp32).

    The converter keeps a blocked node entirely fp32 by casting its inputs up and its
    output down; for the scan that doubles the memory traffic of the op for no accuracy
    (the op widens fp16 to fp32 on load itself). Remove those casts on inputs 0..8 and on
    the output.
    """
    g = model.graph
    prod, users = _producers(g), _consumers(g)
    dead = []
    for node in _scan_nodes(g):
        for i in ACTIVATION_INDICES:
            cast = prod.get(node.input[i])
            if cast is not None and cast.op_type == "Cast":
                node.input[i] = cast.input[0]
                if all(u is node for u in users.get(cast.output[0], [])):
                    dead.append(cast)
        down = users.get(node.output[0], [])
        if down and all(
            u.op_type == "Cast" and helper.get_attribute_value(u.attribute[0]) == TensorProto.FLOAT16 for u in down
        ):
            for cast in down:
                for u in users.get(cast.output[0], []):
                    for k, name in enumerate(u.input):
                        if name == cast.output[0]:
                            u.input[k] = node.output[0]
                for o in g.output:
                    if o.name == cast.output[0]:
                        raise VimdeployError("a scan output is a graph output; cannot retype it")  # never in Vim
                dead.append(cast)
    for cast in dead:
        if cast in g.node:
            g.node.remove(cast)
    # Drop stale value_info; shape inference below recomputes types.
    del g.value_info[:]


def _separate_consumed_outputs(model: onnx.ModelProto) -> None:
    """Give a graph output that other nodes also read (`features`, read by the head) its own
    Identity. With keep_io_types the converter retypes the producer but not the internal
    readers of an output name, which leaves the head with mixed fp32/fp16 inputs."""
    g = model.graph
    users = _consumers(g)
    for out in g.output:
        if users.get(out.name):
            inner = out.name + "_value"
            for n in g.node:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            g.node.append(helper.make_node("Identity", [inner], [out.name], name=out.name + "_output"))


def to_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] = ("norm", "residual")) -> onnx.ModelProto:
    from onnxconverter_common import float16

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's
    _separate_consumed_outputs(model)
    blocked = sensitive_nodes(model, keep_fp32)
    op_block = list(float16.DEFAULT_OP_BLOCK_LIST) + [OP_TYPE]
    with warnings.catch_warnings():
        # "the float32 number 1e-08 will be truncated to 1e-07": tiny weights clamp to fp16's range.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=op_block,
            node_block_list=blocked,
        )
    _make_scan_activations_fp16(converted)
    return onnx.shape_inference.infer_shapes(converted, strict_mode=True)
