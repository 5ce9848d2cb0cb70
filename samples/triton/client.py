"""Classify images with a Triton server serving a `vimdeploy triton-repo` repository.

    pip install 'vimdeploy[triton]'        # tritonclient[http]
    vimdeploy triton-repo vim_t.plan -o models
    tritonserver --model-repository=$PWD/models \
        --backend-config=tensorrt,plugins="/path/to/libvimdeploy_trt_plugin.so"
    python samples/triton/client.py cat.jpg dog.jpg --url localhost:8000 --model vim

tritonclient is optional: only this sample imports it.
"""

import argparse

import numpy as np
import tritonclient.http as httpclient

from vimdeploy.data import load_images, topk

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("images", nargs="+")
parser.add_argument("--url", default="localhost:8000")
parser.add_argument("--model", default="vim")
parser.add_argument("--size", type=int, default=224)
parser.add_argument("-k", type=int, default=5)
args = parser.parse_args()

client = httpclient.InferenceServerClient(args.url)
config = client.get_model_config(args.model)
dtype = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}[config["input"][0]["data_type"]]
batch = load_images(args.images, args.size).astype(dtype)

inp = httpclient.InferInput(config["input"][0]["name"], list(batch.shape), "FP16" if dtype == np.float16 else "FP32")
inp.set_data_from_numpy(batch)
result = client.infer(args.model, [inp], outputs=[httpclient.InferRequestedOutput("logits")])
logits = result.as_numpy("logits").astype(np.float32)
for path, top in zip(args.images, topk(logits, args.k)):
    print(path)
    for t in top:
        print(f"  {t['probability'] * 100:6.2f}%  {t['name']}  ({t['index']})")
