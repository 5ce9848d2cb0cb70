"""Triton Inference Server model repositories: `vimdeploy triton-repo` around an engine or any
ONNX, and the Python-backend model that `vimdeploy serve` runs (at the end of this module).

Every config.pbtxt is a ModelConfig message of Triton's own schema (model_config.proto,
compiled in tritonclient) printed with protobuf's text_format, never formatted by hand; the
sidecar values it holds are validated first (`vimdeploy.tensorrt.sidecar.validate_sidecar`).

`vimdeploy triton-repo` writes:

    REPO/<name>/config.pbtxt        platform "tensorrt_plan", dynamic batching, instance groups
                                    (KIND_GPU), model warm-up, the labels file for `logits`
    REPO/<name>/labels.txt          class names, one per line (ImageNet-1k, or --labels)
    REPO/<name>/1/model.plan        the engine (copied)
    REPO/<name>/1/model.plan.json   its vimdeploy sidecar (Triton ignores it)
    REPO/README.md                  how to start tritonserver with the plugin library

The engine's BiSelectiveScan layers need the plugin library inside tritonserver's
process. Two ways (Triton's TensorRT backend README, "Command-line Options", and its
user guide "Custom Operations"):
  * `tritonserver --backend-config=tensorrt,plugins="/path/libvimdeploy_trt_plugin.so"`
    (several libraries separated by ';'), loaded by the TensorRT backend itself;
  * `LD_PRELOAD=/path/libvimdeploy_trt_plugin.so tritonserver ...`.
Both load the self-registering library (libvimdeploy_trt_plugin.so, not the _dynamic one),
and it must be built against the TensorRT version inside the Triton container, which must
also be the version the engine was built with.

Shapes and types come from the engine's sidecar (`model.plan.json`, from `vimdeploy build`),
an ONNX's graph, or options for what a file made elsewhere lacks (`vimdeploy.artifact_io`): no
TensorRT needed. An ONNX becomes an `onnxruntime_onnx` model (`REPO/<name>/1/model.onnx`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .artifact_io import ModelIO, from_onnx, from_options, from_sidecar
from .data import artifact_preprocessing, class_names
from .errors import ArtifactError, InputError, VimdeployError
from .fileio import atomic_folder, write_text
from .formats import sniff, wrong_kind
from .tensorrt.sidecar import ENGINE_SUFFIXES, read_sidecar, sidecar_path

__all__ = [
    "write_triton_repo",
    "config_pbtxt",
    "engine_config",
    "model_config",
    "write_model",
    "python_model_config",
    "model_config_pb2",
    "SETTINGS_KEY",
]

LABELS_FILE = "labels.txt"
#: the config.pbtxt parameter carrying the Python backend's settings (JSON)
SETTINGS_KEY = "vimdeploy"
#: the config.pbtxt parameter carrying the artifact's preprocessing (JSON, vimdeploy/preprocessing.py)
PREPROCESSING_PARAMETER = "vimdeploy.preprocessing"


def model_config_pb2():
    """Triton's ModelConfig protobuf module (compiled model_config.proto), as tritonclient ships it."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError as e:
        raise VimdeployError(
            f"Triton configs are written with Triton's own ModelConfig schema, from tritonclient "
            f"(cannot import tritonclient.grpc.model_config_pb2: {e}): "
            "pip install 'tritonclient[grpc]' (or 'vimdeploy[serve]')."
        ) from None
    return pb


def _config_text(config, comments: list[str]) -> str:
    """config.pbtxt: comment lines, then the ModelConfig message in protobuf text format."""
    from google.protobuf import text_format

    return "".join(f"# {line}\n" for line in comments) + text_format.MessageToString(config)


def _data_type(pb, dtype: str):
    """Triton's DataType enum for a name without TYPE_ (FP32, FP16, STRING); a clear error otherwise."""
    try:
        return pb.DataType.Value(f"TYPE_{dtype}")
    except ValueError:
        raise ArtifactError(f"{dtype!r} is not a Triton data type.") from None


def _add_tensor(pb, field, name: str, dtype: str, dims, **extra) -> None:
    """One `input` / `output` entry appended to the repeated `field`."""
    field.add(name=name, data_type=_data_type(pb, dtype), dims=[int(d) for d in dims], **extra)


def _add_instance_group(pb, config, count: int, kind: str, gpus=None) -> None:
    if count < 1:
        raise InputError(f"--instances must be at least 1; got {count}.")
    config.instance_group.add(
        count=int(count), kind=pb.ModelInstanceGroup.Kind.Value(kind), gpus=[int(g) for g in gpus or ()]
    )


