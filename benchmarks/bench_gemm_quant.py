"""What INT8 and FP8 could buy Vim: its GEMMs timed in fp16, INT8 and FP8 (E4M3) on one GPU.

    python benchmarks/bench_gemm_quant.py [--models Ti,S,B] [--sizes 224,1248] [--batches 1,32]
                                          [--out benchmarks/results/gemm_quant] [--dry-run]

GEMM time, not engine time: each row is one matrix product of a Vim block (in_proj, x_proj,
dt_proj, out_proj) or the head, timed alone through cuBLAS/cuBLASLt as PyTorch calls it:
fp16 `torch.mm` (fp16 out), INT8 `torch._int_mm` (int32 out), FP8 `torch._scaled_mm` (E4M3
operands, per-tensor fp32 scales, fp16 out). An engine also runs the scan, the conv, the
norms and the Q/DQ, and TensorRT may fuse or pick other kernels, so a GEMM speed-up bounds
what quantization can give the GEMM share of an engine, nothing more.

Shapes, for activations (M, K) times the weight (K, N) (nn.Linear's weight (N, K), transposed,
so the second operand is column-major as cuBLASLt's INT8 and FP8 paths want):
M = batch * tokens (tokens = patches + class token: 197 at 224 px, 6085 at 1248 px for
patch 16), M = batch for the head. x_proj and dt_proj run twice per block (forward and
backward direction); the `calls` column says how many times a block (or the model) runs each.

Padding (the kernels' shape rules): `_int_mm` needs M > 16 and K, N multiples of 8;
`_scaled_mm` needs K and N multiples of 16 (M is padded to 16 too). Shapes that break a rule
are padded up to the next valid size (a deployment pads with zeros; the operands here are
made at that size), and the padded shape is what is timed (the `padded` column); throughput
is counted on the unpadded shape, so padding shows as lost speed (x_proj's N = dt_rank + 32
and dt_proj's K = dt_rank are the padded ones; the head at batch 1 pads M from 1 to 17 / 16).

Timing: each shape's calls are captured in one CUDA graph (inputs rotated over a few copies
so that small shapes do not run from L2 alone) and replayed `--reps` times between CUDA
events after `--warmup` replays (vimdeploy.bench.time_graph); the table gives the median
and min..max per call. Needs a CUDA GPU with FP8 (compute capability 8.9+: Ada, Hopper,
Blackwell) for the FP8 column; without FP8 the column is skipped, without CUDA the script
says so and exits 1 (`--dry-run` prints the shape table on any machine; `--cpu-check` runs
each padded GEMM once on the CPU against the fp32 product). About 2 minutes on
an H100 with the defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vimdeploy.fileio import write_text  # noqa: E402
from vimdeploy.model import VARIANTS  # noqa: E402

MODELS = {"Ti": VARIANTS["tiny"], "S": VARIANTS["small"], "B": VARIANTS["base"]}
PRECISIONS = ("fp16", "int8", "fp8")
E4M3_MAX = 448.0
ROTATE_BYTES = 64 << 20  # input copies per graph until they exceed L2 (50 MB on an H100)


def gemm_shapes(cfg, img_size: int, batch: int) -> list[dict]:
    """The (M, K, N) of one Vim block's linear layers and of the head, with calls per run."""
    m = batch * cfg.tokens(img_size)
    d, e, r, n = cfg.embed_dim, cfg.d_inner, cfg.dt_rank, cfg.d_state
    return [
        {"gemm": "in_proj", "M": m, "K": d, "N": 2 * e, "calls": "1 per block"},
        {"gemm": "x_proj", "M": m, "K": e, "N": r + 2 * n, "calls": "2 per block"},
        {"gemm": "dt_proj", "M": m, "K": r, "N": e, "calls": "2 per block"},
        {"gemm": "out_proj", "M": m, "K": e, "N": d, "calls": "1 per block"},
        {"gemm": "head", "M": batch, "K": d, "N": cfg.num_classes, "calls": "1 per model"},
    ]


