#!/usr/bin/env bash
# gradguard audit as a CI gate.
#
# A guarded workload logs its calls; `gradguard audit --fail-on ...` exits 1 when a gate
# finds something, 0 otherwise (2 on bad usage or unreadable input), which fails the job.
# Here the workload runs twice: once as the baseline (the main branch, say) and once as
# "this change", which made the model slower. The correctness gates pass; the
# regression gate against the baseline fails, and the script shows the exit code a CI
# step would see instead of stopping.
#
# Run: bash examples/audit_ci.sh            (from anywhere; PYTHON=... picks the interpreter)
set -euo pipefail

PYTHON="${PYTHON:-python}"
gradguard=("$PYTHON" -m gradguard)
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# The workload: a guarded model, called 50 times. "This change" widens its hidden layer
# from 64 to 8192 units, many times the work per call: the regression the last gate
# catches. (Latency gates on sub-millisecond calls catch mostly noise on a shared
# machine: gate on calls that take milliseconds, or raise --threshold.)
workload() {
    GRADGUARD_LOG_FILE="$1" "$PYTHON" - "$2" <<'PY'
import sys

import torch
from torch import nn

import gradguard

hidden = int(sys.argv[1])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, hidden), nn.Dropout(0.2), nn.Linear(hidden, 8))
model = gradguard.guard(model, name="model")
for _ in range(50):
    model(torch.randn(64, 32)).argmax(-1)
PY
}

echo "== running the workload: baseline, then this change"
workload "$logs/baseline.jsonl" 64
workload "$logs/current.jsonl" 8192

echo
echo "== gate 1: no errors, leaks, fallbacks or gradient recording"
"${gradguard[@]}" audit "$logs/current.jsonl" --fail-on errors,leaks,fallbacks,grad
echo "gate 1 passed: errors,leaks,fallbacks,grad (exit 0)"

echo
echo "== gate 2: no latency or memory regression against the baseline (threshold 10%)"
status=0
"${gradguard[@]}" audit "$logs/current.jsonl" --compare "$logs/baseline.jsonl" \
    --threshold 10% --fail-on regression || status=$?
if [[ $status -eq 1 ]]; then
    echo "gate 2 failed as expected: regression (exit 1); a CI job would stop here"
else
    echo "gate 2: expected exit 1 (a regression), got exit $status" >&2
    exit 1
fi
