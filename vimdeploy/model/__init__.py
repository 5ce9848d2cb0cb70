"""The Vim model in plain PyTorch and checkpoint loading (the scans: vimdeploy.ops)."""

from .checkpoint import Checkpoint, load_model, read_checkpoint
from .config import VARIANTS, VimConfig, config_from_state_dict
from .vim import VisionMamba, resample_pos_embed

__all__ = [
    "Checkpoint", "load_model", "read_checkpoint", "VARIANTS", "VimConfig", "config_from_state_dict",
    "VisionMamba", "resample_pos_embed",
]
