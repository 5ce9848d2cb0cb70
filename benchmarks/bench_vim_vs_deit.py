"""Vim-Ti vs DeiT-Ti on one GPU, fp16: throughput, batch-1 latency, peak memory vs resolution.

    python benchmarks/bench_vim_vs_deit.py --out benchmarks/results/ [--smoke]

Runs (in this order, the JSON rewritten after each so a cut-off run keeps what it had):
  1. Vim-Ti, scan="cuda" (our BiSelectiveScan kernel), CUDA graphs   -- vimdeploy's fastest path
  2. DeiT-Ti (timm, untrained), SDPA attention (fused_attn=True)
  3. DeiT-Ti, eager attention (fused_attn=False, the Vim paper's setting)
  4. Vim-Ti, scan="fast" (pure PyTorch chunked scan), eager, capped by --fast-max-forward-s
at sizes 224,512,738->736,1024,1248, batch 1, 32 and the largest batch <= 128 that fits.
Before that: the fp16 set-up check (Vim weights cast once vs the golden test's
torch.autocast: max |diff| of the logits) and a torch.profiler breakdown of Vim-Ti (cuda
scan, eager) at 224, batch 1 and 128. Same as the CLI:
  vimdeploy bench --model vim_tiny --scan cuda --cuda-graphs --compare deit_tiny \\
      --sizes 224,512,738,1024,1248 --batch 1,32 --max-batch 128 --dtype fp16 --profile 224
plus the fast-scan runner.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vimdeploy import bench  # noqa: E402
from vimdeploy.bench.models import _vim_fp16  # noqa: E402


def fp16_check():
    """Logits of the cast-once fp16 Vim-Ti vs the fp32 model under torch.autocast(fp16)."""
    from vimdeploy.model import VARIANTS, VisionMamba

    m32 = VisionMamba(VARIANTS["tiny"], scan="cuda")
    m32.init_weights("untrained")
    m32 = m32.cuda().eval()
    m16 = VisionMamba(VARIANTS["tiny"], scan="cuda")
    m16.load_state_dict(m32.state_dict())
    m16 = _vim_fp16(m16).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        ref = m32(x)
        with torch.autocast("cuda", dtype=torch.float16):
            auto = m32(x).float()
        cast = m16(x.half()).float()
    return {
        "max_abs_cast_vs_autocast": (cast - auto).abs().max().item(),
        "max_abs_autocast_vs_fp32": (auto - ref).abs().max().item(),
        "max_abs_cast_vs_fp32": (cast - ref).abs().max().item(),
        "max_abs_logit": ref.abs().max().item(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--smoke", action="store_true", help="2 sizes, small batches, short timing")
    ap.add_argument("--sizes", default="224,512,738,1024,1248")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--fast-max-forward-s", type=float, default=4.0)
    ap.add_argument("--skip", default="", help="comma list of runner keys to skip: cuda,sdpa,eager,fast")
    ap.add_argument("--only", default="", help="comma list of runner keys to run (also sdpa_graphs, eager_graphs)")
    ap.add_argument("--profile", default="224:1,224:128", help="Vim-Ti (cuda scan) profiles, SIZE:BATCH,...")
    ap.add_argument("--tag", default="h100", help="JSON name: bench_<tag>.json")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.batch, args.max_batch, args.seconds, args.iters = "224,512", "1,4", 8, 0.3, 10
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sizes = bench.parse_int_list(args.sizes)
    batches = bench.parse_int_list(args.batch)
    bench.check_device("cuda", False)
    env = bench.environment("cuda")
    env["command"] = "python benchmarks/bench_vim_vs_deit.py " + " ".join(sys.argv[1:])
    print(json.dumps(env), flush=True)
    result = {"env": env, "fp16_check": fp16_check(), "runners": [], "rows": []}
    print("fp16 check:", result["fp16_check"], flush=True)
    skip = set(args.skip.split(","))
    keys = [k for k in ("cuda", "sdpa", "eager", "fast") if k not in skip]
    if args.only:
        keys = args.only.split(",")
    jpath = args.out / ("bench_smoke.json" if args.smoke else f"bench_{args.tag}.json")

    def make(key):
        if key == "cuda":
            return bench.vim_runner("vim_tiny", scan="cuda", dtype="fp16", cuda_graphs=True)
        if key == "fast":
            r = bench.vim_runner("vim_tiny", scan="fast", dtype="fp16", cuda_graphs=False)
            r.max_forward_s = args.fast_max_forward_s
            return r
        if key in ("profile",):
            return bench.vim_runner("vim_tiny", scan="cuda", dtype="fp16", cuda_graphs=False)
        return bench.deit_runner(key.split("_")[0], dtype="fp16", cuda_graphs=key.endswith("_graphs"))

    for key in keys:
        runner = make(key)
        if key in ("cuda", "profile"):
            prof = []
            for spec in filter(None, args.profile.split(",")):
                size, b = (int(v) for v in spec.split(":"))
                try:
                    prof.append(bench.profile_breakdown(runner, size, b))
                except Exception as e:  # noqa: BLE001
                    prof.append({"size": size, "batch": b, "error": f"{type(e).__name__}: {e}"[:300]})
            result["profile"] = prof
            print(json.dumps(prof, indent=1), flush=True)
            if key == "profile":
                jpath.write_text(json.dumps(result, indent=1))
                continue
        part = bench.run_bench(
            [runner], sizes, batches, args.max_batch, iters=args.iters, seconds=args.seconds, progress=True, env=env
        )
        result["settings"] = part["settings"]
        result["runners"] += part["runners"]
        result["rows"] += part["rows"]
        del runner
        torch.cuda.empty_cache()
        result["elapsed_s"] = time.time() - t0
        jpath.write_text(json.dumps(result, indent=1))
        print(bench.format_table(part), flush=True)
        print(f"[{time.time() - t0:.0f} s]", flush=True)
    print(bench.format_table(result))
    try:
        bench.plot(result, args.out)
    except Exception as e:  # noqa: BLE001
        print("plot failed:", e)


if __name__ == "__main__":
    main()
