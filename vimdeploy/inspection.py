"""Descriptions of artifacts, shared by the CLI's human and JSON output: `vimdeploy info` (a
checkpoint) and `vimdeploy inspect` (an ONNX or an engine, and whether TensorRT will take the ONNX).

Modeled on Polygraphy's `inspect model`: inputs and outputs with types and shapes, the
metadata vimdeploy writes, the precision, node and op counts; for an ONNX, a TensorRT
verdict (vimdeploy.tensorrt.onnx_compat: Q/DQ types, zero points and scales, ops and
attributes outside onnx-tensorrt's table, the BiSelectiveScan node against its contract).
An engine is described from its sidecar (no TensorRT needed).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from .errors import ArtifactError, InputError
from .fileio import file_sha256, load_onnx
from .tensorrt.sidecar import ENGINE_SUFFIXES

__all__ = ["checkpoint_info", "inspect_artifact", "inspect_onnx", "inspect_engine", "format_report"]


def checkpoint_info(path: str | Path, ema: bool = False, **overrides) -> dict:
    """`vimdeploy info`: the model a checkpoint holds and what the file contains."""
    from .model import load_model

    # info describes the file: NaN/inf weights are reported (file.nonfinite_weights), not refused.
    model, ckpt = load_model(path, ema=ema, allow_nonfinite=True, **overrides)
    cfg = model.cfg
    grid = cfg.grid()
    return {
        "model": {
            "variant": cfg.variant,
            **cfg.to_dict(),
            "d_inner": cfg.d_inner,
            "parameters": sum(p.numel() for p in model.parameters()),
            "grid": grid,
            "tokens": cfg.tokens(),
            "cls_index": grid * grid // 2,
        },
        "file": {
            **ckpt.summary(),
            "size_mb": Path(path).stat().st_size / 1e6,
            "sha256": file_sha256(path),
        },
    }


def _dims(value_info) -> list:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim
    ]


def inspect_onnx(path: str | Path) -> dict:
    from onnx import TensorProto

    from .tensorrt.onnx_compat import check_onnx

    path = Path(path)
    model = load_onnx(path)
    g = model.graph
    weights = {t.name for t in g.initializer}

    def io(v):
        return {"name": v.name, "dtype": TensorProto.DataType.Name(v.type.tensor_type.elem_type), "shape": _dims(v)}

    meta = {p.key: p.value for p in model.metadata_props}
    findings = check_onnx(model)
    errors = [f for f in findings if f.level == "error"]
    return {
        "artifact": str(path),
        "kind": "onnx",
        "inputs": [io(v) for v in g.input if v.name not in weights],
        "outputs": [io(v) for v in g.output],
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "precision": meta.get("vimdeploy.precision", "fp32" if "vimdeploy.variant" in meta else None),
        "metadata": meta,
        "nodes": len(g.node),
        "ops": dict(Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in g.node).most_common()),
        "initializers": len(g.initializer),
        "parameters": sum(math.prod(t.dims) for t in g.initializer),
        "tensorrt": {
            "compatible": not errors,
            "errors": [str(f) for f in errors],
            "warnings": [str(f) for f in findings if f.level != "error"],
        },
    }


def inspect_engine(path: str | Path) -> dict:
    from .tensorrt.sidecar import read_sidecar

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such engine: {path}")
    side = read_sidecar(path, required=True) or {}
    io = side.get("io", {})
    return {
        "artifact": str(path),
        "kind": "tensorrt-engine",
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "inputs": [{"name": n, **io.get(n, {})} for n in [side.get("input", "images")]],
        "outputs": [{"name": n, **io.get(n, {})} for n in side.get("outputs", [])],
        "precision": side.get("precision"),
        "profiles": side.get("profiles"),
        "built_with": {k: side.get(k) for k in ("tensorrt", "gpu", "compute_capability", "cuda_runtime", "vimdeploy")},
        "plugin": side.get("plugin"),
        "onnx": side.get("onnx"),
        "metadata": side,
    }


def inspect_artifact(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    if path.suffix.lower() == ".onnx":
        return inspect_onnx(path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return inspect_engine(path)
    raise InputError(f"inspect takes an .onnx or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}); got {path.name}.")


def format_report(r: dict) -> str:
    lines = [f"{r['artifact']} ({r['kind']})"]
    for key in ("inputs", "outputs"):
        for v in r[key]:
            lines.append(f"  {key[:-1]:6s} {v['name']}: {v.get('dtype', '?')} {v.get('shape', '?')}")
    lines.append(f"  precision {r.get('precision') or 'unknown'}")
    if r["kind"] == "onnx":
        lines.append(
            f"  opsets {r['opsets']}; {r['nodes']} nodes, {r['initializers']} initializers ({r['parameters']:,} values)"
        )
        lines.append("  ops: " + ", ".join(f"{k} {v}" for k, v in r["ops"].items()))
        meta = {k: v for k, v in r["metadata"].items() if k != "vimdeploy.precision_info"}
        for k, v in meta.items():
            lines.append(f"  meta {k} = {v if len(v) < 100 else v[:97] + '...'}")
        t = r["tensorrt"]
        lines.append(
            "  TensorRT: " + ("compatible" if t["compatible"] else f"NOT compatible ({len(t['errors'])} errors)")
        )
        lines += [f"    {m}" for m in t["errors"][:50] + t["warnings"][:20]]
        if len(t["errors"]) > 50:
            lines.append(f"    ... {len(t['errors']) - 50} more errors (--json lists all)")
    else:
        b = r["built_with"]
        lines.append(
            f"  built with TensorRT {b['tensorrt']} on {b['gpu']} (cc {b['compute_capability']}), "
            f"profiles {r['profiles']}"
        )
        if r.get("plugin"):
            lines.append(f"  plugin {r['plugin'].get('path')} (sha256 {str(r['plugin'].get('sha256'))[:12]}...)")
    return "\n".join(lines)
