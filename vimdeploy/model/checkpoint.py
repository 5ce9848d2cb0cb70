"""Loading the Vim checkpoints users actually have, safely.

Accepted layouts:
  * official training checkpoints (hustvl/Vim main.py, DeiT style): a dict with `model`,
    `model_ema`, `optimizer`, `lr_scheduler`, `scaler`, `epoch`, `args` (argparse.Namespace);
  * a dict holding a state dict under `model`, `model_ema`, `state_dict` or `module`;
  * a bare state dict; keys may carry a `model.`, `module.` (DDP) or `_orig_mod.`
    (torch.compile) prefix;
  * safetensors files (the Hugging Face / timm layout: the official key names, bare or under
    one of those prefixes), their `__metadata__` read as the training arguments;
  * fp32, fp16 or bf16 weights (cast to fp32 on load; A_log/D are fp32 in every official file).

The format is read from the content (vimdeploy.formats), never the suffix. PyTorch files are
read with `torch.load(weights_only=True)`: only tensors and plain containers are unpickled, plus
`argparse.Namespace` (official checkpoints store their training arguments as one). A pickle that
would import or call anything else is refused before it runs. safetensors files hold no pickle.

Before anything is allocated, the declared shapes are checked against the limits in
vimdeploy.model.config (zip files are memory-mapped, safetensors shapes come from the header);
weights holding NaN or inf are counted, and `load_model` refuses them unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import pickle
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..fileio import file_sha256
from ..formats import CHECKPOINT_KINDS, sniff, wrong_kind
from ..ops import get_scan
from .config import VimConfig, check_declared, config_from_state_dict
from .vim import VisionMamba

__all__ = ["Checkpoint", "read_checkpoint", "load_model", "file_sha256", "describe_nonfinite"]

# What an official checkpoint needs beyond tensors and containers.
SAFE_GLOBALS = [argparse.Namespace]
STATE_DICT_KEYS = ("model", "model_ema", "state_dict", "module")
PREFIXES = ("module.", "_orig_mod.")
# The training arguments a safetensors file may carry as `__metadata__` entries (strings):
# each alone, or all of them as one JSON object under "args".
METADATA_ARGS = ("model", "input_size", "epoch")


@dataclass
class Checkpoint:
    path: Path
    state_dict: dict[str, torch.Tensor]
    source: str  # where in the file the weights came from: "model", "model_ema", "(top level)", ...
    top_level_keys: list[str] = field(default_factory=list)
    epoch: int | None = None
    args: dict | None = None  # the training arguments, when the file has them
    dtypes: list[str] = field(default_factory=list)  # weight dtypes as stored
    format: str = "torch"  # a vimdeploy.formats kind: torch, torch-legacy, pickle, safetensors

    @cached_property
    def nonfinite(self) -> dict[str, int]:
        """Key -> how many NaN/inf values it holds (reads every weight: asked for only once the
        shapes have passed their checks)."""
        return _count_nonfinite(self.state_dict)

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "weights_from": self.source,
            "top_level_keys": self.top_level_keys,
            "epoch": self.epoch,
            "stored_dtypes": self.dtypes,
            "training_model_name": (self.args or {}).get("model"),
            "training_input_size": (self.args or {}).get("input_size"),
            "nonfinite_weights": self.nonfinite,
        }


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _torch_load(path: Path, mmap: bool):
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4": the outcome is what matters
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line or "GLOBAL" in line), "")
            raise CheckpointError(
                f"refused to load {path}: it contains pickled objects other than tensors, which could run code "
                f"when unpickled ({detail or 'unsupported object'}). vimdeploy loads only weights "
                "(torch.load with weights_only=True). If you trust the file, re-save its state dict with "
                "torch.save(model.state_dict(), 'clean.pth') or safetensors.torch.save_file."
            ) from None
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({text.splitlines()[0] if text else 'unreadable pickle'})."
        ) from None
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on bad bytes; none should leak
        first = _first_line(e)
        if (
            isinstance(e, (EOFError, zipfile.BadZipFile))
            or "central directory" in first
            or "PytorchStreamReader" in first
        ):
            raise CheckpointError(
                f"{path} is truncated or corrupt: PyTorch could not read it ({first}). Download or copy it again."
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load failed: {first}).") from None


def _safe_open():
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(
            "reading .safetensors needs the safetensors package: pip install 'safetensors>=0.4.3'"
        ) from None
    return safe_open


def _read_torch(path: Path, kind: str) -> tuple[object, dict | None]:
    """What a torch.save file holds, and its training arguments if it has them."""
    obj = _torch_load(path, mmap=kind == "torch")  # mmap: no tensor data is read until it is used
    args = None
    if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
        args = {k: v for k, v in vars(obj["args"]).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return (_nest(obj) if _is_state_dict(obj) else obj), args


def _read_safetensors(path: Path) -> tuple[dict, dict | None]:
    """The tensors of a safetensors file, read once their declared shapes are within limits,
    and the training arguments in its `__metadata__`."""
    safe_open = _safe_open()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            with _about(path):
                check_declared({k: tuple(f.get_slice(k).get_shape()) for k in keys})
            args = _metadata_args(f.metadata() or {})
            return _nest({k: f.get_tensor(k) for k in keys}), args
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - the library reports bad headers and short files as it can
        raise CheckpointError(
            f"{path} is a safetensors file that is truncated or corrupt ({_first_line(e)}). Download or copy it again."
        ) from None


def _metadata_args(metadata: dict) -> dict | None:
    """The training arguments in a safetensors `__metadata__` (all values are strings)."""

    def value(text):
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            return text

    args = value(metadata.get("args")) if "args" in metadata else {}
    args = dict(args) if isinstance(args, dict) else {}
    args.update({k: value(metadata[k]) for k in METADATA_ARGS if k in metadata})
    return args or None


@contextmanager
def _about(path: Path):
    """Prefix the file's name to the CheckpointErrors of checks that see only shapes."""
    try:
        yield
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(sd: dict) -> dict:
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _nest(sd: dict) -> dict:
    """A flat state dict whose every key starts with one of STATE_DICT_KEYS ("model.layers.0...",
    "model_ema.layers.0...") as the dict it was flattened from; any other one unchanged."""
    heads = [k.split(".", 1) for k in sd]
    if not all(len(h) == 2 and h[0] in STATE_DICT_KEYS for h in heads):
        return sd
    nested: dict[str, dict] = {}
    for (head, rest), v in zip(heads, sd.values()):
        nested.setdefault(head, {})[rest] = v
    return nested


