"""What the server does with a batch of requests, without Triton: check, decode, run, answer.

The Triton Python backend (backend.py) only converts Triton's request and response objects
to and from the numpy arrays used here, so everything below also runs (and is tested)
in-process.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from ..data import MAX_IMAGE_PIXELS, class_names, open_image, preprocess, softmax
from ..errors import InputError
from ..preprocessing import Preprocessing, imagenet
from ..runtime import Engine

TOP_K = 5
#: image formats accepted in `image_bytes` (PIL decodes many more; a server needs no more)
IMAGE_FORMATS = ("JPEG", "PNG")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton sees it: dims exclude the batch dimension."""

    name: str
    dtype: str  # Triton's data type name without TYPE_: FP32, INT64, STRING
    dims: tuple[int, ...]
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The served model's interface, found by running the artifact once (`probe`)."""

    img_size: int
    num_classes: int
    feature_dim: int | None = None  # None: the `features` output is not served

    @property
    def top_k(self) -> int:
        return min(TOP_K, self.num_classes)

    def inputs(self) -> list[TensorSpec]:
        # Both optional: a request carries exactly one of them (Handler.prepare checks).
        return [
            TensorSpec("images", "FP32", (3, self.img_size, self.img_size), optional=True),
            TensorSpec("image_bytes", "STRING", (1,), optional=True),
        ]

    def outputs(self) -> list[TensorSpec]:
        k = self.top_k
        specs = [
            TensorSpec("logits", "FP32", (self.num_classes,)),
            TensorSpec("top5_indices", "INT64", (k,)),
            TensorSpec("top5_labels", "STRING", (k,)),
            TensorSpec("top5_scores", "FP32", (k,)),
        ]
        if self.feature_dim is not None:
            specs.append(TensorSpec("features", "FP32", (self.feature_dim,)))
        return specs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(**data)


def probe(engine: Engine, features: bool = False, size: int | None = None) -> ModelSpec:
    """Run one zero image through `engine` to learn its input size and output widths (`size`:
    the side to serve an artifact that takes several at; default its own)."""
    if engine.input_hw is not None and engine.input_hw[0] != engine.input_hw[1]:
        from ..errors import ArtifactError

        raise ArtifactError(
            f"vimdeploy serve takes square inputs; this artifact is fixed at "
            f"{engine.input_hw[0]}x{engine.input_hw[1]}: export it with --img-size N or dynamic."
        )
    size = engine.input_size or size or engine.default_input_size
    out = engine.run(np.zeros((1, 3, size, size), np.float32), features=features)
    feature_dim = int(out["features"].shape[-1]) if features else None
    return ModelSpec(img_size=int(size), num_classes=int(out["logits"].shape[-1]), feature_dim=feature_dim)


def open_image_bytes(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS):
    """Encoded JPEG/PNG bytes -> a lazily opened PIL image (header read, size checked, nothing decoded)."""
    from PIL import UnidentifiedImageError

    kinds = "/".join(IMAGE_FORMATS)
    try:
        return open_image(io.BytesIO(data), max_pixels, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise InputError(f"not a {kinds} image ({len(data)} bytes that no {kinds} decoder recognises)") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError (broken PNG chunks), ...
        raise InputError(f"not a readable {kinds} image ({type(e).__name__}: {e})") from None


def decode_image(data: bytes, recipe, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> (3, H, W) float32, preprocessed like `predict` (`recipe`: a
    `Preprocessing`, or a side for DeiT's)."""
    return _decode(open_image_bytes(data, max_pixels), recipe)


def _decode(image, recipe) -> np.ndarray:
    kinds = "/".join(IMAGE_FORMATS)
    try:
        with image:
            return preprocess(image, recipe)
    except Exception as e:  # noqa: BLE001 - as above: a header that read well, pixel data that does not
        raise InputError(f"not a readable {kinds} image ({type(e).__name__}: {e})") from None


class Handler:
    """Turns requests into one engine call and the engine's outputs back into answers."""

    def __init__(
        self,
        engine: Engine,
        spec: ModelSpec,
        labels: list[str] | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        recipe: Preprocessing | None = None,
    ):
        self.engine = engine
        self.spec = spec
        self.max_image_pixels = max_image_pixels
        self.recipe = recipe or imagenet(spec.img_size)  # how `image_bytes` become `images`
        names = labels if labels is not None else class_names(spec.num_classes)
        self.labels = np.array([n.encode("utf-8") for n in names], dtype=np.object_)

    def prepare(self, images: np.ndarray | None, image_bytes: np.ndarray | None) -> np.ndarray:
        """One request's inputs -> (n, 3, S, S) float32; InputError for anything unusable.

        Triton has already checked dtypes, per-image dims and the batch limit against the
        model config; what it cannot check is checked here.
        """
        if (images is None) == (image_bytes is None):
            raise InputError(
                "send exactly one of the inputs `images` (FP32, N x 3 x H x W, normalised) or "
                "`image_bytes` (BYTES, N x 1, encoded JPEG/PNG)."
            )
        if images is not None:
            size = self.spec.img_size
            if images.ndim != 4 or images.shape[1:] != (3, size, size):
                raise InputError(f"`images` must be N x 3 x {size} x {size}; got {' x '.join(map(str, images.shape))}.")
            return np.ascontiguousarray(images, dtype=np.float32)
        # Every header first, then the pixels: an image over the size limit fails the request
        # before any image of it is decoded.
        opened = []
        try:
            for i, item in enumerate(image_bytes.reshape(-1)):  # noqa: B007 - i names the image in the error
                data = item if isinstance(item, bytes) else bytes(item)
                opened.append(open_image_bytes(data, self.max_image_pixels))
            decoded = []
            for i, image in enumerate(opened):  # noqa: B007 - i names the image in the error
                decoded.append(_decode(image, self.recipe))
        except InputError as e:
            raise InputError(f"image_bytes[{i}] is {e}") from None
        finally:
            for image in opened:
                image.close()
        if not decoded:
            raise InputError("`image_bytes` is empty.")
        return np.stack(decoded)

    def answer(self, batches: list[np.ndarray], features: bool = False) -> list[dict[str, np.ndarray]]:
        """Run all prepared batches as one engine call; split the outputs back per batch."""
        sizes = [len(b) for b in batches]
        out = self.engine.run(
            np.concatenate(batches) if len(batches) > 1 else batches[0],
            features=features and self.spec.feature_dim is not None,
        )
        logits = out["logits"]
        probs = softmax(logits.astype(np.float64))
        best = np.argsort(-probs, axis=-1, kind="stable")[:, : self.spec.top_k]
        full = {
            "logits": logits.astype(np.float32, copy=False),
            "top5_indices": best.astype(np.int64),
            "top5_labels": self.labels[best],
            "top5_scores": np.take_along_axis(probs, best, -1).astype(np.float32),
        }
        if "features" in out:
            full["features"] = out["features"].astype(np.float32, copy=False)
        bounds = np.cumsum([0, *sizes])
        return [{k: v[a:b] for k, v in full.items()} for a, b in zip(bounds[:-1], bounds[1:])]
