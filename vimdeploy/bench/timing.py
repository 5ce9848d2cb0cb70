"""Timing one configuration: warm-up, CUDA events (or the wall clock) around each call,
median / percentiles, peak memory."""

from __future__ import annotations

import gc
import math
import statistics
import time

from .runners import Runner


def _cleanup(device):
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def time_calls(fn, n, timer):
    """n timings (ms) of fn: CUDA events around each call ("cuda") or the wall clock."""
    if timer == "cuda":
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


def time_graph(fns, reps=20, warmup=3):
    """Capture `fns` (callables, e.g. one per rotated input set so that small shapes do not
    run from L2 alone) in one CUDA graph; per-call ms, one sample per replay (the replay's
    time divided by len(fns)). For kernel benchmarks (benchmarks/bench_scan.py, bench_conv.py)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for fn in fns:
            fn()
    for _ in range(warmup):
        g.replay()
    samples = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) / len(fns))
    del g
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


def measure(
    runner: Runner,
    size: int,
    batch: int,
    warmup: int = 3,
    iters: int = 50,
    seconds: float = 2.0,
    max_forward_s: float = 10.0,
    min_iters: int = 3,
) -> dict:
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
        row.update(
            status="too_slow",
            est_ms=first_s * 1e3,
            throughput_img_s=batch / first_s,
            note=f"one call took {first_s:.1f} s > {max_forward_s} s: not timed",
        )
        if cuda:
            row["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return row
    for _ in range(max(0, warmup - 1)):
        fn()
    _sync(runner.timer)
    n = int(max(min_iters, min(iters, seconds / max(first_s, 1e-6))))
    samples = time_calls(fn, n, runner.timer)
    med = statistics.median(samples)
    row.update(
        status="ok",
        iters=n,
        median_ms=med,
        p50_ms=_percentile(samples, 0.5),
        p99_ms=_percentile(samples, 0.99),
        min_ms=min(samples),
        max_ms=max(samples),
        throughput_img_s=batch * 1e3 / med,
    )
    if cuda:
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row
