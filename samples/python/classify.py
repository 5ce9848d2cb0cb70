"""Classify images with any vimdeploy artifact through one API: `open_engine`.

    python samples/python/classify.py vim_t.plan cat.jpg dog.jpg      # TensorRT engine
    python samples/python/classify.py vim_t.onnx cat.jpg              # ONNX Runtime (CPU)
    python samples/python/classify.py vim_t.plan cat.jpg --cuda-graph # replay a CUDA graph

The backend is chosen by suffix (.plan/.engine: TensorRT, .onnx: ONNX Runtime,
.pth: PyTorch); preprocessing is DeiT's (vimdeploy.data.load_images).
"""

import argparse
import time

from vimdeploy.data import load_images, topk
from vimdeploy.runtime import open_engine

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model", help=".plan / .engine / .onnx / .pth")
parser.add_argument("images", nargs="+")
parser.add_argument("-k", type=int, default=5)
parser.add_argument("--plugin", default=None, help="TensorRT plugin library (default: the built one)")
parser.add_argument("--cuda-graph", action="store_true", help="TensorRT: capture and replay a CUDA graph per shape")
args = parser.parse_args()

options = {}
if args.model.endswith((".plan", ".engine")):
    options = {"plugin": args.plugin, "cuda_graph": args.cuda_graph}
engine = open_engine(args.model, **options)
batch = load_images(args.images, engine.input_size or engine.default_input_size)

start = time.perf_counter()
logits = engine.run(batch)["logits"]
print(f"{engine.describe()['backend']}: {len(batch)} image(s) in {(time.perf_counter() - start) * 1e3:.1f} ms")
for path, top in zip(args.images, topk(logits, args.k)):
    print(path)
    for t in top:
        print(f"  {t['probability'] * 100:6.2f}%  {t['name']}  ({t['index']})")
