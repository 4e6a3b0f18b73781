#!/usr/bin/env bash
# Measure `moediag inspect --json` against the floor on the benchmark trace: wall time and peak RSS.
# Usage: bash benchmarks/bench_inspect.sh [TRACE] [ROUNDS]
#   (makes benchmarks/data/trace-2g if absent; ROUNDS alternating floor/inspect pairs, default 3)
# A shared or virtual machine's speed drifts by 10-20% between runs, so each round runs the floor and
# moediag back to back and the summary gives the median of the per-round ratios. Each round also prints
# the 1-minute load average before it (a loaded machine slows the two runs unevenly: rerun such rounds).
# Both import moediag from this checkout (PYTHONPATH), so the code measured is this tree's, not whichever
# copy the `moediag` console script was installed from.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TRACE="${1:-benchmarks/data/trace-2g}"
ROUNDS="${2:-3}"
[ -e "$TRACE" ] || python3 benchmarks/make_trace.py "$TRACE"
du -shL "$TRACE"
measure() {  # prints "wall_seconds peak_rss_mb cpu_seconds"
  local out
  out=$(mktemp)
  /usr/bin/time -v "$@" > /dev/null 2> "$out"
  python3 - "$out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text).group(1)
seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
cpu = sum(float(re.search(rf"{kind} time \(seconds\): (\S+)", text).group(1)) for kind in ("User", "System"))
print(f"{seconds:.2f} {rss:.0f} {cpu:.2f}")
PY
  rm -f "$out"
}
ratios=()
for round in $(seq 1 "$ROUNDS"); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  read -r fw fr fc < <(measure python3 benchmarks/floor.py "$TRACE")
  read -r iw ir ic < <(measure python3 -m moediag inspect "$TRACE" --json)
  ratio=$(python3 -c "print(f'{$iw / $fw:.2f}')")
  ratios+=("$ratio")
  printf 'round %d (load %s): floor %6.2f s %5d MB | inspect %6.2f s %5d MB | ratio %s (CPU %.1f / %.1f s)\n' \
    "$round" "$load" "$fw" "$fr" "$iw" "$ir" "$ratio" "$ic" "$fc"
done
python3 -c "import statistics, sys; r = [float(x) for x in sys.argv[1:]]; \
print(f'median ratio {statistics.median(r):.2f} (min {min(r):.2f}, max {max(r):.2f}, {len(r)} rounds)')" "${ratios[@]}"
