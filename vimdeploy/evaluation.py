"""`vimdeploy evaluate`: top-1 / top-5 accuracy of one or more artifacts on a labelled image folder.

Data layouts:
* ImageFolder (torchvision's convention): one subfolder per class; the sorted subfolder
  names are the class indices 0, 1, 2, ... (so `n01440764/`... gives ImageNet's order);
* a folder of images plus a labels file: one `relative/path.jpg <label>` per line
  (whitespace or a comma between; `#` comments and a header line without a number are skipped).

Each artifact is fed at its own resolution (a fixed-size export at its size, a checkpoint or
a dynamic export at `img_size` or its trained size) through the same preprocessing as
`vimdeploy predict`. With several artifacts, each also reports how often its top-1 class
agrees with the first artifact's, image by image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ArtifactError, InputError
from .validation import IMAGE_SUFFIXES, nonfinite

__all__ = ["read_dataset", "evaluate", "format_results"]


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_dataset(data, labels_file=None) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image files, integer labels, class names) from an ImageFolder or a folder + labels file."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"--data {data} is not a folder.")
    if labels_file is not None:
        files, labels = [], []
        for number, line in enumerate(Path(labels_file).read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            if len(parts) < 2 or not parts[-1].lstrip("-").isdigit():
                if number == 1:
                    continue  # a header such as "file,label"
                raise InputError(f"{labels_file}:{number}: expected 'path label', got {line!r}.")
            path = data / " ".join(parts[:-1])
            if not path.is_file():
                raise InputError(f"{labels_file}:{number}: no such image {path}.")
            files.append(path)
            labels.append(int(parts[-1]))
        if not files:
            raise InputError(f"{labels_file} lists no images.")
        classes = [str(c) for c in sorted(set(labels))]
        return files, np.array(labels, dtype=np.int64), classes
    classes = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(
            f"{data} has no class subfolders: use one folder per class (ImageFolder), or pass --labels FILE."
        )
    files, labels = [], []
    for index, name in enumerate(classes):
        found = _images_under(data / name)
        files += found
        labels += [index] * len(found)
    if not files:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders of {data}.")
    return files, np.array(labels, dtype=np.int64), classes


def _topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return (top == labels[:, None]).any(-1)


def evaluate(
    artifacts,
    data,
    labels_file=None,
    limit: int | None = None,
    batch_size: int = 32,
    img_size=None,
    ema: bool = False,
    allow_nonfinite: bool = False,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    device: str = "auto",
) -> list[dict]:
    """One result per artifact: {artifact, images, top1, top5 (fractions), agreement_top1, ...}.

    `progress(label, total)` returns an `advance(n)` callback (the CLI draws a tqdm bar).
    """
    from .data import artifact_recipe, load_images
    from .model import DYNAMIC, format_img_size, parse_img_size
    from .runtime import open_engine

    if batch_size < 1:
        raise InputError(f"--batch must be at least 1; got {batch_size}.")
    files, labels, classes = read_dataset(data, labels_file)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1; got {limit}.")
        files, labels = files[:limit], labels[:limit]
    wanted = parse_img_size(img_size)
    if wanted == DYNAMIC:
        raise InputError("--img-size for evaluate is one size (N or HxW), not 'dynamic'.")
    results, first_top1 = [], None
    for artifact in artifacts:
        with open_engine(artifact, device=device, ema=ema, allow_nonfinite=allow_nonfinite) as engine:
            if engine.num_classes < len(classes):
                raise InputError(f"{artifact} has {engine.num_classes} classes; the data has {len(classes)}.")
            hw = tuple(engine.input_hw or wanted or (engine.default_input_size,) * 2)
            recipe, _ = artifact_recipe(artifact, hw, engine.num_classes)  # the artifact's own preprocessing
            advance = progress(Path(artifact).name, len(files)) if progress else (lambda _n: None)
            start = time.perf_counter()
            top1, top5, preds = [], [], []
            for i in range(0, len(files), batch_size):
                chunk = files[i : i + batch_size]
                logits = engine.run(load_images(chunk, recipe))["logits"]
                if nonfinite({"logits": logits}):
                    raise ArtifactError(
                        f"{artifact} gives NaN/inf logits (first in {chunk[0]} .. {chunk[-1]}): "
                        "its accuracy would mean nothing."
                    )
                y = labels[i : i + batch_size]
                top1.append(_topk_hits(logits, y, 1))
                top5.append(_topk_hits(logits, y, 5))
                preds.append(logits.argmax(-1))
                advance(len(chunk))
            description = engine.describe()
        preds = np.concatenate(preds)
        result = {
            "artifact": str(artifact),
            "images": len(files),
            "classes": len(classes),
            "top1": float(np.concatenate(top1).mean()),
            "top5": float(np.concatenate(top5).mean()),
            "img_size": format_img_size(hw),
            "seconds": round(time.perf_counter() - start, 2),
            "engine": description,
        }
        if first_top1 is None:
            first_top1 = preds
        else:
            result["agreement_top1"] = float((preds == first_top1).mean())
        results.append(result)
    return results


def format_results(results: list[dict]) -> str:
    width = max(len("artifact"), *(len(r["artifact"]) for r in results))
    lines = [f"{'artifact':<{width}}  {'images':>6}  {'size':>9}  {'top-1':>7}  {'top-5':>7}  {'agrees':>7}"]
    for r in results:
        agree = f"{r['agreement_top1']:>7.2%}" if "agreement_top1" in r else f"{'-':>7}"
        lines.append(
            f"{r['artifact']:<{width}}  {r['images']:>6}  {r['img_size']:>9}  {r['top1']:>7.2%}  "
            f"{r['top5']:>7.2%}  {agree}"
        )
    if len(results) > 1:
        lines.append("agrees: share of images whose top-1 class is the first artifact's")
    return "\n".join(lines)
