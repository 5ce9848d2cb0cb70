"""Where the GPU time of a forward goes: torch.profiler kernel times by category."""

from __future__ import annotations

from .runners import TorchRunner
from .timing import _cleanup

_CATEGORIES = [
    ("scan kernel", ("biscan", "bi_selective", "selective_scan", "scan_chunk")),
    ("delta (dt_proj + softplus)", ("deltakernel",)),  # plugins/kernels/delta_softplus.cu
    ("conv + SiLU + x_proj (one kernel)", ("convsiluxproj",)),  # plugins/kernels/conv_xproj.cu
    ("GEMM (linear)", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "splitk")),
    ("conv (patch embed, depthwise 1-D)", ("conv", "implicit", "winograd", "fprop", "dgrad", "depthwise")),
    # before "copies": Inductor names its fused residual add + RMSNorm "..._to_copy_add_mean_mul_pow_rsqrt..."
    ("add + RMSNorm", ("rsqrt", "rms_norm", "rmsnorm")),
    ("copies / transposes / cat", ("copy", "cat", "transpose", "memcpy", "memset", "fill")),
    ("norm, silu, residual, other element-wise", ("elementwise", "vectorized", "reduce", "norm", "silu", "mul", "add")),
]


# Inductor names its Triton kernels after every op they touch ("..._bi_selective_scan_cuda_exp_neg_..."
# computes exp(-A) beside the opaque scan op): they are element-wise work, never a scan, GEMM or conv.
_TRITON_CATEGORIES = ("add + RMSNorm", "copies / transposes / cat", "norm, silu, residual, other element-wise")


def categorize(kernel_name: str) -> str:
    k = kernel_name.lower()
    triton = k.startswith("triton_")
    for cat, keys in _CATEGORIES:
        if (not triton or cat in _TRITON_CATEGORIES) and any(s in k for s in keys):
            return cat
    return "other"


def profile_breakdown(runner: TorchRunner, size: int, batch: int, steps: int = 5, top: int = 12) -> dict:
    """GPU kernel time per category for `steps` eager forwards (torch.profiler, CUDA activity)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    graphs, runner.cuda_graphs = runner.cuda_graphs, False
    try:
        fn = runner.prepare(size, batch)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
        per_kernel = {}
        for e in prof.events():
            dt = getattr(e, "device_type", None)
            if dt is None or "CUDA" not in str(dt):
                continue
            us = e.time_range.end - e.time_range.start
            per_kernel[e.name] = per_kernel.get(e.name, 0.0) + us
        total = sum(per_kernel.values()) or 1.0
        cats = {}
        for name, us in per_kernel.items():
            c = categorize(name)
            cats[c] = cats.get(c, 0.0) + us
        return {
            "runner": runner.name,
            "size": size,
            "batch": batch,
            "steps": steps,
            "gpu_ms_per_forward": total / 1e3 / steps,
            "categories": {
                c: {"ms_per_forward": us / 1e3 / steps, "share": us / total}
                for c, us in sorted(cats.items(), key=lambda kv: -kv[1])
            },
            "top_kernels": [
                {"name": n[:120], "ms_per_forward": us / 1e3 / steps, "share": us / total, "category": categorize(n)}
                for n, us in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]
            ],
        }
    finally:
        runner.cuda_graphs = graphs
        runner.release()
        _cleanup("cuda")
