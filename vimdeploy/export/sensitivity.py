"""Where quantization error comes from: one group of Q/DQ sites at a time, and the shape of
the activations they quantize.

`group_sensitivity` quantizes only the activations (or only the weights) of one kind of
layer (in_proj, the depthwise conv1d, x_proj, dt_proj, out_proj, the patch embedding, the
head) and reports what `score(model)` says of the result, e.g. the logits' cosine against
fp32 on held-out images and on random inputs. `activation_stats` gives, per quantized
activation, the calibrated amax, its RMS and how far its largest channel stands above the
median channel (outlier channels make one per-tensor scale coarse for all the others).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx

from .int8 import matches_layer
from .qdq import FORMATS, insert_qdq, quant_sites
from .smoothing import tensor_values

__all__ = ["LAYER_GROUPS", "site_group", "group_sensitivity", "activation_stats"]

LAYER_GROUPS = ("patch_embed", "in_proj", "conv1d", "x_proj", "dt_proj", "out_proj", "head")


def site_group(model: onnx.ModelProto, node_name: str) -> str | None:
    """The LAYER_GROUPS entry a GEMM node belongs to (by the module path the exporter records)."""
    node = next(n for n in model.graph.node if n.name == node_name)
    return next((g for g in LAYER_GROUPS if matches_layer(node, [g])), None)


def group_sensitivity(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    score: Callable[[onnx.ModelProto], dict],
    precision: str = "int8",
    groups: Iterable[str] = LAYER_GROUPS,
) -> list[dict]:
    """One row per (group, activations|weights): `score` of the model quantized there only."""
    sites = quant_sites(model)
    group_of = {s.node: site_group(model, s.node) for s in sites}
    rows = []
    for group in groups:
        for weight in (False, True):
            chosen = [s for s in sites if group_of[s.node] == group and s.weight == weight]
            if chosen:
                quantized = insert_qdq(model, chosen, amax, FORMATS[precision])
                rows.append({"group": group, "tensors": "weights" if weight else "activations", **score(quantized)})
    return rows


def activation_stats(model: onnx.ModelProto, amax: Mapping[str, float], images: np.ndarray) -> list[dict]:
    """Per quantized activation: group, amax, RMS, amax / RMS and the largest channel's amax
    over the median channel's (channels: the last axis, or axis 1 for a Conv input)."""
    sites = [s for s in quant_sites(model) if not s.weight]
    values = tensor_values(model, [s.tensor for s in sites], images)
    rows = []
    for site in sites:
        v = np.abs(values[site.tensor])
        axis = 1 if v.ndim == 4 else v.ndim - 1
        per_channel = np.moveaxis(v, axis, -1).reshape(-1, v.shape[axis]).max(0)
        rms = float(np.sqrt((v.astype(np.float64) ** 2).mean()))
        rows.append(
            {
                "node": site.node,
                "group": site_group(model, site.node),
                "amax": float(amax[site.tensor]),
                "rms": rms,
                "amax_over_rms": float(amax[site.tensor]) / max(rms, 1e-12),
                "top_channel_over_median": float(per_channel.max() / max(np.median(per_channel), 1e-12)),
            }
        )
    return rows
