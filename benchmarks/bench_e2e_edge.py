"""Batch 1 and 8 end to end at 224 and 1248 px: Vim-Ti/S/B (fp16, the CUDA scan and the
model's GPU kernels, torch.compile + CUDA graphs) beside DeiT-Ti (SDPA, torch.compile + CUDA
graphs: the strongest DeiT baseline of bench_layout.py), in one run.

    python benchmarks/bench_e2e_edge.py [--json out.json] [--models tiny,small,base] [--configs 224x1,...]

The scan kernel alone at the same shapes: bench_scan.py --shapes 197x1,197x8,6085x1,6085x8 (both
run by the `edge` stage of gpu_suite.sh). Needs a GPU, the kernel library and timm. Untrained
weights (the time does not depend on them).
"""

import argparse

from bench_layout import emit

from vimdeploy import bench

CONFIGS = [(224, 1), (224, 8), (1248, 1), (1248, 8)]
MODELS = ("tiny", "small", "base")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--configs", default=",".join(f"{s}x{b}" for s, b in CONFIGS), help="SIZExBATCH,...")
    args = parser.parse_args()
    models = args.models.split(",")
    if set(models) - set(MODELS):
        parser.error(f"--models: choose from {','.join(MODELS)}")
    try:
        configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs.split(",")]
    except ValueError:
        parser.error(f"--configs: expected SIZExBATCH[,SIZExBATCH...], got {args.configs!r}")
    env = bench.environment()
    rows = []
    makers = [lambda: bench.deit_runner(mode="sdpa", cuda_graphs=True, compile=True)]
    makers += [lambda m=m: bench.vim_runner(f"vim_{m}", scan="cuda", cuda_graphs=True, compile=True) for m in models]
    for make in makers:  # one model on the GPU at a time
        runner = make()
        for size, batch in configs:
            try:
                row = bench.measure(runner, size, batch, min_iters=20)
            except Exception as e:  # noqa: BLE001 - record what failed, keep the rest of the run
                row = {"batch": batch, "status": f"failed: {e!r}"[:300]}
            rows.append({"model": runner.name, "size": size, **row})
            emit(rows, args.json, env)
        runner = None
    emit(rows, args.json, env, final=True)

    deit = {(r["size"], r["batch"]): r.get("median_ms") for r in rows if r["model"] == rows[0]["model"]}
    print("\n| model | size | batch | median ms | DeiT-Ti SDPA compiled ms | DeiT / model (speed vs DeiT) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ms, base = r.get("median_ms"), deit.get((r["size"], r["batch"]))
        ratio = f"{base / ms:.2f}x" if ms and base else "n/a"
        shown = f"{ms:.3f}" if ms else r.get("status", "n/a")
        print(f"| {r['model']} | {r['size']} | {r['batch']} | {shown} | {base or float('nan'):.3f} | {ratio} |")


if __name__ == "__main__":
    main()
