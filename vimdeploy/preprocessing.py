"""What a model expects of an image and what its classes are called: the schema an artifact carries.

`vimdeploy export` writes both into the ONNX metadata (`metadata_props`) and `vimdeploy build`
copies them into the engine sidecar, so that every consumer (`predict`, `evaluate`, `serve`,
`triton-repo`, another team's code) preprocesses and names classes from the artifact itself:

    vimdeploy.preprocessing  {"input_size": [224, 224], "resize_size": [256, 256], "crop": "center",
                              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                              "interpolation": "bicubic", "layout": "NCHW", "color": "RGB"}
    vimdeploy.labels         ["tench", "goldfish", ...]   (one name per class, in index order)

An image is converted to `color`, scaled to cover `resize_size` (height, width) keeping its
aspect ratio, center-cropped to `input_size` ("center"; "none" resizes straight to
`input_size`), divided by 255, normalised with `mean` / `std` per channel, laid out as `layout`.

Metadata is untrusted input (anyone can write an ONNX): `from_json` / `parse_labels` check
every type, range and length and raise ArtifactError with what is wrong. No torch, no onnx.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace

from .errors import ArtifactError, InputError

__all__ = [
    "Preprocessing",
    "PREPROCESSING_KEY",
    "LABELS_KEY",
    "INTERPOLATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CROP_PCT",
    "imagenet",
    "from_json",
    "parse_labels",
    "labels_json",
    "read_labels_file",
    "from_metadata",
    "resolve",
    "parse_size",
    "describe",
]

#: metadata keys, after the artifact's "vimdeploy." prefix
PREPROCESSING_KEY = "preprocessing"
LABELS_KEY = "labels"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875  # DeiT / timm evaluation: resize to size / 0.875 (256 for 224), then center-crop
#: interpolation name -> PIL.Image.Resampling member name
INTERPOLATIONS = {
    "nearest": "NEAREST",
    "bilinear": "BILINEAR",
    "bicubic": "BICUBIC",
    "lanczos": "LANCZOS",
    "box": "BOX",
    "hamming": "HAMMING",
}
CROPS = ("center", "none")
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR")
MAX_SIDE = 16384  # pixels; a model input or resize side beyond this is a corrupt value, not a model
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 256
_LABEL = re.compile(r"[^\x00-\x1f\x7f]+")  # one line: no control characters (labels.txt holds one per line)


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int]  # (height, width) the model takes
    resize_size: tuple[int, int]  # (height, width) the image is scaled to cover before the crop
    mean: tuple[float, float, float] = IMAGENET_MEAN  # of pixels / 255, per channel in `color` order
    std: tuple[float, float, float] = IMAGENET_STD
    crop: str = "center"
    interpolation: str = "bicubic"
    layout: str = "NCHW"
    color: str = "RGB"

    def __post_init__(self):
        problem = _problem(asdict(self))
        if problem:
            raise InputError(f"preprocessing: {problem}.")

    def at_size(self, size) -> Preprocessing:
        """The same recipe at another input size (N or (H, W)), the resize scaled alike."""
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        ratio_h = self.resize_size[0] / self.input_size[0]
        ratio_w = self.resize_size[1] / self.input_size[1]
        return replace(self, input_size=(h, w), resize_size=(int(h * ratio_h), int(w * ratio_w)))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, **{k: list(d[k]) for k in ("input_size", "resize_size", "mean", "std")}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def imagenet(size) -> Preprocessing:
    """DeiT's / Vim's evaluation transform at `size` (N or (H, W)): cover int(side / 0.875), bicubic,
    center crop, ImageNet mean / std (timm's `transforms_imagenet_eval`)."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return Preprocessing(input_size=(h, w), resize_size=(int(h / CROP_PCT), int(w / CROP_PCT)))


def _pair(value, name: str) -> str | None:
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        return f"{name} {value!r} is not [height, width]"
    if not all(type(v) is int and 1 <= v <= MAX_SIDE for v in value):
        return f"{name} {value!r} holds a side that is not an integer in 1..{MAX_SIDE}"
    return None


def _triple(value, name: str, low: float, high: float, low_open: bool = False) -> str | None:
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
        return f"{name} {value!r} is not three numbers (one per channel)"
    for v in value:
        ok = type(v) in (int, float) and math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
        if not ok:
            return f"{name} {value!r} holds {v!r}, not a finite number in {'(' if low_open else '['}{low}, {high}]"
    return None


def _problem(d: dict) -> str | None:
    """Why `d` is not a preprocessing description, or None."""
    expected = {"input_size", "resize_size", "mean", "std", "crop", "interpolation", "layout", "color"}
    if set(d) != expected:
        missing, extra = sorted(expected - set(d)), sorted(set(d) - expected)
        return f"fields {'missing ' + ', '.join(missing) if missing else ''}{'; ' if missing and extra else ''}" + (
            f"unknown {', '.join(map(str, extra))}" if extra else ""
        )
    problem = _pair(d["input_size"], "input_size") or _pair(d["resize_size"], "resize_size")
    problem = problem or _triple(d["mean"], "mean", -10.0, 10.0) or _triple(d["std"], "std", 0.0, 10.0, low_open=True)
    if problem:
        return problem
    for key, allowed in (
        ("crop", CROPS),
        ("interpolation", tuple(INTERPOLATIONS)),
        ("layout", LAYOUTS),
        ("color", COLORS),
    ):
        if d[key] not in allowed:
            return f"{key} {d[key]!r} is not one of {', '.join(allowed)}"
    if d["crop"] == "center" and not all(r >= i for r, i in zip(d["resize_size"], d["input_size"])):
        return f"resize_size {list(d['resize_size'])} is smaller than input_size {list(d['input_size'])}"
    if d["crop"] == "none" and list(d["resize_size"]) != list(d["input_size"]):
        return "crop 'none' needs resize_size equal to input_size"
    return None


def _decoded(value, where: str, what: str):
    """A metadata value: a JSON string (ONNX metadata_props) decoded, or a sidecar's decoded value."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_LABELS * (MAX_LABEL_CHARS + 4):
        raise ArtifactError(f"{where}: its {what} metadata is {len(value)} characters, more than any description.")
    try:
        return json.loads(value)
    except ValueError as e:
        raise ArtifactError(f"{where}: its {what} metadata is not JSON ({e}).") from None


def from_json(text, where: str = "the artifact") -> Preprocessing:
    """`vimdeploy.preprocessing`'s value (a JSON string, or the decoded object of a sidecar) checked."""
    data = _decoded(text, where, "preprocessing")
    problem = _problem(data) if isinstance(data, dict) else "not a JSON object"
    if problem:
        raise ArtifactError(f"{where}: invalid preprocessing metadata: {problem}.")
    return Preprocessing(
        input_size=tuple(data["input_size"]),
        resize_size=tuple(data["resize_size"]),
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        crop=data["crop"],
        interpolation=data["interpolation"],
        layout=data["layout"],
        color=data["color"],
    )


def _labels_problem(names, num_classes: int | None = None) -> str | None:
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_LABELS:
        return f"not a list of 1 to {MAX_LABELS} class names"
    for i, n in enumerate(names):
        if not (isinstance(n, str) and len(n) <= MAX_LABEL_CHARS and _LABEL.fullmatch(n) and n.strip() == n):
            return f"name {i} {str(n)[:40]!r} is not one line of 1 to {MAX_LABEL_CHARS} characters, unpadded"
    if num_classes is not None and len(names) != num_classes:
        return f"{len(names)} labels; the model has {num_classes} classes"
    return None


def parse_labels(text, where: str = "the artifact", num_classes: int | None = None) -> list[str]:
    """`vimdeploy.labels`' value (a JSON string, or a decoded list) checked; its length against `num_classes`."""
    names = _decoded(text, where, "labels")
    problem = _labels_problem(names, num_classes)
    if problem:
        raise ArtifactError(f"{where}: invalid labels metadata: {problem}.")
    return names


def labels_json(names: list[str]) -> str:
    """The metadata value for `names` (checked first)."""
    problem = _labels_problem(names)
    if problem:
        raise InputError(f"labels: {problem}.")
    return json.dumps(names, ensure_ascii=False, separators=(",", ":"))


def read_labels_file(path, num_classes: int | None = None) -> list[str]:
    """A text file with one class name per line (blank lines skipped), checked as metadata would be."""
    from pathlib import Path

    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the labels file {path}: {e}") from None
    problem = _labels_problem(names, num_classes)
    if problem:
        raise InputError(f"the labels file {path}: {problem}.")
    return names


def from_metadata(meta: dict, where: str = "the artifact", num_classes: int | None = None):
    """(Preprocessing or None, labels or None) from an artifact's metadata: ONNX metadata_props with
    the "vimdeploy." prefix removed (JSON strings), or an engine sidecar (decoded JSON)."""
    pre = meta.get(PREPROCESSING_KEY)
    labels = meta.get(LABELS_KEY)
    return (
        None if pre is None else from_json(pre, where),
        None if labels is None else parse_labels(labels, where, num_classes),
    )


def parse_size(value, option: str) -> tuple[int, int] | None:
    """N or HxW (a string or an int) -> (height, width); None stays None."""
    if value is None or isinstance(value, tuple):
        return value
    text = str(value).lower()
    try:
        parts = [int(v) for v in text.split("x")] if "x" in text else [int(text)] * 2
    except ValueError:
        parts = []
    if len(parts) != 2 or not all(1 <= v <= MAX_SIDE for v in parts):
        raise InputError(f"{option} takes N or HxW (sides 1..{MAX_SIDE}); got {value!r}.")
    return parts[0], parts[1]


def resolve(
    carried: Preprocessing | None,
    vimdeploy_made: bool,
    input_size,
    where: str,
    mean=None,
    std=None,
    resize_size=None,
    interpolation: str | None = None,
) -> Preprocessing:
    """The recipe to run: the artifact's (at `input_size`), else DeiT's for an artifact vimdeploy
    made; an artifact made elsewhere that carries none needs --mean and --std. Options win."""
    size = parse_size(input_size, "--input-size")
    if carried is None:
        if not vimdeploy_made and (mean is None or std is None):
            raise InputError(
                f"{where} carries no preprocessing (no vimdeploy.preprocessing metadata): pass --mean and --std "
                "(3 numbers each, for pixels scaled to 0..1), and --resize-size / --interpolation where they "
                "differ from DeiT's (cover size / 0.875, bicubic)."
            )
        carried = imagenet(size)
    recipe = carried.at_size(size) if tuple(carried.input_size) != tuple(size) else carried
    changes = {
        "mean": None if mean is None else tuple(float(v) for v in mean),
        "std": None if std is None else tuple(float(v) for v in std),
        "resize_size": parse_size(resize_size, "--resize-size"),
        "interpolation": interpolation,
    }
    return replace(recipe, **{k: v for k, v in changes.items() if v is not None})


def describe(p: Preprocessing) -> str:
    """One line for people: 'resize 256x256 bicubic, center crop 224x224, RGB, mean ..., std ..., NCHW'."""
    size = "x".join(map(str, p.input_size))
    steps = f"resize to cover {'x'.join(map(str, p.resize_size))} {p.interpolation}, center crop {size}"
    if p.crop == "none":
        steps = f"resize to {size} {p.interpolation}"
    return f"{steps}, {p.color}, /255, mean {list(p.mean)}, std {list(p.std)}, {p.layout}"
