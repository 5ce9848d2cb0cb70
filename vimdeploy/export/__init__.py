"""Export to ONNX: the BiSelectiveScan op, the portable scan, the exporter, the ORT op.

Importing this package registers the ONNX schema of `trt.plugins::BiSelectiveScan`.
"""

from .exporter import DEFAULT_OPSET, FLAVORS, INPUT_NAME, OUTPUT_NAMES, export_onnx, op_counts

__all__ = ["export_onnx", "op_counts", "FLAVORS", "INPUT_NAME", "OUTPUT_NAMES", "DEFAULT_OPSET"]
