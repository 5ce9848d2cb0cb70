"""Descriptions of artifacts, shared by the CLI's human and JSON output."""

from __future__ import annotations

from pathlib import Path

from .model import load_model
from .model.checkpoint import file_sha256


def checkpoint_info(path: str | Path, ema: bool = False, **overrides) -> dict:
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
