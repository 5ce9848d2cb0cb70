"""`vimdeploy triton-repo`: layout and config.pbtxt from a fake engine + sidecar (no TensorRT).

Configs are read back as Triton reads them: protobuf's text format into its ModelConfig message.
"""

from __future__ import annotations

import json

import pytest

from vimdeploy.errors import ArtifactError, InputError
from vimdeploy.triton import config_pbtxt

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (vimdeploy[serve]) carries Triton's ModelConfig")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as pb  # noqa: E402


def sidecar(min_batch=1, opt=8, max_batch=32, dtype="FP32", classes=1000):
    return {
        "tensorrt": "10.12.0.36",
        "gpu": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "precision": "fp16",
        "input": "images",
        "outputs": ["logits", "features"],
        "io": {
            "images": {"dtype": dtype, "shape": [-1, 3, 224, 224]},
            "logits": {"dtype": "FP32", "shape": [-1, classes]},
            "features": {"dtype": "FP32", "shape": [-1, 192]},
        },
        "profiles": [{"min": [min_batch, 3, 224, 224], "opt": [opt, 3, 224, 224], "max": [max_batch, 3, 224, 224]}],
    }


@pytest.fixture
def engine(tmp_path):
    plan = tmp_path / "vim_t.plan"
    plan.write_bytes(b"\x00fake serialized engine")
    (tmp_path / "vim_t.plan.json").write_text(json.dumps(sidecar()))
    return plan


def parse(text: str):
    """config.pbtxt as Triton reads it."""
    return text_format.Parse(text, pb.ModelConfig())


def tensors(entries) -> dict:
    """{name: (data type, dims, label file)} of a config's inputs or outputs (inputs have no label file)."""
    return {e.name: (pb.DataType.Name(e.data_type), list(e.dims), getattr(e, "label_filename", "")) for e in entries}


def test_repository_layout_and_config(cli, engine, tmp_path):
    repo = tmp_path / "models"
    result = cli("triton-repo", engine, "-o", repo, "--name", "vim_t", "--max-batch", "16")
    assert result.exit_code == 0, result.output
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "vim_t/1/model.plan",
        "vim_t/1/model.plan.json",
        "vim_t/config.pbtxt",
        "vim_t/labels.txt",
    ]
    assert (repo / "vim_t/1/model.plan").read_bytes() == engine.read_bytes()
    text = (repo / "vim_t/config.pbtxt").read_text()
    config = parse(text)
    assert (config.name, config.platform, config.max_batch_size) == ("vim_t", "tensorrt_plan", 16)
    assert tensors(config.input) == {"images": ("TYPE_FP32", [3, 224, 224], "")}
    assert tensors(config.output) == {
        "logits": ("TYPE_FP32", [1000], "labels.txt"),
        "features": ("TYPE_FP32", [192], ""),
    }
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    group = config.instance_group[0]
    assert (group.kind, group.count, list(group.gpus)) == (pb.ModelInstanceGroup.KIND_GPU, 1, [])
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
    config = parse(config_pbtxt(sidecar(dtype="FP16", opt=4, max_batch=8)))
    assert config.input[0].data_type == pb.TYPE_FP16 and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]


def test_fixed_batch_engine_has_no_batching():
    config = parse(config_pbtxt(sidecar(min_batch=4, opt=4, max_batch=4)))
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [4, 3, 224, 224]
    assert tensors(config.output)["logits"][1] == [4, 1000]
    assert not config.HasField("dynamic_batching")


