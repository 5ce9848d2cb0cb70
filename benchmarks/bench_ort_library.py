"""python benchmarks/bench_ort_library.py [--library PATH] [--threads N] [--budget-s S] [--iters N] [--clock wall|cpu]
                                         [--profile N] [--json out.json]

The native ONNX Runtime op library (plugins/onnxruntime) against the Python op of
onnxruntime-extensions (vimdeploy/export/ort_op.py), in one run on this CPU:

  node   one BiSelectiveScan node of a Vim-Ti layer (batch 1, L 197, E 384, fp32): through ONNX
         Runtime with the library, through ONNX Runtime with the Python op, and the native
         kernel called directly (ctypes, as the Python op calls it)
  model  Vim-Ti 224 px batch 1, plugin-flavor ONNX (`vimdeploy demo`'s untrained checkpoint:
         speed does not depend on the weights), through ONNX Runtime with the library and with the Python op,
         beside the DeiT-Ti-shaped ViT of bench_cpu.py (ONNX, ONNX Runtime)

Every ONNX Runtime session gets vimdeploy's runtime options (intra-op threads = --threads, no
spinning) and the kernel $VIMDEPLOY_CPU_THREADS = --threads. The paths of each part are timed
round-robin, one call each per round, so that they share whatever load the machine has: 2
warm-up calls each, then rounds until --budget-s seconds per path or --iters rounds; median
(min..max) ms. Before timing, the
library's outputs are checked against the Python op's. Without --library the library is built
with CMake against $ONNXRUNTIME_INCLUDE_DIR (the directory of onnxruntime_c_api.h).

The machine's load average (1 minute) is printed before and after: other processes on the same
cores slow every path, so compare ratios within one run, made while the load is low.
--profile N: afterwards, N calls of Vim-Ti with the library under ONNX Runtime's profiler
(SessionOptions.enable_profiling), the nodes' time per op type (ms per call, share).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cpu import export_deit  # noqa: E402  (also puts the checkout on sys.path)

from tests.test_ort_library import build_library  # noqa: E402
from vimdeploy.contract import (
    DOMAIN,
    INPUT_NAMES,
    OP_TYPE,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,  # noqa: E402
    input_shapes,
)
from vimdeploy.demo import make_untrained_checkpoint  # noqa: E402
from vimdeploy.export import export_onnx  # noqa: E402
from vimdeploy.export.ort_op import _native, session_options  # noqa: E402


def options(threads: int, library: Path | None) -> ort.SessionOptions:
    """The library's session options, or the Python op's (library None); vimdeploy's runtime settings."""
    if library is None:
        so = session_options(threads)
    else:
        so = ort.SessionOptions()
        so.register_custom_ops_library(str(library))
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def session(model: bytes | Path, threads: int, library: Path | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), options(threads, library), providers=["CPUExecutionProvider"]
    )


def interleaved(paths: dict, budget_s: float, iters: int, clock=time.perf_counter) -> dict:
    """Times the paths round-robin (one call of each per round) so that all of them run under
    the same load: 2 warm-up calls each, then rounds until `budget_s` seconds per path have
    passed (at least 3) or `iters` rounds; per path median, min and max ms of `clock`."""
    for fn in paths.values():
        fn()
        fn()
    samples = {name: [] for name in paths}
    start = time.perf_counter()
    while len(samples[next(iter(paths))]) < iters and (
        len(samples[next(iter(paths))]) < 3 or time.perf_counter() - start < budget_s * len(paths)
    ):
        for name, fn in paths.items():
            t = clock()
            fn()
            samples[name].append((clock() - t) * 1e3)
    return {
        name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "n": len(v)}
        for name, v in samples.items()
    }


def profile(model: Path, threads: int, library: Path, feed: dict, calls: int, prefix: Path) -> dict:
    """ms per call spent in each op type's nodes (ONNX Runtime's profiler; nodes that ORT fused
    appear under the fused op's type), over `calls` calls after 2 unprofiled ones."""
    so = options(threads, library)
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    s = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    for _ in range(calls):
        s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    # The first two model_run's nodes are warm-up (allocation, first-call caches): skipped.
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    after = starts[2] if len(starts) > 2 else 0
    per_type = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= after:
            per_type[e["args"]["op_name"]] += e["dur"] / 1e3 / (calls - 2)
    return dict(per_type.most_common())


