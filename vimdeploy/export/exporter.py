"""Checkpoint -> ONNX, in one of two flavors.

* "plugin": one `trt.plugins::BiSelectiveScan` node per layer (export/op_contract.md), for
  TensorRT with vimdeploy's plugin, and ONNX Runtime with the op of `ort_op.py`.
* "onnx": standard ONNX ops only (one `Scan` loop over chunks of tokens per layer, see
  `portable.py`), for any runtime.

Pipeline: torch.export (dynamo) -> ONNX with onnxscript (`optimize=False`, so that what the
op receives is exactly what the model computed) -> onnxscript's optimizer (constant folding,
dead code; measured in docs/export.md to keep the custom node intact) -> `onnx.checker` and
strict shape inference -> metadata -> an atomic write.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import onnx
import torch
from torch import nn

from .. import __version__
from ..errors import InputError, VimdeployError
from ..fileio import atomic_path
from ..model import load_model
from ..model.checkpoint import file_sha256
from . import op as _op  # registers the ONNX schema of BiSelectiveScan
from .portable import bi_selective_scan_onnx

__all__ = ["export_onnx", "FLAVORS", "INPUT_NAME", "OUTPUT_NAMES", "DEFAULT_OPSET"]

FLAVORS = {"plugin": _op.scan_op, "onnx": bi_selective_scan_onnx}  # flavor -> scan traced
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "features")
DEFAULT_OPSET = 20  # what torch 2.13's exporter writes natively; TensorRT 10+ parses it
MIN_OPSET = 18  # the dynamo exporter's floor
MAX_IR_VERSION = 13  # onnxruntime 1.31 refuses newer IR versions
EXAMPLE_BATCH_FOR_DYNAMIC = 2  # torch.export specialises a size-1 dimension, so trace with 2
META_PREFIX = "vimdeploy."


class _ExportModule(nn.Module):
    """images -> (logits, features): both are graph outputs so `infer --features` works."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        features = self.model.forward_features(images)
        return self.model.head(features), features


