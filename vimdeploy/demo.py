"""`vimdeploy demo`: every stage of the pipeline once, on a given or a built-in model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_path
from .model import VimConfig, VisionMamba

UNTRAINED_NAME = "vim_tiny_UNTRAINED_seed0.pth"


def make_untrained_checkpoint(path: Path, seed: int = 0) -> Path:
    """An official-format checkpoint ({'model': state_dict}) of a randomly initialised Vim-Tiny."""
    model = VisionMamba(VimConfig()).init_weights("untrained", seed=seed)
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "note": "UNTRAINED: random weights made by `vimdeploy demo`"}, tmp)
    return path


def demo_image(size: int = 320):
    """A synthetic picture (no download, no data package needed)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, int(size * 0.75)), (200, 220, 240))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 40, 260, 220), fill=(230, 140, 40), outline=(90, 50, 20), width=6)
    draw.rectangle((0, 200, size, 240), fill=(70, 140, 60))
    return image


def run_demo(checkpoint: Path | None, out_dir: Path, echo=None) -> dict:
    say = echo or (lambda *_: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"out_dir": str(out_dir), "stages": {}}

    if checkpoint is None:
        checkpoint = out_dir / UNTRAINED_NAME
        if not checkpoint.exists():
            make_untrained_checkpoint(checkpoint)
        say(f"No checkpoint given: using an UNTRAINED Vim-Tiny ({checkpoint}); predictions are meaningless.")
        report["untrained"] = True
    report["checkpoint"] = str(checkpoint)

    from .data import preprocess, topk
    from .inspection import checkpoint_info
    from .runtime import open_engine

    t = time.perf_counter()
    info = checkpoint_info(checkpoint)
    m = info["model"]
    say(f"[1/6] info     Vim {m['variant']}, {m['parameters']:,} parameters, {m['img_size']}px, {m['tokens']} tokens")
    report["stages"]["info"] = {"seconds": time.perf_counter() - t, **info["model"]}

    t = time.perf_counter()
    engine = open_engine(checkpoint)
    image_path = out_dir / "demo_image.png"
    demo_image().save(image_path)
    batch = preprocess(demo_image(), m["img_size"])[None]
    top = topk(engine.run(batch)["logits"], 5)[0]
    say(f"[2/6] predict  {image_path}: " + ", ".join(f"{t['name']} {t['probability']:.1%}" for t in top[:3]))
    report["stages"]["predict"] = {"seconds": time.perf_counter() - t, "top5": top}

    t = time.perf_counter()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, m["img_size"], m["img_size"]), dtype=np.float32)
    fast = engine.run(images, features=True)  # scan "auto": the native kernel where built
    scan = engine.describe()["scan"]
    engine.model.scan = "reference"
    reference = engine.run(images, features=True)
    diff = float(np.abs(fast["logits"] - reference["logits"]).max())
    with atomic_path(out_dir / "demo_outputs.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, input=images, **fast)
    say(
        f"[3/6] infer    batch of 2 -> {out_dir / 'demo_outputs.npz'}; {scan} vs sequential scan: max |diff| {diff:.2e}"
    )
    report["stages"]["infer"] = {"seconds": time.perf_counter() - t, "fast_vs_reference_max_abs": diff}

    # Export both ONNX flavors (dynamic batch) and validate each against the checkpoint.
    from .export import export_onnx
    from .validation import validate_artifact

    for step, flavor in ((4, "plugin"), (5, "onnx")):
        t = time.perf_counter()
        path = out_dir / f"model_{flavor}.onnx"
        summary = export_onnx(checkpoint, path, batch="dynamic", scan=flavor, force=True)
        check = validate_artifact(path, checkpoint, random_batch=1, images=[image_path])
        o = check["overall"]
        say(
            f"[{step}/6] export   {path} ({flavor} flavor, {summary['nodes']} nodes, {summary['size_mb']:.1f} MB, "
            f"{summary['timings']['export_s']:.0f}s); validate: max |diff| {o['max_abs']:.1e}, "
            f"top-1 {o['top1']:.0%} -> {'PASS' if check['passed'] else 'FAIL'}"
        )
        report["stages"][f"export_{flavor}"] = {
            "seconds": time.perf_counter() - t,
            "export": summary,
            "validate": {k: check[k] for k in ("overall", "passed", "failures")},
        }

    t = time.perf_counter()
    onnx_out = open_engine(out_dir / "model_onnx.onnx").run(images, features=True)
    diff = float(np.abs(onnx_out["logits"] - fast["logits"]).max())
    say(f"[6/6] infer    the same batch of 2 through ONNX Runtime (portable flavor): max |diff| vs PyTorch {diff:.1e}")
    report["stages"]["infer_onnx"] = {"seconds": time.perf_counter() - t, "max_abs_vs_pytorch": diff}
    if report.get("untrained"):
        report["accuracy_per_precision"] = accuracy_per_precision(out_dir / "digits", say)
    return report


def accuracy_per_precision(out_dir: Path, say) -> dict:
    """What FP16 and INT8 cost, measured where it can be: the trained digits Vim (vimdeploy.digits).

    Export (plugin flavor) -> FP16 and INT8 (calibrated on training digits) -> held-out accuracy
    of each through ONNX Runtime, and agreement with the PyTorch model.
    """
    from . import digits
    from .export import export_onnx
    from .export.precision import convert_precision

    out_dir.mkdir(parents=True, exist_ok=True)
    say(
        f"Accuracy per precision: the small Vim trained on scikit-learn's digits ({digits.WEIGHTS.name}), "
        "450 held-out images"
    )
    x, y = digits.digit_batch("test")
    calib = out_dir / "calibration"
    if not calib.exists():
        digits.write_calibration_images(calib, 128)
    fp32 = out_dir / "digits_fp32.onnx"
    export_onnx(digits.WEIGHTS, fp32, batch="dynamic", scan="plugin", force=True)
    reference = open_engine_logits(digits.WEIGHTS, x)
    rows = {"pytorch": {"accuracy": digits.accuracy(reference, y)}}
    paths = {"fp32": fp32}
    for precision in ("fp16", "int8"):
        paths[precision] = out_dir / f"digits_{precision}.onnx"
        convert_precision(fp32, paths[precision], precision, calib=calib, force=True)
    for precision, path in paths.items():
        logits = open_engine_logits(path, x)
        cos = (logits * reference).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(reference, axis=-1)
        rows[precision] = {
            "accuracy": digits.accuracy(logits, y),
            "min_cosine_vs_pytorch": float(cos.min()),
            "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
            "file": str(path),
        }
    say(f"  {'model':<9}{'accuracy':>9}{'drop':>7}{'top-1 agree':>13}{'min cosine':>12}")
    base = rows["pytorch"]["accuracy"]
    for name, r in rows.items():
        extra = f"{r['top1_agreement']:>12.1%}{r['min_cosine_vs_pytorch']:>12.6f}" if "top1_agreement" in r else ""
        say(f"  {name:<9}{r['accuracy']:>8.2f}%{base - r['accuracy']:>+7.2f}{extra}")
    return rows


def open_engine_logits(path, images: np.ndarray) -> np.ndarray:
    from .runtime import open_engine

    return open_engine(path).run(images)["logits"]
