"""Portable ("onnx") flavor on ONNX Runtime CPU: per-token `Scan` vs chunked `Scan`, in one run.

    python benchmarks/bench_portable.py [--checkpoint CKPT] [--chunks 8,16,32] [--rounds 15]
                                        [--threads 1,2] [--out-dir DIR] [--json results.json]

Exports Vim-Ti (untrained official-format checkpoint at a trained model's scale, unless
--checkpoint) at 224 px,
batch 1, with the per-token loop this flavor used before (`per_token_scan` below, kept
here verbatim as the baseline) and with `bi_selective_scan_onnx` at each chunk size; also a
DeiT-Ti-shaped ViT (12 layers, width 192, 3 heads, the issue's yardstick). Then times all
ONNX Runtime sessions in interleaved rounds (a shuffled order each round), so that load
from other processes on a shared machine hits every variant alike; reports median,
p25-p75 and min-max of wall time and the process's CPU time per variant and thread
count, export time and node counts, and the max |logits| difference of each chunked
export vs the per-token one.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from vimdeploy.export import exporter  # noqa: E402
from vimdeploy.export.portable import bi_selective_scan_onnx  # noqa: E402
from vimdeploy.model import VimConfig, VisionMamba  # noqa: E402
from vimdeploy.runtime import open_engine  # noqa: E402


# --- the baseline: the portable scan before chunking (one Scan step per token) -----------------
def _per_token_direction(x, dt, A, B, C, D, dt_bias, delta_softplus, reverse):
    from torch._higher_order_ops.scan import scan

    def step(h, xs):
        a_t, b_t, c_t = xs
        h = a_t * h + b_t
        return h, (h * c_t.unsqueeze(1)).sum(-1)

    f = torch.promote_types(x.dtype, torch.float32)
    dt = dt.to(f) + dt_bias.to(f)
    if delta_softplus:
        dt = F.softplus(dt)
    xf = x.to(f)
    a = torch.exp(dt.unsqueeze(-1) * A.to(f))
    b = (dt * xf).unsqueeze(-1) * B.to(f).unsqueeze(-2)
    h0 = xf.new_zeros(x.shape[0], x.shape[2], A.shape[-1])
    _, y = scan(step, h0, (a, b, C.to(f)), dim=1, reverse=reverse)
    return y + xf * D.to(f)


def per_token_scan(inputs, *, delta_softplus=True, out_scale=0.5):
    y_f = _per_token_direction(*inputs.direction("fwd"), delta_softplus, False)
    y_b = _per_token_direction(*inputs.direction("bwd"), delta_softplus, True)
    return ((y_f + y_b) * F.silu(inputs.z.to(y_f.dtype)) * out_scale).to(inputs.x_fwd.dtype)


# --- the yardstick: a DeiT-Ti-shaped ViT -------------------------------------------------------
class TinyViT(nn.Module):
    """DeiT-Ti's shape (patch 16, width 192, 12 blocks, 3 heads, MLP 768), untrained."""

    def __init__(self, dim=192, depth=12, heads=3, classes=1000, img=224, patch=16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, 0]))


def export_vit(path: Path) -> dict:
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            TinyViT().eval(),
            (torch.randn(1, 3, 224, 224),),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            external_data=False,
        )
    return {"export_s": time.perf_counter() - t}


def timed_rounds(sessions: dict, x: np.ndarray, rounds: int, warmup: int = 3) -> dict:
    for run in sessions.values():
        for _ in range(warmup):
            run(x)
    times = {k: [] for k in sessions}
    cpu = {k: [] for k in sessions}
    keys = list(sessions)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(keys)
        for k in keys:
            c, t = time.process_time(), time.perf_counter()
            sessions[k](x)
            times[k].append((time.perf_counter() - t) * 1e3)
            cpu[k].append((time.process_time() - c) * 1e3)
    out = {}
    for k, ts in times.items():
        q = np.percentile(ts, [25, 75])
        out[k] = {
            "median_ms": statistics.median(ts),
            "p25_ms": float(q[0]),
            "p75_ms": float(q[1]),
            "min_ms": min(ts),
            "max_ms": max(ts),
            "runs": rounds,
            # CPU time of this process (all its threads): what a variant costs, less
            # disturbed than wall time when other processes share the cores.
            "cpu_median_ms": statistics.median(cpu[k]),
            "cpu_min_ms": min(cpu[k]),
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="Vim-Ti checkpoint (default: untrained)")
    ap.add_argument("--chunks", default="8,16,32", help="chunk sizes of the chunked scan to export")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="time the .onnx files already in --out-dir, no export")
    args = ap.parse_args()
    d = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_portable_"))
    d.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = d / "vim_tiny_random.pth"
        torch.manual_seed(0)
        model = VisionMamba(VimConfig(embed_dim=192))
        model.init_weights("untrained")  # a trained model's scale: the default init gives features = 0
        torch.save({"model": model.state_dict()}, ckpt)
    import onnxruntime as ort

    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_at_start": os.getloadavg(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        },
        "command": "python benchmarks/bench_portable.py " + " ".join(sys.argv[1:]),
        "exports": {},
    }
    variants = {"per_token": per_token_scan}
    for c in (int(v) for v in args.chunks.split(",")):
        variants[f"chunk{c}"] = functools.partial(bi_selective_scan_onnx, chunk=c)
    for name, fn in variants.items():
        path = d / f"vim_t_{name}.onnx"
        if args.reuse and path.exists():
            continue
        exporter.FLAVORS["onnx"] = fn  # the scan the "onnx" flavor traces
        s = exporter.export_onnx(ckpt, path, batch=1, scan="onnx", force=True)
        result["exports"][name] = {
            "export_s": s["timings"]["total_s"],
            "nodes": s["nodes"],
            "scan_nodes": s["op_counts"].get("Scan", 0),
        }
        print(name, json.dumps(result["exports"][name]), flush=True)
    exporter.FLAVORS["onnx"] = bi_selective_scan_onnx
    if not (args.reuse and (d / "vit_ti.onnx").exists()):
        result["exports"]["deit_ti_shaped_vit"] = export_vit(d / "vit_ti.onnx")

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    sessions = {}
    for threads in (int(v) for v in args.threads.split(",")):
        for name in variants:
            engine = open_engine(d / f"vim_t_{name}.onnx", threads=threads)
            sessions[f"{name}@{threads}"] = lambda x, e=engine: e.run(x)["logits"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        vit = ort.InferenceSession(str(d / "vit_ti.onnx"), options, providers=["CPUExecutionProvider"])
        sessions[f"deit_ti_shaped_vit@{threads}"] = lambda x, s=vit: s.run(None, {s.get_inputs()[0].name: x})[0]
    base = sessions[next(k for k in sessions if k.startswith("per_token"))](x)
    result["max_abs_logits_vs_per_token"] = {
        k: float(np.abs(run(x) - base).max()) for k, run in sessions.items() if k.startswith("chunk")
    }
    result["latency"] = timed_rounds(sessions, x, args.rounds)
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    for k, v in result["latency"].items():
        print(
            f"{k:24s} median {v['median_ms']:8.1f} ms  p25-p75 {v['p25_ms']:.1f}-{v['p75_ms']:.1f}  "
            f"min-max {v['min_ms']:.1f}-{v['max_ms']:.1f}  "
            f"cpu median {v['cpu_median_ms']:.1f} min {v['cpu_min_ms']:.1f}"
        )
    print(json.dumps({k: result[k] for k in ("max_abs_logits_vs_per_token", "machine")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