def _at_resolution(model, img_size: int):
    """Bake the position embedding for `img_size` into the model, so the graph has no resize."""
    grid = model.grid_for(img_size, img_size)  # InputError for a size off the patch grid
    if img_size != model.cfg.img_size:
        with torch.no_grad():
            model.pos_embed = nn.Parameter(model.pos_embed_for(grid))
        model.cfg = model.cfg.replace(img_size=img_size)
    return model


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress to stdout and logs warnings (e.g. 'torchvision is not
    installed'); keep stdout clean for --json and report progress our own way."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _parse_batch(batch) -> int | None:
    """1, 8, "8" -> fixed batch; "dynamic" -> None."""
    if isinstance(batch, str) and batch.strip().lower() == "dynamic":
        return None
    try:
        value = int(batch)
    except (TypeError, ValueError):
        raise InputError(f"--batch must be a positive integer or 'dynamic'; got {batch!r}.") from None
    if value < 1:
        raise InputError(f"--batch must be a positive integer or 'dynamic'; got {batch!r}.")
    return value


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    img_size: int | None = None,
    batch: int | str = 1,
    opset: int = DEFAULT_OPSET,
    scan: str = "plugin",
    simplify: bool = True,
    force: bool = False,
    ema: bool = False,
    progress: Callable[[str], None] | None = None,
    overrides: dict | None = None,
) -> dict:
    """Export a Vim checkpoint to ONNX. Returns a summary (path, flavor, nodes, size, timings).

    Everything that can be checked before the (long) export is checked first, and the
    output is written atomically: on any error nothing is created or replaced.
    `overrides` (stride, img_size = the TRAINED resolution) go to `load_model` for what a
    checkpoint's shapes cannot tell; `img_size` is the resolution to export at.
    """
    say = progress or (lambda _msg: None)
    output = Path(output)
    if scan not in FLAVORS:
        raise InputError(f"--scan must be one of {', '.join(FLAVORS)}; got {scan!r}.")
    fixed_batch = _parse_batch(batch)
    if not MIN_OPSET <= int(opset) <= 23:
        raise InputError(f"--opset must be between {MIN_OPSET} and 23 for the dynamo exporter; got {opset}.")
    if output.exists() and not force:
        raise VimdeployError(f"{output} already exists; pass --force to replace it.")
    if not output.parent.exists():
        raise VimdeployError(f"output folder {output.parent} does not exist.")

    timings = {}
    t0 = time.perf_counter()
    say(f"loading {checkpoint}")
    model, _ckpt = load_model(checkpoint, ema=ema, scan=FLAVORS[scan], **(overrides or {}))
    img_size = int(img_size or model.cfg.img_size)
    model = _at_resolution(model, img_size)
    cfg = model.cfg
    sha = file_sha256(checkpoint)
    timings["load_s"] = time.perf_counter() - t0

    example_batch = fixed_batch or EXAMPLE_BATCH_FOR_DYNAMIC
    example = torch.randn(example_batch, cfg.in_chans, img_size, img_size)
    dynamic_shapes = None if fixed_batch else ({0: torch.export.Dim("batch")},)
    say(f"exporting Vim {cfg.variant} at {img_size}px ({cfg.tokens()} tokens), {scan} flavor, "
        f"batch {fixed_batch or 'dynamic'} (torch.export + onnxscript; about a minute per 24 layers "
        + ("for the onnx flavor)" if scan == "onnx" else "or less)"))
    t = time.perf_counter()
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                _ExportModule(model), (example,), dynamo=True, opset_version=int(opset),
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic_shapes,
                custom_translation_table=_op.custom_translation_table() if scan == "plugin" else None,
                optimize=False, external_data=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter's failures are long; keep the first line
        raise VimdeployError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    proto = program.model_proto
    timings["export_s"] = time.perf_counter() - t

    if simplify:
        say("simplifying (onnxscript optimizer: constant folding, dead code removal)")
        t = time.perf_counter()
        import onnxscript.optimizer

        with _quiet():
            proto = onnxscript.optimizer.optimize(proto)
        timings["simplify_s"] = time.perf_counter() - t

    say("checking (onnx.checker, strict shape inference)")
    t = time.perf_counter()
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    meta = {
        "variant": cfg.variant, "resolution": str(img_size), "tokens": str(cfg.tokens()),
        "scan": scan, "batch": str(fixed_batch or "dynamic"), "precision": "fp32",
        "version": __version__, "checkpoint_sha256": sha,
        "checkpoint_weights": "model_ema" if ema else "model",
        "op_contract": f"{_op.DOMAIN}::{_op.OP_TYPE} v{_op.PLUGIN_VERSION}" if scan == "plugin" else "none",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=META_PREFIX + key, value=value)
    proto.doc_string = f"Vision Mamba {cfg.variant} exported by vimdeploy {__version__} ({scan} flavor)"
    onnx.checker.check_model(proto, full_check=False)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    problem = _check_contract(proto, scan, cfg)
    if problem:
        raise VimdeployError(f"the exported graph breaks the op contract: {problem}")
    timings["check_s"] = time.perf_counter() - t

    with atomic_path(output, force=force) as tmp:
        onnx.save(proto, tmp)
    timings["total_s"] = time.perf_counter() - t0
    say(f"wrote {output}")
    return {
        "output": str(output), "flavor": scan, "variant": cfg.variant, "img_size": img_size,
        "tokens": cfg.tokens(), "batch": fixed_batch or "dynamic", "opset": int(opset),
        "nodes": len(proto.graph.node), "op_counts": op_counts(proto),
        "size_mb": output.stat().st_size / 1e6, "checkpoint_sha256": sha, "timings": timings,
    }


def op_counts(proto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _check_contract(proto, scan: str, cfg) -> str | None:
    """What the contract promises TensorRT: one node per layer, 15 inputs, 4 attributes."""
    nodes = [n for n in proto.graph.node if n.op_type == _op.OP_TYPE]
    if scan == "onnx":
        return f"{len(nodes)} {_op.OP_TYPE} nodes in the portable flavor" if nodes else None
    if len(nodes) != cfg.depth:
        return f"{len(nodes)} {_op.OP_TYPE} nodes for {cfg.depth} layers"
    for n in nodes:
        attrs = {a.name for a in n.attribute}
        if n.domain != _op.DOMAIN or len(n.input) != len(_op.INPUT_NAMES) or attrs != set(_op.ATTRIBUTES):
            return f"node {n.name}: domain {n.domain!r}, {len(n.input)} inputs, attributes {sorted(attrs)}"
    return None
