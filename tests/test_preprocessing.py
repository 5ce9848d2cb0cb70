"""Self-describing artifacts: the preprocessing and labels schema (vimdeploy/preprocessing.py), what
`export` writes, what the engine sidecar keeps, what `inspect`, `predict` and `export --precision`
report. The expected recipes are written out here (DeiT's evaluation transform), not taken from
the code under test."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch

from vimdeploy import digits
from vimdeploy.errors import ArtifactError, InputError
from vimdeploy.preprocessing import Preprocessing, from_json, parse_labels
from vimdeploy.tensorrt.sidecar import description_entries, validate_sidecar

from .conftest import small_model

DEIT_32 = {  # DeiT's evaluation transform at 32 px: cover int(32 / 0.875) = 36, bicubic, center crop
    "input_size": [32, 32],
    "resize_size": [36, 36],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "crop": "center",
    "interpolation": "bicubic",
    "layout": "NCHW",
    "color": "RGB",
}


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("input_size", [32], "not [height, width]"),
        ("input_size", [0, 32], "not an integer in 1..16384"),
        ("input_size", [32.0, 32], "not an integer"),
        ("resize_size", [10**6, 36], "not an integer"),
        ("resize_size", [16, 16], "smaller than input_size"),
        ("mean", [0.5, 0.5], "three numbers"),
        ("mean", [0.5, 0.5, math.nan], "not a finite number"),
        ("mean", [0.5, "0.5", 0.5], "not a finite number"),
        ("std", [0.2, 0.0, 0.2], "not a finite number in (0.0"),
        ("interpolation", "cubic\nx", "not one of nearest"),
        ("layout", "CHW", "not one of NCHW, NHWC"),
        ("color", "rgb", "not one of RGB, BGR"),
        ("crop", "random", "not one of center, none"),
        ("extra", 1, "unknown extra"),
    ],
)
def test_hostile_preprocessing_metadata_is_one_clear_error(field, value, needle):
    data = {**DEIT_32, field: value}
    with pytest.raises(ArtifactError, match="invalid preprocessing metadata") as e:
        from_json(json.dumps(data), "m.onnx")
    assert needle in str(e.value) and str(e.value).startswith("m.onnx:")
    for text in ("{not json", "[1, 2]", "x" * 5000):
        with pytest.raises(ArtifactError, match="m.onnx: (its|invalid) preprocessing metadata"):
            from_json(text, "m.onnx")


def test_labels_metadata_is_checked():
    assert parse_labels('["a", "b c"]', "m.onnx", 2) == ["a", "b c"]
    for bad in ('["a", "b\\nc"]', '["a", ""]', '["a", 1]', '{"a": 1}', "[]", json.dumps(["x" * 300])):
        with pytest.raises(ArtifactError, match="m.onnx: invalid labels metadata"):
            parse_labels(bad, "m.onnx")
    with pytest.raises(ArtifactError, match="2 labels; the model has 10 classes"):
        parse_labels('["a", "b"]', "m.onnx", 10)


def test_sidecar_keeps_the_description_and_refuses_a_hostile_one():
    meta = {"preprocessing": json.dumps(DEIT_32), "labels": json.dumps([str(i) for i in range(10)])}
    entries = description_entries(meta)
    assert entries == {"preprocessing": DEIT_32, "labels": [str(i) for i in range(10)]}
    assert validate_sidecar(entries) is None
    assert "mean" in validate_sidecar({"preprocessing": {**DEIT_32, "mean": [1, 2]}})
    assert "labels" in validate_sidecar({"labels": ["ok", "two\nlines"]})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 1000-class 2-layer Vim and the digits model, exported once each (plugin flavor)."""
    from vimdeploy.export import export_onnx

    d = tmp_path_factory.mktemp("described")
    torch.save({"model": small_model(seed=3).state_dict()}, d / "small.pth")
    small = export_onnx(d / "small.pth", d / "small.onnx", batch="dynamic")
    names = d / "digits.txt"
    names.write_text("".join(f"digit {i}\n" for i in range(10)))
    labelled = export_onnx(digits.WEIGHTS, d / "digits.onnx", batch="dynamic", labels=names)
    plain = export_onnx(digits.WEIGHTS, d / "plain.onnx", batch="dynamic")
    return {"small": small["output"], "digits": labelled["output"], "plain": plain["output"], "dir": d}


