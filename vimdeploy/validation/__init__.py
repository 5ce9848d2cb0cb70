"""`vimdeploy validate`: any two of a checkpoint, an ONNX, a TensorRT engine and saved outputs
(`.npz`), run on the same inputs and compared output by output.

core.py runs the two sides; inputs.py makes the input sets (random tensors, photos, a folder,
the calibration images); compare.py compares one set through Polygraphy's comparators;
tolerances.py holds the table of bounds per precision; saved.py the saved-outputs layout;
report.py the table people read. A NaN or an infinity in any output, of either side, is a
failure whatever the tolerance.
"""

from .compare import nonfinite
from .core import artifact_precision, kind_of, validate_artifact
from .inputs import IMAGE_SUFFIXES
from .report import format_report
from .saved import load_outputs, save_outputs
from .tolerances import TOLERANCES, Tolerance

__all__ = [
    "validate_artifact",
    "format_report",
    "artifact_precision",
    "kind_of",
    "nonfinite",
    "load_outputs",
    "save_outputs",
    "TOLERANCES",
    "Tolerance",
    "IMAGE_SUFFIXES",
]
