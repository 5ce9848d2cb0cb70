"""Descriptions of any file vimdeploy reads, shared by the CLI's human and JSON output:
`vimdeploy inspect` (alias `info`) on a checkpoint, an ONNX (and whether TensorRT will take it),
an engine (from its sidecar) or saved arrays (.npz / .npy). The kind comes from the content
(vimdeploy.formats), not the suffix.

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

__all__ = [
    "checkpoint_info",
    "inspect_artifact",
    "inspect_onnx",
    "inspect_engine",
    "inspect_arrays",
    "format_report",
]


def checkpoint_info(path: str | Path, ema: bool = False, **overrides) -> dict:
    """`vimdeploy info`: the model a checkpoint holds and what the file contains."""
    from .model import load_model

    # info describes the file: NaN/inf weights are reported (file.nonfinite_weights), not refused.
    model, ckpt = load_model(path, ema=ema, allow_nonfinite=True, **overrides)
    cfg = model.cfg
    grid = cfg.grid()
    return {
        "artifact": str(path),
        "kind": "checkpoint",
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


def _described(meta: dict, where: str, num_classes) -> dict:
    """The preprocessing and labels an artifact carries (checked: a broken entry is reported, not fatal)."""
    from .errors import VimdeployError
    from .preprocessing import from_metadata

    try:
        pre, labels = from_metadata(meta, where, num_classes if isinstance(num_classes, int) else None)
    except VimdeployError as e:
        return {"preprocessing": None, "labels": None, "description_error": str(e)}
    return {"preprocessing": pre.to_dict() if pre else None, "labels": labels}


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
    plain = {k[len("vimdeploy.") :]: v for k, v in meta.items() if k.startswith("vimdeploy.")}
    outputs = [io(v) for v in g.output]
    logits = next((o for o in outputs if o["name"] == "logits"), outputs[0] if len(outputs) == 1 else None)
    findings = check_onnx(model)
    errors = [f for f in findings if f.level == "error"]
    return {
        "artifact": str(path),
        "kind": "onnx",
        "inputs": [io(v) for v in g.input if v.name not in weights],
        "outputs": outputs,
        **_described(plain, path.name, logits["shape"][-1] if logits and logits["shape"] else None),
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
    from .tensorrt.sidecar import read_sidecar, sidecar_path

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such engine: {path}")
    side = read_sidecar(path)
    if side is None:  # built elsewhere (trtexec): only TensorRT itself could read its tensors
        return {
            "artifact": str(path),
            "kind": "tensorrt-engine",
            "size_mb": round(path.stat().st_size / 1e6, 2),
            "sidecar": None,
            "inputs": [],
            "outputs": [],
            "precision": None,
            "preprocessing": None,
            "labels": None,
        }
    io = side.get("io", {})
    return {
        "artifact": str(path),
        "kind": "tensorrt-engine",
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "sidecar": str(sidecar_path(path)),
        "inputs": [{"name": n, **io.get(n, {})} for n in [side.get("input", "images")]],
        "outputs": [{"name": n, **io.get(n, {})} for n in side.get("outputs", [])],
        "precision": side.get("precision"),
        "profiles": side.get("profiles"),
        "built_with": {k: side.get(k) for k in ("tensorrt", "gpu", "compute_capability", "cuda_runtime", "vimdeploy")},
        "plugin": side.get("plugin"),
        "onnx": side.get("onnx"),
        **_described(side, path.name, (io.get("logits", {}).get("shape") or [None])[-1]),
        "metadata": side,
    }


def inspect_arrays(path: str | Path, kind: str) -> dict:
    """Saved arrays (`vimdeploy infer`'s .npz, an input .npy): names, shapes, dtypes; nothing unpickled."""
    import numpy as np

    path = Path(path)
    try:
        if kind == "npy":
            arrays = {"array": np.load(path, allow_pickle=False, mmap_mode="r")}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"cannot read {path} as saved arrays: {e}") from None
    return {
        "artifact": str(path),
        "kind": kind,
        "size_mb": round(path.stat().st_size / 1e6, 3),
        "arrays": [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()],
    }


