"""Placement files: the JSON document ``replay --save-placement`` writes and ``--placement FILE`` reads
(docs/replay.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moediag.errors import InvalidInputError
from moediag.io.atomic import write_atomic
from moediag.replay.ranks import PLACEMENT_FORMAT, PLACEMENT_VERSION, Ranks, check_placement


class PlacementFile:
    """A placement read from JSON: per-layer rank lists, with an optional default for other layers."""

    def __init__(
        self, ep_size: int, layers: Mapping[int, Ranks], default: Ranks | None = None, path: str | None = None
    ) -> None:
        self.ep_size = ep_size
        self.layers = dict(layers)
        self.default = default
        self.path = path

    def for_layer(self, layer: int, num_experts: int) -> Ranks:
        ranks = self.layers.get(layer, self.default)
        if ranks is None:
            raise InvalidInputError(f'no placement for layer {layer} (and no "default")', self.path)
        check_placement(ranks, num_experts, self.path)
        return ranks


def _ranks(value: Any, ep_size: int, what: str, where: str) -> Ranks:
    if not isinstance(value, list) or not all(isinstance(r, list) for r in value):
        raise InvalidInputError(f"{what}: expected a list of ranks, each a list of expert ids", where)
    if len(value) != ep_size:
        raise InvalidInputError(f"{what}: {len(value)} ranks but ep_size is {ep_size}", where)
    return [list(r) for r in value]


def load_placement(path: str | os.PathLike[str]) -> PlacementFile:
    """Read a placement file::

        {"format": "moediag-placement", "version": 1, "ep_size": 2,
         "layers": {"0": [[0, 3], [1, 2]], "1": [[0, 1], [2, 3]]},
         "default": [[0, 1], [2, 3]]}

    ``format``/``version`` are optional on input; ``default`` (optional) covers layers not listed.
    """
    where = os.fspath(path)
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidInputError("placement file not found", where) from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"placement file is not valid JSON: {exc}", where) from None
    if not isinstance(doc, dict):
        raise InvalidInputError("placement file must hold a JSON object", where)
    if doc.get("format", PLACEMENT_FORMAT) != PLACEMENT_FORMAT:
        raise InvalidInputError(f"format is {doc.get('format')!r}, expected {PLACEMENT_FORMAT!r}", where)
    ep = doc.get("ep_size")
    if not isinstance(ep, int) or isinstance(ep, bool) or ep < 1:
        raise InvalidInputError("ep_size must be a positive integer", where)
    layers_doc = doc.get("layers", {})
    if not isinstance(layers_doc, dict):
        raise InvalidInputError("layers must be an object keyed by layer index", where)
    layers: dict[int, Ranks] = {}
    for key, value in layers_doc.items():
        try:
            layer = int(key)
        except ValueError:
            raise InvalidInputError(f"layers: key {key!r} is not a layer index", where) from None
        layers[layer] = _ranks(value, ep, f"layers.{key}", where)
    default = _ranks(doc["default"], ep, "default", where) if doc.get("default") is not None else None
    if not layers and default is None:
        raise InvalidInputError("placement file has no layers and no default", where)
    return PlacementFile(ep, layers, default, where)


def placement_document(ep_size: int, layers: Mapping[int, Ranks], replicas: int = 0) -> dict[str, Any]:
    return {
        "format": PLACEMENT_FORMAT,
        "version": PLACEMENT_VERSION,
        "ep_size": ep_size,
        "replicas": replicas,
        "layers": {str(k): v for k, v in sorted(layers.items())},
    }


def save_placement(
    path: str | os.PathLike[str], ep_size: int, layers: Mapping[int, Ranks], replicas: int = 0
) -> None:
    """Write a placement file that :func:`load_placement` reads back (atomic replace)."""
    target = Path(path)
    write_atomic(target, json.dumps(placement_document(ep_size, layers, replicas), indent=1) + "\n")