def _up(x: int, multiple: int, minimum: int = 0) -> int:
    return max(minimum, -(-x // multiple) * multiple)


def padded_shape(precision: str, m: int, k: int, n: int) -> tuple[int, int, int]:
    """The shape a kernel is called with: `_int_mm` M > 16, K and N % 8; `_scaled_mm` all % 16."""
    if precision == "int8":
        return max(m, 17), _up(k, 8), _up(n, 8)
    if precision == "fp8":
        return _up(m, 16), _up(k, 16), _up(n, 16)
    return m, k, n


def _operands(torch, precision: str, m: int, k: int, n: int, copies: int, device: str = "cuda"):
    """`copies` activation tensors (M, K) and one weight (K, N), column-major, in the precision,
    with the fp32 values they were made from (activations and weights of magnitude ~1: the
    per-tensor scale 4 / qmax covers 4 standard deviations)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = [torch.randn(m, k, device=device, generator=gen) for _ in range(copies)]
    w = torch.randn(n, k, device=device, generator=gen)
    if precision == "fp16":
        return [x.half() for x in a], w.half().t(), (a, w)
    if precision == "int8":
        q = lambda x: x.mul(127 / 4).round().clamp(-127, 127).to(torch.int8)  # noqa: E731
        return [q(x) for x in a], q(w).t(), (a, w)
    f8 = lambda x: (x * (E4M3_MAX / 4)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)  # noqa: E731
    return [f8(x) for x in a], f8(w).t(), (a, w)


def _gemm(torch, precision: str, device: str = "cuda"):
    """The product in fp16 (or int32 for INT8, whose scale `unscale` gives)."""
    if precision == "fp16":
        return torch.mm
    if precision == "int8":
        return torch._int_mm
    scale = torch.tensor(4 / E4M3_MAX, device=device)  # per-tensor scales, as a calibrated model has
    return lambda a, b: torch._scaled_mm(a, b, scale_a=scale, scale_b=scale, out_dtype=torch.float16)


def unscale(precision: str) -> float:
    return (4 / 127) ** 2 if precision == "int8" else 1.0


def time_gemm(torch, time_graph, precision, m, k, n, reps, warmup) -> list[float]:
    copies = max(1, min(8, math.ceil(ROTATE_BYTES / (m * k * (2 if precision == "fp16" else 1)))))
    acts, weight, _ = _operands(torch, precision, m, k, n, copies)
    mm = _gemm(torch, precision)
    outs = [None] * copies

    def call(i):
        def run():
            outs[i] = mm(acts[i], weight)

        return run

    return time_graph([call(i) for i in range(copies)], reps=reps, warmup=warmup)


def fp8_supported(torch) -> bool:
    return hasattr(torch, "float8_e4m3fn") and torch.cuda.get_device_capability() >= (8, 9)


def run(args) -> dict:
    import torch

    from vimdeploy.bench import time_graph

    precisions = [p for p in PRECISIONS if p != "fp8" or fp8_supported(torch)]
    rows = []
    for model in args.models:
        for size in args.sizes:
            for batch in args.batches:
                for shape in gemm_shapes(MODELS[model], size, batch):
                    row = {"model": f"Vim-{model}", "img_size": size, "batch": batch, **shape}
                    flops = 2 * shape["M"] * shape["K"] * shape["N"]
                    for precision in precisions:
                        m, k, n = padded_shape(precision, shape["M"], shape["K"], shape["N"])
                        t = time_gemm(torch, time_graph, precision, m, k, n, args.reps, args.warmup)
                        torch.cuda.empty_cache()  # the operands of the last shape are freed by now
                        med = statistics.median(t)
                        row[precision] = {
                            "median_ms": med,
                            "min_ms": min(t),
                            "max_ms": max(t),
                            "tflops": flops / med / 1e9,
                            "padded": [m, k, n] if (m, k, n) != (shape["M"], shape["K"], shape["N"]) else None,
                        }
                    for precision in precisions[1:]:
                        row[precision]["speedup_vs_fp16"] = row["fp16"]["median_ms"] / row[precision]["median_ms"]
                    rows.append(row)
                    print(_markdown_row(row, precisions), flush=True)
    return {
        "what": "GEMM time (cuBLAS/cuBLASLt through PyTorch), not engine time",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "precisions": precisions,
        "reps": args.reps,
        "warmup": args.warmup,
        "rows": rows,
    }


def _markdown_header(precisions) -> str:
    cols = ["model", "px", "batch", "GEMM", "M x K x N", "calls"]
    for p in precisions:
        cols += [f"{p} ms (min..max)"] + ([f"{p} x fp16"] if p != "fp16" else [])
    return "| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols)


def _markdown_row(row, precisions) -> str:
    cells = [row["model"], str(row["img_size"]), str(row["batch"]), row["gemm"]]
    cells += [f"{row['M']} x {row['K']} x {row['N']}", row["calls"]]
    for p in precisions:
        r = row[p]
        pad = f" (padded {'x'.join(map(str, r['padded']))})" if r["padded"] else ""
        cells.append(f"{r['median_ms']:.4f} ({r['min_ms']:.4f}..{r['max_ms']:.4f}){pad}")
        if p != "fp16":
            cells.append(f"{r['speedup_vs_fp16']:.2f}x")
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict) -> str:
    lines = [
        f"# GEMM time per precision on {result['device']} (torch {result['torch']}, CUDA {result['cuda']})",
        "",
        "GEMM time, not engine time: one matrix product at a time (`python benchmarks/bench_gemm_quant.py`).",
        "",
        _markdown_header(result["precisions"]),
    ]
    lines += [_markdown_row(r, result["precisions"]) for r in result["rows"]]
    return "\n".join(lines) + "\n"


def dry_run(args) -> None:
    print("| model | px | batch | GEMM | M x K x N | int8 called as | fp8 called as |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        for size in args.sizes:
            for batch in args.batches:
                for s in gemm_shapes(MODELS[model], size, batch):
                    mkn = (s["M"], s["K"], s["N"])
                    i8, f8 = (padded_shape(p, *mkn) for p in ("int8", "fp8"))
                    print(
                        f"| Vim-{model} | {size} | {batch} | {s['gemm']} | {' x '.join(map(str, mkn))} | "
                        f"{' x '.join(map(str, i8))} | {' x '.join(map(str, f8))} |"
                    )


def cpu_check(args) -> int:
    """Each padded GEMM once on the CPU (M cut to 32): the operands, paddings and scales give
    the fp32 product within the format's error. Checks the script, not the GPU's numbers."""
    import torch

    worst = {}
    for model in args.models:
        for s in gemm_shapes(MODELS[model], args.sizes[0], 1):
            for precision in PRECISIONS:
                m, k, n = padded_shape(precision, min(s["M"], 32), s["K"], s["N"])
                acts, weight, (a, w) = _operands(torch, precision, m, k, n, 1, device="cpu")
                out = _gemm(torch, precision, device="cpu")(acts[0], weight).float() * unscale(precision)
                ref = a[0] @ w.t()
                err = float((out - ref).norm() / ref.norm())
                worst[precision] = max(worst.get(precision, 0.0), err)
                print(f"Vim-{model} {s['gemm']:8s} {precision}: called as {m}x{k}x{n}, relative error {err:.4f}")
    bounds = {"fp16": 0.01, "int8": 0.05, "fp8": 0.1}
    failed = [p for p, e in worst.items() if e > bounds[p]]
    print(f"worst relative error per precision: {worst}; {'FAILED ' + ', '.join(failed) if failed else 'ok'}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["Ti", "S", "B"])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[224, 1248])
    parser.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 32])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gemm_quant")
    parser.add_argument("--dry-run", action="store_true", help="print the shapes (and paddings) and exit")
    parser.add_argument("--cpu-check", action="store_true", help="run each padded GEMM once on the CPU and exit")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        print(f"error: unknown model {', '.join(unknown)} (choose from {', '.join(MODELS)}).", file=sys.stderr)
        return 1
    if args.dry_run:
        dry_run(args)
        return 0
    if args.cpu_check:
        return cpu_check(args)
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device: this benchmark times GPU GEMMs (--dry-run shows the shapes).", file=sys.stderr)
        return 1
    print(_markdown_header(PRECISIONS if fp8_supported(torch) else PRECISIONS[:2]), flush=True)
    result = run(args)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    write_text(json_path, json.dumps(result, indent=1) + "\n")
    write_text(md_path, markdown(result))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
