"""Saved outputs: one `.npz` that holds a batch and what a model computed from it, so that
`vimdeploy validate model.onnx --ref saved.npz` replays the same inputs elsewhere.

The layout, the one place it is defined (the golden fixture's `expected.npz` and `vimdeploy
demo`'s `demo_outputs.npz` follow it too):

    input      float32 (N, 3, H, W)  the batch every model is fed, already normalised
    <output>   float   (N, ...)      one array per output (logits, features, feature_map...),
                                     row i computed from input[i]; `logits` is required
    set        str     (N,)          optional: the input set of each row (random, photos, data,
                                     calibration); without it every row is in the set "saved",
                                     judged as random inputs
    precision  str     ()            optional: the precision of the model that made the outputs

The file is untrusted: it is read without pickle, every member's header (dtype, shape) is
checked before its data is read, and a file off the layout is one clear error.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..fileio import save_npz

INPUT, SET, PRECISION = "input", "set", "precision"
UNNAMED_SET = "saved"
SUFFIX = ".npz"
MAX_BYTES = 8 << 30  # all members together, as their headers declare them
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)  # output and set names


@dataclass
class SavedOutputs:
    """A saved-outputs file, read and checked: per input set, the inputs and the outputs."""

    path: Path
    inputs: dict[str, np.ndarray]  # set name -> (n, 3, H, W) float32
    outputs: dict[str, dict[str, np.ndarray]]  # set name -> output name -> (n, ...)
    precision: str | None

    @property
    def output_names(self) -> list[str]:
        return list(next(iter(self.outputs.values())))


def save_outputs(path, inputs: dict[str, np.ndarray], outputs: dict[str, dict], precision: str | None) -> Path:
    """Write input sets and the outputs computed from them in the layout above (atomically)."""
    names = list(next(iter(outputs.values())))
    arrays = {
        INPUT: np.concatenate([inputs[s] for s in inputs]).astype(np.float32),
        SET: np.concatenate([np.full(len(x), s) for s, x in inputs.items()]),
        **{n: np.concatenate([outputs[s][n] for s in inputs]) for n in names},
    }
    if precision:
        arrays[PRECISION] = np.array(precision)
    return save_npz(path, arrays)


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{member: (shape, dtype)} from each array's .npy header, no data read."""
    try:
        with zipfile.ZipFile(path) as zf:
            headers = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise ArtifactError(f"{path} holds {info.filename!r}, which is not a .npy array.")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _fortran, dtype = read(f)
                headers[info.filename[: -len(".npy")]] = (shape, dtype)
            return headers
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ArtifactError(f"{path} is not a readable .npz of saved outputs ({e}).") from None


def _check_layout(headers: dict) -> str | None:
    """What is wrong with the members' names, dtypes and shapes; None when they fit the layout."""
    if INPUT not in headers or "logits" not in headers:
        has = ", ".join(sorted(headers)) or "none"
        hint = "; `validate MODEL --ref REF --save-ref OUT.npz` writes outputs with their inputs"
        return f"it needs `{INPUT}` and `logits` arrays (it has {has}){hint if INPUT not in headers else ''}"
    shape, dtype = headers[INPUT]
    if len(shape) != 4 or shape[1] != 3 or shape[0] < 1 or dtype.kind != "f":
        return f"`{INPUT}` must be a float (N, 3, H, W) batch; it is {dtype} {shape}"
    n = shape[0]
    if sum(int(np.prod(s)) * d.itemsize for s, d in headers.values()) > MAX_BYTES:
        return f"its arrays hold more than {MAX_BYTES >> 30} GiB"
    for name, (shape, dtype) in headers.items():
        if name == SET and (dtype.kind != "U" or shape != (n,)):
            return f"`{SET}` must be {n} strings, one per input; it is {dtype} {shape}"
        if name == PRECISION and (dtype.kind != "U" or shape != ()):
            return f"`{PRECISION}` must be one string; it is {dtype} {shape}"
        if name in (INPUT, SET, PRECISION):
            continue
        if not _NAME.fullmatch(name):
            return f"{name!r} is not an output name (letters, digits, underscores)"
        if dtype.kind != "f" or len(shape) < 2 or shape[0] != n:
            return f"output `{name}` must be a float array of {n} rows, one per input; it is {dtype} {shape}"
    return None


def load_outputs(path: str | Path, precisions) -> SavedOutputs:
    """Read and check a saved-outputs file; ArtifactError for anything off the layout.
    `precisions`: the precision names a `precision` member may hold."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such file: {path}")
    problem = _check_layout(_headers(path))
    if problem:
        raise ArtifactError(f"{path} is not a file of saved outputs: {problem}.")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    x = arrays.pop(INPUT).astype(np.float32)
    if not np.isfinite(x).all():
        raise ArtifactError(f"{path} is not a file of saved outputs: `{INPUT}` holds NaN or inf.")
    rows = arrays.pop(SET, np.full(len(x), UNNAMED_SET))
    precision = str(arrays.pop(PRECISION)) if PRECISION in arrays else None
    if precision is not None and precision not in precisions:
        raise ArtifactError(f"{path}: precision {precision!r} is not one of {', '.join(precisions)}.")
    bad = sorted({str(s) for s in rows if not _NAME.fullmatch(str(s))})
    if bad:
        raise ArtifactError(f"{path}: {bad[0]!r} is not an input set name (letters, digits, underscores).")
    sets = list(dict.fromkeys(str(s) for s in rows))  # in file order
    inputs = {s: x[rows == s] for s in sets}
    outputs = {s: {n: a[rows == s] for n, a in arrays.items()} for s in sets}
    return SavedOutputs(path, inputs, outputs, precision)
