"""python benchmarks/bench_cpu.py [--sizes 224,512] [--batches 1,8] [--threads 1,2] [--json out.json]

Vim-Ti on a CPU through every path vimdeploy has, side by side in one run with a
DeiT-Ti-shaped ViT (12 layers, width 192, 3 heads, patch 16: the same size and FLOPs),
both untrained (fixed seeds: speed does not depend on the weights):

  deit  onnxruntime    the ViT exported to ONNX (torch.onnx dynamo), ONNX Runtime
  deit  pytorch        the ViT in eager PyTorch (scaled_dot_product_attention)
  vim   pytorch:fast   vimdeploy's chunked PyTorch scan
  vim   pytorch:cpu    the native CPU kernel (default on CPU where it is built)
  vim   ort:plugin     plugin-flavor ONNX, BiSelectiveScan through the native kernel
  vim   ort:portable   portable-flavor ONNX (standard ops only)

Per configuration: 2 warm-up calls, then timed calls until --budget-s seconds or --iters
calls; median, min and max wall time per call (ms). Both runtimes get the same thread count
(torch.set_num_threads, ONNX Runtime intra_op_num_threads, $VIMDEPLOY_CPU_THREADS for the
kernel inside ONNX Runtime). The table is printed as Markdown; --json keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vimdeploy  # noqa: E402
from vimdeploy.model import VARIANTS, VisionMamba  # noqa: E402


class ViT(nn.Module):
    """DeiT-Ti's shape (timm's vit_tiny_patch16 / deit_tiny_patch16_224): pre-norm blocks,
    width 192, 3 heads, MLP 768, class token, learned position embedding."""

    def __init__(self, img_size=224, dim=192, depth=12, heads=3, patch=16, classes=1000):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (img_size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def timed(fn, budget_s: float, iters: int) -> dict:
    for _ in range(2):
        fn()
    samples, start = [], time.perf_counter()
    while len(samples) < iters and (len(samples) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples), "n": len(samples)}


def export_deit(size: int, path: Path) -> None:
    torch.manual_seed(0)
    model = ViT(size).eval()
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(2, 3, size, size),),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            optimize=True,
            verbose=False,
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="224,512")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default=None, help="comma-separated; default: 1 and every CPU")
    ap.add_argument(
        "--paths",
        default="deit:onnxruntime,deit:pytorch,vim:pytorch:fast,vim:pytorch:cpu,vim:ort:plugin,vim:ort:portable",
    )
    ap.add_argument("--budget-s", type=float, default=3.0, help="timed seconds per configuration")
    ap.add_argument("--iters", type=int, default=30, help="at most this many timed calls per configuration")
    ap.add_argument(
        "--max-call-s",
        type=float,
        default=20.0,
        help="skip a path at larger sizes/batches once one call took longer than this",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from vimdeploy.export import export_onnx
    from vimdeploy.ops import native
    from vimdeploy.runtime import open_engine

    cpus = len(os.sched_getaffinity(0))
    thread_counts = [int(t) for t in (args.threads or f"1,{cpus}").split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    paths = args.paths.split(",")
    env = {
        "machine": platform.machine(),
        "cpus": cpus,
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "vimdeploy": vimdeploy.__version__,
        "native_cpu_isa": _isa(native),
        "command": " ".join(["python"] + sys.argv),
    }
    print(json.dumps(env, indent=1), flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_cpu."))
    torch.manual_seed(0)
    vim = VisionMamba(VARIANTS["tiny"])
    with torch.no_grad():
        for p in vim.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    ckpt = tmp / "vim_t.pth"
    torch.save({"model": vim.state_dict()}, ckpt)

    rows, slow = [], set()
    for size in sizes:
        files = {}
        if "deit:onnxruntime" in paths:
            files["deit"] = tmp / f"deit_{size}.onnx"
            export_deit(size, files["deit"])
        for flavor in ("plugin", "portable"):
            if f"vim:ort:{flavor}" in paths:
                files[flavor] = tmp / f"vim_{flavor}_{size}.onnx"
                export_onnx(
                    ckpt,
                    files[flavor],
                    img_size=size,
                    batch="dynamic",
                    scan="onnx" if flavor == "portable" else "plugin",
                )
        torch.manual_seed(0)
        deit = ViT(size).eval()
        for threads in thread_counts:
            torch.set_num_threads(threads)
            os.environ["VIMDEPLOY_CPU_THREADS"] = str(threads)
            engines = {k: open_engine(v, threads=threads) for k, v in files.items()}
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
                xt = torch.from_numpy(x)
                calls = {
                    "deit:onnxruntime": lambda: engines["deit"].session.run(None, {"images": x}),
                    "deit:pytorch": lambda: deit(xt),
                    "vim:pytorch:fast": lambda: _vim(vim, "fast", xt),
                    "vim:pytorch:cpu": lambda: _vim(vim, "cpu", xt),
                    "vim:ort:plugin": lambda: engines["plugin"].run(x),
                    "vim:ort:portable": lambda: engines["portable"].run(x),
                }
                for name in paths:
                    key = (name, threads)
                    if key in slow:
                        continue
                    with torch.inference_mode():
                        r = timed(calls[name], args.budget_s, args.iters)
                    if r["median_ms"] > args.max_call_s * 1e3:
                        slow.add(key)
                    row = {"path": name, "size": size, "batch": batch, "threads": threads, **r}
                    rows.append(row)
                    print(
                        f"{name:18s} {size:4d}px b{batch:<2d} t{threads}: {r['median_ms']:9.2f} ms "
                        f"({r['min_ms']:.2f}..{r['max_ms']:.2f}, n={r['n']})",
                        flush=True,
                    )
    print()
    print(table(rows, paths))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=1))


def _vim(model, scan, x):
    model.scan = scan
    return model(x)


def _isa(native):
    try:
        return native.load_cpu_library().vimdeploy_cpu_isa().decode()
    except native.PluginError:
        return None


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(rows, paths) -> str:
    """Markdown: one row per (size, batch, threads), median ms per path, and Vim / DeiT-ORT."""
    cols = [p for p in paths if any(r["path"] == p for r in rows)]
    keys = sorted({(r["size"], r["batch"], r["threads"]) for r in rows})
    out = [
        "| size | batch | threads | " + " | ".join(cols) + " | best Vim / DeiT ORT |",
        "|---" * (4 + len(cols)) + "|",
    ]
    for key in keys:
        got = {r["path"]: r["median_ms"] for r in rows if (r["size"], r["batch"], r["threads"]) == key}
        vims = [v for k, v in got.items() if k.startswith("vim:")]
        ratio = f"{min(vims) / got['deit:onnxruntime']:.2f}x" if vims and "deit:onnxruntime" in got else ""
        cells = [f"{got[c]:.1f}" if c in got else "-" for c in cols]
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
