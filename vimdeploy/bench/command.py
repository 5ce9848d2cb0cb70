"""`vimdeploy bench` itself: checks the request, builds the runners, runs the sweep, writes
JSON and plots. The CLI (vimdeploy/cli/serve.py) only parses and prints."""

from __future__ import annotations

from .common import BenchError, _need, environment, parse_int_list, snap_size
from .models import DEIT_MODES, DeiTRunner, deit_runner, vim_runner
from .profiler import profile_breakdown
from .report import plot
from .runners import TorchRunner, engine_runner
from .search import run_bench


def resolve_device(device: str, suffix: str) -> str:
    """Device "auto" for a checkpoint or --model: the GPU where PyTorch has one, else the CPU; for a
    TensorRT engine: the GPU. An .onnx keeps "auto": its engine decides (open_engine)."""
    if device != "auto" or suffix == ".onnx":
        return device
    from ..tensorrt.sidecar import ENGINE_SUFFIXES

    if suffix in ENGINE_SUFFIXES:
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str, cpu_capable: bool):
    """No CUDA: a clear error unless a CPU-capable model runs with device='cpu'."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError(
            "no CUDA GPU here: `vimdeploy bench` measures GPU throughput and memory. "
            "For a CPU-capable model (--scan fast or auto, or an .onnx) pass --device cpu or auto."
        )
    if device == "cpu" and not cpu_capable:
        raise BenchError(
            "this model does not run on the CPU (--scan cuda, a TensorRT engine, or CUDA graphs); use --device cuda"
        )


def main_bench(
    model=None,
    model_name=None,
    scan=None,
    sizes="224,512,1024",
    batches="1",
    max_batch=None,
    dtype=None,
    cuda_graphs=False,
    compile=False,
    compare=(),
    device="auto",
    warmup=3,
    iters=50,
    seconds=2.0,
    max_forward_s=10.0,
    profile_size=None,
    json_out=None,
    plot_dir=None,
    progress=True,
    extra_runners=(),
) -> dict:
    """What `vimdeploy bench` does; returns the result dict (see run_bench)."""
    import json
    from pathlib import Path

    from ..tensorrt.sidecar import ENGINE_SUFFIXES

    if (model is None) == (model_name is None):
        raise BenchError("give MODEL (a checkpoint, .onnx or engine) or --model vim_tiny, not both or neither")
    suffix = Path(model).suffix.lower() if model is not None else ""
    device = resolve_device(device, suffix)
    scan = scan or ("cuda" if device == "cuda" else "auto")
    dtype = dtype or ("fp16" if device == "cuda" else "fp32")
    is_engine = suffix in (".onnx", *ENGINE_SUFFIXES)
    if suffix != ".onnx":  # an .onnx: ONNX Runtime says where it can run (open_engine)
        check_device(device, not is_engine and scan != "cuda" and not cuda_graphs)
    sizes = parse_int_list(sizes)
    batches = parse_int_list(batches)
    if max_batch is not None and max_batch <= 0:
        raise BenchError("--max-batch must be positive")
    if plot_dir is not None:
        _need("matplotlib", "--plot-dir")
    if is_engine:
        opts = {"cuda_graph": True} if (suffix != ".onnx" and cuda_graphs) else {}
        runners = [engine_runner(model, device=device, **opts)]
        device = runners[0].device
    else:
        runners = [
            vim_runner(
                model_name or model, scan=scan, dtype=dtype, device=device, cuda_graphs=cuda_graphs, compile=compile
            )
        ]
    if device == "cpu" and compare:
        raise BenchError("--compare runs on the GPU only (the comparison is about GPU throughput and memory)")
    runners += list(extra_runners)
    for name in dict.fromkeys(compare):
        for mode in DEIT_MODES[name]:
            if not any(getattr(r, "mode", None) == mode for r in runners if isinstance(r, DeiTRunner)):
                runners.append(deit_runner(mode, dtype=dtype, device=device))
    env = environment(device)
    profile = None
    if profile_size and isinstance(runners[0], TorchRunner) and device == "cuda":
        profile = []
        for b in [1] + ([max_batch] if max_batch else []):
            try:
                profile.append(profile_breakdown(runners[0], snap_size(profile_size), b))
            except Exception as e:  # noqa: BLE001
                profile.append({"size": profile_size, "batch": b, "error": f"{type(e).__name__}: {e}"[:300]})
    result = run_bench(
        runners,
        sizes,
        batches,
        max_batch,
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        max_forward_s=max_forward_s,
        progress=progress,
        env=env,
        profile=profile,
    )
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
    if plot_dir is not None:
        result["plots"] = [str(p) for p in plot(result, plot_dir)]
    return result
