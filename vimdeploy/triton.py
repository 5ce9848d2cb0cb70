"""Triton Inference Server model repositories: `vimdeploy triton-repo` around an engine, and
the Python-backend model that `vimdeploy serve` runs (at the end of this module).

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

Everything here reads the sidecar (`model.plan.json`, from `vimdeploy build`) for shapes
and types: no TensorRT needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .data import class_names
from .errors import ArtifactError, InputError, VimdeployError
from .fileio import atomic_folder, write_text
from .tensorrt.sidecar import read_sidecar, sidecar_path, validate_sidecar

__all__ = [
    "write_triton_repo",
    "config_pbtxt",
    "engine_config",
    "write_model",
    "python_model_config",
    "model_config_pb2",
    "SETTINGS_KEY",
]

LABELS_FILE = "labels.txt"
#: the config.pbtxt parameter carrying the Python backend's settings (JSON)
SETTINGS_KEY = "vimdeploy"


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
    sidecar: dict,
    name: str = "vim",
    max_batch: int | None = None,
    queue_delay_us: int = 100,
    instances: int = 1,
    plugin_hint: str = "libvimdeploy_trt_plugin.so",
    gpus=None,
    labels: bool = False,
    warmup: bool = True,
) -> str:
    """The config.pbtxt text for an engine described by its sidecar (see `engine_config`)."""
    config = engine_config(sidecar, name, max_batch, queue_delay_us, instances, gpus, labels, warmup)
    return _config_text(
        config,
        [
            "Written by `vimdeploy triton-repo`. The engine needs the BiSelectiveScan plugin in the server:",
            f'  tritonserver --model-repository=REPO --backend-config=tensorrt,plugins="/path/{plugin_hint}"',
            f"  or LD_PRELOAD=/path/{plugin_hint} tritonserver --model-repository=REPO",
            f"Built with TensorRT {sidecar.get('tensorrt', '?')} on {sidecar.get('gpu', '?')} "
            f"(compute capability {sidecar.get('compute_capability', '?')}), "
            f"precision {sidecar.get('precision', '?')}:",
            "the server's TensorRT and GPU must match.",
        ],
    )


def engine_config(
    sidecar: dict,
    name: str = "vim",
    max_batch: int | None = None,
    queue_delay_us: int = 100,
    instances: int = 1,
    gpus=None,
    labels: bool = False,
    warmup: bool = True,
):
    """Triton's ModelConfig for an engine described by its sidecar (validated first).

    labels: name LABELS_FILE as the `logits` label file (Triton's classification extension
    then answers `class_count` requests with names). warmup: zero-latency first requests
    (Triton runs a random batch of 1 and of the max batch before the model turns ready).
    """
    problem = validate_sidecar(sidecar)
    if problem:
        raise ArtifactError(f"the engine sidecar is not valid: {problem}.")
    pb = model_config_pb2()
    profile = (sidecar.get("profiles") or [None])[0]
    io = sidecar.get("io")
    input_name = sidecar.get("input", "images")
    if not profile or set(profile) != {"min", "opt", "max"} or not io or input_name not in io:
        raise ArtifactError(
            "the engine sidecar has no profile/io section (made by an older vimdeploy build?): rebuild it."
        )
    bmin, bopt, bmax = profile["min"][0], profile["opt"][0], profile["max"][0]
    if profile["min"][1:] != profile["max"][1:]:
        raise ArtifactError(
            "the engine has a resolution range; Triton needs fixed image dims: build it with one --img-size."
        )
    if bmin == bmax and bmin != 1:
        batching = 0  # a fixed-batch engine: Triton sees the batch as part of the dims
    else:
        if bmin != 1:
            raise ArtifactError(
                f"the engine's batch range starts at {bmin}; Triton sends batches from 1: rebuild "
                f"with --batch 1:{bopt}:{bmax}."
            )
        batching = bmax
    if max_batch is not None:
        if batching == 0 or not 1 <= max_batch <= bmax:
            raise InputError(f"--max-batch must be between 1 and the engine's max batch {bmax}; got {max_batch}.")
        batching = max_batch
    in_dims = profile["max"][1:] if batching else profile["max"]

    config = pb.ModelConfig(name=name, platform="tensorrt_plan", max_batch_size=batching)
    _add_tensor(pb, config.input, input_name, io[input_name]["dtype"], in_dims)
    for n in (n for n in sidecar.get("outputs", ["logits"]) if n in io):
        shape = io[n]["shape"]
        extra = {"label_filename": LABELS_FILE} if labels and n == "logits" else {}
        _add_tensor(pb, config.output, n, io[n]["dtype"], shape[1:] if batching else [bmax, *shape[1:]], **extra)
    if batching:
        config.dynamic_batching.preferred_batch_size.extend(sorted({b for b in (bopt, batching) if 1 <= b <= batching}))
        config.dynamic_batching.max_queue_delay_microseconds = int(queue_delay_us)
    _add_instance_group(pb, config, instances, "KIND_GPU", gpus)
    if warmup:
        # Batch sizes Triton should run once at load; a non-batching model takes batch_size 1.
        for b in sorted({1, batching}) if batching else [1]:
            warm = config.model_warmup.add(name=f"random_batch_{b}", batch_size=b)
            data = warm.inputs[input_name]
            data.data_type = _data_type(pb, io[input_name]["dtype"])
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
    engine: str | Path,
    repo: str | Path,
    name: str = "vim",
    max_batch: int | None = None,
    queue_delay_us: int = 100,
    instances: int = 1,
    force: bool = False,
    gpus=None,
    labels: str | Path | None = None,
    warmup: bool = True,
) -> dict:
    """labels: a text file with one class name per line; default ImageNet-1k's names for a
    1000-class engine, none otherwise."""
    engine, repo = Path(engine), Path(repo)
    if not engine.is_file():
        raise ArtifactError(f"no such engine: {engine}")
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"--name must be a plain folder name; got {name!r}.")
    side = sidecar_path(engine)
    sidecar = read_sidecar(engine)
    if sidecar is None:
        raise ArtifactError(
            f"{side} not found: triton-repo reads the engine's shapes from the sidecar that "
            "`vimdeploy build` writes next to it."
        )
    num_classes = (sidecar.get("io", {}).get("logits", {}).get("shape") or [0])[-1]
    names = class_names(num_classes, labels) if labels is not None or num_classes == 1000 else None
    text = config_pbtxt(
        sidecar, name, max_batch, queue_delay_us, instances, gpus=gpus, labels=names is not None, warmup=warmup
    )
    batch = engine_config(sidecar, name, max_batch, queue_delay_us, instances, gpus).max_batch_size
    target = repo / name
    # Built beside its destination, then renamed: never half a model.
    with atomic_folder(target, force=force) as tmp:
        (tmp / "1").mkdir()
        (tmp / "config.pbtxt").write_text(text)
        shutil.copyfile(engine, tmp / "1" / "model.plan")
        shutil.copyfile(side, tmp / "1" / "model.plan.json")
        if names is not None:
            (tmp / LABELS_FILE).write_text("\n".join(names) + "\n", encoding="utf-8")
    labels_line = f"    {name}/{LABELS_FILE}             class names of `logits`, one per line\n" if names else ""
    write_text(
        repo / "README.md",
        README.format(
            name=name,
            max_batch=batch,
            labels_line=labels_line,
            trt=sidecar.get("tensorrt", "?"),
            gpu=sidecar.get("gpu", "?"),
            cc=sidecar.get("compute_capability", "?"),
        ),
    )
    return {
        "repository": str(repo),
        "model": str(target),
        "config": str(target / "config.pbtxt"),
        "max_batch_size": batch,
        "files": sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()),
    }


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
