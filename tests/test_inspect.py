"""`vimdeploy inspect` and the TensorRT verdict on ONNX (vimdeploy.tensorrt.onnx_compat).

The failing cases are small hand-written graphs, one rule each, built with onnx.helper so
that the expected verdict comes from TensorRT's rules, not from our exporter.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vimdeploy import digits
from vimdeploy.tensorrt.onnx_compat import check_onnx


def save(tmp_path, nodes, inits, inputs, outputs, name="m.onnx", opsets=(("", 20),)):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 10
    path = tmp_path / name
    onnx.save(model, path)
    return path


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def dq_model(tmp_path, x_values, scale=0.1, zero_point=None):
    x = numpy_helper.from_array(np.asarray(x_values), "w")
    inits = [x, numpy_helper.from_array(np.asarray(scale, np.float32), "s")]
    ins = ["w", "s"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(np.asarray(zero_point), "zp"))
        ins.append("zp")
    node = helper.make_node("DequantizeLinear", ins, ["y"], name="dq")
    return save(tmp_path, [node], inits, [], [f32("y", [4])])


def errors(path):
    return [str(f) for f in check_onnx(onnx.load(path)) if f.level == "error"]


def test_dequantize_over_int32_is_refused(tmp_path, cli):
    path = dq_model(tmp_path, np.arange(4, dtype=np.int32))
    assert any("DequantizeLinear over INT32" in e for e in errors(path))
    result = cli("inspect", path)
    assert result.exit_code == 1 and "NOT compatible" in result.output
    assert errors(dq_model(tmp_path, np.arange(4, dtype=np.int8), zero_point=np.int8(0))) == []


@pytest.mark.parametrize(
    "scale,zero_point,expect",
    [
        (0.1, np.int8(3), "zero point"),  # asymmetric
        (-0.1, np.int8(0), "finite and > 0"),  # negative scale
        (0.0, None, "finite and > 0"),
        (0.1, np.int8(0), None),  # symmetric: fine
    ],
)
def test_qdq_scale_and_zero_point_rules(tmp_path, scale, zero_point, expect):
    path = dq_model(tmp_path, np.arange(4, dtype=np.int8), scale, zero_point)
    found = errors(path)
    if expect is None:
        assert found == []
    else:
        assert any(expect in e for e in found), found


def test_quantize_to_uint8_and_per_channel_activation_are_refused(tmp_path):
    inits = [
        numpy_helper.from_array(np.full(4, 0.1, np.float32), "s"),
        numpy_helper.from_array(np.zeros(4, np.uint8), "zp"),
    ]
    node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q", axis=0)
    path = save(tmp_path, [node], inits, [f32("x", [4])], [helper.make_tensor_value_info("q", TensorProto.UINT8, [4])])
    found = errors(path)
    assert any("UINT8" in e for e in found) and any("per-channel" in e for e in found), found


def test_unsupported_op_and_foreign_domain(tmp_path):
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="uniq"),
        helper.make_node("Gelu2", ["x"], ["g"], name="custom", domain="com.example"),
    ]
    path = save(
        tmp_path, nodes, [], [f32("x", [4])], [f32("u", [None]), f32("g", [4])], opsets=(("", 20), ("com.example", 1))
    )
    found = errors(path)
    assert any("Unique is not supported" in e for e in found)
    assert any("plugin registered as 'Gelu2'" in e for e in found)


def test_resize_antialias_is_refused(tmp_path):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="r", mode="cubic", antialias=1)
    path = save(tmp_path, [node], [scales], [f32("x", [1, 1, 4, 4])], [f32("y", [1, 1, 8, 8])])
    assert any("antialias" in e for e in errors(path))


def scan_node(**attrs):
    inputs = [f"a{i}" for i in range(9)] + [f"p{i}" for i in range(6)]
    return helper.make_node("BiSelectiveScan", inputs, ["y"], name="scan", domain="trt.plugins", **attrs)


def scan_model(tmp_path, node, act=TensorProto.FLOAT, param=TensorProto.FLOAT, out=TensorProto.FLOAT):
    ins = [helper.make_tensor_value_info(f"a{i}", act, None) for i in range(9)]
    ins += [helper.make_tensor_value_info(f"p{i}", param, None) for i in range(6)]
    return save(
        tmp_path,
        [node],
        [],
        ins,
        [helper.make_tensor_value_info("y", out, None)],
        opsets=(("", 20), ("trt.plugins", 1)),
    )


def test_scan_node_contract(tmp_path):
    ok = scan_model(tmp_path, scan_node(delta_softplus=1, out_scale=0.5))
    assert errors(ok) == []
    ok16 = scan_model(
        tmp_path,
        scan_node(delta_softplus=1, out_scale=0.5, plugin_version="1"),
        act=TensorProto.FLOAT16,
        out=TensorProto.FLOAT16,
    )
    assert errors(ok16) == []
    cases = {
        "plugin_version '2'": scan_node(delta_softplus=1, out_scale=0.5, plugin_version="2"),
        "plugin_namespace 'x'": scan_node(delta_softplus=1, out_scale=0.5, plugin_namespace="x"),
        "out_scale missing": scan_node(delta_softplus=1),
        "delta_softplus is FLOAT": scan_node(delta_softplus=1.0, out_scale=0.5),
    }
    for expect, node in cases.items():
        assert any(expect in e for e in errors(scan_model(tmp_path, node))), expect
    half_params = scan_model(
        tmp_path,
        scan_node(delta_softplus=1, out_scale=0.5),
        act=TensorProto.FLOAT16,
        param=TensorProto.FLOAT16,
        out=TensorProto.FLOAT16,
    )
    assert any("are FLOAT by the op contract" in e for e in errors(half_params))
    short = helper.make_node("BiSelectiveScan", ["a0"], ["y"], domain="trt.plugins", delta_softplus=1, out_scale=0.5)
    assert any("takes 15 inputs" in e for e in errors(scan_model(tmp_path, short)))


def test_inspect_exported_model_json(cli, tmp_path):
    path = tmp_path / "digits.onnx"
    assert cli("export", digits.WEIGHTS, "-o", path, "--batch", "dynamic").exit_code == 0
    result = cli("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["tensorrt"] == {"compatible": True, "errors": [], "warnings": []}
    assert r["ops"]["trt.plugins::BiSelectiveScan"] == 4  # one per layer of the 4-layer digits model
    assert [i["name"] for i in r["inputs"]] == ["images"] and r["inputs"][0]["shape"][1:] == [3, 32, 32]
    assert r["precision"] == "fp32" and r["nodes"] == sum(r["ops"].values())


def test_inspect_engine_reads_its_sidecar(cli, tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    side = {
        "tensorrt": "10.16.0.1",
        "gpu": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp16",
        "input": "images",
        "outputs": ["logits"],
        "profiles": [{"min": [1, 3, 224, 224]}],
        "io": {
            "images": {"dtype": "FP32", "shape": [-1, 3, 224, 224]},
            "logits": {"dtype": "FP32", "shape": [-1, 1000]},
        },
    }
    (tmp_path / "m.plan.json").write_text(json.dumps(side))
    result = cli("inspect", plan, "--json")
    assert result.exit_code == 0
    r = json.loads(result.output)
    assert r["kind"] == "tensorrt-engine" and r["precision"] == "fp16" and r["built_with"]["tensorrt"] == "10.16.0.1"
    assert cli("inspect", tmp_path / "m.plan.json").exit_code == 1  # not an artifact it knows


def test_support_table_holds_one_type_name_per_entry():
    """Each entry is one of the type names onnx-tensorrt's operators.md uses (two strings side by side
    concatenate silently: 'INT64' 'BOOL' would read as one unknown type and drop Split's INT64 and BOOL)."""
    from vimdeploy.tensorrt.onnx_ops import SUPPORTED

    known = {"FP32", "FP16", "BF16", "FP8", "INT4", "INT8", "INT32", "INT64", "UINT8", "BOOL"}
    assert {op: t for op, types in SUPPORTED.items() for t in types if t not in known} == {}
    assert {"INT64", "BOOL"} <= set(SUPPORTED["Split"])
