"""The input sets `validate` runs: seeded random tensors (every path runs, independent of image
statistics), photographs (the activations a deployed model sees: scikit-image's sample photos
by default, or the user's images), a `--data DIR` folder, and for a quantized artifact the
images it was calibrated with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data import PACKAGED_CALIBRATION
from ..errors import InputError

SAMPLE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")  # skimage.data, bundled with the package
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def random_set(n: int, hw, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *hw), dtype=np.float32)


def image_files(paths, recursive: bool = False) -> list[Path]:
    """Image files among `paths` (files, or folders: their images, sorted by path, subfolders
    included if `recursive`); a clear error for none."""
    files: list[Path] = []
    for p in map(Path, paths):
        inside = (p.rglob("*") if recursive else p.iterdir()) if p.is_dir() else None
        files += sorted(f for f in inside if f.suffix.lower() in IMAGE_SUFFIXES) if inside is not None else [p]
    if not files:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}.")
    return files


def photo_set(hw, paths=()) -> tuple[list[str], np.ndarray | None, str | None]:
    """(names, batch, note): the given image files / folders, else scikit-image's sample photos
    (batch None and a note when scikit-image is missing)."""
    from ..data import load_images, preprocess

    if paths:
        files = image_files(paths)
        return [str(f) for f in files], load_images(files, hw), None
    try:
        import skimage.data
        from PIL import Image
    except ImportError:
        return [], None, "scikit-image is not installed: no sample photos (pip install scikit-image)"
    batch = np.stack([preprocess(Image.fromarray(getattr(skimage.data, n)()), hw) for n in SAMPLE_PHOTOS])
    return [f"skimage.data.{n}" for n in SAMPLE_PHOTOS], batch, None


def recorded_calibration(metadata: dict) -> tuple[Path | None, str | None]:
    """(folder, note): the calibration images a quantized ONNX records in its metadata
    (`precision_info`'s `calibration_dir`), or a packaged set of the same folder name; else a note."""
    try:
        info = json.loads(metadata.get("precision_info") or "{}")
    except ValueError:
        info = {}
    recorded = info.get("calibration_dir") if isinstance(info, dict) else None
    if not isinstance(recorded, str) or not recorded:
        return None, "the artifact does not record its calibration images: pass --data DIR for in-distribution inputs"
    folder = Path(recorded)
    if folder.is_dir():
        return folder, None
    packaged = PACKAGED_CALIBRATION / folder.name
    if packaged.is_dir():
        return packaged, None
    return None, f"its calibration images ({recorded}) are not on this machine: pass --data DIR"


def folder_set(folder: Path, hw, limit: int | None) -> tuple[list[str], np.ndarray]:
    """The images of a folder and its subfolders, sorted by path (as the INT8 export reads its
    calibration folder), the first `limit` of them."""
    from ..data import load_images

    files = image_files([folder], recursive=True)[:limit]
    return [str(f) for f in files], load_images(files, hw)
