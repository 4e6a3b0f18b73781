"""The report's checkpoint sections (the extension point for richer checkpoint rendering).

Checkpoint sections come from a checkpoint result's ``to_dict()`` (or the dict itself): the summary
grouped and worded by :mod:`~moediag.render.html.checkpoint_summary`, the per-layer table, per-expert
vectors under known keys (router norms, selection bias) as bar figures and matrices (redundancy) as
heatmaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from moediag.render.html.checkpoint_summary import layer_table, summary_groups
from moediag.render.html.embed import FigureEmbedder, big_heatmap
from moediag.render.html.markup import e, fold, kv_table
from moediag.render.html.page import Section
from moediag.render.plots.checkpoint import matrix_figure, vector_figure

#: per-layer vector keys drawn as bars, and matrix keys drawn as heatmaps, when a checkpoint dict has them
CHECKPOINT_VECTORS = {
    "router_norms": ("Router weight row norm per expert", "L2 norm of the router row"),
    "bias": ("Selection bias per expert (e_score_correction_bias)", "bias added to scores for selection"),
    "router_bias": ("Router logit bias per expert", "bias added to the logits"),
    "expert_norms": ("Expert weight norm per expert", "L2 norm of the expert's weights"),
}
CHECKPOINT_MATRICES = {
    "redundancy": ("Expert redundancy", "cosine similarity of expert weights"),
    "expert_similarity": ("Expert redundancy", "cosine similarity of expert weights"),
    "router_similarity": ("Router row similarity", "cosine similarity of router rows"),
}


def _numbers(v: Any) -> list[float] | None:
    if isinstance(v, Mapping):
        for key in ("values", "norms", "bias", "per_expert"):
            if key in v:
                return _numbers(v[key])
        return None
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return [float(x) for x in v]
    return None


def _matrix(v: Any) -> list[list[float]] | None:
    if isinstance(v, Mapping):
        for key in ("matrix", "cosine", "similarity", "values"):
            if key in v:
                return _matrix(v[key])
        return None
    if isinstance(v, list) and v and all(_numbers(x) is not None for x in v):
        return [_numbers(x) or [] for x in v]
    return None


def checkpoint_sections(doc: Mapping[str, Any], embed: FigureEmbedder) -> list[Section]:
    """Sections for a checkpoint result dict (``to_dict()`` of the checkpoint analysis).

    Renders ``meta``/``architecture``/``params`` and other scalar maps as key/value tables, ``layers``
    (a list of dicts) as a table of their scalar fields, per-expert vectors under
    :data:`CHECKPOINT_VECTORS` as bar figures and matrices under :data:`CHECKPOINT_MATRICES` as heatmaps.
    """
    out: list[Section] = []
    body = "".join(f"<h3>{e(title)}</h3>" + kv_table(rows) for title, rows in summary_groups(doc))
    if body:
        out.append(Section("checkpoint", "Checkpoint: architecture and parameters", body))
    layers = [r for r in doc.get("layers") or [] if isinstance(r, Mapping)]
    if layers:
        body = layer_table(layers)
        for key, (title, label) in CHECKPOINT_VECTORS.items():
            per_layer = [
                (int(r.get("layer", i)), v) for i, r in enumerate(layers) if (v := _numbers(r.get(key)))
            ]
            if per_layer:
                body += embed(partial(vector_figure, title, label, per_layer), e(title), title)
        for key, (title, label) in CHECKPOINT_MATRICES.items():
            mats = [(int(r.get("layer", i)), mx) for i, r in enumerate(layers) if (mx := _matrix(r.get(key)))]
            for layer, mat in mats[:4]:
                body += embed(
                    partial(matrix_figure, title, label, layer, mat),
                    e(f"{title}, layer {layer}"),
                    title,
                    png=big_heatmap(len(mat) ** 2),
                )
        dups = [
            (int(r.get("layer", i)), r["redundant_pairs"])
            for i, r in enumerate(layers)
            if isinstance(r.get("redundant_pairs"), list) and r["redundant_pairs"]
        ]
        if dups:
            items = "".join(
                f"<li>layer {lay}: {e(fold([tuple(p[:2]) for p in pairs], 10))}</li>" for lay, pairs in dups
            )
            body += f"<h3>Near-duplicate expert pairs</h3><ul>{items}</ul>"
        out.append(Section("checkpoint-layers", "Checkpoint: layers", body))
    return out
