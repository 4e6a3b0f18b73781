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
]