def config_pbtxt(
    sidecar,
    name: str = "vim",
    max_batch: int | None = None,
    queue_delay_us: int = 100,
    instances: int = 1,
    plugin_hint: str = "libvimdeploy_trt_plugin.so",
    gpus=None,
    labels: bool = False,
    warmup: bool = True,
    preprocessing: str | None = None,
    op_library: str | None = None,
) -> str:
    """The config.pbtxt text for an artifact described by its sidecar (a dict) or a `ModelIO`."""
    io = sidecar if isinstance(sidecar, ModelIO) else from_sidecar(sidecar)
    config = model_config(
        io, name, max_batch, queue_delay_us, instances, gpus, labels, warmup, preprocessing, op_library
    )
    if io.platform == "onnxruntime_onnx":
        comments = ["Written by `vimdeploy triton-repo`: Triton's ONNX Runtime backend runs 1/model.onnx."]
        if io.custom_op:
            comments.append("Its BiSelectiveScan nodes run in vimdeploy's ONNX Runtime op library (model_operations).")
        return _config_text(config, comments)
    side = sidecar if isinstance(sidecar, dict) else {}
    comments = ["Written by `vimdeploy triton-repo`."]
    if io.custom_op or not side:
        comments += [
            "An engine with BiSelectiveScan layers needs the plugin in the server:",
            f'  tritonserver --model-repository=REPO --backend-config=tensorrt,plugins="/path/{plugin_hint}"',
            f"  or LD_PRELOAD=/path/{plugin_hint} tritonserver --model-repository=REPO",
        ]
    if side:
        comments += [
            f"Built with TensorRT {side.get('tensorrt', '?')} on {side.get('gpu', '?')} "
            f"(compute capability {side.get('compute_capability', '?')}), precision {side.get('precision', '?')}:",
            "the server's TensorRT and GPU must match.",
        ]
    return _config_text(config, comments)


def engine_config(
    sidecar: dict,
    name: str = "vim",
    max_batch=None,
    queue_delay_us=100,
    instances=1,
    gpus=None,
    labels=False,
    warmup=True,
):
    """Triton's ModelConfig for an engine described by its sidecar (validated first)."""
    return model_config(from_sidecar(sidecar), name, max_batch, queue_delay_us, instances, gpus, labels, warmup)


def model_config(
    io: ModelIO,
    name: str = "vim",
    max_batch: int | None = None,
    queue_delay_us: int = 100,
    instances: int = 1,
    gpus=None,
    labels: bool = False,
    warmup: bool = True,
    preprocessing: str | None = None,
    op_library: str | None = None,
):
    """Triton's ModelConfig for an artifact's tensors (`vimdeploy.artifact_io.ModelIO`).

    labels: name LABELS_FILE as the label file of the class scores (Triton's classification
    extension then answers `class_count` requests with names). warmup: zero-latency first
    requests (Triton runs a random batch of 1 and of the max batch before the model turns
    ready). preprocessing: the artifact's recipe (JSON), kept as a config parameter so that a
    client reads it from the server (GET /v2/models/<name>/config). op_library: the ONNX
    Runtime custom-op library a plugin-flavor ONNX needs.
    """
    pb = model_config_pb2()
    if io.batch is None:
        batching = 0  # a fixed-batch artifact: Triton sees the batch as part of the dims
        if max_batch is not None:
            raise InputError(f"--max-batch: this artifact takes batches of exactly {io.input.shape[0]}.")
    else:
        bmin, bopt, bmax = io.batch
        if bmin != 1:
            raise ArtifactError(
                f"the engine's batch range starts at {bmin}; Triton sends batches from 1: rebuild "
                f"with --batch 1:{bopt}:{bmax}."
            )
        batching = bmax
        if max_batch is not None:
            if not 1 <= max_batch <= bmax:
                raise InputError(f"--max-batch must be between 1 and the engine's max batch {bmax}; got {max_batch}.")
            batching = max_batch
    in_dims = io.input.shape[1:] if batching else io.input.shape
    if io.custom_op and io.platform == "onnxruntime_onnx" and not op_library:
        raise InputError(
            "this ONNX has BiSelectiveScan nodes, which Triton's ONNX Runtime backend runs only with vimdeploy's "
            "ONNX Runtime op library: pass --op-library PATH, export with --scan onnx, or use `vimdeploy serve`."
        )

    config = pb.ModelConfig(name=name, platform=io.platform, max_batch_size=batching)
    _add_tensor(pb, config.input, io.input.name, io.input.dtype, in_dims)
    for t in io.outputs:
        extra = {"label_filename": LABELS_FILE} if labels and t.name == io.logits else {}
        dims = t.shape[1:] if batching else (t.shape[0] if t.shape[0] > 0 else in_dims[0], *t.shape[1:])
        _add_tensor(pb, config.output, t.name, t.dtype, dims, **extra)
    if batching:
        bopt = io.batch[1]
        config.dynamic_batching.preferred_batch_size.extend(sorted({b for b in (bopt, batching) if 1 <= b <= batching}))
        config.dynamic_batching.max_queue_delay_microseconds = int(queue_delay_us)
    _add_instance_group(pb, config, instances, "KIND_GPU" if io.platform == "tensorrt_plan" else "KIND_AUTO", gpus)
    if preprocessing:
        config.parameters[PREPROCESSING_PARAMETER].string_value = preprocessing
    if op_library:
        config.model_operations.op_library_filename.append(str(op_library))
    if warmup:
        # Batch sizes Triton should run once at load; a non-batching model takes batch_size 1.
        for b in sorted({1, batching}) if batching else [1]:
            warm = config.model_warmup.add(name=f"random_batch_{b}", batch_size=b)
            data = warm.inputs[io.input.name]
            data.data_type = _data_type(pb, io.input.dtype)
            data.dims.extend(int(d) for d in in_dims)
            data.random_data = True
    return config


