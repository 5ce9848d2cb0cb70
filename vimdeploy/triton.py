"""`vimdeploy triton-repo`: a Triton Inference Server model repository around an engine.

    REPO/<name>/config.pbtxt        platform "tensorrt_plan", dynamic batching, KIND_GPU
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

from .tensorrt.sidecar import read_sidecar, sidecar_path
from .errors import ArtifactError, InputError, VimdeployError

__all__ = ["write_triton_repo", "config_pbtxt"]


def _dims(shape) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def config_pbtxt(sidecar: dict, name: str = "vim", max_batch: int | None = None, queue_delay_us: int = 100,
                 instances: int = 1, plugin_hint: str = "libvimdeploy_trt_plugin.so") -> str:
    """The config.pbtxt text for an engine described by its sidecar."""
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

    lines = [
        "# Written by `vimdeploy triton-repo`. The engine needs the BiSelectiveScan plugin in the server:",
        f'#   tritonserver --model-repository=REPO --backend-config=tensorrt,plugins="/path/{plugin_hint}"',
        f"#   or LD_PRELOAD=/path/{plugin_hint} tritonserver --model-repository=REPO",
        f"# Built with TensorRT {sidecar.get('tensorrt', '?')} on {sidecar.get('gpu', '?')} "
        f"(compute capability {sidecar.get('compute_capability', '?')}), precision {sidecar.get('precision', '?')}:",
        "# the server's TensorRT and GPU must match.",
        f'name: "{name}"',
        'platform: "tensorrt_plan"',
        f"max_batch_size: {batching}",
        "input [",
        "  {",
        f'    name: "{input_name}"',
        f"    data_type: TYPE_{io[input_name]['dtype']}",
        f"    dims: {_dims(in_dims)}",
        "  }",
        "]",
        "output [",
    ]
    outs = [n for n in sidecar.get("outputs", ["logits"]) if n in io]
    for i, n in enumerate(outs):
        lines += ["  {", f'    name: "{n}"', f"    data_type: TYPE_{io[n]['dtype']}", f"    dims: {_dims(out_dims(n))}",
                  "  }" + ("," if i < len(outs) - 1 else "")]
    lines.append("]")
    if batching:
        preferred = sorted({b for b in (bopt, batching) if 1 <= b <= batching})
        lines += ["dynamic_batching {", f"  preferred_batch_size: {_dims(preferred)}",
                  f"  max_queue_delay_microseconds: {int(queue_delay_us)}", "}"]
    lines += ["instance_group [", "  {", f"    count: {int(instances)}", "    kind: KIND_GPU", "  }", "]"]
    return "\n".join(lines) + "\n"


README = """# Triton model repository for `{name}` (written by `vimdeploy triton-repo`)

    {name}/config.pbtxt            platform tensorrt_plan, max_batch_size {max_batch}
    {name}/1/model.plan            the TensorRT engine (TensorRT {trt}, {gpu}, cc {cc})
    {name}/1/model.plan.json       vimdeploy's sidecar for it (Triton ignores it)

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
                      queue_delay_us: int = 100, instances: int = 1, force: bool = False) -> dict:
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
    text = config_pbtxt(sidecar, name, max_batch, queue_delay_us, instances)
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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the server may run as another user
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    batch = next(int(line.split(":")[1]) for line in text.splitlines() if line.startswith("max_batch_size"))
    (repo / "README.md").write_text(README.format(name=name, max_batch=batch, trt=sidecar.get("tensorrt", "?"),
                                                  gpu=sidecar.get("gpu", "?"), cc=sidecar.get("compute_capability", "?")))
    return {"repository": str(repo), "model": str(target), "config": str(target / "config.pbtxt"),
            "max_batch_size": batch, "files": sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())}