def test_refusals(engine, tmp_path):
    with pytest.raises(ArtifactError, match="starts at 2"):
        config_pbtxt(sidecar(min_batch=2))
    with pytest.raises(InputError, match="max-batch"):
        config_pbtxt(sidecar(), max_batch=64)
    from vimdeploy.triton import write_triton_repo

    (tmp_path / "vim_t.plan.json").unlink()
    with pytest.raises(InputError, match="no sidecar .* pass --input-size, --max-batch, --num-classes"):
        write_triton_repo(engine, tmp_path / "models")
    with pytest.raises(InputError, match="pass --num-classes"):
        write_triton_repo(engine, tmp_path / "models", input_size=(224, 224), max_batch=8)


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
    assert (
        cli("triton-repo", engine, "-o", repo, "--instances", "2", "--gpus", "0,1", "--max-batch", "16").exit_code == 0
    )
    config = parse((repo / "vim/config.pbtxt").read_text())
    group = config.instance_group[0]
    assert (group.kind, group.count, list(group.gpus)) == (pb.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    # a batch of 1 and the largest, random data at the input's dims
    assert [(w.name, w.batch_size) for w in config.model_warmup] == [("random_batch_1", 1), ("random_batch_16", 16)]
    for w in config.model_warmup:
        data = w.inputs["images"]
        assert (data.data_type, list(data.dims), data.random_data) == (pb.TYPE_FP32, [3, 224, 224], True)
    assert cli("triton-repo", engine, "-o", repo, "--force", "--no-warmup").exit_code == 0
    assert "model_warmup" not in (repo / "vim/config.pbtxt").read_text()
    result = cli("triton-repo", engine, "-o", repo, "--force", "--gpus", "a,b")
    assert result.exit_code == 1 and "--gpus" in result.output
    assert cli("triton-repo", engine, "-o", repo, "--force", "--instances", "0").exit_code == 1


def test_fixed_batch_engine_warms_up_with_batch_size_1():
    config = parse(config_pbtxt(sidecar(min_batch=4, opt=4, max_batch=4)))
    assert [(w.name, w.batch_size) for w in config.model_warmup] == [("random_batch_1", 1)]
    assert list(config.model_warmup[0].inputs["images"].dims) == [4, 3, 224, 224]


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_config_is_valid_for_tritons_own_parser(kind, tmp_path):
    """Triton reads config.pbtxt with protobuf's text format into its ModelConfig message."""
    model_config_pb2 = pb
    side = sidecar() if kind == "dynamic" else sidecar(min_batch=4, opt=4, max_batch=4)
    config = text_format.Parse(
        config_pbtxt(side, "vim_t", instances=2, gpus=[1], labels=True), model_config_pb2.ModelConfig()
    )
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


def run_cli(*args):
    """The installed command in its own process: what a user sees (rc, stdout, stderr)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "vimdeploy", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def assert_one_error_line(proc):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "field, value",
    [
        ("precision", 'fp16"\ninstance_group [ { kind: KIND_CPU } ]\n#'),
        ("precision", "fp64"),
        ("gpu", 'H100"\nbackend: "python'),
        ("tensorrt", "10.12\nmax_batch_size: 1"),
        ("input", "images\n"),
        ("outputs", ["logits", 'x"\ny']),
        ("io", {"images": {"dtype": "FP32\nX", "shape": [-1, 3, 224, 224]}}),
        ("io", {"images": {"dtype": "FP32", "shape": [-1, 3, "224", 224]}}),
        ("profiles", [{"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [0, 3, 224, 224]}]),
        ("profiles", [{"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, -224, 224]}]),
    ],
)
def test_hostile_sidecar_is_refused_before_any_config_is_written(engine, tmp_path, field, value):
    """A sidecar value that is not what `vimdeploy build` writes never reaches config.pbtxt."""
    side = sidecar()
    side[field] = value
    (tmp_path / "vim_t.plan.json").write_text(json.dumps(side))
    repo = tmp_path / "models"
    proc = run_cli("triton-repo", engine, "-o", repo)
    assert_one_error_line(proc)
    assert "not a valid engine sidecar" in proc.stderr
    assert not repo.exists() or not any(repo.rglob("config.pbtxt"))
    with pytest.raises(ArtifactError):
        config_pbtxt(side)


def test_malformed_sidecar_in_inspect_is_one_error_line(engine, tmp_path):
    for text in ("{not json", "[1, 2]", json.dumps({**sidecar(), "precision": "fp16\nx"})):
        (tmp_path / "vim_t.plan.json").write_text(text)
        assert_one_error_line(run_cli("inspect", engine))


def test_triton_repo_into_an_unwritable_place_is_one_error_line(engine, tmp_path):
    """EACCES (/sys is read-only even for root) and ENOTDIR (a folder under a file)."""
    assert_one_error_line(run_cli("triton-repo", engine, "-o", "/sys/vimdeploy-models"))
    (tmp_path / "file").write_text("x")
    proc = run_cli("triton-repo", engine, "-o", tmp_path / "file" / "models")
    assert_one_error_line(proc)
    assert (tmp_path / "file").read_text() == "x"


def test_serve_model_config_carries_the_settings(tmp_path):
    """The Python-backend model `vimdeploy serve` writes: Triton's schema, the settings as JSON,
    and a model.py that imports this very vimdeploy."""
    import ast
    from pathlib import Path

    import vimdeploy
    from vimdeploy.serving.handler import ModelSpec
    from vimdeploy.triton import SETTINGS_KEY, write_model

    settings = {"artifact": "/models/vim_t.onnx", "engine_options": {"ema": True}, "labels": None}
    folder = write_model(tmp_path, "vim", ModelSpec(224, 1000), settings, max_batch=8, queue_delay_us=50, instances=2)
    config = parse((folder / "config.pbtxt").read_text())
    assert (config.name, config.backend, config.max_batch_size) == ("vim", "python", 8)
    assert json.loads(config.parameters[SETTINGS_KEY].string_value) == settings
    assert [(i.name, i.optional) for i in config.input] == [("images", True), ("image_bytes", True)]
    assert pb.DataType.Name(config.input[1].data_type) == "TYPE_STRING"
    assert (config.instance_group[0].kind, config.instance_group[0].count) == (pb.ModelInstanceGroup.KIND_CPU, 2)
    inserted = next(
        n
        for n in ast.walk(ast.parse((folder / "1" / "model.py").read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("/")
    )
    assert Path(inserted.value) / "vimdeploy" == Path(vimdeploy.__file__).resolve().parent
