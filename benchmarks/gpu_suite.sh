#!/usr/bin/env bash
# The GPU suite: on one GPU machine, build the kernel library for its GPU, run the GPU tests and
# compute-sanitizer, and rerun the benchmarks behind docs/kernel.md and docs/bench.md. In stages,
# so that each one fits a 10-minute call on a lent machine (times measured on an H100, plus ~1 min
# to build the kernels on the first stage of a fresh machine); no stage named = all of them, in
# this order:
#   quick  the scan at small grids: the split, warp-chunks and state-lanes tests, compute-sanitizer
#          memcheck, racecheck and synccheck on the warp-chunks and state-lanes kernels (two shapes
#          each), and the scan's rows at L=197 and 6085, batch 1 and 8: automatic, variants 2, 4, 7, 8
#          and the forced chunk counts, the limit                                      (< 5 min)
#   check  the GPU tests (scan, delta, conv kernels, the mixer's front, golden, model, hostile op inputs),
#          compute-sanitizer memcheck, racecheck and synccheck over the conv + x_proj kernel's and the
#          warp-chunks and state-lanes scans' tests; with
#          OFFICIAL_SDIST set, mamba_ssm's selective scan is built for the scan stage meanwhile (~5 min)
#   plugin the TensorRT plugin's conformance harness on this GPU, plain and under compute-sanitizer
#          memcheck; needs TensorRT headers in $TENSORRT_INCLUDE_DIR (':'-separated), else skipped
#                                                                                        (~5 min)
#   scan   bench_scan.py, all models and shapes, softplus in the op and delta given, beside the
#          official two-selective_scan_fn pattern when it imports                      (< 1 min)
#   e2e    bench_layout.py's full table: Vim-Ti vs DeiT-Ti (eager, SDPA, compiled SDPA), with
#          profiles                                                                    (~3 min)
#   edge   batch 1 and 8 at 224 and 1248 px: the scan kernel for Vim-Ti/S/B (bench_scan.py), end to end
#          Vim-Ti/S/B compiled + CUDA graphs beside DeiT-Ti SDPA compiled + CUDA graphs
#          (bench_e2e_edge.py)                                                         (< 10 min)
#   ab     A/Bs of the model's GPU paths: the delta kernel vs the dt_proj GEMM, conv + x_proj vs
#          conv + GEMMs, the variant sweep with delta given, Vim-Ti with each kernel on / off
#                                                                                        (~5 min)
# Usage: benchmarks/gpu_suite.sh OUTDIR [STAGE...]
#   e.g. OFFICIAL_SDIST=mamba_ssm-2.2.5.tar.gz benchmarks/gpu_suite.sh out check
#        TENSORRT_INCLUDE_DIR=trt-10.16/include:trt-11.1/include benchmarks/gpu_suite.sh out scan plugin
#        benchmarks/gpu_suite.sh out e2e ab
#   OUTDIR gets each step's output (NAME.log), the benchmarks' raw numbers (*.json), gpu.txt and
#   steps.txt (each step's seconds and exit status). The exit status is 0 only if every step passed.
#   The JSON files that the docs cite are copied from OUTDIR to benchmarks/results/ as
#   bench_scan_h100.json, bench_e2e_h100.json, bench_delta_h100.json, bench_conv_h100.json,
#   bench_e2e_h100_delta_ab.json, bench_scan_edge_h100.json and bench_e2e_edge_h100.json (the GPU's
#   name in place of h100).
# Needs nvcc + cmake, torch with CUDA, timm (DeiT), CuPy (optional: the measured ex2 rate), the golden
# fixture through $VIMDEPLOY_GOLDEN or ../shared/golden (else the golden tests skip).
# OFFICIAL_SDIST=mamba_ssm-2.2.5.tar.gz (see benchmarks/build_official_scan.py) builds the official
# scan into $VIMDEPLOY_PLUGIN_BUILD_DIR/official; the scan stage uses it when it is there.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_suite.sh OUTDIR [quick|check|plugin|scan|e2e|edge|ab ...]}
shift
stages=${*:-check plugin scan e2e edge ab}
for s in $stages; do
    case $s in quick | check | plugin | scan | e2e | edge | ab) ;;
    *) echo "unknown stage '$s' (quick, check, plugin, scan, e2e, edge, ab)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
failed=0

# step NAME CMD...: run CMD with its output in OUTDIR/NAME.log, show the end, log seconds and exit status
step() {
    local name=$1 t0=$SECONDS rc
    shift
    echo "== $name: $*"
    "$@" > "$out/$name.log" 2>&1
    rc=$?
    tail -n 3 "$out/$name.log"
    echo "$name $((SECONDS - t0)) s rc $rc" | tee -a "$out/steps.txt"
    [ "$rc" -eq 0 ] || failed=1
}

# compute-sanitizer over the scan's kernels for small grids (warp chunks, state lanes) on a few shapes
small_grid_sanitizer() {
    for tool in memcheck racecheck synccheck; do
        step "sanitizer_warp_chunks_$tool" compute-sanitizer --tool "$tool" --kernel-name kns=warpChunks \
            --error-exitcode 9 python3 -m pytest -q tests/test_plugin_warp_chunks.py \
            -k "every_L and (13-2-float16 or 197-1-float32)"
        step "sanitizer_state_lanes_$tool" compute-sanitizer --tool "$tool" --kernel-name kns=stateLanes \
            --error-exitcode 9 python3 -m pytest -q tests/test_plugin_state_lanes.py \
            -k "every_L and (13-2-float16 or 197-1-float32)"
    done
}

