"""A small Vim trained on real data, so that precision changes can be measured as accuracy.

Untrained weights cannot show what FP16 or INT8 costs. This module trains a small Vim on
scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped inside the package: no
download), upsampled to 32x32 RGB and put through the same preprocessing as
`vimdeploy predict`. Same architecture code as Vim-Ti/S/B (bimamba v2, middle class token,
div2, fp32 residual), only smaller: embed 64, depth 4, patch 8, 17 tokens, 10 classes.

\b
    python -m vimdeploy.digits train -o vimdeploy/assets/vim_digits.pth   # a few minutes on 2 CPU cores
    python -m vimdeploy.digits evaluate vimdeploy/assets/vim_digits.pth

The split is fixed (stratified, seed 0, 25% held out = 450 images); training is seeded.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from .data import PACKAGED_CALIBRATION, preprocess
from .fileio import atomic_path
from .model import VimConfig, VisionMamba

CONFIG = VimConfig(embed_dim=64, depth=4, patch_size=8, stride=8, img_size=32, num_classes=10)
WEIGHTS = Path(__file__).parent / "assets" / "vim_digits.pth"
# 128 training-split digits as PNG (`write_calibration_images`), shipped for `--calib digits`.
CALIBRATION_DIR = PACKAGED_CALIBRATION / "digits"
SEED = 0


def digit_images(split: str = "test"):
    """The digits of one split as (PIL images, labels). split: 'train', 'test' or 'all'."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train, test = train_test_split(index, test_size=0.25, random_state=SEED, stratify=digits.target)
    chosen = {"train": train, "test": test, "all": index}[split]
    images = []
    for i in chosen:
        gray = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        images.append(Image.fromarray(gray).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB"))
    return images, digits.target[chosen].astype(np.int64)


def digit_batch(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) float32 through `vimdeploy predict`'s preprocessing, and the labels."""
    images, labels = digit_images(split)
    return np.stack([preprocess(im, CONFIG.img_size) for im in images]), labels


def write_calibration_images(folder: Path, count: int = 128) -> list[Path]:
    """PNG files of training digits (never the held-out ones), for INT8 calibration."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images("train")
    paths = []
    for i, (im, y) in enumerate(zip(images[:count], labels[:count])):
        paths.append(folder / f"digit_{i:04d}_label{y}.png")
        im.save(paths[-1])
    return paths


def write_image_folder(folder: Path, split: str = "test") -> int:
    """The split as an ImageFolder (folder/<label>/digit_NNNN.png, lossless) for `vimdeploy evaluate`:
    the PNGs read back through the predict preprocessing give exactly `digit_batch(split)`."""
    images, labels = digit_images(split)
    for i, (im, y) in enumerate(zip(images, labels)):
        (folder / str(y)).mkdir(parents=True, exist_ok=True)
        im.save(folder / str(y) / f"digit_{i:04d}.png")
    return len(images)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == labels).mean() * 100.0)


def train(epochs: int = 12, batch_size: int = 32, lr: float = 3e-3, log=print) -> VisionMamba:
    # One thread: bit-for-bit the same weights on any CPU count (and no oversubscription).
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    x, y = (torch.from_numpy(a) for a in digit_batch("train"))
    # The sequential scan: exact, and cheaper to differentiate than the chunked one at 17 tokens.
    model = VisionMamba(CONFIG, scan="reference").init_weights("official")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx]
            # Small random shifts (up to 2 px): the only augmentation.
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(f"epoch {epoch + 1:3d}/{epochs}  loss {total / len(x):.4f}", flush=True)
    return model.eval()


def evaluate(model_or_path) -> dict:
    """Held-out accuracy of a PyTorch model or checkpoint (through the runtime)."""
    from .runtime import open_engine

    x, y = digit_batch("test")
    engine = open_engine(model_or_path) if isinstance(model_or_path, (str, Path)) else None
    if engine is not None:
        logits = engine.run(x)["logits"]
    else:
        with torch.inference_mode():
            logits = model_or_path(torch.from_numpy(x)).numpy()
    return {"accuracy": accuracy(logits, y), "images": int(len(y))}


@click.group(name="python -m vimdeploy.digits", help=__doc__)
def main():
    pass


@main.command("train")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=WEIGHTS, show_default=True)
@click.option("--epochs", type=int, default=12, show_default=True)
@click.option("--force", is_flag=True, help="replace an existing output")
def train_command(output: Path, epochs: int, force: bool):
    """Train and save the model."""
    start = time.perf_counter()
    model = train(epochs=epochs)
    result = {**evaluate(model), "train_seconds": round(time.perf_counter() - start, 1), "epochs": epochs}
    with atomic_path(output, force=force) as tmp:
        torch.save({"model": model.state_dict(), "digits_eval": result}, tmp)
    click.echo(json.dumps({"output": str(output), **result}))


@main.command("evaluate")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=WEIGHTS, required=False)
def evaluate_command(checkpoint: Path):
    """Held-out accuracy of a checkpoint."""
    click.echo(json.dumps(evaluate(checkpoint)))


if __name__ == "__main__":
    main()
