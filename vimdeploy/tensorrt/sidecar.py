"""The engine sidecar (`model.plan.json`): what an engine was built with, written, read and checked here.

`vimdeploy build` writes it next to the engine; the runtime checks it against the machine
before deserializing (a clear error instead of TensorRT's); `triton-repo` and `inspect`
read shapes and versions from it. No TensorRT needed except for `current_machine`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..fileio import atomic_path
from .imports import cuda_call, import_cudart

__all__ = ["SIDECAR_FORMAT", "sidecar_path", "read_sidecar", "write_engine", "check_sidecar", "current_machine"]

SIDECAR_FORMAT = "vimdeploy-engine/1"


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_sidecar(engine_path: str | Path, required: bool = False) -> dict[str, Any] | None:
    """The sidecar of an engine; None when there is none (ArtifactError if `required`)."""
    p = sidecar_path(engine_path)
    if not p.is_file():
        if required:
            raise ArtifactError(f"{p} not found: it is written by `vimdeploy build` next to the engine.")
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{p} is not a readable engine sidecar ({e}).") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{p} is not an engine sidecar (a JSON object).")
    return data


def write_engine(output: str | Path, engine: bytes, sidecar: dict[str, Any], force: bool = False) -> Path:
    """The engine, then its sidecar, each atomically: a reader that finds a sidecar finds its engine."""
    output = Path(output)
    with atomic_path(output, force=force) as tmp:
        Path(tmp).write_bytes(engine)
    with atomic_path(sidecar_path(output), force=force) as tmp:
        Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar_path(output)


def check_sidecar(sidecar: dict, current: dict, plugin_sha256: str | None = None) -> tuple[list[str], list[str]]:
    """Compare what the engine was built with against this machine. Returns (errors, warnings).

    Errors: another TensorRT version (engines are not portable across versions unless
    built version-compatible), another compute capability (the kernels are compiled for
    it), another plugin build (its serialized state and kernels were chosen for that one).
    Warnings: another GPU model of the same compute capability (runs, may be slower).
    """
    errors, warns = [], []
    built, here = sidecar.get("tensorrt"), current.get("tensorrt")
    if built and here and built != here:
        errors.append(f"the engine was built with TensorRT {built}; this machine has TensorRT {here}. "
                      f"Rebuild it here (vimdeploy build model.onnx -o ...) or install TensorRT {built}.")
    built, here = sidecar.get("compute_capability"), current.get("compute_capability")
    if built and here and built != here:
        errors.append(f"the engine was built for compute capability {built} ({sidecar.get('gpu', '?')}); this GPU "
                      f"is {current.get('gpu', '?')} with compute capability {here}. Rebuild it on this GPU.")
    elif sidecar.get("gpu") and current.get("gpu") and sidecar["gpu"] != current["gpu"]:
        warns.append(f"the engine was built on {sidecar['gpu']} and runs on {current['gpu']} (same compute "
                     "capability: it works, but its tactics were timed on the other GPU).")
    plugin = sidecar.get("plugin") or {}
    if plugin.get("sha256") and plugin_sha256 and plugin["sha256"] != plugin_sha256:
        errors.append(f"the engine was built with another plugin library (sha256 {plugin['sha256'][:12]}..., "
                      f"{plugin.get('path')}); the one loaded now is {plugin_sha256[:12]}.... Pass the same "
                      "library (--plugin / plugin=...) or rebuild the engine.")
    return errors, warns


def current_machine(tensorrt_version: str, device: int = 0) -> dict[str, str]:
    """TensorRT, CUDA runtime/driver versions and the GPU: what an engine is tied to."""
    cudart = import_cudart()
    prop = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)

    def fmt(v: int) -> str:  # 12080 -> "12.8"
        return f"{v // 1000}.{(v % 1000) // 10}"

    return {"tensorrt": tensorrt_version,
            "cuda_runtime": fmt(cuda_call(cudart.cudaRuntimeGetVersion())),
            "cuda_driver": fmt(cuda_call(cudart.cudaDriverGetVersion())),
            "gpu": name.strip("\x00").strip(),
            "compute_capability": f"{prop.major}.{prop.minor}"}
