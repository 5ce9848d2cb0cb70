"""The Vim model in plain PyTorch and checkpoint loading (the scans: vimdeploy.ops).

Names are imported from their module on first use: the configuration's (`DYNAMIC`,
`parse_img_size`, `VimConfig`...) need no PyTorch, so that the runtime of ONNX artifacts
can use them where PyTorch is not installed.
"""

import importlib

# public name -> the module of this package that defines it
_API = {
    "Checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "read_checkpoint": "checkpoint",
    "VARIANTS": "config",
    "VimConfig": "config",
    "config_from_state_dict": "config",
    "DYNAMIC": "config",
    "parse_img_size": "config",
    "format_img_size": "config",
    "VisionMamba": "vim",
    "resample_pos_embed": "vim",
    "output_names": "vim",
    "parse_output_name": "vim",
    "FRONTS": "front",
    "MixerFront": "front",
    "TokenMajorFront": "front",
    "TorchFront": "front",
}

__all__ = list(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
