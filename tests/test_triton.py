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


# ---------------------------------------------------------------------------------------------
# Any ONNX or engine: made by another tool, without vimdeploy's metadata or sidecar


def foreign_onnx(path, dynamic_hw: bool = False, classes: int = 5):
    """A small CNN as a plain `torch.onnx.export` writes it (the TorchScript exporter, another tool's
    settings): input `input.1`, output `output`, a dynamic batch, no metadata."""
    import warnings

    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)
    ).eval()
    axes = {0: "batch", **({2: "height", 3: "width"} if dynamic_hw else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            input_names=["input.1"],
            output_names=["output"],
            dynamic_axes={"input.1": axes, "output": {0: "batch"}},
            opset_version=17,
        )
    return path


def test_triton_repo_of_an_onnx_made_elsewhere(cli, tmp_path):
    onnx_path = foreign_onnx(tmp_path / "cnn.onnx")
    names = tmp_path / "names.txt"
    names.write_text("".join(f"kind {i}\n" for i in range(5)))
    repo = tmp_path / "models"
    result = cli("triton-repo", onnx_path, "-o", repo, "--name", "cnn", "--labels", names)
    assert result.exit_code == 0, result.output
    assert "onnxruntime_onnx, input input.1, class scores output" in result.output
    config = parse((repo / "cnn/config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8  # 8: the default for any batch
    assert tensors(config.input) == {"input.1": ("TYPE_FP32", [3, 32, 32], "")}
    assert tensors(config.output) == {"output": ("TYPE_FP32", [5], "labels.txt")}
    assert (repo / "cnn/labels.txt").read_text().splitlines()[4] == "kind 4"
    assert (repo / "cnn/1/model.onnx").read_bytes() == onnx_path.read_bytes()
    assert "vimdeploy.preprocessing" not in config.parameters  # it carries none: none is invented
    assert [(w.name, w.batch_size) for w in config.model_warmup] == [("random_batch_1", 1), ("random_batch_8", 8)]
    result = cli("triton-repo", onnx_path, "-o", repo, "--name", "cnn", "--force", "--max-batch", "2")
    assert result.exit_code == 0 and parse((repo / "cnn/config.pbtxt").read_text()).max_batch_size == 2
    result = cli("triton-repo", onnx_path, "-o", repo, "--name", "x", "--output-name", "logits")
    assert result.exit_code == 1 and "--output-name logits: cnn.onnx has outputs output" in result.output


def test_triton_repo_names_the_missing_option(tmp_path):
    """An ONNX of any height and width needs --input-size; an engine without a sidecar needs
    --input-size, --max-batch and --num-classes: each missing one is named in one error line."""
    dynamic = foreign_onnx(tmp_path / "any_size.onnx", dynamic_hw=True)
    proc = run_cli("triton-repo", dynamic, "-o", tmp_path / "models")
    assert_one_error_line(proc)
    assert "takes any height and width: pass --input-size" in proc.stderr
    proc = run_cli("triton-repo", dynamic, "-o", tmp_path / "models", "--input-size", "64")
    assert proc.returncode == 0, proc.stderr
    assert tensors(parse((tmp_path / "models/vim/config.pbtxt").read_text()).input)["input.1"][1] == [3, 64, 64]

    plan = tmp_path / "trtexec.plan"
    plan.write_bytes(b"ftrt engine built elsewhere")
    proc = run_cli("triton-repo", plan, "-o", tmp_path / "engines", "--input-size", "224")
    assert_one_error_line(proc)
    assert "no sidecar" in proc.stderr and "pass --max-batch, --num-classes" in proc.stderr
    proc = run_cli(
        "triton-repo", plan, "-o", tmp_path / "engines", "--input-size", "224", "--max-batch", "4",
        "--num-classes", "1000", "--input-name", "input", "--output-name", "probs",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = parse((tmp_path / "engines/vim/config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
    assert tensors(config.input) == {"input": ("TYPE_FP32", [3, 224, 224], "")}
    assert tensors(config.output) == {"probs": ("TYPE_FP32", [1000], "labels.txt")}  # ImageNet's for 1000
    assert sorted(p.name for p in (tmp_path / "engines/vim/1").iterdir()) == ["model.plan"]


def test_triton_repo_of_a_vimdeploy_onnx_carries_its_recipe(tmp_path):
    """A plugin-flavor ONNX needs the ONNX Runtime op library in the server: refused without
    --op-library, listed under model_operations with it; the recipe is a config parameter."""
    from vimdeploy import digits
    from vimdeploy.export import export_onnx

    out = export_onnx(digits.WEIGHTS, tmp_path / "digits.onnx", batch="dynamic")["output"]
    proc = run_cli("triton-repo", out, "-o", tmp_path / "models")
    assert_one_error_line(proc)
    assert "BiSelectiveScan" in proc.stderr and "--op-library" in proc.stderr and "--scan onnx" in proc.stderr
    library = tmp_path / "libvimdeploy_ort.so"
    library.write_bytes(b"\x7fELF")
    proc = run_cli("triton-repo", out, "-o", tmp_path / "models", "--op-library", library)
    assert proc.returncode == 0, proc.stderr
    config = parse((tmp_path / "models/vim/config.pbtxt").read_text())
    assert list(config.model_operations.op_library_filename) == [str(library)]
    recipe = json.loads(config.parameters["vimdeploy.preprocessing"].string_value)
    assert (recipe["input_size"], recipe["resize_size"], recipe["interpolation"]) == ([32, 32], [36, 36], "bicubic")
