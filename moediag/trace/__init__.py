"""The native trace format (v1): schema, streaming reader, atomic writer."""

from moediag.trace.reader import Chunk, LayerInfo, Trace, open_trace
from moediag.trace.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SCORE_FUNCTIONS,
    RoutingSpec,
    TraceMeta,
    build_metadata,
    parse_metadata,
)
from moediag.trace.writer import SingleFileTraceWriter, TraceWriter, trace_writer, write_trace

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SCORE_FUNCTIONS",
    "Chunk",
    "LayerInfo",
    "RoutingSpec",
    "Trace",
    "TraceMeta",
    "SingleFileTraceWriter",
    "TraceWriter",
    "trace_writer",
    "build_metadata",
    "open_trace",
    "parse_metadata",
    "write_trace",
]
