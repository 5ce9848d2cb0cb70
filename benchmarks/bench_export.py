"""Export cost and ONNX Runtime CPU latency, for docs/export.md.

    python benchmarks/bench_export.py [--out-dir DIR] [--runs 10] [--json results.json]

Untrained, official-format checkpoints (random weights) of Vim-Ti/S/B are made on the
fly: export time, file size and node count do not depend on the values. Latency is Vim-Ti
at 224, batch 1: PyTorch (fast scan) vs ONNX Runtime CPU for both flavors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vimdeploy.export import export_onnx
from vimdeploy.model import VimConfig, VisionMamba
from vimdeploy.runtime import open_engine

VARIANTS = {"tiny": 192, "small": 384, "base": 768}
CASES = [("tiny", 224), ("small", 224), ("base", 224), ("tiny", 1248)]


def checkpoint(d: Path, variant: str) -> Path:
    path = d / f"vim_{variant}_random.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save({"model": VisionMamba(VimConfig(embed_dim=VARIANTS[variant])).state_dict()}, path)
    return path


def latency(run, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    q = np.percentile(times, [25, 75])
    return {
        "median_ms": statistics.median(times),
        "p25_ms": float(q[0]),
        "p75_ms": float(q[1]),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": runs,
        "warmup": warmup,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    d = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_export_"))
    d.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_at_start": os.getloadavg(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "exports": [],
        "latency": {},
    }
    for variant, size in CASES:
        for flavor in ("plugin", "onnx"):
            out = d / f"{variant}_{size}_{flavor}.onnx"
            s = export_onnx(checkpoint(d, variant), out, img_size=size, batch=1, scan=flavor, force=True)
            row = {
                "variant": variant,
                "img_size": size,
                "tokens": s["tokens"],
                "flavor": flavor,
                "export_s": s["timings"]["total_s"],
                "size_mb": s["size_mb"],
                "nodes": s["nodes"],
            }
            results["exports"].append(row)
            print(json.dumps(row), flush=True)

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    torch_engine = open_engine(checkpoint(d, "tiny"))
    results["latency"]["pytorch_fast_scan"] = latency(lambda: torch_engine.run(x), args.warmup, args.runs)
    for flavor in ("plugin", "onnx"):
        engine = open_engine(d / f"tiny_224_{flavor}.onnx")
        results["latency"][f"onnxruntime_{flavor}"] = latency(lambda: engine.run(x), args.warmup, args.runs)
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(results["latency"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
