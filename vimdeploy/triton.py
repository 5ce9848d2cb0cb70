"""`vimdeploy triton-repo`: a Triton Inference Server model repository around an engine.

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

import os
import shutil
import tempfile
from pathlib import Path

from .data import class_names
from .tensorrt.sidecar import read_sidecar, sidecar_path
from .errors import ArtifactError, InputError, VimdeployError

__all__ = ["write_triton_repo", "config_pbtxt", "pbtxt", "tensor", "instance_group", "Const"]


class Const(str):
    """An enum value in a config (TYPE_FP32, KIND_GPU): written bare, not quoted."""


def _scalar(value) -> str:
    if isinstance(value, Const):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def pbtxt(fields: dict, indent: int = 0) -> list[str]:
    """Protobuf text format lines for a (nested) dict, as Triton's config.pbtxt files are written.

    A dict is a message, a list of dicts a repeated message (maps too: entries of key and
    value), any other list a repeated scalar.
    """
    pad = "  " * indent
    lines = []
    for key, value in fields.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", *pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines += [f"{pad}  {{", *pbtxt(item, indent + 2), f"{pad}  }}" + ("," if i < len(value) - 1 else "")]
            lines.append(f"{pad}]")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: [ " + ", ".join(_scalar(v) for v in value) + " ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def tensor(name: str, dtype: str, dims, **extra) -> dict:
    """One `input`/`output` entry; dtype without the TYPE_ prefix (FP32, FP16, STRING)."""
    return {"name": name, "data_type": Const(f"TYPE_{dtype}"), "dims": [int(d) for d in dims], **extra}


def instance_group(count: int, kind: str, gpus=None) -> list[dict]:
    if count < 1:
        raise InputError(f"--instances must be at least 1; got {count}.")
    group = {"count": int(count), "kind": Const(kind)}
    if gpus:
        group["gpus"] = [int(g) for g in gpus]
    return [group]


LABELS_FILE = "labels.txt"


def config_pbtxt(sidecar: dict, name: str = "vim", max_batch: int | None = None, queue_delay_us: int = 100,
                 instances: int = 1, plugin_hint: str = "libvimdeploy_trt_plugin.so", gpus=None,
                 labels: bool = False, warmup: bool = True) -> str:
    """The config.pbtxt text for an engine described by its sidecar.

    labels: name LABELS_FILE as the `logits` label file (Triton's classification extension
    then answers `class_count` requests with names). warmup: zero-latency first requests
    (Triton runs a random batch of 1 and of the max batch before the model turns ready).
    """
    profile = (sidecar.get("profiles") or [None])[0]
    io = sidecar.get("io")
    if not profile or not io:
        raise ArtifactError("the engine sidecar has no profile/io section (made by an older vimdeploy build?): rebuild it.")
    input_name = sidecar.get("input", "images")
    bmin, bopt, bmax = profile["min"][0], profile["opt"][0], profile["max"][0]
    if profile["min"][1:] != profile["max"][1:]:
        raise ArtifactError("the engine has a resolution range; Triton needs fixed image dims: build it with one "
                            "--img-size.")
    if bmin == bmax and bmin != 1:
        batching = 0  # a fixed-batch engine: Triton sees the batch as part of the dims
    else:
        if bmin != 1:
            raise ArtifactError(f"the engine's batch range starts at {bmin}; Triton sends batches from 1: rebuild "
                                f"with --batch 1:{bopt}:{bmax}.")
        batching = bmax
    if max_batch is not None:
        if batching == 0 or not 1 <= max_batch <= bmax:
            raise InputError(f"--max-batch must be between 1 and the engine's max batch {bmax}; got {max_batch}.")
        batching = max_batch
    in_dims = profile["max"][1:] if batching else profile["max"]

    def out_dims(n):
        shape = io[n]["shape"]
        return shape[1:] if batching else [bmax, *shape[1:]]

    outs = [n for n in sidecar.get("outputs", ["logits"]) if n in io]
    outputs = []
    for n in outs:
        extra = {"label_filename": LABELS_FILE} if labels and n == "logits" else {}
        outputs.append(tensor(n, io[n]["dtype"], out_dims(n), **extra))
    config = {"name": name, "platform": "tensorrt_plan", "max_batch_size": batching,
              "input": [tensor(input_name, io[input_name]["dtype"], in_dims)], "output": outputs}
    if batching:
        preferred = sorted({b for b in (bopt, batching) if 1 <= b <= batching})
        config["dynamic_batching"] = {"preferred_batch_size": preferred,
                                      "max_queue_delay_microseconds": int(queue_delay_us)}
    config["instance_group"] = instance_group(instances, "KIND_GPU", gpus)
    if warmup:
        # Batch sizes Triton should run once at load; a non-batching model takes batch_size 1.
        sizes = sorted({1, batching}) if batching else [1]
        config["model_warmup"] = [
            {"name": f"random_batch_{b}", "batch_size": b,
             "inputs": [{"key": input_name, "value": {"data_type": Const(f"TYPE_{io[input_name]['dtype']}"),
                                                      "dims": [int(d) for d in in_dims], "random_data": True}}]}
            for b in sizes]
    header = [
        "# Written by `vimdeploy triton-repo`. The engine needs the BiSelectiveScan plugin in the server:",
        f'#   tritonserver --model-repository=REPO --backend-config=tensorrt,plugins="/path/{plugin_hint}"',
        f"#   or LD_PRELOAD=/path/{plugin_hint} tritonserver --model-repository=REPO",
        f"# Built with TensorRT {sidecar.get('tensorrt', '?')} on {sidecar.get('gpu', '?')} "
        f"(compute capability {sidecar.get('compute_capability', '?')}), precision {sidecar.get('precision', '?')}:",
        "# the server's TensorRT and GPU must match.",
    ]
    return "\n".join(header + pbtxt(config)) + "\n"


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


def write_triton_repo(engine: str | Path, repo: str | Path, name: str = "vim", max_batch: int | None = None,
                      queue_delay_us: int = 100, instances: int = 1, force: bool = False, gpus=None,
                      labels: str | Path | None = None, warmup: bool = True) -> dict:
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
        raise ArtifactError(f"{side} not found: triton-repo reads the engine's shapes from the sidecar that "
                            "`vimdeploy build` writes next to it.")
    num_classes = (sidecar.get("io", {}).get("logits", {}).get("shape") or [0])[-1]
    names = class_names(num_classes, labels) if labels is not None or num_classes == 1000 else None
    text = config_pbtxt(sidecar, name, max_batch, queue_delay_us, instances, gpus=gpus, labels=names is not None,
                        warmup=warmup)
    target = repo / name
    if target.exists() and not force:
        raise VimdeployError(f"{target} already exists; pass --force to replace it.")
    repo.mkdir(parents=True, exist_ok=True)
    # Build the model folder beside its destination, then rename: never half a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (tmp / "1").mkdir()
        (tmp / "config.pbtxt").write_text(text)
        shutil.copyfile(engine, tmp / "1" / "model.plan")
        shutil.copyfile(side, tmp / "1" / "model.plan.json")
        if names is not None:
            (tmp / LABELS_FILE).write_text("\n".join(names) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the server may run as another user
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    batch = next(int(line.split(":")[1]) for line in text.splitlines() if line.startswith("max_batch_size"))
    labels_line = f"    {name}/{LABELS_FILE}             class names of `logits`, one per line\n" if names else ""
    (repo / "README.md").write_text(README.format(name=name, max_batch=batch, labels_line=labels_line, trt=sidecar.get("tensorrt", "?"),
                                                  gpu=sidecar.get("gpu", "?"), cc=sidecar.get("compute_capability", "?")))
    return {"repository": str(repo), "model": str(target), "config": str(target / "config.pbtxt"),
            "max_batch_size": batch, "files": sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())}
