"""moediag: routing and expert-utilisation diagnostics for Mixture-of-Experts models."""

from __future__ import annotations

__version__ = "0.1.0"

from moediag.errors import (  # noqa: E402
    ConfigError,
    ExitCode,
    InvalidInputError,
    MissingMetadataError,
    MoediagError,
    UnsupportedLayoutError,
    UsageError,
)

__all__ = [
    "__version__",
    "ConfigError",
    "ExitCode",
    "InvalidInputError",
    "MissingMetadataError",
    "MoediagError",
    "UnsupportedLayoutError",
    "UsageError",
    "Monitor",
    "Recorder",
    "RoutingAlert",
    "analyze_trace",
    "check",
    "inspect",
    "report",
]

#: lazy exports: name -> module (importing moediag stays cheap; torch loads when one is used)
_LAZY = {
    "Monitor": "moediag.monitor",
    "Recorder": "moediag.record",
    "RoutingAlert": "moediag.monitor",
    "analyze_trace": "moediag.analysis",
    "inspect": "moediag.api",
    "check": "moediag.api",
    "report": "moediag.api",
}


def __getattr__(name: str) -> object:
    """Lazy exports: ``moediag.Recorder``, ``Monitor``, ``RoutingAlert``, ``analyze_trace``, ``inspect``,
    ``check`` and ``report`` import their code (and torch) only when used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
