"""Run the generated hostile-input suite (tests/fuzz/hostile.py) over several seeds and print the counts.

Usage: PYTHONPATH=. python3 scripts/fuzz.py [--seeds N] [--first S]
       [--suite trace|checkpoint|importer|config|output]
       [--rss-e8192]   (also measure peak RSS of inspect and inspect --detail on E = 8192, 1,024 tokens)

Exit 0 when every case kept the contract (exit 0/1/2, one error line, no traceback, inputs unchanged,
nothing left at or beside the target, no hang, bounded memory); 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz.hostile import SUITES, peak_rss_e8192, run_all  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="How many seeds (each builds every case anew).")
    ap.add_argument("--first", type=int, default=0, help="First seed.")
    ap.add_argument("--suite", action="append", choices=sorted(SUITES), help="Only these suites.")
    ap.add_argument("--rss-e8192", action="store_true", help="Also measure peak RSS at E = 8192.")
    ap.add_argument("-v", "--verbose", action="store_true", help="Print every case.")
    args = ap.parse_args()
    outcomes = run_all(list(range(args.first, args.first + args.seeds)), args.suite)
    codes = collections.Counter(o.rc for o in outcomes)
    bad = [o for o in outcomes if o.problems]
    for o in outcomes if args.verbose else bad:
        first = o.stderr.strip().splitlines()[-1:] or [""]
        print(
            f"{'FAIL' if o.problems else 'ok  '} rc={o.rc} {o.seconds:5.2f}s {o.case.name}: "
            f"{'; '.join(o.problems) or first[0][:120]}"
        )
    hangs = sum(1 for o in outcomes if any(p.startswith("hang") for p in o.problems))
    modified = sum(1 for o in outcomes if any(p.startswith("inputs modified") for p in o.problems))
    left = sum(
        1 for o in outcomes if any(p.startswith(("left beside", "an output changed")) for p in o.problems)
    )
    print(f"cases run: {len(outcomes)} ({args.seeds} seeds x {len(outcomes) // max(1, args.seeds)} cases)")
    print("exit codes: " + ", ".join(f"{rc}: {n}" for rc, n in sorted(codes.items())))
    print(
        f"exit 3: {codes.get(3, 0)}; hangs: {hangs}; inputs modified: {modified}; "
        f"outputs left or changed: {left}"
    )
    print(
        f"contract violations: {len(bad)}; slowest case {max(o.seconds for o in outcomes):.1f} s; "
        f"peak RSS of a case {max(o.rss for o in outcomes) / 2**30:.2f} GiB"
    )
    if args.rss_e8192:
        for label, gib in peak_rss_e8192().items():
            print(f"peak RSS at E = 8192, 1,024 tokens, {label}: {gib:.2f} GiB")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
