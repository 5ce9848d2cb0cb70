"""vimdeploy's TensorRT code: imports, the plugin library, the engine sidecar, the builder.

    imports   lazy `tensorrt` / cuda-python with an install hint (TensorRTMissing)
    plugin    finding and loading the BiSelectiveScan plugin library
    sidecar   the engine's `.plan.json`: write, read, check against this machine
    builder   `vimdeploy build` as small steps (ONNX -> network -> config -> engine)
    onnx_compat  what TensorRT's ONNX parser will refuse, checked without TensorRT

Nothing here imports TensorRT at import time; the runtime (`vimdeploy.runtime.
tensorrt_backend`) uses imports, plugin and sidecar, never the builder.
"""

from .imports import TENSORRT_MISSING, TensorRTMissing, import_cudart, import_tensorrt
from .sidecar import check_sidecar, read_sidecar, sidecar_path

__all__ = [
    "TENSORRT_MISSING",
    "TensorRTMissing",
    "import_tensorrt",
    "import_cudart",
    "check_sidecar",
    "read_sidecar",
    "sidecar_path",
]
