"""The `BiSelectiveScan` op contract (export/op_contract.md): every fact of it, once, for Python.

Everything that names the op, its inputs, its attributes or its limits imports it from here;
C, C++ and CUDA read the same facts from `plugins/include/vimdeploy/scan_params.h`, and
`tests/test_contract.py` checks that the two agree. No torch import: the runtime reads this
module without PyTorch.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "OP_TYPE",
    "DOMAIN",
    "PLUGIN_VERSION",
    "PLUGIN_NAMESPACE",
    "SCHEMA_VERSION",
    "D_STATE",
    "INPUT_NAMES",
    "NUM_INPUTS",
    "ACTIVATIONS",
    "ACTIVATION_INDICES",
    "PARAMETERS",
    "OUTPUT_NAME",
    "DEFAULT_DELTA_SOFTPLUS",
    "DEFAULT_OUT_SCALE",
    "ATTRIBUTES",
    "DTYPES",
    "input_shapes",
    "check_attributes",
    "DIMS",
    "check_shapes",
    "PRECISIONS",
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
    "z",
    "x_fwd",
    "dt_fwd",
    "B_fwd",
    "C_fwd",
    "x_bwd",
    "dt_bwd",
    "B_bwd",
    "C_bwd",
    "A_fwd",
    "A_bwd",
    "D_fwd",
    "D_bwd",
    "dt_bias_fwd",
    "dt_bias_bwd",
)
NUM_INPUTS = len(INPUT_NAMES)
ACTIVATIONS = INPUT_NAMES[:9]  # dtype T (fp32 or fp16)
ACTIVATION_INDICES = tuple(INPUT_NAMES.index(name) for name in ACTIVATIONS)  # positions on the node
PARAMETERS = INPUT_NAMES[9:]  # always fp32
OUTPUT_NAME = "y"

# Attributes and their defaults. torch.export drops keyword arguments equal to their
# defaults, so every translation of the op must fall back to exactly these.
DEFAULT_DELTA_SOFTPLUS = True
DEFAULT_OUT_SCALE = 0.5  # Vim's div2 models: out_proj((y_f + y_b) / 2)
ATTRIBUTES = ("delta_softplus", "out_scale", "plugin_version", "plugin_namespace")

# The precisions an artifact is written in (ONNX metadata `vimdeploy.precision`, the engine
# sidecar's `precision`): fp16 and int8 keep the scan's parameters in fp32.
PRECISIONS = ("fp32", "fp16", "int8", "fp8")

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
    if not isinstance(out_scale, numbers.Real) or not math.isfinite(out_scale):
        return f"out_scale must be a finite number, got {out_scale!r}"
    return None


# The symbols of each input's dimensions, in INPUT_NAMES order (input_shapes written symbolically).
DIMS: tuple[tuple[str, ...], ...] = input_shapes("b", "L", "E", "N")  # type: ignore[arg-type]


def check_shapes(shapes) -> tuple[dict[str, int | None], str | None]:
    """The sizes (b, L, E, N) that the 15 input shapes agree on, and why they break the
    contract (None when they do not).

    `shapes`: one shape per input in INPUT_NAMES order; a dimension may be None (unknown, as in
    a graph with symbolic sizes), and it then agrees with anything. Each size is what most
    inputs say it is, so that the message names the input that disagrees, with the shape the
    others imply. Every size must be at least 1.
    """
    shapes = [tuple(s) for s in shapes]
    if len(shapes) != NUM_INPUTS:
        return {}, f"the op takes {NUM_INPUTS} inputs, got {len(shapes)}"
    x, bc = shapes[1], shapes[3]  # the common case first: known sizes that agree
    if len(x) == 3 and len(bc) == 3 and None not in x + bc and min(x + bc) >= 1:
        if shapes == list(input_shapes(*x, bc[2])):
            return dict(zip(("b", "L", "E", "N"), (*x, bc[2]))), None
    for name, shape, dims in zip(INPUT_NAMES, shapes, DIMS):
        if len(shape) != len(dims):
            return {}, f"input {name} must have rank {len(dims)} ({', '.join(dims)}), got shape {shape}"
    votes: dict[str, dict[int, int]] = {d: {} for d in ("b", "L", "E", "N")}
    for shape, dims in zip(shapes, DIMS):
        for size, dim in zip(shape, dims):
            if size is not None:
                votes[dim][size] = votes[dim].get(size, 0) + 1
    sizes = {d: (max(v, key=lambda k: (v[k], k)) if v else None) for d, v in votes.items()}
    for d, size in sizes.items():
        if size is not None and size < 1:
            return sizes, f"size {d} is {size}: every dimension must be at least 1"
    for name, shape, dims in zip(INPUT_NAMES, shapes, DIMS):
        if any(got is not None and got != sizes[dim] for got, dim in zip(shape, dims)):
            want = tuple(sizes[dim] for dim in dims)
            return sizes, (
                f"input {name} has shape {shape}; the other inputs give {want} "
                f"({', '.join(f'{d}={sizes[d]}' for d in dims)})"
            )
    return sizes, None
