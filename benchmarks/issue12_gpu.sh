#!/usr/bin/env bash
# Issue 12 on one GPU machine, in one go: build the kernel library for this GPU, run the GPU tests
# and compute-sanitizer on the conv + x_proj kernel, then the benchmarks behind docs/bench.md and
# docs/kernel.md (fourth and fifth passes): the delta kernel vs the dt_proj GEMM, the scan with and
# without delta given, the conv + x_proj kernel vs conv + GEMMs, Vim-Ti end to end with the x_proj
# kernel on / off and the delta kernel on / off / on + Inductor freezing beside SDPA DeiT-Ti (one
# process each), and the full table with profiles. ~20 minutes on an H100 by the sum of its steps,
# which ran there in separate calls (never yet as one script).
# Usage: benchmarks/issue12_gpu.sh OUTDIR
# Needs nvcc + cmake, torch with CUDA, timm (DeiT), CuPy (optional: measured ex2 rate); the golden
# fixture through $VIMDEPLOY_GOLDEN or ../shared/golden (else the golden tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/issue12_gpu.sh OUTDIR}
mkdir -p "$out"
arch=$(python3 -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())')
build=${VIMDEPLOY_PLUGIN_BUILD_DIR:-$PWD/plugins/build-sm$arch}
cmake -S plugins -B "$build" -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target vimdeploy_kernels >/dev/null
export VIMDEPLOY_PLUGIN_BUILD_DIR=$build PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -m pytest -q tests/test_delta_cuda.py tests/test_plugin_cuda.py tests/test_conv_cuda.py tests/test_golden.py \
    tests/test_model.py -k "not builds_with_nvcc" 2>&1 | tail -3 | tee "$out/tests.txt"
# goal 3: the TensorRT plugin's conformance harness on this GPU, plain and under compute-sanitizer
# (TensorRT headers through $TENSORRT_INCLUDE_DIR, ':'-separated; ~4.5 minutes on an H100)
if [ -n "${TENSORRT_INCLUDE_DIR:-}" ]; then
    python3 -m pytest -q tests/test_plugin_conformance.py 2>&1 | tail -1 | tee "$out/conformance.txt"
    VIMDEPLOY_SANITIZER=1 python3 -m pytest -q tests/test_plugin_conformance.py -k enqueue 2>&1 | tail -1 \
        | tee "$out/conformance_sanitizer.txt"
fi
for tool in memcheck racecheck synccheck; do
    compute-sanitizer --tool "$tool" --kernel-name kns=convSiluXProj --error-exitcode 9 \
        python3 -m pytest -q tests/test_conv_cuda.py -k "xproj_kernel_many_tiles or (xproj_kernel and 197)" \
        2>&1 | tail -2 | tee "$out/sanitizer_$tool.txt"
done
python3 benchmarks/bench_delta.py --json "$out/bench_delta.json"
python3 benchmarks/bench_conv.py --json "$out/bench_conv.json"
python3 benchmarks/bench_scan.py --no-official --no-fast --delta-given --json "$out/bench_scan_delta_given.json"
# the variant choice (autoVariant) was tuned with the softplus in the op: re-check it without
python3 benchmarks/bench_scan.py --no-official --no-fast --delta-given --variants --models Ti,S \
    --json "$out/bench_scan_variants_delta_given.json"
python3 benchmarks/bench_layout.py --compile --only-compile --xproj both --configs 1248x32,1248x128,224x128 \
    --deit sdpa --json "$out/bench_e2e_xproj_ab.json"
python3 benchmarks/bench_layout.py --compile --only-compile --delta both --freeze --profile --configs 1248x32,224x128 \
    --deit sdpa --json "$out/bench_e2e_delta_ab.json"
python3 benchmarks/bench_layout.py --compile --only-compile --profile --json "$out/bench_e2e.json"
