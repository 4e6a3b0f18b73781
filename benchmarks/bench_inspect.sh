#!/usr/bin/env bash
# Measure `moediag inspect --json` against the floor on the benchmark trace: wall time and peak RSS.
# Usage: bash benchmarks/bench_inspect.sh [TRACE]   (makes benchmarks/data/trace-2g if absent)
set -euo pipefail
cd "$(dirname "$0")/.."
TRACE="${1:-benchmarks/data/trace-2g}"
[ -e "$TRACE" ] || python3 benchmarks/make_trace.py "$TRACE"
du -sh "$TRACE"
measure() {
  local label="$1"; shift
  /usr/bin/time -v "$@" > /dev/null 2> "/tmp/moediag-bench-$label.txt"
  local wall rss
  wall=$(grep "Elapsed (wall clock)" "/tmp/moediag-bench-$label.txt" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "/tmp/moediag-bench-$label.txt" | awk '{print $NF}')
  printf '%-8s wall %s  peak RSS %.0f MB\n' "$label" "$wall" "$((rss / 1024))"
}
measure floor python3 benchmarks/floor.py "$TRACE"
measure inspect moediag inspect "$TRACE" --json
