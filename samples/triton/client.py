"""Classify images with a Triton server: `vimdeploy serve`, or tritonserver on a `vimdeploy triton-repo`.

    pip install 'vimdeploy[serve]'                  # tritonclient[http,grpc] (and the server)
    vimdeploy serve vim_t.onnx &                    # KServe v2 on localhost:8000 (HTTP), :8001 (gRPC)
    python samples/triton/client.py cat.jpg dog.jpg
    python samples/triton/client.py cat.jpg --protocol grpc --url localhost:8001 --send pixels

--send bytes (default for `vimdeploy serve`): the files as they are, in `image_bytes`; the
    server decodes and preprocesses them with the model's own preprocessing.
--send pixels: preprocessed here like `vimdeploy predict`, in `images` (FP32 N x 3 x S x S);
    the only way for a triton-repo (TensorRT) model, whose top-k is then computed here from
    `logits`. S is read from the model's metadata.

tritonclient is optional for vimdeploy: only the samples, tests and benchmarks import it.
"""

import argparse
from pathlib import Path

import numpy as np

from vimdeploy.data import load_images, topk

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("images", nargs="+", type=Path)
parser.add_argument("--url", default=None, help="host:port. Default: localhost:8000 (HTTP) or localhost:8001 (gRPC).")
parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
parser.add_argument("--model", default="vim")
parser.add_argument(
    "--send",
    choices=["bytes", "pixels"],
    default=None,
    help="Default: bytes where the model takes `image_bytes`, else pixels.",
)
parser.add_argument("-k", type=int, default=5)
args = parser.parse_args()

if args.protocol == "http":
    import tritonclient.http as triton
else:
    import tritonclient.grpc as triton
url = args.url or ("localhost:8000" if args.protocol == "http" else "localhost:8001")
client = triton.InferenceServerClient(url)
meta = client.get_model_metadata(args.model)
if args.protocol == "grpc":  # a protobuf message; the HTTP client already returns a dict
    from google.protobuf.json_format import MessageToDict

    meta = MessageToDict(meta, preserving_proto_field_name=True)
inputs = {i["name"]: i for i in meta["inputs"]}
outputs = [o["name"] for o in meta["outputs"]]
send = args.send or ("bytes" if "image_bytes" in inputs else "pixels")

if send == "bytes":
    data = np.array([p.read_bytes() for p in args.images], dtype=np.object_).reshape(-1, 1)
    request = triton.InferInput("image_bytes", list(data.shape), "BYTES")
else:
    spec = inputs.get("images") or next(iter(inputs.values()))
    size = int(spec["shape"][-1])
    dtype = {"FP32": np.float32, "FP16": np.float16}[spec["datatype"]]
    data = load_images(args.images, size).astype(dtype)
    request = triton.InferInput(spec["name"], list(data.shape), spec["datatype"])
request.set_data_from_numpy(data)

served_topk = "top5_labels" in outputs and args.k <= 5
wanted = ["top5_labels", "top5_scores", "top5_indices"] if served_topk else ["logits"]
result = client.infer(args.model, [request], outputs=[triton.InferRequestedOutput(n) for n in wanted])
if served_topk:
    rows = [
        [
            {"name": name.decode(), "probability": float(score), "index": int(index)}
            for name, score, index in list(zip(names, scores, indices))[: args.k]
        ]
        for names, scores, indices in zip(
            result.as_numpy("top5_labels"), result.as_numpy("top5_scores"), result.as_numpy("top5_indices")
        )
    ]
else:
    rows = topk(result.as_numpy("logits").astype(np.float32), args.k)
for path, top in zip(args.images, rows):
    print(path)
    for t in top:
        print(f"  {t['probability'] * 100:6.2f}%  {t['name']}  ({t['index']})")
