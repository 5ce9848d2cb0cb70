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

Engines opened with `open_engine` (.onnx, .plan/.engine, or a checkpoint on the CPU) take
numpy batches and copy results back, so they are timed by the wall clock around `run()`
(host<->device copies included); ONNX Runtime runs on the CPU (`--device cpu`), where
GPU memory does not apply.

Resolutions must be on the patch grid (side = 16 + k*16 for stride 16): a requested size
that is not (e.g. 738) is snapped to the nearest one (736) and both are recorded; the DeiT
comparison uses the same snapped size.
"""

from __future__ import annotations

import gc
import math
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import VimdeployError

__all__ = [
    "BenchError", "Runner", "TorchRunner", "EngineRunner", "snap_size", "find_max_batch", "is_oom",
    "measure", "run_bench", "vim_runner", "deit_runner", "engine_runner", "format_table", "plot",
    "environment", "profile_breakdown", "parse_int_list",
]

DEIT_MODES = {"deit_tiny": ("eager", "sdpa"), "deit_tiny_eager": ("eager",), "deit_tiny_sdpa": ("sdpa",)}


class BenchError(VimdeployError):
    """A benchmark that cannot run as asked (no CUDA, missing optional dependency, ...)."""


# --------------------------------------------------------------------------- helpers

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
        "out of memory" in msg or "cublas_status_alloc_failed" in msg or isinstance(exc, MemoryError))


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BenchError(f"{what} needs {module}: pip install 'vimdeploy[bench]' (or pip install {module})") from None


def _smi(field_: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field_}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return out[0] if out else "?"
    except Exception:  # noqa: BLE001
        return "?"


def environment(device: str = "cuda") -> dict:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
           "command": " ".join([sys.argv[0].rsplit("/", 1)[-1]] + sys.argv[1:])}
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), driver=_smi("driver_version"), cuda=torch.version.cuda,
                   gpu_memory_mib=round(p.total_memory / 2**20), sms=p.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
        try:
            import timm

            env["timm"] = timm.__version__
        except ImportError:
            pass
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


# --------------------------------------------------------------------------- runners

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

    def __init__(self, name, module, device="cuda", input_dtype=None, cuda_graphs=False, autocast=None, **kw):
        super().__init__(name=name, device=device, timer="cuda" if device == "cuda" else "wall", **kw)
        import torch

        self.module = module.eval().to(device)
        self.input_dtype = input_dtype or torch.float32
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self.autocast = autocast
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
        super().__init__(name=name, device=device, timer="wall",
                         fixed_size=getattr(engine, "input_size", None), **kw)
        self.engine = engine
        self._x = None

    def prepare(self, size, batch):
        import numpy as np

        self._x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        x = self._x
        return lambda: self.engine.run(x)

    def release(self):
        self._x = None


def _vim_fp16(model):
    """fp16 with the numerics of the fp16 golden test's torch.autocast (tests/test_plugin_cuda.py):
    linear/conv weights in fp16 once (autocast would cast them on every call), while the
    scan parameters (A_log, D, dt biases), the norm weights and class token/pos embed casts
    stay as autocast has them: the scan gets fp32 A, D, dt bias; the residual stream is fp32."""
    import torch

    keep = {n: p.detach().clone() for n, p in model.named_parameters()
            if n.split(".")[-1] in ("A_log", "A_b_log", "D", "D_b") or n.endswith(("dt_proj.bias", "dt_proj_b.bias"))
            or (n.endswith(".weight") and ("norm" in n))}
    model.half()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in keep:
                p.data = keep[n].float()
    return model


def vim_runner(source="vim_tiny", scan="cuda", dtype="fp16", device="cuda", cuda_graphs=False, ema=False,
               name=None, compile=False) -> TorchRunner:
    """Vim from a checkpoint path, or untrained from VARIANTS ("vim_tiny", "vim_small", "vim_base")."""
    import torch

    from .model import VARIANTS, VisionMamba, load_model

    if scan == "cuda":
        if device != "cuda":
            raise BenchError("--scan cuda runs on the GPU; use --scan fast with --device cpu")
        from .ops import native

        try:
            native.load_library()
        except native.PluginError as e:
            raise BenchError(f"--scan cuda needs the kernel library ({e}); build it with `vimdeploy plugin build`") from None
    key = str(source)
    if key.startswith("vim_") and key[4:] in VARIANTS:
        model = VisionMamba(VARIANTS[key[4:]], scan=scan)
        _init_untrained(model)
        label = "Vim-" + {"tiny": "Ti", "small": "S", "base": "B"}.get(key[4:], key[4:])
    else:
        model, _ = load_model(source, ema=ema, scan=scan)
        label = f"Vim {model.cfg.variant}"
    if dtype == "fp16":
        _vim_fp16(model)
    label = name or (f"{label} ({scan} scan{', torch.compile' if compile else ''}"
                     f"{', CUDA graphs' if cuda_graphs and device == 'cuda' else ''})")
    module = model
    if compile:
        # Inductor fuses the element-wise work around the scan (norms, SiLU, conv taps,
        # casts; half of Vim-Ti's GPU time without it, docs/bench.md); the scan stays our
        # opaque custom op. One compilation per input shape.
        module = torch.compile(model.to(device), dynamic=False)
    return TorchRunner(label, module, device=device, input_dtype=torch.float16 if dtype == "fp16" else torch.float32,
                       cuda_graphs=cuda_graphs, patch=model.cfg.patch_size, stride=model.cfg.stride,
                       info={"model": key, "scan": scan, "dtype": dtype, "params_m": _params_m(model)})


def _init_untrained(model):
    """Untrained weights at a trained model's scale (so fp16 neither overflows nor underflows):
    small normal linear/conv weights, dt bias as mamba_ssm initialises it (softplus^-1 of
    dt in [1e-3, 1e-1])."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("dt_proj.bias", "dt_proj_b.bias")):
                dt = torch.exp(torch.rand(p.shape, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif n.endswith("weight") and p.dim() >= 2:
                p.normal_(0, 0.02, generator=g)
            elif n == "pos_embed":
                p.normal_(0, 0.02, generator=g)


def _params_m(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def deit_runner(mode="eager", dtype="fp16", device="cuda", cuda_graphs=False) -> "DeiTRunner":
    return DeiTRunner(mode, dtype, device, cuda_graphs)


class DeiTRunner(TorchRunner):
    """timm's deit_tiny_patch16_224 (untrained), rebuilt per resolution with img_size=size
    (pos-embed at that grid, as an interpolated trained one would be); attention eager
    (`fused_attn=False`: q@k^T, softmax, @v, the Vim paper's setting) or SDPA (FlashAttention
    where PyTorch picks it). fp16: the model in .half()."""

    def __init__(self, mode="eager", dtype="fp16", device="cuda", cuda_graphs=False):
        import torch

        self.timm = _need("timm", "--compare deit_tiny")
        self.mode = mode
        self.dtype = torch.float16 if dtype == "fp16" else torch.float32
        self._size = None
        label = ("eager attention" if mode == "eager" else "SDPA") + (", CUDA graphs" if cuda_graphs else "")
        super().__init__(f"DeiT-Ti ({label})", self._build(224),
                         device=device, input_dtype=self.dtype, cuda_graphs=cuda_graphs,
                         info={"model": "deit_tiny_patch16_224", "attention": mode, "dtype": dtype})
        self._size = 224
        self.info["params_m"] = _params_m(self.module)

    def _build(self, size):
        m = self.timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=size)
        for blk in m.blocks:
            blk.attn.fused_attn = self.mode == "sdpa"
        return m.eval().to(self.dtype)

    def prepare(self, size, batch):
        if size != self._size:
            self.module = None
            gc.collect()
            self.module = self._build(size).to(self.device)
            self._size = size
        return super().prepare(size, batch)


def engine_runner(path, device="cpu", scan="auto", **options) -> EngineRunner:
    from pathlib import Path

    from .runtime import open_engine

    path = Path(path)
    if path.suffix.lower() == ".onnx" and device != "cpu":
        raise BenchError("an .onnx model runs with ONNX Runtime on the CPU: pass --device cpu "
                         "(for GPU numbers build a TensorRT engine with `vimdeploy build` and bench the .plan)")
    if path.suffix.lower() in (".plan", ".engine") and device != "cuda":
        raise BenchError("a TensorRT engine runs on the GPU: use --device cuda")
    engine = open_engine(path, **options)
    return EngineRunner(f"{path.name} ({type(engine).__name__})", engine, device=device,
                        info={"model": str(path), "backend": type(engine).__name__})


# --------------------------------------------------------------------------- measuring

def _cleanup(device):
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def time_calls(fn, n, timer):
    """n timings (ms) of fn: CUDA events around each call ("cuda") or the wall clock."""
    import torch

    samples = []
    for _ in range(n):
        if timer == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e3)
    return samples


def _sync(timer):
    if timer == "cuda":
        import torch

        torch.cuda.synchronize()


def _percentile(values, q):
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q
    lo = math.floor(pos)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (pos - lo)


def measure(runner: Runner, size: int, batch: int, warmup: int = 3, iters: int = 50, seconds: float = 2.0,
            max_forward_s: float = 10.0, min_iters: int = 3) -> dict:
    """Time one configuration; raises on OOM (the caller decides). Returns a result row."""
    cuda = runner.device == "cuda"
    if cuda:
        import torch

        _cleanup("cuda")
        torch.cuda.reset_peak_memory_stats()
    fn = runner.prepare(size, batch)
    t0 = time.perf_counter()
    fn()
    _sync(runner.timer)
    first_s = time.perf_counter() - t0
    row = {"batch": batch, "first_call_s": round(first_s, 4)}
    if first_s > max_forward_s:
        row.update(status="too_slow", est_ms=first_s * 1e3,
                   throughput_img_s=batch / first_s, note=f"one call took {first_s:.1f} s > {max_forward_s} s: not timed")
        if cuda:
            row["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return row
    for _ in range(max(0, warmup - 1)):
        fn()
    _sync(runner.timer)
    n = int(max(min_iters, min(iters, seconds / max(first_s, 1e-6))))
    samples = time_calls(fn, n, runner.timer)
    med = statistics.median(samples)
    row.update(status="ok", iters=n, median_ms=med, p50_ms=_percentile(samples, 0.5), p99_ms=_percentile(samples, 0.99),
               min_ms=min(samples), max_ms=max(samples), throughput_img_s=batch * 1e3 / med)
    if cuda:
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def find_max_batch(try_batch: Callable[[int], dict], max_batch: int, on_oom: Callable[[], None] = lambda: None):
    """Largest batch in max_batch, max_batch/2, ..., 1 for which try_batch(b) does not run
    out of memory. Returns (batch, row, tried) with batch None if even 1 does not fit."""
    b = max_batch
    tried = []
    while b >= 1:
        try:
            row = try_batch(b)
            tried.append((b, "ok"))
            return b, row, tried
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            tried.append((b, "oom"))
            on_oom()
        b //= 2
    return None, None, tried


def run_bench(runners, sizes, batches=(1,), max_batch=None, warmup=3, iters=50, seconds=2.0, max_forward_s=10.0,
              progress=True, env=None, profile=None) -> dict:
    """Every runner x size x (each batch in `batches`, then the largest batch <= max_batch).

    Returns {"env", "rows", "settings"}; rows carry runner, size, requested_size,
    batch_mode ("fixed" or "max"), status ("ok", "oom", "too_slow", "skipped", "error")."""
    sizes = [int(s) for s in sizes]
    batches = [int(b) for b in batches]
    rows = []
    plan = [(r, s) for r in runners for s in sizes]
    total = len(plan) * (len(batches) + (1 if max_batch else 0))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="bench", unit="cfg", file=sys.stderr, dynamic_ncols=True)
    try:
        for runner in runners:
            slow = None  # a size at which this runner was too slow / did not fit at batch 1
            for req in sizes:
                size = snap_size(req, runner.patch, runner.stride)
                base = {"runner": runner.name, "device": runner.device, "requested_size": req, "size": size,
                        "tokens": ((size - runner.patch) // runner.stride + 1) ** 2 + 1}
                if size != req:
                    base["note"] = f"{req} is not on the patch grid ({runner.patch} + k*{runner.stride}): ran {size}"
                specs = [("fixed", b) for b in batches] + ([("max", max_batch)] if max_batch else [])
                for mode, b in specs:
                    if bar:
                        bar.set_postfix_str(f"{runner.name[:28]} {size}px {mode} {b}")
                    row = dict(base, batch_mode=mode)
                    if runner.fixed_size is not None and size != runner.fixed_size:
                        row.update(batch=b, status="skipped", note=f"engine takes {runner.fixed_size}px only")
                    elif slow is not None:
                        row.update(batch=b, status="skipped", note=f"skipped: {slow}")
                    else:
                        try:
                            mf = getattr(runner, "max_forward_s", None) or max_forward_s
                            if mode == "fixed":
                                row.update(measure(runner, size, b, warmup, iters, seconds, mf))
                            else:
                                got, r, tried = find_max_batch(
                                    lambda bb: measure(runner, size, bb, warmup, iters, seconds, mf),
                                    b, on_oom=lambda: (runner.release(), _cleanup(runner.device)))
                                row["tried"] = tried
                                if got is None:
                                    row.update(batch=None, status="oom")
                                else:
                                    row.update(r)
                        except Exception as e:  # noqa: BLE001
                            if is_oom(e):
                                row.update(batch=b, status="oom")
                            else:
                                row.update(batch=b, status="error", error=f"{type(e).__name__}: {e}"[:400])
                        finally:
                            runner.release()
                            _cleanup(runner.device)
                        if row["status"] == "too_slow" or (row["status"] == "oom" and row.get("batch") in (1, None)):
                            slow = f"{row['status']} at {size}px"
                    rows.append(row)
                    if bar:
                        bar.update(1)
                        if row["status"] != "ok":
                            bar.write(f"  {runner.name} {size}px batch {row.get('batch')}: {row['status']}"
                                      + (f" ({row.get('error') or row.get('note', '')})" if row["status"] != "oom" else ""))
    finally:
        if bar:
            bar.close()
    out = {"env": env or {}, "settings": {"sizes": sizes, "batches": batches, "max_batch": max_batch, "warmup": warmup,
                                          "iters": iters, "seconds": seconds, "max_forward_s": max_forward_s},
           "runners": [{"name": r.name, **r.info} for r in runners], "rows": rows}
    if profile is not None:
        out["profile"] = profile
    return out


# --------------------------------------------------------------------------- profiling

_CATEGORIES = [
    ("scan kernel", ("biscan", "bi_selective", "selective_scan", "scan_chunk")),
    ("GEMM (linear)", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "splitk")),
    ("conv (patch embed, depthwise 1-D)", ("conv", "implicit", "winograd", "fprop", "dgrad", "depthwise")),
    ("copies / transposes / cat", ("copy", "cat", "transpose", "memcpy", "memset", "fill")),
    ("norm, silu, residual, other element-wise", ("elementwise", "vectorized", "reduce", "norm", "silu", "mul", "add")),
]


def categorize(kernel_name: str) -> str:
    k = kernel_name.lower()
    for cat, keys in _CATEGORIES:
        if any(s in k for s in keys):
            return cat
    return "other"


def profile_breakdown(runner: TorchRunner, size: int, batch: int, steps: int = 5, top: int = 12) -> dict:
    """GPU kernel time per category for `steps` eager forwards (torch.profiler, CUDA activity)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    graphs, runner.cuda_graphs = runner.cuda_graphs, False
    try:
        fn = runner.prepare(size, batch)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
        per_kernel = {}
        for e in prof.events():
            dt = getattr(e, "device_type", None)
            if dt is None or "CUDA" not in str(dt):
                continue
            us = e.time_range.end - e.time_range.start
            per_kernel[e.name] = per_kernel.get(e.name, 0.0) + us
        total = sum(per_kernel.values()) or 1.0
        cats = {}
        for name, us in per_kernel.items():
            c = categorize(name)
            cats[c] = cats.get(c, 0.0) + us
        return {"runner": runner.name, "size": size, "batch": batch, "steps": steps,
                "gpu_ms_per_forward": total / 1e3 / steps,
                "categories": {c: {"ms_per_forward": us / 1e3 / steps, "share": us / total}
                               for c, us in sorted(cats.items(), key=lambda kv: -kv[1])},
                "top_kernels": [{"name": n[:120], "ms_per_forward": us / 1e3 / steps, "share": us / total,
                                 "category": categorize(n)}
                                for n, us in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]]}
    finally:
        runner.cuda_graphs = graphs
        runner.release()
        _cleanup("cuda")


# --------------------------------------------------------------------------- output

def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """Markdown table of all rows."""
    lines = ["| model | size (tokens) | batch | status | throughput img/s | latency p50 ms | p99 ms | peak GPU MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        size = f"{r['size']}" + (f" (asked {r['requested_size']})" if r["size"] != r["requested_size"] else "")
        batch = r.get("batch")
        bstr = ("-" if batch is None else str(batch)) + (" (max)" if r.get("batch_mode") == "max" else "")
        st = r["status"]
        thr = r.get("throughput_img_s") if st in ("ok", "too_slow") else None
        if st == "too_slow":
            st = f"too slow ({r['est_ms'] / 1e3:.1f} s/call)"
        lines.append(f"| {r['runner']} | {size} ({r['tokens']}) | {bstr} | {st} | {_fmt(thr, ',.1f')} | "
                     f"{_fmt(r.get('p50_ms'), '.3f')} | {_fmt(r.get('p99_ms'), '.3f')} | "
                     f"{_fmt(r.get('peak_mem_mib'), ',.0f')} |")
    return "\n".join(lines)


def plot(result: dict, out_dir, names=("bench_throughput.png", "bench_memory.png")) -> list:
    """Throughput and peak memory vs resolution (log y), one line per runner, one panel per
    batch setting (batch 1, each fixed batch, the largest batch that fits)."""
    from pathlib import Path

    _need("matplotlib", "--plot-dir")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    panels = []
    for r in rows:
        key = ("max", None) if r["batch_mode"] == "max" else ("fixed", r["batch"])
        if key not in panels:
            panels.append(key)
    runners = list(dict.fromkeys(r["runner"] for r in result["rows"]))
    mb = result.get("settings", {}).get("max_batch")
    written = []
    for metric, ylabel, fname in (("throughput_img_s", "throughput (images/s)", names[0]),
                                  ("peak_mem_mib", "peak GPU memory (MiB)", names[1])):
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 4.4), squeeze=False)
        for ax, (mode, b) in zip(axes[0], panels):
            for i, name in enumerate(runners):
                pts = [(r["size"], r.get(metric), r["batch"]) for r in rows if r["runner"] == name
                       and r["batch_mode"] == mode and (mode == "max" or r["batch"] == b) and r.get(metric)]
                if not pts:
                    continue
                xs, ys, bs = zip(*pts)
                ax.plot(xs, ys, marker="o", label=name, color=f"C{i}")
                if mode == "max":
                    for x, y, bb in pts:
                        ax.annotate(f"b{bb}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7, color=f"C{i}")
            ax.set_yscale("log")
            ax.set_xlabel("resolution (pixels per side)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"largest batch <= {mb} that fits" if mode == "max" else f"batch {b}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        env = result.get("env", {})
        fig.suptitle(f"{env.get('gpu', env.get('device', ''))}, {result['runners'][0].get('dtype', '') if result['runners'] else ''}")
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------- the command

def check_device(device: str, cpu_capable: bool):
    """No CUDA: a clear error unless a CPU-capable model runs with device='cpu'."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("no CUDA GPU here: `vimdeploy bench` measures GPU throughput and memory. "
                         "For a CPU-only model (--scan fast, or an .onnx) pass --device cpu.")
    if device == "cpu" and not cpu_capable:
        raise BenchError("this model does not run on the CPU (--scan cuda, a TensorRT engine, or CUDA graphs); "
                         "use --device cuda")


def main_bench(model=None, model_name=None, scan=None, sizes="224,512,1024", batches="1", max_batch=None, dtype=None,
               cuda_graphs=False, compile=False, compare=(), device="cuda", warmup=3, iters=50, seconds=2.0, max_forward_s=10.0,
               profile_size=None, json_out=None, plot_dir=None, progress=True, extra_runners=()) -> dict:
    """What `vimdeploy bench` does; returns the result dict (see run_bench)."""
    import json
    from pathlib import Path

    if (model is None) == (model_name is None):
        raise BenchError("give MODEL (a checkpoint, .onnx or engine) or --model vim_tiny, not both or neither")
    scan = scan or ("cuda" if device == "cuda" else "auto")
    dtype = dtype or ("fp16" if device == "cuda" else "fp32")
    suffix = Path(model).suffix.lower() if model is not None else ""
    is_engine = suffix in (".onnx", ".plan", ".engine")
    cpu_capable = (suffix == ".onnx") or (not is_engine and scan != "cuda" and not cuda_graphs)
    check_device(device, cpu_capable)
    if device == "cpu" and compare:
        raise BenchError("--compare runs on the GPU only (the comparison is about GPU throughput and memory)")
    sizes = parse_int_list(sizes)
    batches = parse_int_list(batches)
    if max_batch is not None and max_batch <= 0:
        raise BenchError("--max-batch must be positive")
    if plot_dir is not None:
        _need("matplotlib", "--plot-dir")
    if is_engine:
        opts = {"cuda_graph": True} if (suffix != ".onnx" and cuda_graphs) else {}
        runners = [engine_runner(model, device=device, **opts)]
    else:
        runners = [vim_runner(model_name or model, scan=scan, dtype=dtype, device=device, cuda_graphs=cuda_graphs,
                              compile=compile)]
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
    result = run_bench(runners, sizes, batches, max_batch, warmup=warmup, iters=iters, seconds=seconds,
                       max_forward_s=max_forward_s, progress=progress, env=env, profile=profile)
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
    if plot_dir is not None:
        result["plots"] = [str(p) for p in plot(result, plot_dir)]
    return result