README = """# Triton model repository for `{name}` (written by `vimdeploy triton-repo`)

    {name}/config.pbtxt            platform tensorrt_plan, max_batch_size {max_batch}
    {name}/1/model.plan            the TensorRT engine (TensorRT {trt}, {gpu}, cc {cc})
    {name}/1/model.plan.json       vimdeploy's sidecar for it (Triton ignores it)
{labels_line}
The engine contains BiSelectiveScan plugin layers, so the server must load the plugin
library (the self-registering `libvimdeploy_trt_plugin.so` from `vimdeploy plugin build`,
built against the same TensorRT as the server). Either through the TensorRT backend's
option (Triton tensorrt_backend README, "Command-line Options"):

    tritonserver --model-repository=$PWD \\
        --backend-config=tensorrt,plugins="/path/to/libvimdeploy_trt_plugin.so"

or by preloading it (Triton user guide, "Custom Operations"):

    LD_PRELOAD=/path/to/libvimdeploy_trt_plugin.so tritonserver --model-repository=$PWD

The server's TensorRT version and GPU compute capability must be those the engine was
built with; rebuild the engine inside the Triton container otherwise. Client example:
samples/triton/client.py in the vimdeploy sources.
"""


def write_triton_repo(
    artifact: str | Path,
    repo: str | Path,
    name: str = "vim",
    max_batch: int | None = None,
    queue_delay_us: int = 100,
    instances: int = 1,
    force: bool = False,
    gpus=None,
    labels: str | Path | None = None,
    warmup: bool = True,
    input_name: str | None = None,
    output_name: str | None = None,
    input_size=None,
    num_classes: int | None = None,
    op_library: str | Path | None = None,
) -> dict:
    """A model repository for an engine (platform tensorrt_plan) or any ONNX (onnxruntime_onnx).

    What the artifact does not say comes from the options (`vimdeploy.artifact_io`): an engine
    without a sidecar needs input_size, max_batch and num_classes; an ONNX with dynamic height
    and width needs input_size. labels: a text file with one class name per line; default the
    names the artifact carries, else ImageNet-1k's for 1000 classes, else none.
    """
    artifact, repo = Path(artifact), Path(repo)
    if not artifact.is_file():
        raise ArtifactError(f"no such file: {artifact}")
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"--name must be a plain folder name; got {name!r}.")
    kind = "tensorrt" if artifact.suffix.lower() in ENGINE_SUFFIXES else sniff(artifact)
    if kind == "onnx":
        io = from_onnx(artifact, input_name, output_name, input_size, max_batch)
        max_batch = None  # from_onnx has used it
        files = {artifact: "model.onnx"}
    elif kind == "tensorrt":
        sidecar = read_sidecar(artifact)
        if sidecar is None:
            io = from_options(artifact, input_name, output_name, input_size, max_batch, num_classes)
        else:
            io = from_sidecar(sidecar)
        files = {artifact: "model.plan", **({sidecar_path(artifact): "model.plan.json"} if sidecar else {})}
    else:
        raise InputError(wrong_kind(artifact, kind, "an ONNX model or a TensorRT engine"))
    pre, carried = artifact_preprocessing(artifact, io.num_classes)
    num = io.num_classes
    if labels is not None:
        names = class_names(num, labels)
    else:
        names = carried if carried is not None else (class_names(num) if num == 1000 else None)
    op_lib = str(Path(op_library).resolve()) if op_library else None
    text = config_pbtxt(
        io,
        name,
        max_batch,
        queue_delay_us,
        instances,
        gpus=gpus,
        labels=names is not None,
        warmup=warmup,
        preprocessing=pre.to_json() if pre else None,
        op_library=op_lib,
    )
    batch = model_config(io, name, max_batch, queue_delay_us, instances, gpus, op_library=op_lib).max_batch_size
    target = repo / name
    # Built beside its destination, then renamed: never half a model.
    with atomic_folder(target, force=force) as tmp:
        (tmp / "1").mkdir()
        (tmp / "config.pbtxt").write_text(text)
        for source, dest in files.items():
            shutil.copyfile(source, tmp / "1" / dest)
        if names is not None:
            (tmp / LABELS_FILE).write_text("\n".join(names) + "\n", encoding="utf-8")
    labels_line = f"    {name}/{LABELS_FILE}             class names of `{io.logits}`, one per line\n" if names else ""
    side = read_sidecar(artifact) if kind == "tensorrt" else None
    write_text(
        repo / "README.md",
        (ONNX_README if kind == "onnx" else README).format(
            name=name,
            max_batch=batch,
            labels_line=labels_line,
            trt=(side or {}).get("tensorrt", "?"),
            gpu=(side or {}).get("gpu", "?"),
            cc=(side or {}).get("compute_capability", "?"),
        ),
    )
    return {
        "repository": str(repo),
        "model": str(target),
        "config": str(target / "config.pbtxt"),
        "platform": io.platform,
        "input": io.input.name,
        "logits": io.logits,
        "max_batch_size": batch,
        "labels": names is not None,
        "files": sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()),
    }


