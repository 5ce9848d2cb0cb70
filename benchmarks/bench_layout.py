"""The mixer's GPU layout, measured side by side in one run: transposing path vs token-major.

    python benchmarks/bench_layout.py [--json out.json]

Vim-Ti, fp16, the CUDA scan kernel, whole forward as a CUDA graph (vimdeploy.bench's
runner), at 224/batch 128 and 1248/batch 32, with DeiT-Ti (timm: eager attention, SDPA, and
SDPA with torch.compile + CUDA graphs) in the same run for the ratios of docs/bench.md.
Needs a GPU, the kernel library and timm.
"""

import argparse
import json

from vimdeploy import bench
from vimdeploy.fileio import atomic_path
from vimdeploy.model import TokenMajorFront

CONFIGS = [(224, 128), (1248, 32), (1248, 128), (1248, 1)]


def emit(rows, path, env, final=False):
    """Print the newest row; rewrite the JSON after every row (temp file, then rename), so a run
    cut short by a time limit keeps what it measured."""
    if not final:
        print(json.dumps(rows[-1]), flush=True)
    if path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"environment": env, "rows": rows, "complete": final}, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--compile", action="store_true", help="also Vim with torch.compile (Inductor)")
    parser.add_argument("--only-compile", action="store_true", help="skip the layout comparison")
    parser.add_argument("--skip-deit", action="store_true")
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode for Vim and the compiled DeiT "
        "(e.g. max-autotune-no-cudagraphs; default: Inductor's default)",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated SIZExBATCH subset, e.g. 1248x32,224x128 (default: "
        + ",".join(f"{s}x{b}" for s, b in CONFIGS)
        + ")",
    )
    parser.add_argument(
        "--deit",
        default="eager,sdpa,sdpa-compiled",
        help="comma-separated DeiT-Ti rows: eager, sdpa (plain PyTorch), sdpa-compiled (torch.compile + CUDA graphs)",
    )
    parser.add_argument(
        "--delta",
        choices=("on", "off", "both"),
        default="on",
        help="with --compile: Vim with the delta kernel (dt_proj + softplus before the scan; the "
        "model's default), without it (dt_proj's GEMM, softplus in the scan), or both side by side",
    )
    parser.add_argument(
        "--xproj",
        choices=("on", "off", "both"),
        default="on",
        help="with --compile: Vim with each direction's x_proj inside the conv kernel (the model's "
        "default in fp16), as a GEMM after it, or both side by side",
    )
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="with --compile: also Vim (model defaults) with Inductor's freezing (weights as constants)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="with --compile: where the compiled Vim's GPU time goes (torch.profiler) at 1248/32 and "
        "224/128; also the GPU time of the eager DeiT-Ti rows at 224/128 (beside their measured "
        "time per batch: how much of it is the host launching kernels)",
    )
    args = parser.parse_args()
    if args.configs:
        try:
            CONFIGS[:] = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs.split(",")]
        except ValueError:
            parser.error(f"--configs: expected SIZExBATCH[,SIZExBATCH...], got {args.configs!r}")
    deit = {"eager": ("eager", False), "sdpa": ("sdpa", False), "sdpa-compiled": ("sdpa", True)}
    unknown = set(args.deit.split(",")) - set(deit) if args.deit else set()
    if unknown:
        parser.error(f"--deit: unknown {', '.join(sorted(unknown))}; known: {', '.join(deit)}")
    env = bench.environment()
    rows = []
    for label, front in () if args.only_compile else (("transposing", "torch"), ("token-major", "auto")):
        runner = bench.vim_runner(
            "vim_tiny", scan="cuda", front=front, cuda_graphs=True, name=f"Vim-Ti cuda+graphs, {label}"
        )
        for size, batch in CONFIGS:
            rows.append({"model": runner.name, "size": size, **bench.measure(runner, size, batch)})
            emit(rows, args.json, env)
        if front == "auto":
            for size, batch in CONFIGS[:2]:  # where the time goes: 224/128 and 1248/32
                rows.append(
                    {"model": runner.name, "size": size, "profile": bench.profile_breakdown(runner, size, batch)}
                )
                emit(rows, args.json, env)
        del runner
    if args.compile:
        # The element-wise work around the scan (norms, SiLU, conv taps, casts), fused by
        # Inductor; the scan stays our opaque custom op; then replayed as a CUDA graph.
        mode = args.compile_mode or True
        choice = {"on": (True,), "off": (False,), "both": (True, False)}
        variants = [(d, xp, False) for d in choice[args.delta] for xp in choice[args.xproj]]
        variants += [(True, True, True)] if args.freeze else []
        ab = len(variants) > 1
        for delta, xproj, freeze in variants:
            runner = bench.vim_runner(
                "vim_tiny",
                scan="cuda",
                front=TokenMajorFront(delta=delta, xproj=xproj),
                cuda_graphs=True,
                compile=mode,
                freeze=freeze,
                name="Vim-Ti cuda+graphs, token-major, torch.compile"
                + (f" {args.compile_mode}" if args.compile_mode else "")
                + (
                    ""
                    if not ab
                    else (", delta kernel" if delta else ", dt_proj GEMM + softplus in the scan")
                    + (", x_proj in the conv kernel" if xproj else ", x_proj GEMM")
                )
                + (", frozen" if freeze else ""),
            )
            for size, batch in CONFIGS:
                try:
                    rows.append({"model": runner.name, "size": size, **bench.measure(runner, size, batch)})
                except Exception as e:  # noqa: BLE001 - record what failed, keep the rest of the run
                    rows.append({"model": runner.name, "size": size, "batch": batch, "status": f"failed: {e!r}"[:300]})
                emit(rows, args.json, env)
            if args.profile:
                for size, batch in ((1248, 32), (224, 128)):
                    rows.append(
                        {
                            "model": runner.name,
                            "size": size,
                            "profile": bench.profile_breakdown(runner, size, batch, top=16),
                        }
                    )
                    emit(rows, args.json, env)
            del runner
    if args.skip_deit:
        CONFIGS.clear()
    # DeiT-Ti as the issue measured it (eager PyTorch, no graphs), and SDPA with the same
    # treatment Vim gets (torch.compile + CUDA graphs): the strongest DeiT baseline.
    for mode, compiled in (deit[name] for name in args.deit.split(",") if name):
        runner = bench.deit_runner(
            mode=mode, cuda_graphs=compiled, compile=(args.compile_mode or True) if compiled else False
        )
        for size, batch in CONFIGS:
            rows.append({"model": runner.name, "size": size, **bench.measure(runner, size, batch)})
            emit(rows, args.json, env)
        if args.profile and not compiled and (224, 128) in CONFIGS:
            rows.append({"model": runner.name, "size": 224, "profile": bench.profile_breakdown(runner, 224, 128)})
            emit(rows, args.json, env)
        del runner
    emit(rows, args.json, env, final=True)


if __name__ == "__main__":
    main()
