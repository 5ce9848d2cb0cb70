"""Errors meant for people: the CLI prints their message and exits non-zero, no traceback."""


class VimdeployError(Exception):
    """A problem the user can act on (bad file, bad option, missing dependency)."""

    exit_code = 1


class CheckpointError(VimdeployError):
    """A file that is not, or not safely, a loadable Vim checkpoint."""


class ArtifactError(VimdeployError):
    """A model file (checkpoint, ONNX, engine) that cannot be used for the requested job."""


class InputError(VimdeployError):
    """Input data (arrays, images) that does not fit the model."""


class OutputError(VimdeployError):
    """An output that cannot be written: it exists (without --force), its folder is missing,
    or the system refused the write (no space, read-only, no permission)."""