ONNX_README = """# Triton model repository for `{name}` (written by `vimdeploy triton-repo`)

    {name}/config.pbtxt            platform onnxruntime_onnx, max_batch_size {max_batch}
    {name}/1/model.onnx            the ONNX model
{labels_line}
Start the server (Triton's ONNX Runtime backend):

    tritonserver --model-repository=$PWD

The input is the preprocessed image batch; the recipe (size, resize, crop, mean, std) is the
config parameter `vimdeploy.preprocessing` (GET /v2/models/{name}/config). A plugin-flavor
ONNX lists vimdeploy's ONNX Runtime op library under model_operations: that path must exist
inside the server. Client example: samples/triton/client.py in the vimdeploy sources.
"""


# --------------------------------------------------------------------------------------------
# The model `vimdeploy serve` hands to Triton: one Python-backend model
#
#     REPO/<name>/config.pbtxt   backend "python", inputs/outputs from the ModelSpec, dynamic
#                                batching, KIND_CPU instances, the settings as a parameter
#     REPO/<name>/1/model.py     re-exports vimdeploy.serving.backend.TritonPythonModel

MODEL_PY = '''"""Written by `vimdeploy serve`: the model is vimdeploy/serving/backend.py."""
import sys

# The same vimdeploy as the `vimdeploy serve` that wrote this file, whatever the stub's sys.path.
sys.path.insert(0, {root!r})

from vimdeploy.serving.backend import TritonPythonModel  # noqa: E402,F401
'''


def python_model_config(name: str, spec, settings: dict, max_batch: int, queue_delay_us: int, instances: int):
    """Triton's ModelConfig for the served model; `spec` is a vimdeploy.serving.handler.ModelSpec."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=int(max_batch))
    for t in spec.inputs():
        _add_tensor(pb, config.input, t.name, t.dtype, t.dims, optional=t.optional)
    for t in spec.outputs():
        _add_tensor(pb, config.output, t.name, t.dtype, t.dims)
    config.dynamic_batching.max_queue_delay_microseconds = int(queue_delay_us)
    # KIND_CPU: each instance is a stub process; one running a .plan engine still uses its GPU.
    _add_instance_group(pb, config, instances, "KIND_CPU")
    config.parameters[SETTINGS_KEY].string_value = json.dumps(settings, sort_keys=True)
    return config


def write_model(
    repo: Path, name: str, spec, settings: dict, max_batch: int, queue_delay_us: int, instances: int
) -> Path:
    """Write REPO/<name>/ for `vimdeploy serve`'s Triton; returns the model folder."""
    config = python_model_config(name, spec, settings, max_batch, queue_delay_us, instances)
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(_config_text(config, ["Written by `vimdeploy serve`."]))
    root = str(Path(__file__).resolve().parents[1])
    (folder / "1" / "model.py").write_text(MODEL_PY.format(root=root))
    return folder
