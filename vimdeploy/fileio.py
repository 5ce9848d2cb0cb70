"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from .errors import VimdeployError


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = True):
    """Yield a temporary path next to `path`; on success rename it onto `path` in one step.

    With force=False an existing `path` is an error and is left untouched. On any failure
    the temporary file is removed and `path` is unchanged.
    """
    path = Path(path)
    if path.exists() and not force:
        raise VimdeployError(f"{path} already exists; pass --force to replace it.")
    if path.parent and not path.parent.exists():
        raise VimdeployError(f"output folder {path.parent} does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent or ".")
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (checkpoints and engines can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
