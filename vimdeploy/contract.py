"""The `BiSelectiveScan` op contract (export/op_contract.md): every fact of it, once, for Python.

Everything that names the op, its inputs, its attributes or its limits imports it from here;
C, C++ and CUDA read the same facts from `plugins/include/vimdeploy/scan_params.h`, and
`tests/test_contract.py` checks that the two agree. No torch import: the runtime reads this
module without PyTorch.
"""

from __future__ import annotations

import math

__all__ = [
    "OP_TYPE", "DOMAIN", "PLUGIN_VERSION", "PLUGIN_NAMESPACE", "SCHEMA_VERSION",
    "D_STATE", "INPUT_NAMES", "NUM_INPUTS", "ACTIVATIONS", "PARAMETERS", "OUTPUT_NAME",
    "DEFAULT_DELTA_SOFTPLUS", "DEFAULT_OUT_SCALE", "ATTRIBUTES", "DTYPES", "input_shapes",
    "check_attributes", "PRECISIONS",
]

# The node: op_type, custom domain, TensorRT plugin version / namespace, our opset version.
OP_TYPE = "BiSelectiveScan"
DOMAIN = "trt.plugins"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
SCHEMA_VERSION = 1

D_STATE = 16  # N: Vim's d_state, the only one the native kernels implement

# The 15 inputs, in the contract's order: activations (b, L, E) / (b, L, N) of dtype T,
# then the fp32 parameters A (E, N) = -exp(A_log), D (E,), dt_bias (E,).
INPUT_NAMES: tuple[str, ...] = (
    "z", "x_fwd", "dt_fwd", "B_fwd", "C_fwd", "x_bwd", "dt_bwd", "B_bwd", "C_bwd",
    "A_fwd", "A_bwd", "D_fwd", "D_bwd", "dt_bias_fwd", "dt_bias_bwd",
)
NUM_INPUTS = len(INPUT_NAMES)
ACTIVATIONS = INPUT_NAMES[:9]  # dtype T (fp32 or fp16)
PARAMETERS = INPUT_NAMES[9:]  # always fp32
OUTPUT_NAME = "y"

# Attributes and their defaults. torch.export drops keyword arguments equal to their
# defaults, so every translation of the op must fall back to exactly these.
DEFAULT_DELTA_SOFTPLUS = True
DEFAULT_OUT_SCALE = 0.5  # Vim's div2 models: out_proj((y_f + y_b) / 2)
ATTRIBUTES = ("delta_softplus", "out_scale", "plugin_version", "plugin_namespace")

# The precisions an artifact is written in (ONNX metadata `vimdeploy.precision`, the engine
# sidecar's `precision`): fp16 and int8 keep the scan's parameters in fp32.
PRECISIONS = ("fp32", "fp16", "int8")

# Activation dtypes as the C API numbers them (VIMDEPLOY_DTYPE_*).
DTYPES = {"float32": 0, "float16": 1}


def input_shapes(b: int, L: int, E: int, N: int = D_STATE) -> tuple[tuple[int, ...], ...]:
    """The contract's shape of every input, in INPUT_NAMES order."""
    act, bc = (b, L, E), (b, L, N)
    return (act, act, act, bc, bc, act, act, bc, bc, (E, N), (E, N), (E,), (E,), (E,), (E,))


def check_attributes(delta_softplus, out_scale) -> str | None:
    """Why the attributes break the contract, or None: delta_softplus 0/1, out_scale finite."""
    if delta_softplus not in (0, 1, True, False):
        return f"delta_softplus must be 0 or 1, got {delta_softplus!r}"
    if not isinstance(out_scale, (int, float)) or not math.isfinite(out_scale):
        return f"out_scale must be a finite number, got {out_scale!r}"
    return None
