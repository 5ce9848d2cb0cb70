"""Export to ONNX: the BiSelectiveScan op, the portable scan, the exporter, the ORT op.

Importing this package registers the ONNX schema of `trt.plugins::BiSelectiveScan`
(export/schema.py, onnx only). The exporter, which needs PyTorch, is imported on first use of
its names, so that the runtime's modules here (ort_op.py) and the ONNX-side tools import
without it.
"""

import importlib

from . import schema as _schema  # noqa: F401 - registers the op's ONNX schema

_EXPORTER = ("export_onnx", "op_counts", "FLAVORS", "INPUT_NAME", "OUTPUT_NAMES", "DEFAULT_OPSET")

__all__ = list(_EXPORTER)


def __getattr__(name):
    if name not in _EXPORTER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ..extras import reraise

    try:
        exporter = importlib.import_module(f"{__name__}.exporter")
    except ModuleNotFoundError as e:
        reraise(e)
    return getattr(exporter, name)


def __dir__():
    return sorted(__all__)
