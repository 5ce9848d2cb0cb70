"""One scan-kernel launch (after a warm-up) at a chosen shape, for Nsight Compute.

    ncu -k regex:biScanKernel --launch-skip 1 --launch-count 1 --set full --import-source yes \\
        -o ti32 python benchmarks/ncu_scan.py 384 6085 32 fp16
    ncu -i ti32.ncu-rep --page source --csv --print-source sass > ti32_sass.csv

Arguments: E L batch {fp16,fp32} [variant (0 = automatic)]. Inputs as tests/test_plugin_cuda.py
makes them. docs/kernel.md ("Where the time goes") quotes such profiles.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_plugin_cuda import make_inputs  # noqa: E402
from vimdeploy.ops import cuda as plugin  # noqa: E402


def main():
    E, L, b = (int(v) for v in sys.argv[1:4])
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[sys.argv[4]]
    variant = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    inputs = make_inputs(b, L, E, dtype)
    y = torch.empty(b, L, E, dtype=dtype, device="cuda")
    for _ in range(2):
        plugin.launch(y, inputs, variant=variant)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
