"""The Vim model in plain PyTorch and checkpoint loading (the scans: vimdeploy.ops)."""

from .checkpoint import Checkpoint, load_model, read_checkpoint
from .config import DYNAMIC, VARIANTS, VimConfig, config_from_state_dict, format_img_size, parse_img_size
from .front import FRONTS, MixerFront, TokenMajorFront, TorchFront
from .vim import VisionMamba, output_names, parse_output_name, resample_pos_embed

__all__ = [
    "Checkpoint",
    "load_model",
    "read_checkpoint",
    "VARIANTS",
    "VimConfig",
    "config_from_state_dict",
    "VisionMamba",
    "resample_pos_embed",
    "output_names",
    "parse_output_name",
    "DYNAMIC",
    "parse_img_size",
    "format_img_size",
    "FRONTS",
    "MixerFront",
    "TokenMajorFront",
    "TorchFront",
]
