"""ONNX Runtime CPU implementation of `trt.plugins::BiSelectiveScan`, for validation.

A Python custom op of onnxruntime-extensions: ORT calls back into Python with numpy
arrays, and the op runs vimdeploy's fast PyTorch scan on them (torch.from_numpy shares
the memory, no copy). Measured (docs/export.md, benchmarks/bench_ort_op_overhead.py): a
Vim-Ti layer's scan costs ~36 ms in PyTorch and ~50 ms through this op, so ~14 ms per node
of callback overhead. A compiled custom-op library would need ONNX Runtime's C headers
(not in the wheel) and a C++ scan of its own, a second implementation to keep equal to
the contract; for CPU *validation* the Python op is good enough, the speed path is the
TensorRT plugin, and on CPU the portable flavor is already faster.

Limits (FINDINGS): float32 only (the Python ops of onnxruntime-extensions do not take
float16; cast around the node to validate fp16 graphs), and every declared attribute must
be present on the node (the exporter always writes all four).
"""

from __future__ import annotations

import functools

import numpy as np

from .op import DOMAIN, INPUT_NAMES, OP_TYPE


@functools.lru_cache(maxsize=None)
def custom_ops_library() -> str:
    """Define the Python op (once per process) and return the library path to register."""
    import torch
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    from ..model.scan import bi_selective_scan_fast

    @onnx_op(
        op_type=f"{DOMAIN}::{OP_TYPE}",
        inputs=[PyCustomOpDef.dt_float] * len(INPUT_NAMES),
        outputs=[PyCustomOpDef.dt_float],
        attrs={
            "delta_softplus": PyCustomOpDef.dt_int64,
            "out_scale": PyCustomOpDef.dt_float,
            "plugin_version": PyCustomOpDef.dt_string,
            "plugin_namespace": PyCustomOpDef.dt_string,
        },
    )
    def bi_selective_scan(*inputs, **attrs):
        # One PyTorch thread inside the callback: ORT's own pool runs the rest of the graph,
        # and two pools on the same cores (OpenMP threads spinning between ops) made runs
        # 10-60x slower and erratic on a 2-core machine; single-threaded was stable.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
                y = bi_selective_scan_fast(*tensors, delta_softplus=bool(attrs["delta_softplus"]),
                                           out_scale=float(attrs["out_scale"]))
        finally:
            torch.set_num_threads(threads)
        return y.numpy()

    return get_library_path()


def session_options(threads: int | None = None):
    """ORT SessionOptions with the BiSelectiveScan op available."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(custom_ops_library())
    if threads:
        so.intra_op_num_threads = threads
    return so
