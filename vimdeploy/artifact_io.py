"""The tensors of an artifact as a server needs them: names, types, shapes and the batch range.

Read from what the artifact carries (an engine's sidecar, an ONNX's graph), and from options
where it carries nothing (an engine built by `trtexec`, an ONNX with dynamic height and
width): a missing fact is one error naming the option that supplies it. No TensorRT, no
ONNX Runtime: an ONNX is read with `onnx` (structure only, no weights).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .contract import DOMAIN
from .errors import ArtifactError, InputError
from .tensorrt.sidecar import TENSOR_NAME, validate_sidecar

__all__ = ["Tensor", "ModelIO", "from_sidecar", "from_onnx", "from_options", "LOGITS"]

LOGITS = "logits"  # what vimdeploy calls the class scores; an artifact made elsewhere names them otherwise
# onnx.TensorProto element types -> Triton's data type names (without TYPE_)
_ONNX_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "FP64", 16: "BF16"}


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's name without TYPE_: FP32, FP16, INT64
    shape: tuple[int, ...]  # the batch dimension first; -1 where it varies


@dataclasses.dataclass(frozen=True)
class ModelIO:
    platform: str  # Triton's: "tensorrt_plan" or "onnxruntime_onnx"
    input: Tensor
    outputs: tuple[Tensor, ...]
    logits: str  # the output holding class scores
    batch: tuple[int, int, int] | None  # (min, opt, max) the artifact takes; None: a fixed batch inside dims
    custom_op: bool = False  # BiSelectiveScan nodes: the server needs vimdeploy's op library

    @property
    def num_classes(self) -> int | None:
        shape = next(t.shape for t in self.outputs if t.name == self.logits)
        return shape[-1] if shape[-1] > 0 else None


def _name(value: str, option: str) -> str:
    if not TENSOR_NAME.fullmatch(value):
        raise InputError(f"{option} {value!r} is not a tensor name (letters, digits, _ . : -, at most 128).")
    return value


def _pick_logits(names: list[str], output_name: str | None, where: str) -> str:
    """`output_name`, else `logits`, else the only output; a clear error naming --output-name otherwise."""
    if output_name is not None:
        if output_name not in names:
            raise InputError(f"--output-name {output_name}: {where} has outputs {', '.join(names)}.")
        return output_name
    if LOGITS in names:
        return LOGITS
    if len(names) == 1:
        return names[0]
    raise InputError(f"{where} has outputs {', '.join(names)}: pass --output-name for the one holding class scores.")


def from_sidecar(sidecar: dict) -> ModelIO:
    """An engine described by the sidecar `vimdeploy build` wrote (validated here)."""
    problem = validate_sidecar(sidecar)
    if problem:
        raise ArtifactError(f"the engine sidecar is not valid: {problem}.")
    profile = (sidecar.get("profiles") or [None])[0]
    io = sidecar.get("io")
    input_name = sidecar.get("input", "images")
    if not profile or set(profile) != {"min", "opt", "max"} or not io or input_name not in io:
        raise ArtifactError(
            "the engine sidecar has no profile/io section (made by an older vimdeploy build?): rebuild it."
        )
    if profile["min"][1:] != profile["max"][1:]:
        raise ArtifactError(
            "the engine has a resolution range; Triton needs fixed image dims: build it with one --img-size."
        )
    bmin, bopt, bmax = profile["min"][0], profile["opt"][0], profile["max"][0]
    names = [n for n in sidecar.get("outputs", [LOGITS]) if n in io]
    return ModelIO(
        platform="tensorrt_plan",
        input=Tensor(input_name, io[input_name]["dtype"], tuple(profile["max"])),
        outputs=tuple(Tensor(n, io[n]["dtype"], tuple(io[n]["shape"])) for n in names),
        logits=_pick_logits(names, None, "the engine"),
        batch=None if bmin == bmax else (bmin, bopt, bmax),
        custom_op=bool(sidecar.get("plugin")),
    )


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def from_onnx(path, input_name=None, output_name=None, input_size=None, max_batch: int | None = None) -> ModelIO:
    """Any ONNX classifier: one image input (NCHW), an output of class scores. `input_size` (N or
    (H, W)) fills a dynamic height and width; `max_batch` bounds a dynamic batch (default 8)."""
    from .fileio import load_onnx

    path = Path(path)
    proto = load_onnx(path, load_external_data=False)
    g = proto.graph
    weights = {t.name for t in g.initializer}
    inputs = [v for v in g.input if v.name not in weights]
    if input_name is not None:
        chosen = [v for v in inputs if v.name == input_name]
        if not chosen:
            raise InputError(f"--input-name {input_name}: {path.name} has inputs {', '.join(v.name for v in inputs)}.")
        inputs = chosen
    if len(inputs) != 1:
        raise InputError(
            f"{path.name} has inputs {', '.join(v.name for v in inputs)}: pass --input-name for the image input."
        )
    inp = inputs[0]
    shape = _dims(inp)
    if len(shape) != 4:
        raise ArtifactError(f"{path.name}: input {inp.name} has {len(shape)} dimensions; an NCHW image batch has 4.")
    if shape[2] < 1 or shape[3] < 1:
        if input_size is None:
            raise InputError(f"{path.name} takes any height and width: pass --input-size N (or HxW) to serve one.")
        shape[2:] = (input_size, input_size) if isinstance(input_size, int) else input_size
    out_names = [o.name for o in g.output]
    logits = _pick_logits(out_names, output_name, path.name)
    outputs = tuple(Tensor(_name(o.name, "output"), _onnx_type(o, path), tuple(_dims(o))) for o in g.output)
    fixed = shape[0] if shape[0] >= 1 else None
    if fixed is not None and max_batch is not None and max_batch != fixed:
        raise InputError(f"--max-batch {max_batch}: {path.name} takes batches of exactly {fixed}.")
    top = max_batch or 8
    return ModelIO(
        platform="onnxruntime_onnx",
        input=Tensor(_name(inp.name, "input"), _onnx_type(inp, path), (fixed or top, *shape[1:])),
        outputs=outputs,
        logits=logits,
        batch=None if fixed else (1, top, top),
        custom_op=any(n.domain == DOMAIN for n in g.node),
    )


def _onnx_type(value_info, path) -> str:
    elem = value_info.type.tensor_type.elem_type
    if elem not in _ONNX_TYPES:
        raise ArtifactError(
            f"{path.name}: tensor {value_info.name} has ONNX element type {elem}, not one Triton takes."
        )
    return _ONNX_TYPES[elem]


def from_options(engine, input_name=None, output_name=None, input_size=None, max_batch=None, num_classes=None):
    """An engine without a sidecar (built by trtexec, say): what it holds comes from the options.
    FP32 input and output, batch 1..max_batch, names `images` and `logits` unless given."""
    missing = [
        option
        for option, value in (("--input-size", input_size), ("--max-batch", max_batch), ("--num-classes", num_classes))
        if value is None
    ]
    if missing:
        raise InputError(
            f"{Path(engine).name} has no sidecar ({Path(engine).name}.json from `vimdeploy build`) to say "
            f"what it takes: pass {', '.join(missing)} (and --input-name / --output-name unless they are "
            "images / logits)."
        )
    if max_batch < 1 or num_classes < 1:
        raise InputError(f"--max-batch and --num-classes must be at least 1; got {max_batch}, {num_classes}.")
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    logits = _name(output_name or LOGITS, "--output-name")
    return ModelIO(
        platform="tensorrt_plan",
        input=Tensor(_name(input_name or "images", "--input-name"), "FP32", (max_batch, 3, h, w)),
        outputs=(Tensor(logits, "FP32", (max_batch, num_classes)),),
        logits=logits,
        batch=(1, max_batch, max_batch),
    )
