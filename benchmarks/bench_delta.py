"""Time the delta kernel (`torch.ops.vimdeploy.delta_softplus`: dt_proj + bias + softplus, fp16)
against the dt_proj GEMM it replaces in `Mamba.scan_inputs` (cuBLAS through F.linear, K padded to
16 as the model's aligned path reads it).

    python benchmarks/bench_delta.py [--json out.json] [--shapes 6085x32,197x128] [--models Ti,S,B]

Shapes are Vim's mixer at 1248 px batch 32 (L = 6085) and 224 px batch 128 (L = 197): tokens =
L x batch, rank R = dt_rank (Ti 12, S 24, B 48), E = d_inner (384, 768, 1536), the low-rank dt
read as a slice of x_proj's padded output rows. Times: CUDA-graph replays of 4 calls, median and
min..max; bytes = delta written (tokens x E x 2) + the dt slice read; the roof is a
device-to-device copy measured here (bytes read + written per second).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vimdeploy.bench import time_graph  # noqa: E402
from vimdeploy.fileio import atomic_path  # noqa: E402
from vimdeploy.ops.delta import delta_softplus  # noqa: E402

MODELS = {"Ti": (12, 384), "S": (24, 768), "B": (48, 1536)}


def copy_bandwidth():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return 2 * n / (statistics.median(time_graph([lambda: dst.copy_(src)] * 4, reps=10)) * 1e-3)


def summary(samples):
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--shapes", default="6085x32,197x128", help="LxBATCH, comma-separated")
    ap.add_argument("--models", default="Ti,S,B")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    bw = copy_bandwidth()
    env = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "d2d_bandwidth_GBps": bw / 1e9,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    print(json.dumps(env))
    rows = []
    for name in args.models.split(","):
        R, E = MODELS[name]
        r_pad = R + (-R % 8)
        width = r_pad + 32  # x_proj's padded output row: dt (padded) + B + C
        for L, b in shapes:
            tokens = L * b
            g = torch.Generator(device="cuda").manual_seed(0)
            rows_in = (torch.randn(tokens, width, generator=g, device="cuda") * 2).half()
            dt = rows_in[:, :R]
            w = (torch.randn(E, R, generator=g, device="cuda") / R**0.5).half()
            w_pad = F.pad(w, (0, r_pad - R))
            bias = torch.randn(E, generator=g, device="cuda") * 0.5 - 4
            ours = summary(time_graph([lambda: delta_softplus(dt, w, bias)] * 4, reps=20))
            gemm = summary(time_graph([lambda: F.linear(rows_in[:, :r_pad], w_pad)] * 4, reps=20))
            nbytes = tokens * E * 2 + tokens * R * 2
            row = {
                "model": name,
                "L": L,
                "batch": b,
                "tokens": tokens,
                "R": R,
                "E": E,
                "bytes": nbytes,
                "roof_ms": nbytes / bw * 1e3,
                "delta_kernel": ours,
                "dt_proj_gemm": gemm,
            }
            rows.append(row)
            print(
                f"Vim-{name} L={L} b={b}: delta kernel {ours['median_ms']:.4f} ms, dt_proj GEMM "
                f"{gemm['median_ms']:.4f} ms, copy roof {row['roof_ms']:.4f} ms",
                flush=True,
            )
            rows_in = dt = None  # free the GPU memory before the next shape
            torch.cuda.empty_cache()
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
