"""The interface every backend implements.

As Polygraphy's runners: `Engine.run` checks the batch and the output names once and runs
the batch in pieces the artifact takes; a backend implements only `_infer`, one call on one
such piece. An engine is a context manager: `with open_engine(path) as engine: ...` frees
what it holds (device buffers, sessions) on leaving.
"""

from __future__ import annotations

import abc

import numpy as np

from ..errors import InputError


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _cat(parts: list):
    """Concatenate numpy arrays or torch tensors along the batch."""
    if len(parts) == 1:
        return parts[0]
    if _is_torch(parts[0]):
        import torch

        return torch.cat(parts)
    return np.concatenate(parts)


def _pad(chunk, size: int):
    """`chunk` with zero images appended up to `size` (Vim treats every image on its own)."""
    shape = (size - len(chunk), *chunk.shape[1:])
    if _is_torch(chunk):
        return _cat([chunk, chunk.new_zeros(shape)])
    return np.concatenate([chunk, np.zeros(shape, chunk.dtype)])


class Engine(abc.ABC):
    """A loaded model that maps an NCHW float32 batch to named outputs: `logits` always,
    `features` (the class token), `feature_map` and `feature_map_<block>` where the
    artifact has them (vimdeploy.model.vim.output_names)."""

    #: square input side the engine accepts, or None when it takes several sizes or a non-square one
    input_size: int | None = None
    #: (height, width) the engine accepts, or None when any size on the patch grid works
    input_hw: tuple[int, int] | None = None
    #: (patch, stride) when any size on that patch grid is accepted and checked here
    grid: tuple[int, int] | None = None
    #: (min, max) batch one `_infer` call takes, or None for any: larger batches run in chunks
    #: of max, a smaller one is zero-padded to min, and the padding is dropped from the outputs
    batch_range: tuple[int, int] | None = None
    #: whether `run` takes torch tensors too (and returns torch tensors for them)
    takes_tensors: bool = False
    #: the resolution to feed images at when the caller has no preference
    default_input_size: int = 224
    num_classes: int = 1000
    #: the outputs this engine can give, in the artifact's order
    outputs: list[str] = ["logits", "features"]

    def run(self, images, features: bool = False, outputs=None) -> dict:
        """images (N, 3, H, W) float32 -> {"logits": (N, classes)[, "features": (N, C)]}.

        `outputs`: a list of output names, or "all" for every output of the artifact
        (then `features` is ignored).
        """
        images = self.check_batch(images)
        names = self.select_outputs(features, outputs)
        if self.batch_range is None:
            return self._infer(images, names)
        lo, hi = self.batch_range
        parts = []
        for start in range(0, len(images), hi):
            chunk = images[start : start + hi]
            real = len(chunk)
            out = self._infer(_pad(chunk, lo) if real < lo else chunk, names)
            parts.append({n: v[:real] for n, v in out.items()})
        return {n: _cat([p[n] for p in parts]) for n in names}

    @abc.abstractmethod
    def _infer(self, images, names: list[str]) -> dict:
        """One call of the artifact on a checked batch within `batch_range`: {name: float32 output}."""

    def close(self) -> None:  # noqa: B027 - optional: backends that hold nothing need not override it
        """Free what the engine holds; the engine is not used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

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
            raise InputError(
                f"{getattr(self, 'path', 'this model')} has no output {', '.join(missing)} "
                f"(it has {', '.join(self.outputs)})."
            )
        return names

    def describe(self) -> dict:
        """What this engine is, for `--json` output and reports."""
        return {"backend": type(self).__name__}

    def check_batch(self, images):
        """Shape and dtype checks against `input_hw` / `grid`; a contiguous float32 array back
        (a torch tensor, where the engine takes them, comes back as it is)."""
        tensor = self.takes_tensors and _is_torch(images)
        if not (tensor or isinstance(images, np.ndarray)) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(getattr(images, "shape", ())) or None
            raise InputError(f"expected an NCHW batch of shape (N, 3, H, W); got {shape}.")
        if images.shape[0] == 0:
            raise InputError("the input batch is empty (N = 0).")
        hw = tuple(images.shape[2:])
        if self.input_hw is not None and hw != tuple(self.input_hw):
            raise InputError(f"this model takes {self.input_hw[0]}x{self.input_hw[1]} inputs; got {hw[0]}x{hw[1]}.")
        if self.input_hw is None and self.grid is not None:
            patch, stride = self.grid
            if not all(s >= patch and (s - patch) % stride == 0 for s in hw):
                raise InputError(
                    f"input {hw[0]}x{hw[1]} does not fit the patch grid: each side must be {patch} + k*{stride} pixels."
                )
        if tensor:
            return images
        if not np.issubdtype(images.dtype, np.floating):
            raise InputError(f"expected float32 pixels (normalised); got dtype {images.dtype}.")
        return np.ascontiguousarray(images, dtype=np.float32)