def metadata(path) -> dict:
    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


def test_export_writes_the_recipe_and_the_names(exported):
    small = metadata(exported["small"])
    pre = json.loads(small["vimdeploy.preprocessing"])
    assert pre == {**DEIT_32, "input_size": [224, 224], "resize_size": [256, 256]}
    names = json.loads(small["vimdeploy.labels"])  # ImageNet-1k, index order
    assert len(names) == 1000 and (names[0], names[281], names[999]) == ("tench", "tabby cat", "toilet paper")
    labelled = metadata(exported["digits"])
    assert json.loads(labelled["vimdeploy.preprocessing"]) == DEIT_32
    assert json.loads(labelled["vimdeploy.labels"])[3] == "digit 3"
    assert "vimdeploy.labels" not in metadata(exported["plain"])  # 10 classes and no file: no names


def test_inspect_and_predict_read_the_description(cli, exported, tmp_path):
    result = cli("inspect", exported["digits"], "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["preprocessing"] == DEIT_32 and r["labels"][:2] == ["digit 0", "digit 1"]
    text = cli("info", exported["digits"]).output  # the other name of the same command
    assert "resize to cover 36x36 bicubic, center crop 32x32" in text and "labels       10: digit 0" in text

    images, labels = digits.digit_images("test")
    images[0].save(tmp_path / "d.png")
    result = cli("predict", exported["digits"], tmp_path / "d.png", "-k", "1", "--json")
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]["top"][0]
    assert top["name"] == f"digit {top['index']}"
    # DeiT's transform written out: cover 36 (the image is square), center crop 32, mean / std.
    im = images[0].convert("RGB").resize((36, 36), 3)  # 3 = PIL bicubic
    x = np.asarray(im.crop((2, 2, 34, 34)), np.float32) / 255.0
    x = ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32).transpose(2, 0, 1)[None]
    from vimdeploy.runtime import open_engine

    with open_engine(digits.WEIGHTS) as engine:
        logits = engine.run(x)["logits"][0]
    assert top["index"] == int(logits.argmax())
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert abs(top["probability"] - float(probs.max())) < 1e-4


def test_a_broken_description_is_one_error_line(cli, exported, tmp_path):
    model = onnx.load(exported["digits"])
    for p in model.metadata_props:
        if p.key == "vimdeploy.preprocessing":
            p.value = json.dumps({**DEIT_32, "std": [0.2, 0.2, 0]})
    onnx.save(model, tmp_path / "broken.onnx")
    images, _ = digits.digit_images("test")
    images[0].save(tmp_path / "d.png")
    result = cli("predict", tmp_path / "broken.onnx", tmp_path / "d.png")
    assert result.exit_code == 1 and result.output.startswith("error:") and "std" in result.output
    assert result.output.count("\n") == 1
    inspected = cli("inspect", tmp_path / "broken.onnx")  # describes the file, says what is wrong
    assert inspected.exit_code == 0 and "INVALID" in inspected.output


def test_int8_export_reports_the_file_it_wrote(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calib = tmp_path / "calib"
    digits.write_calibration_images(calib, 4)
    out = tmp_path / "int8.onnx"
    result = cli("export", digits.WEIGHTS, "-o", out, "--precision", "int8", "--calib", calib, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    written = onnx.load(out, load_external_data=False)
    assert summary["output"] == str(out) and summary["precision"] == "int8"
    assert summary["nodes"] == len(written.graph.node)
    assert summary["op_counts"]["QuantizeLinear"] == sum(n.op_type == "QuantizeLinear" for n in written.graph.node)
    assert str(tmp_path) not in result.stderr.replace(str(out), "")  # no temporary path reported
    assert json.loads(metadata(out)["vimdeploy.preprocessing"]) == DEIT_32  # the conversion keeps it


def test_recipe_options_validate():
    with pytest.raises(InputError, match="mean"):
        Preprocessing(input_size=(32, 32), resize_size=(36, 36), mean=(0.5, 0.5))
