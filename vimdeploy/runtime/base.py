"""The interface every backend implements."""

from __future__ import annotations

import abc

import numpy as np

from ..errors import InputError


class Engine(abc.ABC):
    """A loaded model that maps an NCHW float32 batch to logits (and features)."""

    #: square input side the engine accepts, or None when any size on the patch grid works
    input_size: int | None = None
    #: the resolution to feed images at when the caller has no preference
    default_input_size: int = 224
    num_classes: int = 1000

    @abc.abstractmethod
    def run(self, images: np.ndarray, features: bool = False) -> dict[str, np.ndarray]:
        """images (N, 3, H, W) float32 -> {"logits": (N, classes)[, "features": (N, C)]}."""

    def describe(self) -> dict:
        """What this engine is, for `--json` output and reports."""
        return {"backend": type(self).__name__}

    @staticmethod
    def check_batch(images: np.ndarray, input_size: int | None = None) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != 3:
            shape = getattr(images, "shape", None)
            raise InputError(f"expected an NCHW batch of shape (N, 3, H, W); got {shape}.")
        if images.shape[0] == 0:
            raise InputError("the input batch is empty (N = 0).")
        if input_size is not None and images.shape[2:] != (input_size, input_size):
            raise InputError(
                f"this model takes {input_size}x{input_size} inputs; got {images.shape[2]}x{images.shape[3]}."
            )
        if not np.issubdtype(images.dtype, np.floating):
            raise InputError(f"expected float32 pixels (normalised); got dtype {images.dtype}.")
        return np.ascontiguousarray(images, dtype=np.float32)
