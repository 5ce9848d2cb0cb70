"""PyTorch backend: an official-format checkpoint run by vimdeploy.model."""

from __future__ import annotations

import numpy as np
import torch

from ..model import load_model
from .base import Engine


class TorchEngine(Engine):
    def __init__(self, path, ema: bool = False, scan: str = "auto", device: str = "cpu",
                 dtype: torch.dtype = torch.float32, **overrides):
        self.model, self.checkpoint = load_model(path, ema=ema, scan=scan, **overrides)
        self.device = torch.device(device)
        self.dtype = dtype
        self.model.to(self.device)
        if dtype != torch.float32:
            # The scan parameters (A_log, D, dt biases) go to the scan in fp32 regardless.
            self.model.to(dtype)
        self.default_input_size = self.model.cfg.img_size
        self.num_classes = self.model.cfg.num_classes

    @torch.inference_mode()
    def run(self, images: np.ndarray, features: bool = False) -> dict[str, np.ndarray]:
        images = self.check_batch(images)
        self.model.grid_for(images.shape[2], images.shape[3])  # clear error for a bad size
        x = torch.from_numpy(images).to(self.device, self.dtype)
        feats = self.model(x, return_features=True)
        out = {"logits": self.model.head(feats).float().cpu().numpy()}
        if features:
            out["features"] = feats.float().cpu().numpy()
        return out

    def describe(self) -> dict:
        cfg = self.model.cfg
        return {"backend": "pytorch", "scan": getattr(self.model.scan, "__name__", self.model.scan), "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "variant": cfg.variant}
