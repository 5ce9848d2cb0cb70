"""The Vim model in plain PyTorch, its selective scans and checkpoint loading."""

from .checkpoint import Checkpoint, load_model, read_checkpoint
from .config import DYNAMIC, VARIANTS, VimConfig, config_from_state_dict, format_img_size, parse_img_size
from .scan import bi_selective_scan_fast, bi_selective_scan_reference, get_scan_backend, register_scan_backend
from .vim import VisionMamba, output_names, parse_output_name, resample_pos_embed

__all__ = [
    "Checkpoint", "load_model", "read_checkpoint", "VARIANTS", "VimConfig", "config_from_state_dict",
    "bi_selective_scan_fast", "bi_selective_scan_reference", "get_scan_backend", "register_scan_backend",
    "VisionMamba", "resample_pos_embed", "output_names", "parse_output_name",
    "DYNAMIC", "parse_img_size", "format_img_size",
]
