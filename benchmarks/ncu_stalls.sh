#!/usr/bin/env bash
# Issue rate, pipe use and stall reasons of one scan-kernel launch per shape (Nsight Compute metrics),
# as docs/kernel.md ("Where the time goes") quotes them. Needs ncu and the built kernel library
# (VIMDEPLOY_PLUGIN_BUILD_DIR). Usage: benchmarks/ncu_stalls.sh ["E L batch dtype [variant]" ...]
set -euo pipefail
cd "$(dirname "$0")/.."
R=""
for r in no_instruction wait math_pipe_throttle mio_throttle short_scoreboard long_scoreboard barrier branch_resolving \
         dispatch_stall not_selected selected lg_throttle drain misc imc_miss; do
  R="$R,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
done
M="smsp__issue_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"
M="$M,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active"
M="$M,smsp__warps_eligible.avg.per_cycle_active,smsp__warps_active.avg.per_cycle_active,smsp__inst_executed.sum"
M="$M,sm__cycles_elapsed.avg,smsp__inst_executed_op_shared_ld.sum,smsp__inst_executed_pipe_xu.sum$R"
[ $# -gt 0 ] || set -- "384 6085 32 fp16" "768 6085 32 fp16" "384 6085 32 fp32"
for cfg in "$@"; do
  echo "== E L batch dtype: $cfg"
  # shellcheck disable=SC2086
  ncu -k regex:biScanKernel --launch-skip 1 --launch-count 1 --metrics "$M" --csv \
      python3 benchmarks/ncu_scan.py $cfg 2>/dev/null | python3 -c '
import csv, sys
rows = list(csv.reader(sys.stdin))
head = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
h = rows[head]
name, value, kernel = h.index("Metric Name"), h.index("Metric Value"), h.index("Kernel Name")
print(rows[head + 1][kernel][:90])
for r in rows[head + 1:]:
    label = r[name].replace("smsp__average_warps_issue_stalled_", "stall ").replace("_per_issue_active.ratio", "")
    print(f"  {label:75s} {r[value]}")
'
done
