"""The sweep over runners x resolutions x batches, and the largest-batch search on OOM."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .common import is_oom, snap_size
from .timing import _cleanup, measure


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


def run_bench(
    runners,
    sizes,
    batches=(1,),
    max_batch=None,
    warmup=3,
    iters=50,
    seconds=2.0,
    max_forward_s=10.0,
    progress=True,
    env=None,
    profile=None,
) -> dict:
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
                base = {
                    "runner": runner.name,
                    "device": runner.device,
                    "requested_size": req,
                    "size": size,
                    "tokens": ((size - runner.patch) // runner.stride + 1) ** 2 + 1,
                }
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
                                    lambda bb, runner=runner, size=size, mf=mf: measure(
                                        runner, size, bb, warmup, iters, seconds, mf
                                    ),
                                    b,
                                    on_oom=lambda runner=runner: (runner.release(), _cleanup(runner.device)),
                                )
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
                            bar.write(
                                f"  {runner.name} {size}px batch {row.get('batch')}: {row['status']}"
                                + (f" ({row.get('error') or row.get('note', '')})" if row["status"] != "oom" else "")
                            )
    finally:
        if bar:
            bar.close()
    out = {
        "env": env or {},
        "settings": {
            "sizes": sizes,
            "batches": batches,
            "max_batch": max_batch,
            "warmup": warmup,
            "iters": iters,
            "seconds": seconds,
            "max_forward_s": max_forward_s,
        },
        "runners": [{"name": r.name, **r.info} for r in runners],
        "rows": rows,
    }
    if profile is not None:
        out["profile"] = profile
    return out
