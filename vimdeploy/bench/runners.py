"""Runners: one model configuration each. `prepare(size, batch)` returns a zero-argument
callable running one forward pass on a preallocated batch (a CUDA graph replay when asked)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .common import is_oom


@dataclass
class Runner:
    """One model configuration. `prepare(size, batch)` returns a zero-argument callable
    that runs one forward pass on a preallocated batch; `release()` drops it."""

    name: str
    device: str = "cuda"
    timer: str = "cuda"  # "cuda": CUDA events; "wall": perf_counter around a blocking call
    patch: int = 16
    stride: int = 16
    fixed_size: int | None = None  # engines built for one resolution
    max_forward_s: float | None = None  # overrides run_bench's max_forward_s for this runner
    info: dict = field(default_factory=dict)

    def prepare(self, size: int, batch: int) -> Callable[[], object]:  # pragma: no cover - interface
        raise NotImplementedError

    def release(self):
        pass


class TorchRunner(Runner):
    """An nn.Module taking (B, 3, H, W) in `input_dtype`, optionally replayed as a CUDA graph."""

    def __init__(
        self, name, module, device="cuda", input_dtype=None, cuda_graphs=False, autocast=None, on_size=None, **kw
    ):
        super().__init__(name=name, device=device, timer="cuda" if device == "cuda" else "wall", **kw)
        import torch

        self.module = module.eval().to(device)
        self.input_dtype = input_dtype or torch.float32
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self.autocast = autocast
        self.on_size = on_size  # called with the input size before each prepare (e.g. to resize the model)
        self._state = None
        self.info.setdefault("cuda_graphs", self.cuda_graphs)

    def _forward(self, x):
        import torch

        if self.autocast is not None:
            with torch.autocast(self.device, dtype=self.autocast, cache_enabled=not self.cuda_graphs):
                return self.module(x)
        return self.module(x)

    def prepare(self, size, batch):
        import torch

        self.release()
        if self.on_size is not None:
            self.on_size(size)
        x = torch.randn(batch, 3, size, size, device=self.device).to(self.input_dtype)
        if not self.cuda_graphs:

            def run():
                with torch.inference_mode():
                    return self._forward(x)

            self._state = (x,)
            return run
        # Warm up on a side stream (an OOM shows here, before capture), then capture.
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(s):
            for _ in range(2):
                self._forward(x)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        try:
            with torch.inference_mode(), torch.cuda.graph(g):
                out = self._forward(x)
        except Exception as e:  # noqa: BLE001
            # An OOM inside capture can surface as a capture error from capture_end().
            del g
            if is_oom(e) or "out of memory" in repr(e.__context__).lower():
                raise torch.cuda.OutOfMemoryError(f"during CUDA graph capture: {e}") from e
            raise
        self._state = (x, g, out)
        return g.replay

    def release(self):
        self._state = None


class EngineRunner(Runner):
    """A vimdeploy Engine (open_engine): numpy in, numpy out, timed by the wall clock."""

    def __init__(self, name, engine, device="cpu", **kw):
        super().__init__(name=name, device=device, timer="wall", fixed_size=getattr(engine, "input_size", None), **kw)
        self.engine = engine
        self._x = None

    def prepare(self, size, batch):
        import numpy as np

        self._x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        x = self._x
        return lambda: self.engine.run(x)

    def release(self):
        self._x = None


def engine_runner(path, device="auto", scan="auto", **options) -> EngineRunner:
    """An engine opened on `device` (open_engine: an .onnx where ONNX Runtime can run it, a
    TensorRT engine on the GPU); the runner's device is the one the engine runs on."""
    from pathlib import Path

    from ..runtime import open_engine

    path = Path(path)
    engine = open_engine(path, device=device, **options)
    about = engine.describe()
    info = {"model": str(path), "backend": type(engine).__name__}
    if "provider" in about:
        info["provider"] = about["provider"]
    return EngineRunner(
        f"{path.name} ({type(engine).__name__})", engine, device=about.get("device", device).split(":")[0], info=info
    )
