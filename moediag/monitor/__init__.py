"""Live monitoring of routing during training: :class:`Monitor` (see :mod:`moediag.monitor.monitor`)."""

from moediag.live.alerts import Alert, RoutingAlert
from moediag.monitor.flight import FlightRecorder
from moediag.monitor.monitor import Monitor
from moediag.monitor.setup import resolve_rules

__all__ = ["Alert", "FlightRecorder", "Monitor", "RoutingAlert", "resolve_rules"]