def inspect_artifact(path: str | Path, ema: bool = False, **overrides) -> dict:
    """Describe any file: the kind from its content (an engine also by its suffix: some tools
    prefix engines with their own header); a file that is none of these gets the checkpoint
    loader's one-line verdict on what it is."""
    from .formats import sniff

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    kind = "tensorrt" if path.suffix.lower() in ENGINE_SUFFIXES else sniff(path)
    if kind == "onnx":
        return inspect_onnx(path)
    if kind == "tensorrt":
        return inspect_engine(path)
    if kind in ("npz", "npy"):
        return inspect_arrays(path, kind)
    return checkpoint_info(path, ema=ema, **overrides)


def _checkpoint_lines(d: dict) -> list[str]:
    from .model.checkpoint import describe_nonfinite

    m, f = d["model"], d["file"]
    lines = [
        f"{f['path']}  ({f['size_mb']:.1f} MB, sha256 {f['sha256'][:16]}...)",
        f"  variant      Vim {m['variant']}  (embed {m['embed_dim']}, depth {m['depth']}, "
        f"d_state {m['d_state']}, d_inner {m['d_inner']}, dt_rank {m['dt_rank']})",
        f"  parameters   {m['parameters']:,}",
        f"  resolution   {m['img_size']}x{m['img_size']}, patch {m['patch_size']} stride {m['stride']}, "
        f"grid {m['grid']}x{m['grid']}, {m['tokens']} tokens (class token in the middle, index {m['cls_index']})",
        f"  classes      {m['num_classes']}",
        f"  weights from {f['weights_from']}  ({f['format']}, stored as {', '.join(f['stored_dtypes'])})",
        f"  non-finite   {describe_nonfinite(f['nonfinite_weights'])}",
        f"  file holds   {', '.join(f['top_level_keys']) or 'a bare state dict'}",
    ]
    if f.get("epoch") is not None:
        lines.append(f"  epoch        {f['epoch']}")
    if f.get("training_model_name"):
        lines.append(f"  trained as   {f['training_model_name']} at {f.get('training_input_size')}px")
    return lines


def _description_lines(r: dict) -> list[str]:
    from .preprocessing import describe, from_json

    if r.get("description_error"):
        return [f"  described    INVALID: {r['description_error']}"]
    pre, labels = r.get("preprocessing"), r.get("labels")
    lines = [f"  preprocess   {describe(from_json(pre)) if pre else 'not described (pass --mean/--std to serve it)'}"]
    if labels:
        lines.append(f"  labels       {len(labels)}: {', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''}")
    else:
        lines.append("  labels       none (class N, or --labels)")
    return lines


def format_report(r: dict) -> str:
    if r["kind"] == "checkpoint":
        return "\n".join(_checkpoint_lines(r))
    lines = [f"{r['artifact']} ({r['kind']})"]
    if r["kind"] in ("npz", "npy"):
        lines += [f"  {a['name']}: {a['dtype']} {a['shape']}" for a in r["arrays"]]
        return "\n".join(lines)
    if r["kind"] == "tensorrt-engine" and r["sidecar"] is None:
        lines.append(
            f"  {r['size_mb']} MB; no sidecar ({Path(r['artifact']).name}.json): built outside `vimdeploy build`, "
            "so its tensors, versions and preprocessing are not described here (`triton-repo` and `serve` "
            "take them as options: docs/serving.md)"
        )
        return "\n".join(lines)
    for key in ("inputs", "outputs"):
        for v in r[key]:
            lines.append(f"  {key[:-1]:6s} {v['name']}: {v.get('dtype', '?')} {v.get('shape', '?')}")
    lines.append(f"  precision {r.get('precision') or 'unknown'}")
    lines += _description_lines(r)
    if r["kind"] == "onnx":
        lines.append(
            f"  opsets {r['opsets']}; {r['nodes']} nodes, {r['initializers']} initializers ({r['parameters']:,} values)"
        )
        lines.append("  ops: " + ", ".join(f"{k} {v}" for k, v in r["ops"].items()))
        skip = {"vimdeploy.precision_info", "vimdeploy.preprocessing", "vimdeploy.labels"}
        meta = {k: v for k, v in r["metadata"].items() if k not in skip}
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
