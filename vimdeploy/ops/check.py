"""The one check of the `BiSelectiveScan` op's inputs against its contract (export/op_contract.md).

Every entry of the op calls `check_scan_inputs` before any native code reads a pointer: the
PyTorch ops (ops/library.py, for the CPU and CUDA kernels and the PyTorch fallback), the
native calls themselves (`ops.cpu.run`, `ops.cuda.launch`) and the ONNX Runtime op
(export/ort_op.py, numpy arrays). An ONNX file, a checkpoint or a caller can hand the op
inputs that disagree with each other; the native kernels take (b, L, E) from one of them
and would read past the end of the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..contract import ACTIVATIONS, D_STATE, DTYPES, INPUT_NAMES, NUM_INPUTS, OP_TYPE, check_attributes, check_shapes
from ..errors import InputError

__all__ = ["ScanInputError", "check_scan_inputs", "check_scan_attributes", "ERROR_PREFIX"]

# Every ScanInputError message starts with this, so that it can be found again in an error
# that another library wraps (ONNX Runtime turns an exception raised in a custom op into its own).
ERROR_PREFIX = f"{OP_TYPE} inputs break the op contract: "

KERNEL_ACTIVATION_DTYPES = tuple(DTYPES)  # the activation dtypes the C API numbers (VIMDEPLOY_DTYPE_*)


class ScanInputError(InputError):
    """Inputs or attributes of the BiSelectiveScan op that break its contract."""

    def __init__(self, reason: str):
        super().__init__(ERROR_PREFIX + reason)


_dtype_names: dict = {}


def _dtype(t) -> str:
    """ "float32" for torch.float32 and numpy's float32 alike."""
    name = _dtype_names.get(t.dtype)
    if name is None:
        name = _dtype_names[t.dtype] = str(t.dtype).removeprefix("torch.")
    return name


def _contiguous(t) -> bool:
    return t.is_contiguous() if hasattr(t, "is_contiguous") else bool(t.flags.c_contiguous)


def check_scan_attributes(delta_softplus, out_scale) -> None:
    """Raise ScanInputError unless delta_softplus is 0/1 and out_scale a finite number."""
    reason = check_attributes(delta_softplus, out_scale)
    if reason:
        raise ScanInputError(reason)


def check_scan_inputs(
    inputs: Sequence, delta_softplus, out_scale, *, native: bool = False, strided: Sequence[str] = ()
) -> dict[str, int]:
    """Raise ScanInputError unless the 15 inputs (torch tensors or numpy arrays, in INPUT_NAMES
    order) and the attributes keep the contract: shapes (b, L, E) / (b, L, N) / (E, N) / (E,)
    that agree, activations of one floating dtype, parameters floating, one device, finite
    attributes in range. Returns the sizes {"b", "L", "E", "N"}.

    `native`: also what a native kernel reads through raw pointers: N = D_STATE, activations
    fp32 or fp16, parameters fp32, every input C-contiguous (except those named in `strided`,
    which the caller has checked itself).
    """
    if len(inputs) != NUM_INPUTS:
        raise ScanInputError(f"the op takes {NUM_INPUTS} inputs, got {len(inputs)}")
    for name, t in zip(INPUT_NAMES, inputs):
        if not hasattr(t, "shape") or not hasattr(t, "dtype"):
            raise ScanInputError(f"input {name} is a {type(t).__name__}, not a tensor")
    check_scan_attributes(delta_softplus, out_scale)
    sizes, reason = check_shapes([tuple(t.shape) for t in inputs])
    if reason:
        raise ScanInputError(reason)
    dtypes = {name: _dtype(t) for name, t in zip(INPUT_NAMES, inputs)}
    act = {dtypes[name] for name in ACTIVATIONS}
    if len(act) != 1:
        raise ScanInputError(
            "the activations ("
            + ", ".join(ACTIVATIONS)
            + ") must share one dtype; got "
            + ", ".join(f"{n} {dtypes[n]}" for n in ACTIVATIONS)
        )
    for name, dtype in dtypes.items():
        if not dtype.startswith(("float", "bfloat")):
            raise ScanInputError(f"input {name} has dtype {dtype}; the op takes floating-point inputs")
    devices = {d for d in (getattr(t, "device", None) for t in inputs) if d is not None and not isinstance(d, str)}
    if len(devices) > 1:
        raise ScanInputError(
            "the inputs are on several devices: " + ", ".join(f"{n} {t.device}" for n, t in zip(INPUT_NAMES, inputs))
        )
    if native:
        if sizes["N"] != D_STATE:
            raise ScanInputError(
                f"the native kernels implement d_state N = {D_STATE}: A (E, {D_STATE}); got N = {sizes['N']}"
            )
        (dtype,) = act
        if dtype not in KERNEL_ACTIVATION_DTYPES:
            raise ScanInputError(f"the native kernels take float32 or float16 activations, got {dtype}")
        for name, t in zip(INPUT_NAMES, inputs):
            if name not in ACTIVATIONS and dtypes[name] != "float32":
                raise ScanInputError(f"input {name} has dtype {dtypes[name]}; A, D and the dt biases are float32")
            if name not in strided and not _contiguous(t):
                raise ScanInputError(f"input {name} is not contiguous (the native kernels read dense buffers)")
    return sizes
