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
]


def __getattr__(name: str) -> object:
    """Lazy exports: ``moediag.Recorder`` imports the recording code (and torch) only when used."""
    if name == "Recorder":
        from moediag.record import Recorder

        return Recorder
    if name in ("Monitor", "RoutingAlert"):
        import moediag.monitor

        return getattr(moediag.monitor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
