"""`vimdeploy bench`: throughput, latency and peak memory over resolutions and batch sizes.

    run_bench(runners, sizes, batches=(1,), max_batch=None, ...) -> dict  (JSON-ready)

A *runner* is one model configuration (Vim with a scan backend, DeiT-Ti eager/SDPA, an
ONNX model or TensorRT engine). For each runner, resolution and batch it

* builds the input once (random pixels), warms up (`warmup` calls: cuDNN/cuBLAS choices,
  CUDA-graph capture), then times `iters` calls, each between two CUDA events and
  synchronised (a call's GPU time including its launch gaps, so CPU-bound small batches
  show as such); throughput = batch / median, latency p50/p99 over the calls;
* peak memory: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()` with
  everything of the previous configuration freed, so it is this configuration's weights
  + activations (+ the CUDA graph's pool);
* `max_batch`: the largest batch that fits, trying max_batch, max_batch/2, ... on
  `torch.cuda.OutOfMemoryError` (each try warms up, so an OOM shows before timing);
* `max_forward_s`: a call slower than that (the first warm-up tells) is recorded as
  "too_slow" with its time, and larger resolutions of that runner are skipped.

Engines opened with `open_engine` (.onnx, .plan/.engine) take numpy batches and copy
results back, so they are timed by the wall clock around `run()` (host<->device copies
included). An .onnx runs where `--device` (default auto) lets ONNX Runtime run it: the CPU,
or CUDAExecutionProvider for a portable export where onnxruntime-gpu offers it; on the CPU
GPU memory does not apply. A checkpoint or --model on "auto" runs on the GPU where PyTorch
has one, else on the CPU.

Resolutions must be on the patch grid (side = 16 + k*16 for stride 16): a requested size
that is not (e.g. 738) is snapped to the nearest one (736) and both are recorded; the DeiT
comparison uses the same snapped size.

Modules: common (errors, parsing, environment), runners, models (Vim, DeiT-Ti), timing,
search (the sweep and the OOM batch search), profiler, report (table, plots), command.
"""

from __future__ import annotations

from .command import check_device, main_bench
from .common import BenchError, environment, is_oom, parse_int_list, snap_size
from .models import DEIT_MODES, DeiTRunner, deit_runner, vim_runner
from .profiler import categorize, profile_breakdown
from .report import format_table, plot
from .runners import EngineRunner, Runner, TorchRunner, engine_runner
from .search import find_max_batch, run_bench
from .timing import measure, time_calls, time_graph

__all__ = [
    "BenchError",
    "Runner",
    "TorchRunner",
    "EngineRunner",
    "snap_size",
    "find_max_batch",
    "is_oom",
    "measure",
    "time_graph",
    "run_bench",
    "vim_runner",
    "deit_runner",
    "engine_runner",
    "format_table",
    "plot",
    "environment",
    "profile_breakdown",
    "parse_int_list",
    "time_calls",
    "check_device",
    "main_bench",
    "DeiTRunner",
    "DEIT_MODES",
    "categorize",
]
