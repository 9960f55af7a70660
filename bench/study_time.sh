#!/usr/bin/env bash
# Time the default study end to end (`scaling-study`, all runs, the fit and the report) in a
# fresh study folder, then show where the time went: process start, setup (torch, data),
# DeepSpeed init, training, and fitting. Goal: 5 minutes or less on a 2-core laptop CPU.
#
#   bash bench/study_time.sh [extra scaling-study overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIR=$(mktemp -d)/study
LOG=$DIR.log
start=$(date +%s.%N)
$PY -m scaling.launch.study study.dir="$DIR" "$@" 2>&1 | tee "$LOG" | grep -v "^runs:" || true
end=$(date +%s.%N)
$PY - "$DIR" "$start" "$end" "$LOG" <<'PYEOF'
import json, re, sys
from pathlib import Path
study, start, end, log = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]).read_text()
wall = end - start
runs = [json.loads(p.read_text()) for p in sorted(study.glob("runs/*/result.json"))]
sums = {}
for r in runs:
    for k, v in (r.get("timing") or {}).items():
        sums[k] = sums.get(k, 0.0) + v
fit = re.search(r"fitted in ([0-9.]+)s", log)
print(f"\nstudy: {len(runs)} runs, {sum(r['status'] == 'completed' for r in runs)} completed, wall {wall:.1f} s "
      f"({wall / 60:.2f} min; goal <= 5 min)")
print("per-run time, summed over runs (runs overlap when the launcher runs several at once):")
for k, v in sums.items():
    print(f"  {k:22s} {v:8.1f} s  ({v / len(runs):.2f} s per run)")
print(f"  {'fit and report':22s} {float(fit.group(1)) if fit else float('nan'):8.1f} s")
PYEOF
