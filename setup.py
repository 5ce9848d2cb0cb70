"""The native CPU scan as an optional extension (everything else is in pyproject.toml).

A plain C library that vimdeploy/ops/native.py loads with ctypes, built by `pip install`
wherever a C++ compiler exists; where none does the install still succeeds (optional) and
vimdeploy runs on the PyTorch scan. Its compile flags are plugins/cpu/compile_flags.txt, the
list CMake reads too.
"""

from pathlib import Path

from setuptools import Extension, setup

FLAGS = Path(__file__).parent / "plugins" / "cpu" / "compile_flags.txt"
flags = [line.strip() for line in FLAGS.read_text().splitlines() if line.strip() and not line.startswith("#")]

setup(
    ext_modules=[
        Extension(
            "vimdeploy.ops._scan_cpu",
            sources=["plugins/cpu/bi_selective_scan_cpu.cpp"],
            include_dirs=["plugins/include"],
            extra_compile_args=["-std=c++17", "-fvisibility=hidden", "-pthread", *flags],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