def _pick(obj, ema: bool, path: Path) -> tuple[str, dict]:
    """The state dict to load from what a file holds, and where in it that was."""
    top_keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else ""
    if _is_state_dict(obj):
        if ema:
            raise CheckpointError(f"{path} is a bare state dict: it has no model_ema weights.")
        return "(top level: bare state dict)", obj
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict.")
    wanted = ("model_ema",) if ema else tuple(k for k in STATE_DICT_KEYS if k != "model_ema")
    source = next((k for k in wanted if _is_state_dict(obj.get(k))), None)
    if source is None and ema:
        raise CheckpointError(f"{path} has no usable 'model_ema' state dict (top-level keys: {top_keys}).")
    if source is None:
        raise CheckpointError(
            f"{path} holds no model weights: expected a state dict, or a dict with one under "
            f"{', '.join(STATE_DICT_KEYS)}; found top-level keys {top_keys or '(none)'}."
        )
    return source, obj[source]


def _count_nonfinite(sd: dict) -> dict[str, int]:
    counts = {}
    for k, v in sd.items():
        # A sum over a NaN or an inf is never finite, so a finite sum clears a tensor; a sum that
        # overflowed is settled by the element-wise test. The sum alone is 6x faster on Vim-T's
        # 7.1M values (22 ms vs 170 ms, best of 7 on the 2-core CI machine under load).
        if v.is_floating_point() and not bool(torch.isfinite(v.sum())):
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                counts[k] = bad
    return counts


def describe_nonfinite(counts: dict[str, int], shown: int = 5) -> str:
    """ "3 tensors hold NaN/inf: head.bias (2), ..." for the keys `_count_nonfinite` found."""
    if not counts:
        return "none"
    named = ", ".join(f"{k} ({n:,})" for k, n in list(counts.items())[:shown])
    more = f" and {len(counts) - shown} more" if len(counts) > shown else ""
    return f"{len(counts)} tensor{'s' if len(counts) > 1 else ''} hold NaN/inf values: {named}{more}"


