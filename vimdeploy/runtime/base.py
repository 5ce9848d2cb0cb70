"""The interface every backend implements."""

from __future__ import annotations

import abc

import numpy as np

from ..errors import InputError


class Engine(abc.ABC):
    """A loaded model that maps an NCHW float32 batch to named outputs: `logits` always,
    `features` (the class token), `feature_map` and `feature_map_<block>` where the
    artifact has them (vimdeploy.model.vim.output_names)."""

    #: square input side the engine accepts, or None when it takes several sizes or a non-square one
    input_size: int | None = None
    #: (height, width) the engine accepts, or None when any size on the patch grid works
    input_hw: tuple[int, int] | None = None
    #: the resolution to feed images at when the caller has no preference
    default_input_size: int = 224
    num_classes: int = 1000
    #: the outputs this engine can give, in the artifact's order
    outputs: list[str] = ["logits", "features"]

    @abc.abstractmethod
    def run(self, images: np.ndarray, features: bool = False, outputs=None) -> dict[str, np.ndarray]:
        """images (N, 3, H, W) float32 -> {"logits": (N, classes)[, "features": (N, C)]}.

        `outputs`: a list of output names, or "all" for every output of the artifact
        (then `features` is ignored).
        """

    def default_outputs(self) -> list[str]:
        """What `vimdeploy infer` writes when not told: every output of the artifact."""
        return list(self.outputs)

    def has_output(self, name: str) -> bool:
        return name in self.outputs

    def select_outputs(self, features: bool = False, outputs=None) -> list[str]:
        """The output names one `run` call returns (see `run`); a clear error for a missing one."""
        if outputs is None:
            names = ["logits", "features"] if features else ["logits"]
        elif isinstance(outputs, str) and outputs == "all":
            names = list(self.outputs)
        else:
            names = list(outputs)
        missing = [n for n in names if not self.has_output(n)]
        if missing:
            raise InputError(f"{getattr(self, 'path', 'this model')} has no output {', '.join(missing)} "
                             f"(it has {', '.join(self.outputs)}).")
        return names

    def describe(self) -> dict:
        """What this engine is, for `--json` output and reports."""
        return {"backend": type(self).__name__}

    @staticmethod
    def check_batch(images: np.ndarray, input_size=None, grid: tuple[int, int] | None = None) -> np.ndarray:
        """Shape and dtype checks. `input_size`: a side (square) or (height, width) the model
        needs; `grid`: (patch, stride) when any size on that patch grid is accepted."""
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != 3:
            shape = getattr(images, "shape", None)
            raise InputError(f"expected an NCHW batch of shape (N, 3, H, W); got {shape}.")
        if images.shape[0] == 0:
            raise InputError("the input batch is empty (N = 0).")
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        if input_size is not None and tuple(images.shape[2:]) != tuple(input_size):
            raise InputError(
                f"this model takes {input_size[0]}x{input_size[1]} inputs; got {images.shape[2]}x{images.shape[3]}."
            )
        if input_size is None and grid is not None:
            patch, stride = grid
            if not all(s >= patch and (s - patch) % stride == 0 for s in images.shape[2:]):
                raise InputError(f"input {images.shape[2]}x{images.shape[3]} does not fit the patch grid: each side "
                                 f"must be {patch} + k*{stride} pixels.")
        if not np.issubdtype(images.dtype, np.floating):
            raise InputError(f"expected float32 pixels (normalised); got dtype {images.dtype}.")
        return np.ascontiguousarray(images, dtype=np.float32)
