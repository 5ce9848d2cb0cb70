"""python benchmarks/bench_ort_op_overhead.py [--threads N]

Per-node cost of the ONNX Runtime BiSelectiveScan op (Python op of onnxruntime-extensions
calling the native CPU kernel) against calling the kernel directly, and against the PyTorch
"fast" scan that the op called before: one Vim-Ti layer, L=197, batch 1, fp32. Medians of
30 runs after 3 warm-ups, with the spread (min..max)."""

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto as T
from onnx import helper

from vimdeploy import contract as o
from vimdeploy.export.ort_op import _native, session_options
from vimdeploy.ops import ScanInputs
from vimdeploy.ops.reference import bi_selective_scan_fast

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
b, L, E, N = 1, 197, 384, 16
shapes = [
    (b, L, E),
    (b, L, E),
    (b, L, E),
    (b, L, N),
    (b, L, N),
    (b, L, E),
    (b, L, E),
    (b, L, N),
    (b, L, N),
    (E, N),
    (E, N),
    (E,),
    (E,),
    (E,),
    (E,),
]
rng = np.random.default_rng(0)
arrs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
arrs[9] = -np.abs(arrs[9])
arrs[10] = -np.abs(arrs[10])
ins = [helper.make_tensor_value_info(n, T.FLOAT, s) for n, s in zip(o.INPUT_NAMES, shapes)]
node = helper.make_node(
    "BiSelectiveScan",
    list(o.INPUT_NAMES),
    ["y"],
    domain="trt.plugins",
    delta_softplus=1,
    out_scale=0.5,
    plugin_version="1",
    plugin_namespace="",
)
m = helper.make_model(
    helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", T.FLOAT, (b, L, E))]),
    opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("trt.plugins", 1)],
    ir_version=10,
)
so = session_options(args.threads)
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
feed = dict(zip(o.INPUT_NAMES, arrs))


def t(f, n=30):
    for _ in range(3):
        f()
    xs = []
    for _ in range(n):
        a = time.perf_counter()
        f()
        xs.append((time.perf_counter() - a) * 1e3)
    return statistics.median(xs), min(xs), max(xs)


def fmt(r):
    return f"{r[0]:.2f} ms ({r[1]:.2f}..{r[2]:.2f})"


np.testing.assert_allclose(s.run(None, feed)[0], _native(arrs, True, 0.5), rtol=0, atol=0)
tens = ScanInputs(*(torch.from_numpy(a) for a in arrs))
torch.set_num_threads(args.threads)
with torch.inference_mode():
    torch_fast = t(lambda: bi_selective_scan_fast(tens))
kernel = t(lambda: _native(arrs, True, 0.5, args.threads))
via_ort = t(lambda: s.run(None, feed))
print(
    f"threads {args.threads}: PyTorch fast scan {fmt(torch_fast)}; native kernel direct {fmt(kernel)}; "
    f"through the ORT Python op {fmt(via_ort)}; op overhead {via_ort[0] - kernel[0]:.3f} ms/node (medians)"
)