arch=$(python3 -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())') || exit 1
build=${VIMDEPLOY_PLUGIN_BUILD_DIR:-$PWD/plugins/build}
official=$build/official
t0=$SECONDS
cmake -S plugins -B "$build" -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_BUILD_TYPE=Release > /dev/null \
    && cmake --build "$build" -j "$(nproc)" --target vimdeploy_kernels > /dev/null || exit 1
echo "build $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
export VIMDEPLOY_PLUGIN_BUILD_DIR=$build PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"

for s in $stages; do
    case $s in
    quick)
        step small_grid_tests python3 -m pytest -q tests/test_plugin_warp_chunks.py tests/test_plugin_state_lanes.py \
            tests/test_contract.py tests/test_plugin_cuda.py -k "not builds_with_nvcc and (warp_chunks or \
            state_lanes or python_names or variant or no_softplus or unaligned or slices)"
        small_grid_sanitizer
        step bench_scan_batch1 python3 benchmarks/bench_scan.py --no-official --no-fast --delta-given --variants 2,4,7,8 \
            --shapes 197x1,197x8,6085x1,6085x8 --json "$out/bench_scan_batch1.json"
        ;;
    check)
        official_pid=
        if [ -n "${OFFICIAL_SDIST:-}" ] && [ ! -d "$official" ]; then
            MAX_JOBS=${MAX_JOBS:-8} python3 benchmarks/build_official_scan.py "$OFFICIAL_SDIST" "$official.tmp" \
                > "$out/official_build.log" 2>&1 && mv "$official.tmp" "$official" &
            official_pid=$!
        fi
        step tests python3 -m pytest -q tests/test_delta_cuda.py tests/test_plugin_cuda.py tests/test_conv_cuda.py \
            tests/test_plugin_warp_chunks.py tests/test_plugin_state_lanes.py tests/test_front.py tests/test_golden.py \
            tests/test_model.py tests/test_hostile_scan.py \
            -k "not builds_with_nvcc"
        for tool in memcheck racecheck synccheck; do
            step "sanitizer_$tool" compute-sanitizer --tool "$tool" --kernel-name kns=convSiluXProj --error-exitcode 9 \
                python3 -m pytest -q tests/test_conv_cuda.py -k "xproj_kernel_many_tiles or (xproj_kernel and 197)"
        done
        small_grid_sanitizer
        if [ -n "$official_pid" ]; then
            wait "$official_pid"
            echo "official_build rc $? $(tail -n 1 "$out/official_build.log")" | tee -a "$out/steps.txt"
        fi
        ;;
    plugin)
        if [ -z "${TENSORRT_INCLUDE_DIR:-}" ]; then
            echo "plugin: TENSORRT_INCLUDE_DIR is not set, skipped" | tee -a "$out/steps.txt"
            continue
        fi
        step conformance python3 -m pytest -q tests/test_plugin_conformance.py
        VIMDEPLOY_SANITIZER=1 step conformance_sanitizer python3 -m pytest -q tests/test_plugin_conformance.py -k enqueue
        ;;
    scan)
        scan_path=$PYTHONPATH
        [ -d "$official" ] && scan_path=$official:$PYTHONPATH
        PYTHONPATH=$scan_path step bench_scan python3 benchmarks/bench_scan.py --no-fast --delta-given \
            --json "$out/bench_scan.json"
        ;;
    e2e)
        step bench_e2e python3 benchmarks/bench_layout.py --compile --only-compile --profile --json "$out/bench_e2e.json"
        ;;
    edge)
        step bench_scan_edge python3 benchmarks/bench_scan.py --no-official --no-fast --delta-given \
            --shapes 197x1,197x8,6085x1,6085x8 --json "$out/bench_scan_edge.json"
        step bench_e2e_edge python3 benchmarks/bench_e2e_edge.py --json "$out/bench_e2e_edge.json"
        ;;
    ab)
        step bench_delta python3 benchmarks/bench_delta.py --json "$out/bench_delta.json"
        step bench_conv python3 benchmarks/bench_conv.py --json "$out/bench_conv.json"
        # the variant choice (autoVariant) was tuned with the softplus in the op: re-check it without
        step bench_scan_variants python3 benchmarks/bench_scan.py --no-official --no-fast --delta-given --variants \
            --models Ti,S --shapes 197x128,6085x32 --json "$out/bench_scan_variants_delta_given.json"
        step bench_e2e_xproj python3 benchmarks/bench_layout.py --compile --only-compile --xproj both \
            --configs 1248x32,1248x128,224x128 --deit sdpa --json "$out/bench_e2e_xproj_ab.json"
        step bench_e2e_delta python3 benchmarks/bench_layout.py --compile --only-compile --delta both --freeze \
            --profile --configs 1248x32,224x128 --deit sdpa --json "$out/bench_e2e_delta_ab.json"
        ;;
    esac
done
exit $failed
