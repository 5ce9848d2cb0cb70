"""`vimdeploy export`: both ONNX flavors, the op contract, golden parity through ONNX Runtime.

Cost on a 2-core CPU: the two golden exports (Vim-Ti, 24 layers, dynamic batch) are made
once per session (~30 s plugin, ~100 s portable); the rest uses 2-layer models.
"""

import json

import numpy as np
import onnx
import pytest
import torch

from vimdeploy.contract import ATTRIBUTES, DOMAIN, INPUT_NAMES, OP_TYPE
from vimdeploy.export import export_onnx
from vimdeploy.export.portable import CHUNK, bi_selective_scan_onnx
from vimdeploy.model.checkpoint import file_sha256
from vimdeploy.ops import ScanInputs, get_scan
from vimdeploy.ops.reference import bi_selective_scan_reference
from vimdeploy.runtime import open_engine

from .conftest import small_model

ATOL = 1e-4  # fp32 golden bound on logits (golden README: real mistakes are ~0.4)


@pytest.fixture(scope="session")
def golden_onnx(golden, tmp_path_factory):
    """The golden checkpoint exported in both flavors with a dynamic batch."""
    d = tmp_path_factory.mktemp("golden_onnx")
    return {
        flavor: export_onnx(golden["checkpoint"], d / f"vim_t_{flavor}.onnx", batch="dynamic", scan=flavor)
        for flavor in ("plugin", "onnx")
    }


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.pth"
    torch.save({"model": small_model(seed=1).state_dict()}, path)
    return path