def scan_node(b: int, L: int, E: int) -> tuple[bytes, dict]:
    """One fp32 BiSelectiveScan node with its graph inputs, and a feed of Vim-like values."""
    shapes = input_shapes(b, L, E)
    node = helper.make_node(
        OP_TYPE,
        list(INPUT_NAMES),
        ["y"],
        domain=DOMAIN,
        delta_softplus=1,
        out_scale=0.5,
        plugin_version=PLUGIN_VERSION,
        plugin_namespace=PLUGIN_NAMESPACE,
    )
    graph = helper.make_graph(
        [node],
        "scan",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(INPUT_NAMES, shapes)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (b, L, E))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(DOMAIN, 1)], ir_version=10
    )
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(INPUT_NAMES, shapes)}
    for n in ("A_fwd", "A_bwd"):
        feed[n] = -np.exp(feed[n])
    for n in ("dt_fwd", "dt_bwd"):
        feed[n] -= 2.0  # softplus(dt + bias) mostly 0.01..1, as in a trained Vim
    return model.SerializeToString(), feed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", type=Path, default=os.environ.get("VIMDEPLOY_ORT_LIBRARY") or None)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--budget-s", type=float, default=3.0, help="timed seconds per path")
    ap.add_argument("--iters", type=int, default=30, help="at most this many timed calls per path")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the calling thread's CPU time (with --threads 1 everything runs on it): what other "
        "processes on the same cores change least",
    )
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile N calls of Vim-Ti with the library")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        sys.exit("error: --clock cpu needs --threads 1 (other threads' time would not be counted)")
    if args.profile and args.profile < 3:
        sys.exit("error: --profile needs at least 3 calls (the first 2 are not counted)")

    tmp = Path(tempfile.mkdtemp(prefix="bench_ort_library."))
    library = args.library
    if library is None:
        include = os.environ.get("ONNXRUNTIME_INCLUDE_DIR")
        if not include:
            sys.exit("error: give --library, or set ONNXRUNTIME_INCLUDE_DIR to build it (see plugins/onnxruntime)")
        library = build_library(include, tmp / "build")
    os.environ["VIMDEPLOY_CPU_THREADS"] = str(args.threads)  # read by both ops when their kernel is made
    torch.set_num_threads(args.threads)
    env = {
        "cpus": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        "clock": args.clock,
        "onnxruntime": ort.__version__,
        "library": str(library),
        "command": " ".join(["python"] + sys.argv),
        "load_average_1min_before": os.getloadavg()[0],
    }
    print(json.dumps(env), flush=True)

    rows = {}

    def measure(paths: dict):
        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        rows.update(interleaved(paths, args.budget_s, args.iters, clock))
        for name in paths:
            r = rows[name]
            print(f"{name:28s} {r['median_ms']:9.3f} ms ({r['min_ms']:.3f}..{r['max_ms']:.3f}, n={r['n']})", flush=True)

    # ---- one node -------------------------------------------------------------------------
    node, feed = scan_node(1, 197, 384)
    arrays = [feed[n] for n in INPUT_NAMES]
    with_library, with_python_op = session(node, args.threads, library), session(node, args.threads)
    direct = _native(arrays, True, 0.5, args.threads)
    np.testing.assert_array_equal(with_library.run(None, feed)[0], direct)
    np.testing.assert_array_equal(with_python_op.run(None, feed)[0], direct)
    measure(
        {
            "node: kernel direct (ctypes)": lambda: _native(arrays, True, 0.5, args.threads),
            "node: ORT + library": lambda: with_library.run(None, feed),
            "node: ORT + Python op": lambda: with_python_op.run(None, feed),
        }
    )

    # ---- Vim-Ti 224 batch 1 against the DeiT-Ti-shaped ViT --------------------------------
    make_untrained_checkpoint(tmp / "vim_t.pth")
    export_onnx(tmp / "vim_t.pth", tmp / "vim_t.onnx", img_size=224, batch="dynamic", scan="plugin")
    export_deit(224, tmp / "deit_t.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    vim_library, vim_python_op = (
        session(tmp / "vim_t.onnx", args.threads, library),
        session(tmp / "vim_t.onnx", args.threads),
    )
    deit = session(tmp / "deit_t.onnx", args.threads)
    vim_in, deit_in = vim_library.get_inputs()[0].name, deit.get_inputs()[0].name
    np.testing.assert_allclose(
        vim_library.run(None, {vim_in: x})[0], vim_python_op.run(None, {vim_in: x})[0], rtol=0, atol=1e-5
    )
    measure(
        {
            "Vim-Ti: ORT + library": lambda: vim_library.run(None, {vim_in: x}),
            "Vim-Ti: ORT + Python op": lambda: vim_python_op.run(None, {vim_in: x}),
            "DeiT-Ti-shaped ViT: ORT": lambda: deit.run(None, {deit_in: x}),
        }
    )

    med = {k: v["median_ms"] for k, v in rows.items()}
    kernel = med["node: kernel direct (ctypes)"]
    summary = {
        "library node / kernel direct": med["node: ORT + library"] / kernel,
        "Python-op node / kernel direct": med["node: ORT + Python op"] / kernel,
        "library overhead ms/node": med["node: ORT + library"] - kernel,
        "Python-op overhead ms/node": med["node: ORT + Python op"] - kernel,
        "Vim-Ti library / DeiT-Ti": med["Vim-Ti: ORT + library"] / med["DeiT-Ti-shaped ViT: ORT"],
        "Vim-Ti Python op / DeiT-Ti": med["Vim-Ti: ORT + Python op"] / med["DeiT-Ti-shaped ViT: ORT"],
        "Vim-Ti library / DeiT-Ti (minima)": rows["Vim-Ti: ORT + library"]["min_ms"]
        / rows["DeiT-Ti-shaped ViT: ORT"]["min_ms"],
    }
    print("\n".join(f"{k:32s} {v:.3f}" for k, v in summary.items()))
    env["load_average_1min_after"] = os.getloadavg()[0]
    load = env["load_average_1min_before"], env["load_average_1min_after"]
    print(f"load average (1 min): {load[0]:.2f} before, {load[1]:.2f} after")
    result = {"env": env, "rows": rows, "summary": summary}
    if args.profile:
        by_type = profile(tmp / "vim_t.onnx", args.threads, library, {vim_in: x}, args.profile, tmp / "profile")
        total = sum(by_type.values())
        print(f"Vim-Ti + library, ONNX Runtime's profiler, {args.profile - 2} calls: {total:.2f} ms per call in nodes")
        for op, ms in by_type.items():
            print(f"  {op:24s} {ms:8.2f} ms  {100 * ms / total:5.1f}%")
        result["profile_ms_per_call"] = by_type
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
