"""Reading ONNX files that may be hostile, and writing files so that a reader never sees half
of one and a failed write leaves nothing.

Every write of a user's output goes through `atomic_path` / `atomic_folder`: a temporary
beside the target, renamed onto it in one step. An OS error on the way (no space, a
read-only or forbidden folder) removes the temporary and becomes one `OutputError` that
names the path and the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ArtifactError, OutputError


def write_error(path: str | Path, error: OSError) -> OutputError:
    """The error a user sees for an OS error while writing `path`."""
    return OutputError(f"cannot write {path}: {error.strerror or error}.")


def refuse_existing(path: str | Path, force: bool = False) -> Path:
    """Refuse an existing `path` (file or folder) unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; pass --force to replace it.")
    return path


def check_target(path: str | Path, force: bool = False) -> Path:
    """Refuse an existing `path` unless `force`, and a `path` whose folder does not exist."""
    path = refuse_existing(path, force)
    if not path.parent.is_dir():
        raise OutputError(f"output folder {path.parent} does not exist.")
    return path


def _plain_permissions(path: str, mode: int) -> None:
    """mkstemp / mkdtemp make private files and folders; give `path` what a plain open() or
    mkdir() would (a server may read it as another user)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = True):
    """Yield a temporary path next to `path`; on success rename it onto `path` in one step.

    With force=False an existing `path` is an error and is left untouched. On any failure
    the temporary file is removed and `path` is unchanged; an OSError (in the caller's
    writing too) becomes an OutputError naming `path`.
    """
    path = check_target(path, force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        _plain_permissions(tmp, 0o666)
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | Path, force: bool = False):
    """`atomic_path` for a folder: yield an empty temporary folder beside `path` (its parents
    are created) to fill; on success it replaces `path` (an existing one only with `force`)."""
    path = refuse_existing(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp
        _plain_permissions(str(tmp), 0o777)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def scratch_folder(beside: str | Path):
    """A temporary folder next to the output `beside` (same file system: the final rename is
    one step), removed afterwards; an OS error creating it is an OutputError naming `beside`."""
    beside = Path(beside)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{beside.name}.", dir=beside.parent)
    except OSError as e:
        raise write_error(beside, e) from None
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    """`text` into `path` (replaced if there), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (checkpoints and engines can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_npz(path: str | Path, arrays: dict) -> Path:
    """Named arrays into an uncompressed .npz at `path`, atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def _onnx_tensors(graph):
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _onnx_tensors(sub)


def load_onnx(path: str | Path, load_external_data: bool = True):
    """An ONNX ModelProto from `path`, or one ArtifactError: bytes that do not parse (a truncated
    or foreign file), a parse with no graph, external data outside the model's folder."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types on bad bytes
        raise ArtifactError(
            f"{path} is not a readable ONNX model ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})."
        ) from None
    if not model.opset_import or not model.graph.output:
        raise ArtifactError(
            f"{path} is not an ONNX model (no opset or no graph outputs): truncated, or another kind of file?"
        )
    folder = path.resolve().parent
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder: refused."
            )
        if not target.is_file():
            raise ArtifactError(f"{path}: tensor {tensor.name!r} keeps its data in {location}, which is missing.")
    if load_external_data:
        try:
            onnx.load_external_data_for_model(model, str(folder))
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"{path}: cannot read its external data ({type(e).__name__}: {e}).") from None
    return model