def scan_inputs(b=2, L=37, E=12, N=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    acts = [r(b, L, E), r(b, L, E), r(b, L, E), r(b, L, N), r(b, L, N), r(b, L, E), r(b, L, E), r(b, L, N), r(b, L, N)]
    params = [
        -torch.rand(E, N, generator=g, dtype=dtype) * 2,
        -torch.rand(E, N, generator=g, dtype=dtype),
        r(E),
        r(E),
        r(E) * 0.5,
        r(E) * 0.5,
    ]
    return ScanInputs(*acts, *params)


# The two scans the exporter traces: the op (one node per layer) and the portable scan.
TRACED = {"op": get_scan("auto"), "portable": bi_selective_scan_onnx}


@pytest.mark.parametrize("backend", list(TRACED))
@pytest.mark.parametrize("softplus,scale", [(True, 0.5), (False, 1.0)])
def test_export_scan_backends_match_the_reference(backend, softplus, scale):
    inputs = scan_inputs()
    if not softplus:  # dt must be a positive step size without the softplus, else the scan blows up
        inputs = inputs._replace(
            **{k: getattr(inputs, k).abs() * 0.3 for k in ("dt_fwd", "dt_bwd", "dt_bias_fwd", "dt_bias_bwd")}
        )
    expected = bi_selective_scan_reference(inputs, delta_softplus=softplus, out_scale=scale)
    got = TRACED[backend](inputs, delta_softplus=softplus, out_scale=scale)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # fp64 in, fp64 math: the portable scan is the same recurrence, to rounding.
    inputs64 = scan_inputs(dtype=torch.float64)
    torch.testing.assert_close(TRACED[backend](inputs64), bi_selective_scan_reference(inputs64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 197, 1031])
@pytest.mark.parametrize("softplus,scale", [(True, 0.5), (False, 1.0)])
def test_chunked_portable_scan_matches_the_reference_at_every_length(L, softplus, scale):
    """Lengths around the chunk size (padding of 1 .. CHUNK identity steps) and long ones."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        inputs = scan_inputs(L=L, seed=L, dtype=dtype)
        if not softplus:
            inputs = inputs._replace(
                **{k: getattr(inputs, k).abs() * 0.3 for k in ("dt_fwd", "dt_bwd", "dt_bias_fwd", "dt_bias_bwd")}
            )
        expected = bi_selective_scan_reference(inputs, delta_softplus=softplus, out_scale=scale)
        got = bi_selective_scan_onnx(inputs, delta_softplus=softplus, out_scale=scale)
        assert got.dtype == dtype and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_chunked_portable_scan_in_fp64_for_other_chunk_sizes():
    inputs = scan_inputs(L=45, dtype=torch.float64)
    expected = bi_selective_scan_reference(inputs)
    for chunk in (1, 7, 8, 32, 64):
        torch.testing.assert_close(bi_selective_scan_onnx(inputs, chunk=chunk), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flavor", ["plugin", "onnx"])
def test_golden_parity_through_onnx_runtime(golden, golden_onnx, flavor):
    engine = open_engine(golden_onnx[flavor]["output"])
    assert engine.fixed_batch is None  # dynamic batch
    both = engine.run(golden["input"], features=True)  # the golden's batch of 2
    one = engine.run(golden["input"][:1], features=True)
    np.testing.assert_allclose(both["logits"], golden["logits"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(both["features"], golden["features"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(one["logits"], golden["logits"][:1], rtol=0, atol=ATOL)


def test_plugin_flavor_follows_the_op_contract(golden, golden_onnx):
    proto = onnx.load(golden_onnx["plugin"]["output"])
    nodes = [n for n in proto.graph.node if n.op_type == OP_TYPE]
    assert len(nodes) == 24  # one per layer
    assert {o.domain: o.version for o in proto.opset_import}[DOMAIN] == 1
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    }
    for node in nodes:
        assert node.domain == DOMAIN and len(node.input) == len(INPUT_NAMES) == 15 and len(node.output) == 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert set(attrs) == set(ATTRIBUTES)
        types = {a.name: a.type for a in node.attribute}
        assert types["delta_softplus"] == onnx.AttributeProto.INT and attrs["delta_softplus"] == 1
        assert types["out_scale"] == onnx.AttributeProto.FLOAT and attrs["out_scale"] == 0.5
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
        # Activations (b, L, E) / (b, L, N) in token order, the output like x_fwd.
        assert shapes[node.input[1]] == ["batch", 197, 384] and shapes[node.input[3]] == ["batch", 197, 16]
        assert shapes[node.output[0]] == ["batch", 197, 384]
        # A, D and dt bias are fp32 constants of the right shapes.
        assert [inits[n].shape for n in node.input[9:]] == [(384, 16)] * 2 + [(384,)] * 4
        assert all(inits[n].dtype == np.float32 for n in node.input[9:])
    # ... and hold the layer's values: A = -exp(A_log), in layer order.
    from vimdeploy.model import read_checkpoint

    sd = read_checkpoint(golden["checkpoint"]).state_dict
    np.testing.assert_allclose(inits[nodes[0].input[9]], -np.exp(sd["layers.0.mixer.A_log"].numpy()), rtol=1e-6)
    np.testing.assert_allclose(inits[nodes[5].input[10]], -np.exp(sd["layers.5.mixer.A_b_log"].numpy()), rtol=1e-6)
    np.testing.assert_array_equal(inits[nodes[23].input[12]], sd["layers.23.mixer.D_b"].numpy())
    np.testing.assert_array_equal(inits[nodes[23].input[13]], sd["layers.23.mixer.dt_proj.bias"].numpy())


def test_portable_flavor_uses_standard_ops_only(golden_onnx):
    proto = onnx.load(golden_onnx["onnx"]["output"])
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert [o.domain for o in proto.opset_import if o.domain not in ("", "ai.onnx")] == []
    # One loop per layer (both directions, chunks of CHUNK tokens), no unrolling.
    assert sum(n.op_type == "Scan" for n in proto.graph.node) == 24


@pytest.mark.parametrize("flavor", ["plugin", "onnx"])
def test_both_flavors_pass_the_tensorrt_check(golden_onnx, flavor):
    """`vimdeploy inspect`'s verdict: nothing that TensorRT's ONNX parser would refuse."""
    from vimdeploy.tensorrt.onnx_compat import check_onnx

    findings = [str(f) for f in check_onnx(onnx.load(golden_onnx[flavor]["output"]))]
    assert findings == [], findings[:5]


def test_metadata_and_io(golden, golden_onnx):
    proto = onnx.load(golden_onnx["onnx"]["output"], load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["vimdeploy.variant"] == "tiny-p16" and meta["vimdeploy.resolution"] == "224"
    assert meta["vimdeploy.tokens"] == "197" and meta["vimdeploy.scan"] == "onnx"
    assert meta["vimdeploy.checkpoint_sha256"] == file_sha256(golden["checkpoint"])
    assert meta["vimdeploy.batch"] == "dynamic" and "vimdeploy.version" in meta
    # DeiT's evaluation transform at 224 (cover 256, bicubic, ImageNet mean/std) and ImageNet's names
    recipe = json.loads(meta["vimdeploy.preprocessing"])
    assert (recipe["input_size"], recipe["resize_size"], recipe["interpolation"]) == ([224, 224], [256, 256], "bicubic")
    assert (recipe["mean"], recipe["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    names = json.loads(meta["vimdeploy.labels"])
    assert len(names) == 1000 and (names[0], names[1]) == ("tench", "goldfish")
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits", "features"]
    assert proto.ir_version <= 13
    onnx.checker.check_model(proto)


def all_nodes(graph) -> int:
    """Nodes of a graph and of every subgraph (Scan / Loop / If bodies) in it."""
    return sum(1 + sum(all_nodes(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH) for n in graph.node)


@pytest.mark.parametrize("flavor", ["plugin", "onnx"])
def test_node_count_does_not_grow_with_tokens(small_ckpt, tmp_path, flavor):
    """197 tokens (224 px) and 6085 tokens (1248 px): the same graph, no per-token unrolling."""
    a = export_onnx(small_ckpt, tmp_path / "224.onnx", scan=flavor)
    b = export_onnx(small_ckpt, tmp_path / "1248.onnx", img_size=1248, scan=flavor)
    assert (a["tokens"], b["tokens"]) == (197, 6085)
    assert a["nodes"] == b["nodes"] and a["op_counts"] == b["op_counts"]
    # ... loop bodies included: the Scan bodies do not depend on the length either.
    assert all_nodes(onnx.load(a["output"]).graph) == all_nodes(onnx.load(b["output"]).graph)
    if flavor == "onnx":
        # The long-sequence export runs, and matches PyTorch at that resolution.
        from vimdeploy.model import load_model

        x = np.random.default_rng(0).standard_normal((1, 3, 1248, 1248), dtype=np.float32)
        model, _ = load_model(small_ckpt)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(open_engine(b["output"]).run(x)["logits"], expected, rtol=0, atol=ATOL)


def test_fixed_batch_export_runs_any_batch_in_chunks(cli, small_ckpt, tmp_path):
    result = cli("export", small_ckpt, "-o", tmp_path / "b2.onnx", "--batch", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["batch"] == 2 and summary["flavor"] == "plugin"
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = cli("infer", tmp_path / "b2.onnx", "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz", "--features")
    assert result.exit_code == 0, result.output
    out = np.load(tmp_path / "out.npz")
    from vimdeploy.model import load_model

    model, _ = load_model(small_ckpt)
    with torch.inference_mode():
        feats = model(torch.from_numpy(x), return_features=True)
        logits = model.head(feats)
    np.testing.assert_allclose(out["features"], feats.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=0, atol=ATOL)


def test_bad_inputs_give_one_clear_line_and_touch_nothing(cli, small_ckpt, tmp_path):
    not_a_ckpt = tmp_path / "notes.pth"
    not_a_ckpt.write_text("hello")
    cases = [
        (["export", not_a_ckpt, "-o", tmp_path / "a.onnx"], "not a PyTorch checkpoint"),
        (["export", small_ckpt, "-o", tmp_path / "a.onnx", "--img-size", "230"], "does not fit the patch grid"),
        (["export", small_ckpt, "-o", tmp_path / "missing" / "a.onnx"], "does not exist"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 1, result.output
        assert message in result.stderr and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pth"]  # nothing written, no temp files

    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep me")
    result = cli("export", small_ckpt, "-o", existing)
    assert result.exit_code == 1 and "--force" in result.stderr
    assert existing.read_bytes() == b"keep me"
    result = cli("export", small_ckpt, "-o", existing, "--force", "--no-simplify")
    assert result.exit_code == 0, result.output
    assert onnx.load(existing).graph.input[0].name == "images"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "notes.pth"]


def test_batch_option_is_checked(cli, small_ckpt, tmp_path):
    result = cli("export", small_ckpt, "-o", tmp_path / "a.onnx", "--batch", "zero")
    assert result.exit_code == 2 and "dynamic" in result.output
    assert not (tmp_path / "a.onnx").exists()
