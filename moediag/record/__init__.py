"""Recording routing from running transformers models: ``record`` (text files) and ``Recorder`` (loops).

Importing this package does not import transformers; ``record`` imports it when it loads a model.
"""

from moediag.record.capture import LayerCapture, RouterHooks
from moediag.record.discover import RouterSite, RoutingInfo, find_routers, routing_info
from moediag.record.recorder import Recorder
from moediag.record.run import RecordResult, record
from moediag.record.text import byte_tokenizer, load_tokenizer, windows

__all__ = [
    "LayerCapture",
    "RecordResult",
    "Recorder",
    "RouterHooks",
    "RouterSite",
    "RoutingInfo",
    "byte_tokenizer",
    "find_routers",
    "load_tokenizer",
    "record",
    "routing_info",
    "windows",
]
