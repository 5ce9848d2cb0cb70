"""Time the BiSelectiveScan CUDA kernel against the physical limit, the PyTorch fast scan
and the official mamba_ssm pattern (when its `selective_scan_cuda` extension imports).

    python benchmarks/bench_scan.py [--json out.json] [--variants [LIST]] [--shapes LxB,...] [--models Ti,S,B] [--quick]

Physical limit = max(memory roof, exp roof):
  memory roof = (6*b*L*E + 4*b*L*N) * element size / device-to-device copy bandwidth
                (measured here, counting bytes read + written);
  exp roof    = b*L*E*N*2 exps / MUFU ex2 rate (measured here with a CuPy kernel when CuPy
                is available, else 16 ex2/clk/SM * SMs * max SM clock).
Times: CUDA-graph replays of K calls (inputs rotated so that small shapes do not run from
L2 alone), median and min..max over repetitions.

Official pattern (hustvl/Vim mamba_inner_fn_no_out_proj, bimamba v2), layout (b, E, L):
  xz_b = xz.flip(-1); out = fwd(x, dt, A, B, C, D, z, bias) + fwd(x_b, dt_b, ..., z_b).flip(-1);
  out * 0.5 (if_divide_out). x_b, dt_b, B_b, C_b come flipped from the backward conv and
  projections, so only the xz flip is timed; the layout transposes are not timed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vimdeploy.bench import time_calls, time_graph  # noqa: E402
from vimdeploy.ops.cuda import VARIANTS  # noqa: E402
from vimdeploy.ops.reference import bi_selective_scan_fast  # noqa: E402

N = 16
MODELS = {"Ti": 384, "S": 768, "B": 1536}
SHAPES = [(197, 1), (197, 8), (197, 128), (6085, 1), (6085, 8), (6085, 32)]


def smi(field):
    try:
        return (
            subprocess.run(
                ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.strip()
            .splitlines()[0]
        )
    except Exception:  # noqa: BLE001
        return "?"


def time_eager(fn, reps=5, warmup=1):
    for _ in range(warmup):
        fn()
    return time_calls(fn, reps, "cuda")


def summary(samples):
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples), "n": len(samples)}


def d2d_bandwidth():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    t = statistics.median(time_graph([lambda: dst.copy_(src)] * 4, reps=10))
    return 2 * n / (t * 1e-3)  # bytes read + written per second


MUFU_SRC = r"""
extern "C" __global__ void ex2_rate(float* out, int iters) {
    float a[8];
    for (int i = 0; i < 8; ++i) a[i] = -1e-3f * (threadIdx.x + i);
    for (int k = 0; k < iters; ++k)
        #pragma unroll
        for (int i = 0; i < 8; ++i) asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(a[i]));
    float s = 0; for (int i = 0; i < 8; ++i) s += a[i];
    if (s == 12345.f) out[0] = s;
}
"""


def mufu_rate(sms):
    """ex2 per second, measured with CuPy (NVRTC) if present."""
    try:
        import cupy as cp
    except ImportError:
        return None
    k = cp.RawKernel(MUFU_SRC, "ex2_rate")
    out = cp.zeros(1, dtype=cp.float32)
    iters, threads, blocks = 4096, 256, sms * 8
    k((blocks,), (threads,), (out, cp.int32(iters)))
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    best = math.inf
    for _ in range(5):
        start.record()
        k((blocks,), (threads,), (out, cp.int32(iters)))
        end.record()
        end.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, end))
    return blocks * threads * iters * 8 / (best * 1e-3)


def load_official():
    try:
        import selective_scan_cuda  # mamba_ssm's extension

        return selective_scan_cuda
    except ImportError:
        pass
    try:
        from mamba_ssm.ops import selective_scan_interface as ssi

        return ssi.selective_scan_cuda
    except Exception:  # noqa: BLE001
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--variants",
        nargs="?",
        const="all",
        default=None,
        metavar="LIST",
        help="also time kernel variants (all, or a comma-separated subset of "
        + ",".join(map(str, VARIANTS))
        + ") and forced L splits (variant 2's two launches; the warp-chunks variant's chunk counts when it is listed)",
    )
    ap.add_argument(
        "--shapes",
        default=None,
        metavar="LxB,...",
        help="comma-separated L x batch shapes (default: " + ",".join(f"{L}x{b}" for L, b in SHAPES) + ")",
    )
    ap.add_argument("--quick", action="store_true", help="Vim-Ti only")
    ap.add_argument("--models", default=None, help="comma-separated subset of Ti,S,B (default: all; --quick: Ti)")
    ap.add_argument("--no-fast", action="store_true", help="skip the PyTorch fast scan")
    ap.add_argument("--no-official", action="store_true", help="skip mamba_ssm even if it imports")
    ap.add_argument(
        "--delta-given",
        action="store_true",
        help="also time the kernel with delta_softplus=False (delta computed before the op, as the "
        "fp16 model does with ops/delta.py): column cuda_delta_given (with --variants also "
        "cuda_v<N>_delta_given)",
    )
    args = ap.parse_args()
    variants = list(VARIANTS) if args.variants in (None, "all") else [int(v) for v in args.variants.split(",")]
    if any(v not in VARIANTS for v in variants):
        ap.error(f"--variants: choose from {','.join(map(str, VARIANTS))}")
    try:
        shapes = (
            SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        )
    except ValueError:
        ap.error(f"--shapes: expected LxB[,LxB...], got {args.shapes!r}")
    if any(len(s) != 2 or min(s) < 1 for s in shapes):
        ap.error(f"--shapes: expected LxB[,LxB...] with L, B >= 1, got {args.shapes!r}")

    from tests.test_plugin_cuda import make_inputs
    from vimdeploy.ops import cuda as plugin
    from vimdeploy.ops.native import load_library

    load_library()  # fails early, with the build hint, where the kernel library is missing
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    clk = smi("clocks.max.sm")
    clock_mhz = float(clk) if clk.replace(".", "").isdigit() else 1980.0
    bw = d2d_bandwidth()
    mufu_measured = mufu_rate(sms)
    mufu_computed = 16 * sms * clock_mhz * 1e6
    mufu = mufu_measured or mufu_computed
    official = None if args.no_official else load_official()
    env = {
        "gpu": torch.cuda.get_device_name(0),
        "driver": smi("driver_version"),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "sms": sms,
        "max_sm_clock_mhz": clock_mhz,
        "d2d_bandwidth_GBps": bw / 1e9,
        "ex2_rate_measured_per_s": mufu_measured,
        "ex2_rate_computed_per_s": mufu_computed,
        "official": official is not None,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    print(json.dumps(env, indent=1))
    rows = []
    names = args.models.split(",") if args.models else (["Ti"] if args.quick else list(MODELS))
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}: choose from {','.join(MODELS)}")
    models = {m: MODELS[m] for m in names}
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    for dtype in (torch.float16, torch.float32):
        for mname, E in models.items():
            for L, b in shapes:
                es = torch.finfo(dtype).bits // 8
                nbytes = (6 * b * L * E + 4 * b * L * N) * es
                sets = max(1, min(8, math.ceil(4 * l2 / nbytes)))
                inputs = [make_inputs(b, L, E, dtype, seed=s) for s in range(sets)]
                outs = [torch.empty(b, L, E, dtype=dtype, device="cuda") for _ in range(sets)]
                row = {
                    "model": mname,
                    "E": E,
                    "L": L,
                    "batch": b,
                    "dtype": str(dtype).replace("torch.", ""),
                    "mem_roof_ms": nbytes / bw * 1e3,
                    "exp_roof_ms": b * L * E * N * 2 / mufu * 1e3,
                }
                row["limit_ms"] = max(row["mem_roof_ms"], row["exp_roof_ms"])

                def ours(i, chunks=0, variant=0):
                    return lambda: plugin.launch(outs[i], inputs[i], num_chunks=chunks, variant=variant)

                row["cuda"] = summary(time_graph([ours(i) for i in range(sets)]))
                if args.delta_given:
                    # the same deltas, given: dt' = softplus(dt + bias) - bias, so that dt' + bias = delta
                    given = [
                        a._replace(
                            **{
                                f"dt_{d}": (
                                    torch.nn.functional.softplus(
                                        getattr(a, f"dt_{d}").float() + getattr(a, f"dt_bias_{d}")
                                    )
                                    - getattr(a, f"dt_bias_{d}")
                                ).to(dtype)
                                for d in ("fwd", "bwd")
                            }
                        )
                        for a in inputs
                    ]
                    row["cuda_delta_given"] = summary(
                        time_graph(
                            [lambda i=i: plugin.launch(outs[i], given[i], delta_softplus=False) for i in range(sets)]
                        )
                    )
                    if args.variants:  # the variant choice was tuned with the softplus in the op
                        for v in variants:
                            row[f"cuda_v{v}_delta_given"] = summary(
                                time_graph(
                                    [
                                        lambda i=i, v=v: plugin.launch(
                                            outs[i], given[i], delta_softplus=False, variant=v
                                        )
                                        for i in range(sets)
                                    ],
                                    reps=10,
                                )
                            )
                    del given
                if args.variants:
                    for v in variants:
                        row[f"cuda_v{v}"] = summary(time_graph([ours(i, 0, v) for i in range(sets)], reps=10))
                    # forced L splits: variant 2 over two launches, the warp-chunks path (<= 16 chunks)
                    for ch in (1, 2, 4, 8, 16, 32, 64) if b <= 8 else (1, 2):
                        if ch <= L // 32:
                            row[f"cuda_v2_chunks{ch}"] = summary(
                                time_graph([ours(i, ch, 2) for i in range(sets)], reps=10)
                            )
                        if plugin.WARP_CHUNKS in variants and b <= 8 and ch <= 16:
                            row[f"cuda_v{plugin.WARP_CHUNKS}_chunks{ch}"] = summary(
                                time_graph([ours(i, ch, plugin.WARP_CHUNKS) for i in range(sets)], reps=10)
                            )
                if not args.no_fast and b * L * E <= 32 * 6085 * 384:
                    try:
                        row["fast"] = summary(time_eager(lambda: bi_selective_scan_fast(inputs[0]), reps=3))
                    except torch.OutOfMemoryError:
                        row["fast"] = "OOM"
                    torch.cuda.empty_cache()
                if official is not None:

                    def prep(a):
                        z, xf, dtf, Bf, Cf, xb, dtb, Bb, Cb, Af, Ab, Df, Db, bf, bb = a
                        t = lambda v: v.transpose(1, 2).contiguous()  # noqa: E731
                        fl = lambda v: t(v).flip(-1).contiguous()  # noqa: E731
                        xz = torch.cat([t(xf), t(z)], dim=1)
                        return dict(
                            xz=xz,
                            x=xz[:, :E],
                            z=xz[:, E:],
                            dt=t(dtf),
                            B=t(Bf).unsqueeze(1),
                            C=t(Cf).unsqueeze(1),
                            xb=fl(xb),
                            dtb=fl(dtb),
                            Bb=fl(Bb).unsqueeze(1),
                            Cb=fl(Cb).unsqueeze(1),
                            A=Af,
                            Ab=Ab,
                            D=Df,
                            Db=Db,
                            bias=bf,
                            biasb=bb,
                        )

                    op = [prep(a) for a in inputs]

                    def official_call(i):
                        o = op[i]

                        def run():
                            zb = o["xz"].flip(-1)[:, E:]
                            yf = official.fwd(o["x"], o["dt"], o["A"], o["B"], o["C"], o["D"], o["z"], o["bias"], True)[
                                -1
                            ]
                            yb = official.fwd(
                                o["xb"], o["dtb"], o["Ab"], o["Bb"], o["Cb"], o["Db"], zb, o["biasb"], True
                            )[-1]
                            return (yf + yb.flip(-1)) * 0.5

                        return run

                    # check we time the same function
                    got = official_call(0)().transpose(1, 2).float()
                    ref = plugin.launch(outs[0], inputs[0]).float()
                    row["official_vs_ours_maxabs"] = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
                    row["official"] = summary(time_graph([official_call(i) for i in range(sets)], reps=10))
                    del op
                rows.append(row)
                inputs = outs = None  # free the GPU memory before the next shape
                torch.cuda.empty_cache()
                med = row["cuda"]["median_ms"]
                off = row.get("official")
                fast = row.get("fast")
                print(
                    f"{mname:2s} L={L:5d} b={b:3d} {row['dtype']:7s} ours {med:8.4f} ms  limit {row['limit_ms']:7.4f} "
                    f"(mem {row['mem_roof_ms']:.4f} exp {row['exp_roof_ms']:.4f}) x{med / row['limit_ms']:.2f}"
                    + (f"  official {off['median_ms']:8.4f} ({off['median_ms'] / med:.1f}x)" if off else "")
                    + (f"  fast {fast['median_ms']:.2f}" if isinstance(fast, dict) else "")
                    + "".join(f"  {k[5:]}={v['median_ms']:.4f}" for k, v in row.items() if k.startswith("cuda_")),
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print_table(env, rows)


def print_table(env, rows):
    print(
        f"\n{env['gpu']}, driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}; "
        f"D2D {env['d2d_bandwidth_GBps']:.0f} GB/s; "
        f"ex2 {((env['ex2_rate_measured_per_s'] or env['ex2_rate_computed_per_s']) / 1e12):.2f} T/s"
    )
    print(
        "| model | L | batch | dtype | memory roof ms | exp roof ms | ours ms (min..max) | ours / limit "
        "| official ms | official / ours | fast scan ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        c = r["cuda"]
        off = r.get("official")
        fast = r.get("fast")
        print(
            f"| Vim-{r['model']} | {r['L']} | {r['batch']} | {r['dtype']} "
            f"| {r['mem_roof_ms']:.4f} | {r['exp_roof_ms']:.4f} | "
            f"{c['median_ms']:.4f} ({c['min_ms']:.4f}..{c['max_ms']:.4f}) | {c['median_ms'] / r['limit_ms']:.2f} | "
            + (f"{off['median_ms']:.4f} | {off['median_ms'] / c['median_ms']:.1f} | " if off else "n/a | n/a | ")
            + (f"{fast['median_ms']:.2f} |" if isinstance(fast, dict) else f"{fast or 'skipped'} |")
        )


if __name__ == "__main__":
    main()
