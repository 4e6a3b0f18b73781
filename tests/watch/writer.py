"""A writer process that emits SGLang stat dumps the way a server does (``python -m tests.watch.writer``).

``python -m tests.watch.writer FOLDER N [DELAY]``: N dumps, one every DELAY seconds; even dumps are written
in place (``torch.save`` straight to the final name), odd ones to a temporary name and renamed. The loads
are :func:`dump_counts`, so the test knows what to expect.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

LAYERS, EXPERTS, SLOTS = 4, 8, 3  # layer 0 is dense (zeros)


def dump_counts(i: int) -> torch.Tensor:
    """logical_count of dump ``i``: [SLOTS, LAYERS, EXPERTS], one unused (zero) buffer slot."""
    g = torch.Generator().manual_seed(i)
    lc = torch.zeros(SLOTS, LAYERS, EXPERTS, dtype=torch.int32)
    for layer in range(1, LAYERS):
        skew = torch.linspace(1.0, 1.0 + layer, EXPERTS)
        lc[: SLOTS - 1, layer] = (torch.rand(SLOTS - 1, EXPERTS, generator=g) * 50 * skew).to(torch.int32) + 1
    return lc


def expected_balancedness(n: int) -> dict[int, float]:
    total = sum(dump_counts(i).to(torch.int64).sum(0) for i in range(n))
    assert isinstance(total, torch.Tensor)
    return {layer: float(total[layer].double().mean() / total[layer].max()) for layer in range(1, LAYERS)}


def write(folder: Path, i: int) -> Path:
    obj = dict(rank=0, logical_count=dump_counts(i), average_utilization_rate_over_window=None)
    final = folder / f"expert_distribution_recorder_{1700000000 + i}.pt"
    if i % 2:
        tmp = folder / f".{final.name}.tmp"
        torch.save(obj, str(tmp))
        os.replace(tmp, final)
    else:
        torch.save(obj, str(final))
    return final


def main(argv: list[str]) -> int:
    folder, n = Path(argv[0]), int(argv[1])
    delay = float(argv[2]) if len(argv) > 2 else 0.1
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write(folder, i)
        time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
