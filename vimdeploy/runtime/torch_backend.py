"""PyTorch backend: an official-format checkpoint run by vimdeploy.model, on the CPU or a GPU
(device "auto": the GPU where PyTorch has one; the scan "auto" then takes the CUDA kernels
where they are built, vimdeploy.ops.dispatch)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ArtifactError
from ..model import load_model, parse_output_name
from .base import Engine


def torch_device(device: str) -> torch.device:
    """ "auto" -> cuda where PyTorch has a GPU, else cpu; "cuda" without one: ArtifactError."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(
            f"--device cuda: PyTorch {torch.__version__} sees no CUDA GPU here (torch.cuda.is_available() "
            "is false); use --device cpu or auto"
        )
    return torch.device(device)


class TorchEngine(Engine):
    def __init__(
        self,
        path,
        ema: bool = False,
        scan: str = "auto",
        device: str = "auto",
        dtype: torch.dtype = torch.float32,
        **overrides,
    ):
        self.device = torch_device(device)
        self.model, self.checkpoint = load_model(path, ema=ema, scan=scan, **overrides)
        self.dtype = dtype
        self.model.to(self.device)
        if dtype != torch.float32:
            # The scan parameters (A_log, D, dt biases) go to the scan in fp32 regardless.
            self.model.to(dtype)
        self.default_input_size = self.model.cfg.img_size
        self.num_classes = self.model.cfg.num_classes
        self.outputs = ["logits", "features", "feature_map"]  # and feature_map_<block> for any block

    def default_outputs(self) -> list[str]:
        return ["logits", "features"]  # a checkpoint has no fixed list; feature maps on request

    def has_output(self, name: str) -> bool:
        kind, block = parse_output_name(name)  # InputError for a name no model has
        return block is None or 0 <= block < self.model.cfg.depth

    @torch.inference_mode()
    def _infer(self, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        self.model.grid_for(images.shape[2], images.shape[3])  # clear error for a bad size
        x = torch.from_numpy(images).to(self.device, self.dtype)
        return {k: v.float().cpu().numpy() for k, v in self.model.forward_outputs(x, names).items()}

    def describe(self) -> dict:
        cfg = self.model.cfg
        scan = getattr(self.model.scan, "__name__", self.model.scan)
        if scan == "auto":
            from ..ops.dispatch import resolve

            scan = f"auto ({resolve(self.device.type)})"
        return {
            "backend": "pytorch",
            "scan": scan,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "variant": cfg.variant,
        }
