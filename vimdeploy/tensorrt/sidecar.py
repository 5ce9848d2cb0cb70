"""The engine sidecar (`model.plan.json`): what an engine was built with, written, read and checked here.

`vimdeploy build` writes it next to the engine; the runtime checks it against the machine
before deserializing (a clear error instead of TensorRT's); `triton-repo` and `inspect`
read shapes and versions from it, `predict` and `serve` the preprocessing and labels the
ONNX carried (vimdeploy/preprocessing.py). No TensorRT needed except for `current_machine`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..contract import PRECISIONS
from ..errors import ArtifactError
from ..fileio import atomic_path
from ..preprocessing import LABELS_KEY, PREPROCESSING_KEY, from_json, parse_labels
from .imports import cuda_call, import_cudart

__all__ = [
    "SIDECAR_FORMAT",
    "ENGINE_SUFFIXES",
    "sidecar_path",
    "read_sidecar",
    "validate_sidecar",
    "write_engine",
    "check_sidecar",
    "current_machine",
    "description_entries",
    "TENSOR_NAME",
]

SIDECAR_FORMAT = "vimdeploy-engine/1"
#: the file suffixes of a TensorRT engine, the first one what `vimdeploy build` writes by convention
ENGINE_SUFFIXES = (".plan", ".engine")

# What a sidecar's strings may hold: they end up in configs, comments and messages.
TENSOR_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}", re.ASCII)  # tensor names
_NAME = TENSOR_NAME
_DTYPE = re.compile(r"[A-Z0-9]{1,16}", re.ASCII)  # FP32, FP16, INT8, ...
_TEXT = re.compile(r"[\w .,:;()+/@#-]{0,256}", re.ASCII)  # versions, GPU names, paths: one line, no quotes
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]{0,63}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


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
    problem = validate_sidecar(data)
    if problem:
        raise ArtifactError(f"{p} is not a valid engine sidecar: {problem}.")
    return data


def _shape_problem(shape, positive: bool) -> str | None:
    """Why `shape` is not a list of ints (positive ones, or -1 for a dynamic dimension)."""
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
        return f"{shape!r} is not a list of 1 to 8 dimensions"
    for d in shape:
        if type(d) is not int or not (d >= 1 or (d == -1 and not positive)) or d > 1 << 31:
            return f"{shape!r} holds {d!r}, not a {'positive' if positive else 'positive (or -1)'} integer"
    return None


def validate_sidecar(data: dict) -> str | None:
    """Why `data` is not a sidecar vimdeploy wrote, or None. Every value the runtime, `inspect`
    and `triton-repo` read is checked: strings against a safe pattern (one line, no quotes),
    the precision against PRECISIONS, shapes as positive integers, names as tensor names."""

    def text(key, pattern=_TEXT):
        value = data.get(key)
        if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
            return f"{key} {value!r} is not a plain one-line value"
        return None

    for key, pattern in (
        ("format", _TEXT),
        ("vimdeploy", _TEXT),
        ("tensorrt", _VERSION),
        ("gpu", _TEXT),
        ("compute_capability", _VERSION),
        ("cuda_runtime", _VERSION),
        ("cuda_driver", _VERSION),
        ("input", _NAME),
    ):
        problem = text(key, pattern)
        if problem:
            return problem
    if "precision" in data and data["precision"] not in PRECISIONS:
        return f"precision {data['precision']!r} is not one of {', '.join(PRECISIONS)}"
    outputs = data.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in outputs):
        return f"outputs {outputs!r} is not a list of tensor names"
    io = data.get("io", {})
    if not isinstance(io, dict):
        return f"io {io!r} is not an object"
    for name, entry in io.items():
        if not _NAME.fullmatch(name) or not isinstance(entry, dict):
            return f"io entry {name!r} is not a tensor name with its dtype and shape"
        if not (isinstance(entry.get("dtype"), str) and _DTYPE.fullmatch(entry["dtype"])):
            return f"io {name} dtype {entry.get('dtype')!r} is not a type name such as FP32"
        problem = _shape_problem(entry.get("shape"), positive=False)
        if problem:
            return f"io {name} shape {problem}"
    profiles = data.get("profiles", [])
    if not isinstance(profiles, list):
        return f"profiles {profiles!r} is not a list"
    for profile in profiles:
        if not isinstance(profile, dict) or not set(profile) <= {"min", "opt", "max"}:
            return f"profile {profile!r} is not an object of min, opt and max shapes"
        for key, shape in profile.items():
            problem = _shape_problem(shape, positive=True)
            if problem:
                return f"profile {key} {problem}"
        shapes = [profile[k] for k in ("min", "opt", "max") if k in profile]
        if len({len(s) for s in shapes}) > 1 or not all(
            all(a <= b for a, b in zip(lo, hi)) for lo, hi in zip(shapes, shapes[1:])
        ):
            return f"profile {profile!r} does not run min <= opt <= max"
    try:
        if data.get(PREPROCESSING_KEY) is not None:
            from_json(data[PREPROCESSING_KEY], "the sidecar")
        if data.get(LABELS_KEY) is not None:
            parse_labels(data[LABELS_KEY], "the sidecar")
    except ArtifactError as e:
        return str(e).removeprefix("the sidecar: ")
    plugin = data.get("plugin")
    if plugin is not None:
        if not isinstance(plugin, dict) or not isinstance(plugin.get("path"), str) or "\n" in plugin["path"]:
            return f"plugin {plugin!r} is not an object with the library's path"
        if plugin.get("sha256") is not None and not (
            isinstance(plugin["sha256"], str) and _SHA256.fullmatch(plugin["sha256"])
        ):
            return f"plugin sha256 {plugin['sha256']!r} is not a sha256 digest"
    return None


def description_entries(onnx_metadata: dict) -> dict[str, Any]:
    """The preprocessing and labels of an ONNX's metadata (prefix removed, JSON strings), decoded
    and checked, as the sidecar keeps them: the engine describes itself as its ONNX did."""
    out: dict[str, Any] = {}
    if onnx_metadata.get(PREPROCESSING_KEY) is not None:
        out[PREPROCESSING_KEY] = from_json(onnx_metadata[PREPROCESSING_KEY], "the ONNX").to_dict()
    if onnx_metadata.get(LABELS_KEY) is not None:
        out[LABELS_KEY] = parse_labels(onnx_metadata[LABELS_KEY], "the ONNX")
    return out


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
        errors.append(
            f"the engine was built with TensorRT {built}; this machine has TensorRT {here}. "
            f"Rebuild it here (vimdeploy build model.onnx -o ...) or install TensorRT {built}."
        )
    built, here = sidecar.get("compute_capability"), current.get("compute_capability")
    if built and here and built != here:
        errors.append(
            f"the engine was built for compute capability {built} ({sidecar.get('gpu', '?')}); this GPU "
            f"is {current.get('gpu', '?')} with compute capability {here}. Rebuild it on this GPU."
        )
    elif sidecar.get("gpu") and current.get("gpu") and sidecar["gpu"] != current["gpu"]:
        warns.append(
            f"the engine was built on {sidecar['gpu']} and runs on {current['gpu']} (same compute "
            "capability: it works, but its tactics were timed on the other GPU)."
        )
    plugin = sidecar.get("plugin") or {}
    if plugin.get("sha256") and plugin_sha256 and plugin["sha256"] != plugin_sha256:
        errors.append(
            f"the engine was built with another plugin library (sha256 {plugin['sha256'][:12]}..., "
            f"{plugin.get('path')}); the one loaded now is {plugin_sha256[:12]}.... Pass the same "
            "library (--plugin / plugin=...) or rebuild the engine."
        )
    return errors, warns


def current_machine(tensorrt_version: str, device: int = 0) -> dict[str, str]:
    """TensorRT, CUDA runtime/driver versions and the GPU: what an engine is tied to."""
    cudart = import_cudart()
    prop = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)

    def fmt(v: int) -> str:  # 12080 -> "12.8"
        return f"{v // 1000}.{(v % 1000) // 10}"

    return {
        "tensorrt": tensorrt_version,
        "cuda_runtime": fmt(cuda_call(cudart.cudaRuntimeGetVersion())),
        "cuda_driver": fmt(cuda_call(cudart.cudaDriverGetVersion())),
        "gpu": name.strip("\x00").strip(),
        "compute_capability": f"{prop.major}.{prop.minor}",
    }
