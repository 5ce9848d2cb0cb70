"""Shared pieces of `vimdeploy bench`: its error type, argument parsing, the patch grid, OOM
detection, optional imports, the environment record."""

from __future__ import annotations

import math
import platform
import subprocess
import sys

from ..errors import VimdeployError


class BenchError(VimdeployError):
    """A benchmark that cannot run as asked (no CUDA, missing optional dependency, ...)."""


def parse_int_list(text) -> list[int]:
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    try:
        vals = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise BenchError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise BenchError(f"expected positive integers, got {text!r}")
    return vals


def snap_size(size: int, patch: int = 16, stride: int = 16) -> int:
    """Nearest side on the patch grid (patch + k*stride, k >= 0); ties go up."""
    k = max(0, math.floor((size - patch) / stride + 0.5))
    return patch + k * stride


def is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    msg = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in msg or "cublas_status_alloc_failed" in msg or isinstance(exc, MemoryError)
    )


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BenchError(f"{what} needs {module}: pip install 'vimdeploy[bench]' (or pip install {module})") from None


def _smi(field_: str) -> str:
    try:
        out = (
            subprocess.run(
                ["nvidia-smi", f"--query-gpu={field_}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.strip()
            .splitlines()
        )
        return out[0] if out else "?"
    except Exception:  # noqa: BLE001
        return "?"


def environment(device: str = "cuda") -> dict:
    try:
        import torch
    except ModuleNotFoundError:  # an .onnx benchmarked by the runtime-only install
        torch = None

    env = {
        "torch": torch.__version__ if torch else None,
        "python": platform.python_version(),
        "device": device,
        "command": " ".join([sys.argv[0].rsplit("/", 1)[-1]] + sys.argv[1:]),
    }
    if device == "cuda" and torch and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(
            gpu=torch.cuda.get_device_name(0),
            driver=_smi("driver_version"),
            cuda=torch.version.cuda,
            gpu_memory_mib=round(p.total_memory / 2**20),
            sms=p.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
        try:
            import timm

            env["timm"] = timm.__version__
        except ImportError:
            pass
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env
