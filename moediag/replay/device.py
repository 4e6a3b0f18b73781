"""Resolve a ``--device`` argument (``auto``, ``cpu``, ``cuda[:N]``) to a :class:`torch.device`.

Shared by ``record`` and ``replay`` so both commands accept and reject the same spellings.
"""

from __future__ import annotations

import torch

from moediag.errors import UsageError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = CUDA when available, else the CPU; ``cuda`` without CUDA is a usage error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        return torch.device(device)
    raise UsageError(f"--device {device!r}: expected auto, cpu or cuda")
