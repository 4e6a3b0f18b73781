"""Mergeable accumulators of routing statistics (``update``, ``merge``, ``compute``)."""

from moediag.stats.batch import LayerBatch
from moediag.stats.layer import LayerStats, ModelStats, StatsOptions

__all__ = ["LayerBatch", "LayerStats", "ModelStats", "StatsOptions"]
