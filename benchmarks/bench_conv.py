"""Time the fused depthwise conv + SiLU kernel (`torch.ops.vimdeploy.conv_silu_bidir`) against
the multiply-add path it replaces in `Mamba.scan_inputs` (pad + k addcmuls + SiLU per direction),
eager and torch.compile'd (Inductor fuses that path into one Triton kernel).

    python benchmarks/bench_conv.py [--json out.json] [--shapes 6085x32,197x128] [--dtype fp16]

Shapes are Vim-Ti's mixer (E = 384, k = 4): 1248 px at batch 32 (L = 6085) and 224 px at batch
128 (L = 197). Times: CUDA-graph replays of several calls (inputs rotated over enough copies that
each replay reads >= 256 MB, so that the smaller shape does not run from L2), after warm-up;
median and min..max over the replays. Bytes moved = x read once + y_fwd and y_bwd written
(3 * b * L * E * element size); GB/s = bytes / median time. The roof is a device-to-device copy
measured here (bytes read + written per second).

In fp16 two more rows: the conv op followed by both directions' x_proj GEMMs (Vim-Ti's padded
48 x 384 weights, as the model runs them apart), and `conv_silu_xproj_bidir` (the same in one
kernel); their GB/s count the bytes each must move (the GEMMs read y_fwd and y_bwd again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vimdeploy.bench import time_graph  # noqa: E402
from vimdeploy.model.vim import _depthwise_conv_token_major  # noqa: E402
from vimdeploy.ops.conv import conv_silu_bidir, conv_silu_xproj_bidir, launch  # noqa: E402

E, K = 384, 4
ROWS = 48  # Vim-Ti's x_proj (12 + 2 x 16 outputs) with dt's rows padded to 16
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def copy_bandwidth():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    t = statistics.median(time_graph([lambda: dst.copy_(src)] * 4, reps=10))
    return 2 * n / (t * 1e-3)


def multiply_adds(x, cf, cb):
    """`Mamba.scan_inputs`'s token-major front without the fused kernel."""
    L = x.shape[1]
    xp = F.pad(x, (0, 0, K - 1, K - 1))
    return (F.silu(_depthwise_conv_token_major(xp, cf, False, L)), F.silu(_depthwise_conv_token_major(xp, cb, True, L)))


def parse_shapes(text):
    out = []
    for item in text.split(","):
        L, b = item.lower().split("x")
        out.append((int(L), int(b)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="6085x32,197x128", help="LxBATCH,... (default: Vim-Ti 1248/32 and 224/128)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd multiply-adds")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: needs a CUDA GPU")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    cf = nn.Conv1d(E, E, K, groups=E, padding=K - 1).cuda()
    cb = nn.Conv1d(E, E, K, groups=E, padding=K - 1).cuda()
    wf, wb = cf.weight[:, 0].detach().contiguous(), cb.weight[:, 0].detach().contiguous()
    bf, bb = cf.bias.detach(), cb.bias.detach()
    compiled = None if args.no_compile else torch.compile(multiply_adds)

    env = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dtype": args.dtype,
        "E": E,
        "k": K,
    }
    env["copy_GBps"] = copy_bandwidth() / 1e9
    rows = []
    with torch.no_grad():
        for L, b in parse_shapes(args.shapes):
            elt = torch.finfo(dtype).bits // 8
            nbytes = 3 * b * L * E * elt
            sets = max(1, -(-256 * 2**20 // nbytes))
            xs = [torch.randn(b, L, E, device="cuda").to(dtype) for _ in range(sets)]
            ys = [(torch.empty_like(x), torch.empty_like(x)) for x in xs]

            ref = multiply_adds(xs[0], cf, cb)
            got = conv_silu_bidir(xs[0], cf.weight, cf.bias, cb.weight, cb.bias)
            diff = max((g.float() - r.float()).abs().max().item() for g, r in zip(got, ref))

            row = {
                "L": L,
                "batch": b,
                "bytes": nbytes,
                "rotated_sets": sets,
                "max_abs_diff_fused_vs_multiply_adds": diff,
            }
            cands = {"fused (op)": [lambda x=x: conv_silu_bidir(x, cf.weight, cf.bias, cb.weight, cb.bias) for x in xs]}
            for v in ("tiled8", "tiled32", "async32", "async16", "generic", "scalar"):
                cands[f"fused {v}"] = [
                    lambda x=x, y=y, v=v: launch(x, wf, bf, wb, bb, y[0], y[1], variant=v) for x, y in zip(xs, ys)
                ]
            bytes_of = {}
            if dtype == torch.float16:
                pf, pb = (torch.randn(ROWS, E, device="cuda").half() / E**0.5 for _ in range(2))

                def apart(x):
                    yf, yb = conv_silu_bidir(x, cf.weight, cf.bias, cb.weight, cb.bias)
                    return F.linear(yf, pf), F.linear(yb, pb)

                out = b * L * ROWS * elt
                cands["conv, x_proj GEMMs"] = [lambda x=x: apart(x) for x in xs]
                bytes_of["conv, x_proj GEMMs"] = nbytes + 2 * (b * L * E * elt + out)
                cands["conv + x_proj kernel"] = [
                    lambda x=x: conv_silu_xproj_bidir(x, cf.weight, cf.bias, cb.weight, cb.bias, pf, pb) for x in xs
                ]
                bytes_of["conv + x_proj kernel"] = nbytes + 2 * out
            cands["multiply-adds eager"] = [lambda x=x: multiply_adds(x, cf, cb) for x in xs]
            if compiled is not None:
                for x in xs:
                    compiled(x, cf, cb)  # compile outside the capture
                cands["multiply-adds compiled"] = [lambda x=x: compiled(x, cf, cb) for x in xs]
            times = {}
            for name, fns in cands.items():
                samples = time_graph(fns, reps=args.reps)
                med = statistics.median(samples)
                times[name] = {
                    "median_ms": med,
                    "min_ms": min(samples),
                    "max_ms": max(samples),
                    "n": len(samples),
                    "GBps": bytes_of.get(name, nbytes) / (med * 1e-3) / 1e9,
                }
            row["times"] = times
            rows.append(row)
            torch.cuda.empty_cache()

    print(
        f"{env['gpu']}, torch {env['torch']} (CUDA {env['cuda']}), {args.dtype}, E={E}, k={K}; "
        f"device-to-device copy {env['copy_GBps']:.0f} GB/s (read + write)"
    )
    for row in rows:
        print(
            f"\nL={row['L']} batch={row['batch']}: {row['bytes'] / 1e6:.1f} MB moved, "
            f"max |fused - multiply-adds| = {row['max_abs_diff_fused_vs_multiply_adds']:.2e}"
        )
        print(f"  {'path':26s} {'median ms':>10s} {'min..max ms':>17s} {'GB/s':>7s} {'% copy':>7s}")
        base_name = "multiply-adds compiled" if "multiply-adds compiled" in row["times"] else "multiply-adds eager"
        base = row["times"][base_name]["median_ms"]
        for name, t in row["times"].items():
            print(
                f"  {name:26s} {t['median_ms']:10.4f} {t['min_ms']:8.4f}..{t['max_ms']:<8.4f} {t['GBps']:7.0f} "
                f"{100 * t['GBps'] / env['copy_GBps']:6.1f}%  ({base / t['median_ms']:.2f}x {base_name})"
            )
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
