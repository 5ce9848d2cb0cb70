"""`vimdeploy triton-repo`: layout and config.pbtxt from a fake engine + sidecar (no TensorRT)."""

from __future__ import annotations

import json
import re

import pytest

from vimdeploy.errors import ArtifactError, InputError
from vimdeploy.triton import config_pbtxt


def sidecar(min_batch=1, opt=8, max_batch=32, dtype="FP32", classes=1000):
    return {
        "tensorrt": "10.12.0.36", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "precision": "fp16",
        "input": "images", "outputs": ["logits", "features"],
        "io": {"images": {"dtype": dtype, "shape": [-1, 3, 224, 224]},
               "logits": {"dtype": "FP32", "shape": [-1, classes]}, "features": {"dtype": "FP32", "shape": [-1, 192]}},
        "profiles": [{"min": [min_batch, 3, 224, 224], "opt": [opt, 3, 224, 224], "max": [max_batch, 3, 224, 224]}],
    }


@pytest.fixture
def engine(tmp_path):
    plan = tmp_path / "vim_t.plan"
    plan.write_bytes(b"\x00fake serialized engine")
    (tmp_path / "vim_t.plan.json").write_text(json.dumps(sidecar()))
    return plan


def entries(text: str) -> list[str]:
    """config.pbtxt lines without comments and indentation."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_repository_layout_and_config(cli, engine, tmp_path):
    repo = tmp_path / "models"
    result = cli("triton-repo", engine, "-o", repo, "--name", "vim_t", "--max-batch", "16")
    assert result.exit_code == 0, result.output
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == ["README.md", "vim_t/1/model.plan", "vim_t/1/model.plan.json", "vim_t/config.pbtxt",
                     "vim_t/labels.txt"]
    assert (repo / "vim_t/1/model.plan").read_bytes() == engine.read_bytes()
    text = (repo / "vim_t/config.pbtxt").read_text()
    lines = entries(text)
    assert lines[:3] == ['name: "vim_t"', 'platform: "tensorrt_plan"', "max_batch_size: 16"]
    joined = "\n".join(lines)
    assert re.search(r'name: "images"\ndata_type: TYPE_FP32\ndims: \[ 3, 224, 224 \]', joined)
    assert re.search(r'name: "logits"\ndata_type: TYPE_FP32\ndims: \[ 1000 \]\nlabel_filename: "labels.txt"', joined)
    assert re.search(r'name: "features"\ndata_type: TYPE_FP32\ndims: \[ 192 \]', joined)
    assert "preferred_batch_size: [ 8, 16 ]" in lines and "max_queue_delay_microseconds: 100" in lines
    assert "kind: KIND_GPU" in lines and "count: 1" in lines
    assert text.count("{") == text.count("}") and text.count("[") == text.count("]")
    # how the plugin gets into the server, in the config comment and the README
    readme = (repo / "README.md").read_text()
    for t in (text, readme):
        assert 'backend-config=tensorrt,plugins="' in t and "LD_PRELOAD=" in t


def test_existing_model_kept_without_force(cli, engine, tmp_path):
    repo = tmp_path / "models"
    assert cli("triton-repo", engine, "-o", repo).exit_code == 0
    (repo / "vim/config.pbtxt").write_text("mine")
    result = cli("triton-repo", engine, "-o", repo)
    assert result.exit_code == 1 and "already exists" in result.output
    assert (repo / "vim/config.pbtxt").read_text() == "mine"
    assert cli("triton-repo", engine, "-o", repo, "--force").exit_code == 0
    assert 'platform: "tensorrt_plan"' in (repo / "vim/config.pbtxt").read_text()
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_fp16_input_and_defaults():
    lines = entries(config_pbtxt(sidecar(dtype="FP16", opt=4, max_batch=8)))
    assert "data_type: TYPE_FP16" in lines and "max_batch_size: 8" in lines
    assert "preferred_batch_size: [ 4, 8 ]" in lines


def test_fixed_batch_engine_has_no_batching():
    lines = entries(config_pbtxt(sidecar(min_batch=4, opt=4, max_batch=4)))
    assert "max_batch_size: 0" in lines and "dims: [ 4, 3, 224, 224 ]" in lines and "dims: [ 4, 1000 ]" in lines
    assert not any(line.startswith("dynamic_batching") for line in lines)


def test_refusals(engine, tmp_path):
    with pytest.raises(ArtifactError, match="starts at 2"):
        config_pbtxt(sidecar(min_batch=2))
    with pytest.raises(InputError, match="max-batch"):
        config_pbtxt(sidecar(), max_batch=64)
    from vimdeploy.triton import write_triton_repo

    (tmp_path / "vim_t.plan.json").unlink()
    with pytest.raises(ArtifactError, match="sidecar"):
        write_triton_repo(engine, tmp_path / "models")


def test_labels_file_is_imagenet_in_index_order(cli, engine, tmp_path):
    repo = tmp_path / "models"
    assert cli("triton-repo", engine, "-o", repo).exit_code == 0
    names = (repo / "vim/labels.txt").read_text().splitlines()
    assert len(names) == 1000
    assert (names[0], names[1], names[281], names[999]) == ("tench", "goldfish", "tabby cat", "toilet paper")
    assert "vim/labels.txt" in (repo / "README.md").read_text()


def test_own_labels_and_no_labels_for_other_class_counts(cli, tmp_path):
    plan = tmp_path / "digits.plan"
    plan.write_bytes(b"fake")
    (tmp_path / "digits.plan.json").write_text(json.dumps(sidecar(classes=10)))
    repo = tmp_path / "models"
    assert cli("triton-repo", plan, "-o", repo).exit_code == 0
    assert not (repo / "vim/labels.txt").exists()
    assert "label_filename" not in (repo / "vim/config.pbtxt").read_text()
    labels = tmp_path / "digits.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    assert cli("triton-repo", plan, "-o", repo, "--labels", labels, "--force").exit_code == 0
    assert (repo / "vim/labels.txt").read_text().splitlines()[3] == "digit 3"
    assert 'label_filename: "labels.txt"' in (repo / "vim/config.pbtxt").read_text()
    labels.write_text("zero\none\n")
    result = cli("triton-repo", plan, "-o", repo, "--labels", labels, "--force")
    assert result.exit_code == 1 and "2 labels" in result.output and "10 classes" in result.output


def test_warmup_and_instance_groups(cli, engine, tmp_path):
    repo = tmp_path / "models"
    assert cli("triton-repo", engine, "-o", repo, "--instances", "2", "--gpus", "0,1", "--max-batch", "16").exit_code == 0
    lines = entries((repo / "vim/config.pbtxt").read_text())
    assert "count: 2" in lines and "gpus: [ 0, 1 ]" in lines and "kind: KIND_GPU" in lines
    joined = "\n".join(lines)
    for b in (1, 16):  # a batch of 1 and the largest, random data at the input's dims
        assert re.search(rf'name: "random_batch_{b}"\nbatch_size: {b}\ninputs \[\n{{\nkey: "images"\nvalue {{\n'
                         r'data_type: TYPE_FP32\ndims: \[ 3, 224, 224 \]\nrandom_data: true', joined), b
    assert cli("triton-repo", engine, "-o", repo, "--force", "--no-warmup").exit_code == 0
    assert "model_warmup" not in (repo / "vim/config.pbtxt").read_text()
    result = cli("triton-repo", engine, "-o", repo, "--force", "--gpus", "a,b")
    assert result.exit_code == 1 and "--gpus" in result.output
    assert cli("triton-repo", engine, "-o", repo, "--force", "--instances", "0").exit_code == 1


def test_fixed_batch_engine_warms_up_with_batch_size_1():
    lines = entries(config_pbtxt(sidecar(min_batch=4, opt=4, max_batch=4)))
    joined = "\n".join(lines)
    assert "random_batch_1" in joined and "random_batch_4" not in joined
    assert re.search(r"batch_size: 1\ninputs \[\n{\nkey: \"images\"\nvalue {\ndata_type: TYPE_FP32\ndims: \[ 4, 3, 224, 224 \]",
                     joined)


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_config_is_valid_for_tritons_own_parser(kind, tmp_path):
    """Triton reads config.pbtxt with protobuf's text format into its ModelConfig message."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (vimdeploy[serve]) carries Triton's ModelConfig")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    side = sidecar() if kind == "dynamic" else sidecar(min_batch=4, opt=4, max_batch=4)
    config = text_format.Parse(config_pbtxt(side, "vim_t", instances=2, gpus=[1], labels=True),
                               model_config_pb2.ModelConfig())
    assert config.name == "vim_t" and config.platform == "tensorrt_plan"
    assert config.max_batch_size == (32 if kind == "dynamic" else 0)
    assert [o.label_filename for o in config.output] == ["labels.txt", ""]
    group = config.instance_group[0]
    assert (group.count, list(group.gpus), group.kind) == (2, [1], model_config_pb2.ModelInstanceGroup.KIND_GPU)
    warm = {w.name: w for w in config.model_warmup}
    assert sorted(warm) == (["random_batch_1", "random_batch_32"] if kind == "dynamic" else ["random_batch_1"])
    images = warm["random_batch_1"].inputs["images"]
    assert images.random_data and images.data_type == model_config_pb2.TYPE_FP32
    assert list(images.dims) == ([3, 224, 224] if kind == "dynamic" else [4, 3, 224, 224])
