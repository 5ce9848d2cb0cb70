"""python benchmarks/bench_ort_op_overhead.py

Per-node cost of the ORT Python op vs calling the PyTorch scan directly (Vim-Ti layer, L=197, b=1)."""
import time, statistics, numpy as np, torch, onnxruntime as ort
from onnx import helper, TensorProto as T
import vimdeploy.export.op as o
from vimdeploy.export.ort_op import session_options
from vimdeploy.model.scan import bi_selective_scan_fast
b, L, E, N = 1, 197, 384, 16
shapes = [(b,L,E),(b,L,E),(b,L,E),(b,L,N),(b,L,N),(b,L,E),(b,L,E),(b,L,N),(b,L,N),(E,N),(E,N),(E,),(E,),(E,),(E,)]
rng = np.random.default_rng(0)
arrs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
arrs[9] = -np.abs(arrs[9]); arrs[10] = -np.abs(arrs[10])
ins = [helper.make_tensor_value_info(n, T.FLOAT, s) for n, s in zip(o.INPUT_NAMES, shapes)]
node = helper.make_node("BiSelectiveScan", list(o.INPUT_NAMES), ["y"], domain="trt.plugins", delta_softplus=1, out_scale=0.5, plugin_version="1", plugin_namespace="")
m = helper.make_model(helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", T.FLOAT, (b,L,E))]),
                      opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("trt.plugins", 1)], ir_version=10)
so = session_options(); so.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
feed = dict(zip(o.INPUT_NAMES, arrs))
def t(f, n=30):
    for _ in range(3): f()
    xs = []
    for _ in range(n):
        a = time.perf_counter(); f(); xs.append((time.perf_counter()-a)*1e3)
    return statistics.median(xs)
tens = [torch.from_numpy(a) for a in arrs]
torch.set_num_threads(1)
with torch.inference_mode():
    direct = t(lambda: bi_selective_scan_fast(*tens))
torch.set_num_threads(2)
via_ort = t(lambda: s.run(None, feed))
print(f"direct torch (1 thread): {direct:.2f} ms; through ORT python op: {via_ort:.2f} ms; overhead {via_ort-direct:.2f} ms/node")