def read_checkpoint(path: str | Path, ema: bool = False) -> Checkpoint:
    """Read a checkpoint file and pick its state dict (`model`, or `model_ema` if `ema`).

    Shapes beyond vimdeploy.model.config's limits are refused before the data is read. NaN/inf
    values are not refused here: `Checkpoint.nonfinite` counts them, `load_model` decides.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    kind = sniff(path)
    if kind not in CHECKPOINT_KINDS:
        raise CheckpointError(wrong_kind(path, kind, "a PyTorch checkpoint or a safetensors file"))
    if kind == "pickle":
        # torch.load reads only its own pickles (zip, or the legacy format's magic number first).
        raise CheckpointError(
            f"refused to load {path}: it is a plain Python pickle, not a PyTorch checkpoint, and unpickling it "
            "could run code. If you trust the file, load it yourself and re-save its state dict with "
            "torch.save(state_dict, 'clean.pth') or safetensors.torch.save_file(state_dict, 'clean.safetensors')."
        )
    obj, args = _read_safetensors(path) if kind == "safetensors" else _read_torch(path, kind)
    top_keys = [str(k) for k in obj] if isinstance(obj, dict) and not _is_state_dict(obj) else []
    source, sd = _pick(obj, ema, path)
    sd = _strip_prefixes(dict(sd))
    with _about(path):
        check_declared({k: tuple(v.shape) for k, v in sd.items()})
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    epoch = obj.get("epoch") if isinstance(obj, dict) and isinstance(obj.get("epoch"), int) else None
    if epoch is None and isinstance((args or {}).get("epoch"), int):
        epoch = args["epoch"]
    return Checkpoint(path, sd, source, top_keys, epoch, args, dtypes, kind)


def _config_hints(ckpt: Checkpoint) -> dict:
    """What the training arguments of an official checkpoint say about the architecture."""
    hints = {}
    if ckpt.args:
        name = str(ckpt.args.get("model") or "")
        if "stride8" in name:
            hints["stride"] = 8
        if isinstance(ckpt.args.get("input_size"), int):
            hints["img_size"] = ckpt.args["input_size"]
    return hints


def _mismatch_report(model: VisionMamba, sd: dict, cfg: VimConfig) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if not (missing or unexpected or misshaped):
        return None

    def listing(title, items):
        if not items:
            return ""
        more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
        return f" {len(items)} {title}: {', '.join(items[:8])}{more}."

    return (
        f"the weights do not fit a Vim model ({cfg.variant}, embed {cfg.embed_dim}, depth {cfg.depth}, "
        f"patch {cfg.patch_size}/stride {cfg.stride} at {cfg.img_size}px inferred from their shapes)."
        + listing("missing", missing)
        + listing("unexpected", unexpected)
        + listing("mis-shaped", misshaped)
        + " vimdeploy supports the official bimamba-v2 middle-class-token div2 models "
        "(vim_{tiny,small,base}_patch16[_stride8]_224_bimambav2_..._midclstok_div2)."
    )


def load_model(
    path: str | Path, ema: bool = False, scan="auto", allow_nonfinite: bool = False, **overrides
) -> tuple[VisionMamba, Checkpoint]:
    """Build the model a checkpoint describes, load its weights strictly, in fp32 eval mode.

    `overrides` (e.g. stride=8, img_size=224) fix what the shapes cannot tell. Weights holding
    NaN or inf are refused, naming them, unless `allow_nonfinite`. The model is first built on
    the meta device: nothing is allocated for a file that does not fit it.
    """
    ckpt = read_checkpoint(path, ema=ema)
    with _about(ckpt.path):
        cfg = config_from_state_dict(ckpt.state_dict, **{**_config_hints(ckpt), **overrides})
    get_scan(scan)  # the backend's module imported here, not under the meta device
    with torch.device("meta"):
        model = VisionMamba(cfg, scan=scan)
    problem = _mismatch_report(model, ckpt.state_dict, cfg)
    if problem:
        raise CheckpointError(f"{ckpt.path}: {problem}")
    if ckpt.nonfinite and not allow_nonfinite:
        raise CheckpointError(
            f"{ckpt.path}: {describe_nonfinite(ckpt.nonfinite)}. A model with them gives NaN or inf outputs; "
            "pass --allow-nonfinite (allow_nonfinite=True) to load it anyway."
        )
    # Every parameter is in the state dict (checked above): no initialisation to run first.
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.float() for k, v in ckpt.state_dict.items()}, strict=True)
    return model.eval(), ckpt
