"""Loading the Vim checkpoints users actually have, safely.

Accepted layouts:
  * official training checkpoints (hustvl/Vim main.py, DeiT style): a dict with `model`,
    `model_ema`, `optimizer`, `lr_scheduler`, `scaler`, `epoch`, `args` (argparse.Namespace);
  * a dict holding a state dict under `model`, `model_ema`, `state_dict` or `module`;
  * a bare state dict; keys may carry a `module.` (DDP) or `_orig_mod.` (torch.compile) prefix;
  * fp32, fp16 or bf16 weights (cast to fp32 on load; A_log/D are fp32 in every official file).

Files are read with `torch.load(weights_only=True)`: only tensors and plain containers are
unpickled, plus `argparse.Namespace` (official checkpoints store their training arguments
as one). A pickle that would import or call anything else is refused before it runs.
"""

from __future__ import annotations

import argparse
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..fileio import file_sha256
from .config import VimConfig, config_from_state_dict
from .vim import VisionMamba

__all__ = ["Checkpoint", "read_checkpoint", "load_model", "file_sha256"]

# What an official checkpoint needs beyond tensors and containers.
SAFE_GLOBALS = [argparse.Namespace]
STATE_DICT_KEYS = ("model", "model_ema", "state_dict", "module")
PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    path: Path
    state_dict: dict[str, torch.Tensor]
    source: str  # where in the file the weights came from: "model", "model_ema", "(top level)", ...
    top_level_keys: list[str] = field(default_factory=list)
    epoch: int | None = None
    args: dict | None = None  # the training arguments, when the file has them
    dtypes: list[str] = field(default_factory=list)  # weight dtypes as stored

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "weights_from": self.source,
            "top_level_keys": self.top_level_keys,
            "epoch": self.epoch,
            "stored_dtypes": self.dtypes,
            "training_model_name": (self.args or {}).get("model"),
            "training_input_size": (self.args or {}).get("input_size"),
        }


def _torch_load(path: Path):
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4": the outcome is what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line or "GLOBAL" in line), "")
            raise CheckpointError(
                f"refused to load {path}: it contains pickled objects other than tensors, which could run code "
                f"when unpickled ({detail or 'unsupported object'}). vimdeploy loads only weights "
                "(torch.load with weights_only=True). If you trust the file, re-save its state dict with "
                "torch.save(model.state_dict(), 'clean.pth')."
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({text.splitlines()[0] if text else 'unreadable pickle'}).") from None
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on bad bytes; none should leak
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, (EOFError, zipfile.BadZipFile)) or "central directory" in first or "PytorchStreamReader" in first:
            raise CheckpointError(
                f"{path} is truncated or corrupt: PyTorch could not read it ({first}). Download or copy it again."
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load failed: {first}).") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(sd: dict) -> dict:
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path: str | Path, ema: bool = False) -> Checkpoint:
    """Read a checkpoint file and pick its state dict (`model`, or `model_ema` if `ema`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    obj = _torch_load(path)
    top_keys = list(obj.keys()) if isinstance(obj, dict) else []
    args = None
    if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
        args = {k: v for k, v in vars(obj["args"]).items() if isinstance(v, (str, int, float, bool, type(None)))}

    if _is_state_dict(obj):
        if ema:
            raise CheckpointError(f"{path} is a bare state dict: it has no model_ema weights.")
        sd, source = obj, "(top level: bare state dict)"
    elif isinstance(obj, dict):
        wanted = ("model_ema",) if ema else tuple(k for k in STATE_DICT_KEYS if k != "model_ema")
        source = next((k for k in wanted if _is_state_dict(obj.get(k))), None)
        if source is None:
            if ema:
                raise CheckpointError(
                    f"{path} has no usable 'model_ema' state dict (top-level keys: {', '.join(map(str, top_keys))})."
                )
            raise CheckpointError(
                f"{path} holds no model weights: expected a state dict, or a dict with one under "
                f"{', '.join(STATE_DICT_KEYS)}; found top-level keys {', '.join(map(str, top_keys)) or '(none)'}."
            )
        sd = obj[source]
    else:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict.")

    sd = _strip_prefixes(dict(sd))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    epoch = obj.get("epoch") if isinstance(obj, dict) and isinstance(obj.get("epoch"), int) else None
    return Checkpoint(path, sd, source, [str(k) for k in top_keys], epoch, args, dtypes)


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
    misshaped = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
                 for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
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
        + listing("missing", missing) + listing("unexpected", unexpected) + listing("mis-shaped", misshaped)
        + " vimdeploy supports the official bimamba-v2 middle-class-token div2 models "
        "(vim_{tiny,small,base}_patch16[_stride8]_224_bimambav2_..._midclstok_div2)."
    )


def load_model(path: str | Path, ema: bool = False, scan="auto", **overrides) -> tuple[VisionMamba, Checkpoint]:
    """Build the model a checkpoint describes, load its weights strictly, in fp32 eval mode.

    `overrides` (e.g. stride=8, img_size=224) fix what the shapes cannot tell.
    """
    ckpt = read_checkpoint(path, ema=ema)
    cfg = config_from_state_dict(ckpt.state_dict, **{**_config_hints(ckpt), **overrides})
    model = VisionMamba(cfg, scan=scan)
    problem = _mismatch_report(model, ckpt.state_dict, cfg)
    if problem:
        raise CheckpointError(f"{ckpt.path}: {problem}")
    model.load_state_dict({k: v.float() for k, v in ckpt.state_dict.items()}, strict=True)
    return model.eval(), ckpt
