"""Build the official selective scan (mamba_ssm's `selective_scan_cuda`, forward only) for
`bench_scan.py`'s "official" column, from a mamba-ssm source distribution.

    curl -LO https://files.pythonhosted.org/packages/ba/2d/fbd909f6e6d48c491a9ed7ae68e8a890d8409aba4a6356741e2a9c6adad5/mamba_ssm-2.2.5.tar.gz
    python benchmarks/build_official_scan.py mamba_ssm-2.2.5.tar.gz /tmp/ssb
    PYTHONPATH=/tmp/ssb python benchmarks/bench_scan.py --no-fast

Needs a GPU machine with nvcc and a CUDA build of PyTorch. Compiles csrc/selective_scan's
forward kernels (fp16, fp32, bf16) with the nvcc flags of mamba_ssm's setup.py; the backward
entry point is cut out of selective_scan.cpp first (its kernels take far longer to build and
are not timed). Nothing of mamba_ssm is kept in this repository.
"""

import argparse
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
    "-lineinfo",
    "--threads",
    "4",
]


def forward_only(cpp: str) -> str:
    start = cpp.index("std::vector<at::Tensor>\nselective_scan_bwd(")
    end = cpp.index("PYBIND11_MODULE")
    cpp = cpp[:start] + cpp[end:]
    return cpp.replace('    m.def("bwd", &selective_scan_bwd, "Selective scan backward");\n', "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sdist", type=Path, help="mamba_ssm-<version>.tar.gz or its extracted folder")
    ap.add_argument("out", type=Path, help="build folder (put it on PYTHONPATH)")
    ap.add_argument("--arch", default="90", help="SM architecture, e.g. 90 for H100 (default)")
    args = ap.parse_args()
    from torch.utils.cpp_extension import load

    with tempfile.TemporaryDirectory() as tmp:
        root = args.sdist
        if root.is_file():
            with tarfile.open(root) as tar:
                tar.extractall(tmp, filter="data")
            root = next(Path(tmp).iterdir())
        src = root / "csrc" / "selective_scan"
        if not (src / "selective_scan.cpp").is_file():
            sys.exit(f"error: {src}/selective_scan.cpp not found: pass a mamba-ssm source distribution")
        work = Path(tmp) / "fwd"
        work.mkdir()
        for f in src.iterdir():
            if f.suffix in (".h", ".cuh") or f.name.startswith("selective_scan_fwd_"):
                shutil.copy(f, work)
        (work / "selective_scan.cpp").write_text(forward_only((src / "selective_scan.cpp").read_text()))
        args.out.mkdir(parents=True, exist_ok=True)
        t = time.time()
        load(
            name="selective_scan_cuda",
            sources=[str(work / "selective_scan.cpp")] + sorted(str(p) for p in work.glob("selective_scan_fwd_*.cu")),
            extra_cflags=["-O3", "-std=c++17"],
            extra_cuda_cflags=NVCC_FLAGS + ["-gencode", f"arch=compute_{args.arch},code=sm_{args.arch}"],
            build_directory=str(args.out),
            verbose=False,
        )
    print(f"built {args.out}/selective_scan_cuda.so in {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
