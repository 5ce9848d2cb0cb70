"""Backbone outputs (feature maps) and any-resolution exports (`--img-size HxW|dynamic`).

Cost on a 2-core CPU: the golden Vim-Ti is exported once per session with a dynamic
resolution in the plugin flavor (~40 s; the portable flavor's golden export takes 100-250 s,
so that flavor is checked on a 2-layer model at the same sizes) and run at 224, 384 and
224x320; 1248 px on the golden is the slow test (~80 s).
"""

import json

import numpy as np
import onnx
import pytest
import torch

from vimdeploy.contract import OP_TYPE
from vimdeploy.export import export_onnx
from vimdeploy.model import load_model
from vimdeploy.runtime import open_engine

from .conftest import small_model

ATOL = 1e-4  # fp32 bound on logits, as in test_export.py
OUT_INDICES = (5, 11, 17, 23)  # hustvl/Vim's segmentation configs for Vim-Ti (docs/backbone.md)


def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.pth"
    torch.save({"model": small_model(seed=1).state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def golden_dynamic(golden, tmp_path_factory):
    """The golden checkpoint in one plugin-flavor ONNX for every resolution, with all backbone outputs."""
    d = tmp_path_factory.mktemp("golden_dynamic")
    return export_onnx(
        golden["checkpoint"],
        d / "vim_t_dyn.onnx",
        img_size="dynamic",
        batch="dynamic",
        scan="plugin",
        feature_map=True,
        out_indices=OUT_INDICES,
    )


def test_feature_map_is_the_normed_patch_grid_in_image_order():
    """With every mixer silenced, each token is its patch embedding + position embedding, so the
    feature map must be RMSNorm over channels of the patch-embedding conv's own (C, H, W) output:
    this checks the layout (rows x cols, no transposition), the class token taken out of the
    middle, and the non-square position embedding, without the model's reshapes."""
    model = small_model(seed=3)
    with torch.no_grad():
        for layer in model.layers:
            layer.mixer.out_proj.weight.zero_()
    x = torch.randn(2, 3, 224, 320)
    with torch.inference_mode():
        fmap = model.forward_outputs(x, ["feature_map"])["feature_map"]
        conv = model.patch_embed.proj(x)  # (2, C, 14, 20)
        pe = model.pos_embed_for((14, 20))[0]  # (14*20 + 1, C), class token at the middle
        mid = 14 * 20 // 2
        pe_grid = torch.cat([pe[:mid], pe[mid + 1 :]]).T.reshape(-1, 14, 20)
        tokens = (conv + pe_grid).permute(0, 2, 3, 1)  # channels last for the norm
        expected = rms_norm(tokens, model.norm_f.weight).permute(0, 3, 1, 2)
    assert fmap.shape == (2, model.cfg.embed_dim, 14, 20)
    torch.testing.assert_close(fmap, expected, rtol=1e-5, atol=1e-5)


def test_out_indices_are_the_block_outputs():
    """feature_map_<i> is what block i returns as hidden states (forward hook), class token out."""
    model = small_model(seed=4, depth=3)
    seen = {}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda _m, _inp, out, i=i: seen.__setitem__(i, out[0]))
    x = torch.randn(1, 3, 160, 96)  # grid 10 x 6
    with torch.inference_mode():
        out = model.forward_outputs(x, ["logits", "feature_map_0", "feature_map_2"])
    for i in (0, 2):
        h = seen[i][0]  # (61, C)
        patches = torch.cat([h[:30], h[31:]])  # the class token sits at 60 // 2
        torch.testing.assert_close(out[f"feature_map_{i}"][0], patches.T.reshape(-1, 10, 6))
    torch.testing.assert_close(out["logits"], model(x))


def test_resize_node_matches_torch_bicubic():
    """ONNX Resize (cubic, a=-0.75, half_pixel, exclude_outside=0), as the exporter writes it, against
    F.interpolate(bicubic, align_corners=False), up and down, square and not."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node(
        "Resize",
        ["x", "", "", "sizes"],
        ["y"],
        mode="cubic",
        cubic_coeff_a=-0.75,
        coordinate_transformation_mode="half_pixel",
        exclude_outside=0,
    )
    graph = helper.make_graph(
        [node],
        "r",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 8, 14, 14)
    for size in [(24, 24), (78, 78), (14, 20), (4, 3), (14, 14)]:
        got = sess.run(None, {"x": x.numpy(), "sizes": np.array([1, 8, *size], np.int64)})[0]
        expected = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)


def _reference(model, x, names):
    with torch.inference_mode():
        return {k: v.numpy() for k, v in model.forward_outputs(torch.from_numpy(x), names).items()}


def _check_outputs(got, ref):
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=0, atol=ATOL)
    for name in ref:  # feature maps: same bound relative to each output's range
        scale = max(1.0, float(np.abs(ref[name]).max()))
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=ATOL * scale, err_msg=name)


def test_one_golden_onnx_serves_every_resolution(golden, golden_model, golden_dynamic):
    engine = open_engine(golden_dynamic["output"])
    names = ["logits", "features", "feature_map"] + [f"feature_map_{i}" for i in OUT_INDICES]
    assert engine.outputs == names and engine.input_hw is None
    both = engine.run(golden["input"], outputs="all")  # the golden's 224 px batch of 2
    np.testing.assert_allclose(both["logits"], golden["logits"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(both["features"], golden["features"], rtol=0, atol=ATOL)
    rng = np.random.default_rng(0)
    for hw in [(224, 224), (384, 384), (224, 320)]:
        x = rng.standard_normal((1, 3, *hw), dtype=np.float32)
        got = engine.run(x, outputs="all")
        assert got["feature_map"].shape == (1, 192, hw[0] // 16, hw[1] // 16)
        assert got["feature_map_11"].shape == (1, 192, hw[0] // 16, hw[1] // 16)
        _check_outputs(got, _reference(golden_model, x, names))


@pytest.mark.slow
def test_one_golden_onnx_at_1248(golden_model, golden_dynamic):
    """6,085 tokens through the same file."""
    engine = open_engine(golden_dynamic["output"])
    x = np.random.default_rng(1).standard_normal((1, 3, 1248, 1248), dtype=np.float32)
    got = engine.run(x, outputs=["logits", "feature_map", "feature_map_23"])
    assert got["feature_map"].shape == (1, 192, 78, 78)
    _check_outputs(got, _reference(golden_model, x, ["logits", "feature_map", "feature_map_23"]))


def _check_dynamic_graph(summary, layers):
    proto = onnx.load(summary["output"], load_external_data=False)
    counts = summary["op_counts"]
    if summary["flavor"] == "plugin":
        assert counts[f"trt.plugins::{OP_TYPE}"] == layers
    else:
        assert counts["Scan"] == layers and OP_TYPE not in str(counts)  # one chunked loop per layer
    resize = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resize) == 1  # the position embedding, once
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize[0].attribute}
    assert attrs["mode"] == b"cubic" and attrs["cubic_coeff_a"] == pytest.approx(-0.75)
    assert attrs["coordinate_transformation_mode"] == b"half_pixel" and attrs["exclude_outside"] == 0
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and "grid" in d for d in dims[2:])  # 16*grid_h, 16*grid_w
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["vimdeploy.resolution"] == "dynamic" and meta["vimdeploy.patch_size"] == "16"


def test_dynamic_golden_graph_keeps_one_scan_node_per_layer_and_one_resize(golden_dynamic):
    _check_dynamic_graph(golden_dynamic, 24)


def test_fixed_non_square_export(small_ckpt, tmp_path):
    s = export_onnx(small_ckpt, tmp_path / "hw.onnx", img_size="224x320", feature_map=True, out_indices=[1])
    assert s["img_size"] == "224x320" and s["tokens"] == 14 * 20 + 1
    assert s["outputs"] == ["logits", "features", "feature_map", "feature_map_1"]
    assert "Resize" not in s["op_counts"]  # the embedding is baked for a fixed size
    engine = open_engine(s["output"])
    assert engine.input_hw == (224, 320)
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 320), dtype=np.float32)
    model, _ = load_model(small_ckpt)
    _check_outputs(engine.run(x, outputs="all"), _reference(model, x, engine.outputs))
    from vimdeploy.errors import InputError

    with pytest.raises(InputError, match="224x320"):
        engine.run(np.zeros((1, 3, 320, 224), np.float32))


def test_cli_dynamic_export_infer_validate(cli, small_ckpt, tmp_path):
    onnx_path = tmp_path / "dyn.onnx"
    r = cli(
        "export",
        small_ckpt,
        "-o",
        onnx_path,
        "--img-size",
        "dynamic",
        "--feature-map",
        "--out-indices",
        "0,1",
        "--scan",
        "onnx",
        "--json",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["outputs"] == ["logits", "features", "feature_map", "feature_map_0", "feature_map_1"]
    _check_dynamic_graph(summary, 2)
    model, _ = load_model(small_ckpt)
    for hw in [(64, 48), (224, 320), (384, 384), (1248, 1248)]:
        x = np.random.default_rng(3).standard_normal((1 if hw[0] > 400 else 2, 3, *hw), dtype=np.float32)
        np.save(tmp_path / "x.npy", x)
        r = cli("infer", onnx_path, "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
        assert r.exit_code == 0, r.output
        out = np.load(tmp_path / "out.npz")
        assert sorted(out.files) == sorted(["logits", "features", "feature_map", "feature_map_0", "feature_map_1"])
        _check_outputs(dict(out), _reference(model, x, out.files))
    # A checkpoint gives feature maps on request, and a bad name or size is one clear line.
    r = cli(
        "infer",
        small_ckpt,
        "--input",
        tmp_path / "x.npy",
        "-o",
        tmp_path / "ref.npz",
        "--outputs",
        "logits,feature_map_1",
    )
    assert r.exit_code == 0 and sorted(np.load(tmp_path / "ref.npz").files) == ["feature_map_1", "logits"]
    r = cli(
        "infer", small_ckpt, "--input", tmp_path / "x.npy", "-o", tmp_path / "ref.npz", "--outputs", "feature_map_9"
    )
    assert r.exit_code == 1 and "feature_map_9" in r.stderr
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 230, 224), np.float32))
    r = cli("infer", onnx_path, "--input", tmp_path / "bad.npy", "-o", tmp_path / "bad.npz")
    assert r.exit_code == 1 and "patch grid" in r.stderr and not (tmp_path / "bad.npz").exists()

    r = cli("validate", onnx_path, "--ref", small_ckpt, "--img-size", "224x320", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["passed"] and report["img_size"] == "224x320"
    assert set(report["per_output"]) == {"logits", "features", "feature_map", "feature_map_0", "feature_map_1"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--img-size", "224x230"], "patch grid"),
        (["--img-size", "big"], "HxW"),
        (["--out-indices", "0,2"], "blocks 0..1"),
        (["--out-indices", "a"], "block numbers"),
    ],
)
def test_bad_backbone_options_are_one_clear_line(cli, small_ckpt, tmp_path, args, message):
    r = cli("export", small_ckpt, "-o", tmp_path / "a.onnx", *args)
    assert r.exit_code == 1 and message in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "a.onnx").exists()


# ---------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    pytest.importorskip("sklearn")
    from vimdeploy.digits import write_image_folder

    folder = tmp_path_factory.mktemp("digits") / "test"
    assert write_image_folder(folder) == 450
    return folder


def test_evaluate_reproduces_the_documented_digits_accuracy(cli, digits_folder, tmp_path):
    """docs/precision.md: fp32 96.89% on the 450 held-out images (436/450), checkpoint and ONNX."""
    from vimdeploy.digits import WEIGHTS

    onnx_path = tmp_path / "digits.onnx"
    assert cli("export", WEIGHTS, "-o", onnx_path, "--scan", "onnx", "--batch", "dynamic").exit_code == 0
    r = cli("evaluate", WEIGHTS, onnx_path, "--data", digits_folder, "--json")
    assert r.exit_code == 0, r.output
    ckpt, exported = json.loads(r.stdout)
    for result in (ckpt, exported):
        assert result["images"] == 450 and result["classes"] == 10 and result["img_size"] == "32"
        assert round(result["top1"] * 450) == 436  # 96.89%
        assert result["top5"] >= result["top1"]
    assert exported["agreement_top1"] == 1.0 and "agreement_top1" not in ckpt
    # Text output, and --limit.
    r = cli("evaluate", WEIGHTS, "--data", digits_folder, "--limit", "20")
    assert r.exit_code == 0 and " 20 " in r.stdout and "top-1" in r.stdout


def test_evaluate_with_a_labels_file_and_bad_data(cli, tmp_path):
    from PIL import Image

    from vimdeploy.digits import WEIGHTS, digit_images

    images, labels = digit_images("test")
    lines = ["file,label"]
    for i in range(12):
        images[i].save(tmp_path / f"d{i}.png")
        lines.append(f"d{i}.png,{labels[i]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    r = cli("evaluate", WEIGHTS, "--data", tmp_path, "--labels", tmp_path / "labels.csv", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["images"] == 12
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("evaluate", WEIGHTS, "--data", empty)
    assert r.exit_code == 1 and "class subfolders" in r.stderr
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "bad.txt").write_text("x.png seven\nx.png 3\n")
    r = cli("evaluate", WEIGHTS, "--data", tmp_path, "--labels", tmp_path / "bad.txt")
    assert r.exit_code == 0  # the first line is taken as a header
    (tmp_path / "bad.txt").write_text("x.png 3\nx.png seven\n")
    r = cli("evaluate", WEIGHTS, "--data", tmp_path, "--labels", tmp_path / "bad.txt")
    assert r.exit_code == 1 and "bad.txt:2" in r.stderr


# ------------------------------------------------------------------- TensorRT profiles (pure helpers)


def test_build_profiles_over_height_and_width():
    from vimdeploy.errors import InputError
    from vimdeploy.tensorrt.builder import make_profile
    from vimdeploy.tensorrt.profiles import check_profile_grid, parse_size_range

    assert parse_size_range(None) is None
    assert parse_size_range("224:384:1248") == ((224, 384, 1248), (224, 384, 1248))
    assert parse_size_range("224x320:384x640:1248x1248") == ((224, 384, 1248), (320, 640, 1248))
    assert parse_size_range("224:384x640:1248") == ((224, 384, 1248), (224, 640, 1248))
    for bad in ["224:1248", "1248:384:224", "a:b:c", "224x320x4:384:1248"]:
        with pytest.raises(InputError):
            parse_size_range(bad)
    profile = make_profile([None, 3, None, None], (1, 4, 8), parse_size_range("224x320:384x640:1248x1248"))
    assert profile == {"min": [1, 3, 224, 320], "opt": [4, 3, 384, 640], "max": [8, 3, 1248, 1248]}
    check_profile_grid(profile, {"patch_size": "16", "stride": "16"})
    check_profile_grid(profile, {})  # an ONNX without the metadata: nothing to check
    with pytest.raises(InputError, match="230"):
        check_profile_grid(
            make_profile([None, 3, None, None], None, parse_size_range("224:230:1248")),
            {"patch_size": "16", "stride": "16"},
        )
    # A fixed non-square export: its own size is accepted, another is refused.
    assert make_profile([1, 3, 224, 320], None, parse_size_range("224x320"))["opt"] == [1, 3, 224, 320]
    with pytest.raises(InputError, match="fixed 224x320"):
        make_profile([1, 3, 224, 320], None, parse_size_range("224"))


def test_public_api_is_lazy_and_complete():
    """`import vimdeploy` imports no torch / onnx; every public name resolves when used."""
    import subprocess
    import sys

    code = (
        "import sys, vimdeploy; heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules];"
        "print(heavy); names = [n for n in vimdeploy.__all__ if n != '__version__'];"
        "print(all(callable(getattr(vimdeploy, n)) for n in names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"]


def test_plugin_build_dir_outside_a_checkout_is_a_user_cache(tmp_path, monkeypatch):
    """Installed from a wheel, plugins/ is a plain folder in site-packages: build into ~/.cache."""
    from vimdeploy import __version__
    from vimdeploy.ops import native

    monkeypatch.delenv("VIMDEPLOY_PLUGIN_BUILD_DIR", raising=False)
    assert native.PLUGIN_SRC.is_symlink() and native.default_build_dir() == native.PLUGIN_SRC.resolve() / "build"
    installed = tmp_path / "site-packages" / "vimdeploy" / "plugins"
    installed.mkdir(parents=True)
    monkeypatch.setattr(native, "PLUGIN_SRC", installed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = native.default_build_dir()
    assert first.parent == tmp_path / "cache" / "vimdeploy" and first.name.startswith(f"plugins-{__version__}-")
    # another install of the same version (another venv) gets its own folder: CMake refuses a
    # build folder configured from other sources (seen when two wheel checks ran on one machine)
    other = tmp_path / "venv2" / "vimdeploy" / "plugins"
    other.mkdir(parents=True)
    monkeypatch.setattr(native, "PLUGIN_SRC", other)
    assert native.default_build_dir() != first and native.default_build_dir().parent == first.parent
    monkeypatch.setenv("VIMDEPLOY_PLUGIN_BUILD_DIR", str(tmp_path / "mine"))
    assert native.default_build_dir() == tmp_path / "mine"
