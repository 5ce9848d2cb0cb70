"""Batch 1 and 8 end to end at 224 and 1248 px: Vim-Ti/S/B (fp16, the CUDA scan and the
model's GPU kernels, torch.compile + CUDA graphs) beside DeiT-Ti (SDPA, torch.compile + CUDA
graphs: the strongest DeiT baseline of bench_layout.py), in one run.

    python benchmarks/bench_e2e_edge.py [--json out.json] [--models tiny,small,base] [--configs 224x1,...]
                                        [--no-freeze] [--no-profile]

Both models are compiled with Inductor's freezing, as deployed models (weights constant: the
weight-only work of a forward, such as Vim's -exp(A_log) and padded x_proj weights, is folded
at compile time; vimdeploy.bench.compiled); --no-freeze gives the unfrozen rows.

The profile (default on; --no-profile skips it): the kernels one forward launches at batch 1
(torch.profiler, CUDA graphs off), by name with counts and GPU time, for Vim-Ti at 224 and
1248 px; and per layer: launches per forward divided by the model's depth, in total and per
kernel category (bench.categorize).

The scan kernel alone at the same shapes: bench_scan.py --shapes 197x1,197x8,6085x1,6085x8 (both
run by the `edge` stage of gpu_suite.sh). Needs a GPU, the kernel library and timm. Untrained
weights (the time does not depend on them).
"""

import argparse

from bench_layout import emit

from vimdeploy import bench

CONFIGS = [(224, 1), (224, 8), (1248, 1), (1248, 8)]
MODELS = ("tiny", "small", "base")
PROFILED = ("Vim-Ti",)  # runner names starting so: kernels per forward at batch 1


def kernel_counts(runner, size, batch, steps=5) -> dict:
    """Kernels (and copies) one forward launches, CUDA graphs off: per name, launches and GPU us per forward."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    runner.cuda_graphs = False
    fn = runner.prepare(size, batch)  # the shape was compiled by the timed run: no recompilation
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    per = {}
    for e in prof.events():
        if "CUDA" in str(getattr(e, "device_type", "")):
            n, us = per.get(e.name, (0, 0.0))
            per[e.name] = (n + 1, us + e.time_range.end - e.time_range.start)
    kernels = [
        {"name": k[:160], "per_forward": n / steps, "us_per_forward": us / steps, "category": bench.categorize(k)}
        for k, (n, us) in sorted(per.items(), key=lambda kv: -kv[1][0])
    ]
    launches = sum(k["per_forward"] for k in kernels)
    depth = runner.info.get("depth")
    by_category = {}
    for k in kernels:
        by_category[k["category"]] = by_category.get(k["category"], 0.0) + k["per_forward"]
    return {
        "size": size,
        "batch": batch,
        "launches_per_forward": launches,
        "gpu_ms_per_forward": sum(k["us_per_forward"] for k in kernels) / 1e3,
        "kernels": kernels,
        # per layer: everything a forward launches (the patch embedding and head included) / depth
        "depth": depth,
        "launches_per_layer": launches / depth if depth else None,
        "launches_per_layer_by_category": {c: n / depth for c, n in sorted(by_category.items())} if depth else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--configs", default=",".join(f"{s}x{b}" for s, b in CONFIGS), help="SIZExBATCH,...")
    parser.add_argument("--no-profile", action="store_true", help="skip the kernel counts at batch 1")
    parser.add_argument(
        "--no-freeze", action="store_true", help="compile without Inductor's freezing (weights as inputs)"
    )
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
    freeze = not args.no_freeze
    makers = [lambda: bench.deit_runner(mode="sdpa", cuda_graphs=True, compile=True, freeze=freeze)]
    makers += [
        lambda m=m: bench.vim_runner(f"vim_{m}", scan="cuda", cuda_graphs=True, compile=True, freeze=freeze)
        for m in models
    ]
    for make in makers:  # one model on the GPU at a time
        runner = make()
        for size, batch in configs:
            try:
                row = bench.measure(runner, size, batch, min_iters=20)
            except Exception as e:  # noqa: BLE001 - record what failed, keep the rest of the run
                row = {"batch": batch, "status": f"failed: {e!r}"[:300]}
            rows.append({"model": runner.name, "size": size, **row})
            emit(rows, args.json, env)
        if not args.no_profile and runner.name.startswith(PROFILED):
            for size in sorted({s for s, b in configs if b == 1}):
                try:
                    rows.append({"model": runner.name, "profile": kernel_counts(runner, size, 1)})
                except Exception as e:  # noqa: BLE001
                    rows.append({"model": runner.name, "size": size, "status": f"profile failed: {e!r}"[:300]})
                emit(rows, args.json, env)
        runner = None
    emit(rows, args.json, env, final=True)

    timed = [r for r in rows if "batch" in r]
    deit = {(r["size"], r["batch"]): r.get("median_ms") for r in timed if r["model"] == rows[0]["model"]}
    print("\n| model | size | batch | median ms | DeiT-Ti SDPA compiled ms | DeiT / model (speed vs DeiT) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in timed:
        ms, base = r.get("median_ms"), deit.get((r["size"], r["batch"]))
        ratio = f"{base / ms:.2f}x" if ms and base else "n/a"
        shown = f"{ms:.3f}" if ms else r.get("status", "n/a")
        print(f"| {r['model']} | {r['size']} | {r['batch']} | {shown} | {base or float('nan'):.3f} | {ratio} |")
    for r in rows:
        if "profile" in r:
            p = r["profile"]
            print(
                f"\n{r['model']} {p['size']} px batch 1: {p['launches_per_forward']:.0f} launches per forward, "
                f"{p['gpu_ms_per_forward']:.3f} ms GPU"
            )
            if p.get("launches_per_layer") is not None:
                cats = ", ".join(f"{c} {n:.2f}" for c, n in p["launches_per_layer_by_category"].items())
                print(f"  per layer (/ depth {p['depth']}): {p['launches_per_layer']:.2f} launches ({cats})")
            for k in p["kernels"][:20]:
                print(f"  {k['per_forward']:6.1f} x {k['us_per_forward']:8.1f} us  [{k['category']}] {k['name'][:90]}")


if __name__ == "__main__":
    main()
