"""What a checkpoint holds, from headers alone: its files, shards, index, config and tensors.

A checkpoint is one of

* a folder with ``config.json`` and ``model.safetensors``, or shards plus ``*.safetensors.index.json``;
* a single ``.safetensors`` file (a ``config.json`` beside it is used when present);
* an index ``.json`` file (``weight_map`` names the shards, relative to the index).

Opening reads only the 8-byte length and JSON header of each file (through
:class:`moediag.io.safetensors_file.SafetensorsFile`); no tensor data is touched. Every problem that makes
the checkpoint unreadable raises :class:`~moediag.errors.InvalidInputError` naming the file; problems
that leave it readable (a tensor in a shard that the index does not list) become warnings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moediag.errors import InvalidInputError, UnsupportedLayoutError
from moediag.io import strict_json
from moediag.io.paths import SIDECAR_MAX_BYTES, confined
from moediag.io.safetensors_file import SafetensorsFile, TensorInfo, looks_like_safetensors

__all__ = ["Inventory", "TensorRef", "is_checkpoint", "open_inventory"]

_TRACE_NAME = re.compile(r"^layers\.\d+\.(?:router_logits|topk_ids|expert_counts)$")


@dataclass(frozen=True)
class TensorRef:
    """One tensor of the checkpoint: its header entry and the file that holds it."""

    info: TensorInfo
    file: SafetensorsFile

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dtype(self) -> str:
        return self.info.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.info.shape

    @property
    def numel(self) -> int:
        return self.info.numel


@dataclass
class Inventory:
    """Every tensor of a checkpoint (by name), the files they live in, and the parsed config."""

    path: Path
    files: list[SafetensorsFile]
    tensors: dict[str, TensorRef]
    config: dict[str, Any] | None = None
    config_path: Path | None = None
    index_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorRef:
        return self.tensors[name]

    @property
    def total_bytes(self) -> int:
        return sum(t.info.nbytes for t in self.tensors.values())

    def subset(self, names: list[str]) -> Inventory:
        """An inventory of just ``names`` (same files, same config): small to send to a worker process,
        since its file objects carry only these tensors' headers."""
        slim: dict[str, SafetensorsFile] = {}
        tensors: dict[str, TensorRef] = {}
        for name in names:
            ref = self.tensors[name]
            f = slim.get(str(ref.file.path))
            if f is None:
                f = slim[str(ref.file.path)] = ref.file.without_tensors()
            f.tensors[ref.info.name] = ref.info
            tensors[name] = TensorRef(ref.info, f)
        return Inventory(
            self.path, list(slim.values()), tensors, self.config, self.config_path, self.index_path
        )

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows ``[a, b)`` of a tensor (all of it when ``rows`` is None), read by byte range."""
        ref = self.tensors[name]
        return ref.file.read(ref.name, rows=rows)  # ref.name: the name on disk (``name`` may be an alias)

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements ``[start, stop)`` of a tensor in memory order, as a 1-D tensor of its own dtype.

        Any contiguous span can be read this way (one expert's slice of a fused tensor, a block of
        rows), so memory stays bounded by what the caller asks for.
        """
        return read_flat(self.tensors[name], start, stop)


def read_flat(ref: TensorRef, start: int, stop: int) -> torch.Tensor:
    """Elements ``[start, stop)`` of ``ref`` in memory order (see :meth:`Inventory.read_flat`)."""
    from moediag.io.safetensors_file import DTYPES, itemsize

    info = ref.info
    if info.dtype not in DTYPES:
        raise InvalidInputError(
            f"tensor {info.name!r} has dtype {info.dtype}, which this torch cannot read", ref.file.path
        )
    if not 0 <= start <= stop <= info.numel:
        raise IndexError(f"elements {start}:{stop} outside {info.name} ({info.numel} elements)")
    size = itemsize(info.dtype)
    nbytes = (stop - start) * size
    if nbytes == 0:
        return torch.empty(0, dtype=DTYPES[info.dtype])
    buf = bytearray(nbytes)
    with open(ref.file.path, "rb") as fh:
        fh.seek(info.start + start * size)
        got = fh.readinto(buf)
    if got != nbytes:
        raise InvalidInputError(f"truncated while reading tensor {info.name!r}", ref.file.path)
    return torch.frombuffer(buf, dtype=DTYPES[info.dtype])


# -- detection --------------------------------------------------------------------------------------


def _is_trace_header(sf: SafetensorsFile) -> bool:
    if sf.metadata.get("format") == "moediag-trace":
        return True
    return any(_TRACE_NAME.match(name) for name in sf.tensors)


def _safetensors_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def _indexes_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors.index.json") if p.is_file())


def is_checkpoint(path: Path) -> bool:
    """True when ``path`` looks like a model checkpoint rather than a moediag trace.

    A folder with ``config.json``, ``model*.safetensors`` or a ``*.safetensors.index.json``; an index
    ``.json`` file; or a ``.safetensors`` file whose header is not a trace (traces carry
    ``__metadata__["format"] == "moediag-trace"`` or tensors named ``layers.N.router_logits`` /
    ``topk_ids`` / ``expert_counts``). A file whose header cannot be read is not claimed (False).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file() or _indexes_in(path):
            return True
        files = _safetensors_in(path)
        if any(p.name.startswith("model") for p in files):
            return True
        if files:
            try:
                return not _is_trace_header(SafetensorsFile(files[0]))
            except InvalidInputError:
                return False
        return False
    if path.suffix == ".json":
        try:
            data = strict_json.load_file(path, limit=SIDECAR_MAX_BYTES, what="index")
        except InvalidInputError:
            return path.name.endswith(".safetensors.index.json")
        return isinstance(data, dict) and "weight_map" in data
    if path.is_file() and looks_like_safetensors(path):
        try:
            return not _is_trace_header(SafetensorsFile(path))
        except InvalidInputError:
            return False
    return False


# -- opening ----------------------------------------------------------------------------------------


def _load_config(path: Path) -> dict[str, Any]:
    # regular file, size cap, depth and number syntax (NaN, 1e999, 5000 digits): moediag.io.strict_json
    data = strict_json.load_file(path, limit=SIDECAR_MAX_BYTES, what="config")
    if not isinstance(data, dict):
        raise InvalidInputError("config is not a JSON object", path)
    return data


def _load_index(path: Path) -> dict[str, str]:
    data = strict_json.load_file(path, limit=SIDECAR_MAX_BYTES, what="index")
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise InvalidInputError('not a safetensors index: expected a "weight_map" of tensor -> file', path)
    return wm


def _unsupported_folder(folder: Path) -> UnsupportedLayoutError | None:
    if (folder / ".metadata").is_file() or any(folder.glob("*.distcp")):
        return UnsupportedLayoutError(
            "Megatron-Core torch_dist checkpoint (*.distcp + .metadata), not safetensors; convert it to "
            "safetensors first (e.g. with Megatron-Bridge's export to Hugging Face format)",
            folder,
        )
    pt = [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pt:
        return UnsupportedLayoutError(
            f"holds only pickled torch weights ({pt[0].name}); moediag reads safetensors checkpoints "
            "(re-save with save_pretrained(..., safe_serialization=True))",
            folder,
        )
    return None


def open_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Open a checkpoint (folder, ``.safetensors`` file, or index ``.json``) reading headers only."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError("no such file or directory", path)
    config_path: Path | None = None
    index_path: Path | None = None
    warnings: list[str] = []
    if path.is_dir():
        folder = path
        if (folder / "config.json").is_file():
            config_path = folder / "config.json"
        indexes = _indexes_in(folder)
        if indexes:
            preferred = [p for p in indexes if p.name == "model.safetensors.index.json"]
            index_path = preferred[0] if preferred else indexes[0]
            if len(indexes) > 1:
                warnings.append(f"{len(indexes)} index files in the folder; using {index_path.name}")
            shard_files: list[Path] = []
        else:
            shard_files = _safetensors_in(folder)
            if not shard_files:
                err = _unsupported_folder(folder)
                if err:
                    raise err
                raise InvalidInputError(
                    "no .safetensors files and no safetensors index in this folder", folder
                )
    elif path.suffix == ".json":
        index_path = path
        folder = path.parent
        if (folder / "config.json").is_file() and path.name != "config.json":
            config_path = folder / "config.json"
        shard_files = []
    else:
        folder = path.parent
        shard_files = [path]
        if (folder / "config.json").is_file():
            config_path = folder / "config.json"
        for idx in _indexes_in(folder):  # one shard of a sharded checkpoint: the rest are not read
            try:
                listed = set(_load_index(idx).values())
            except InvalidInputError:
                continue
            if path.name in listed and len(listed) > 1:
                warnings.append(
                    f"{path.name} is one of {len(listed)} shards that {idx.name} lists; only its tensors are "
                    f"read (give the folder {folder} for the whole model)"
                )

    config = _load_config(config_path) if config_path else None

    files: list[SafetensorsFile] = []
    tensors: dict[str, TensorRef] = {}
    dups: list[str] = []
    if index_path is not None:
        weight_map = _load_index(index_path)
        by_file: dict[str, list[str]] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, []).append(name)
        for fname in sorted(by_file):
            # a shard name must stay inside the index's folder (no ../x, no /etc/passwd, no symlink out)
            fpath = confined(index_path.parent, fname, index_path)
            if fpath.exists() and not fpath.is_file():
                raise InvalidInputError(
                    f"shard {fname!r} named in the index is not a regular file", index_path
                )
            if not fpath.is_file():
                raise InvalidInputError(
                    f"shard {fname!r} named in the index is missing ({len(by_file[fname])} tensors); "
                    "download it or point moediag at a complete checkpoint",
                    index_path,
                )
            sf = SafetensorsFile(fpath)
            files.append(sf)
            for name in by_file[fname]:
                if name not in sf.tensors:
                    raise InvalidInputError(
                        f"the index places tensor {name!r} in this shard, but the shard does not hold it",
                        fpath,
                    )
            unlisted = [n for n in sf.tensors if n not in weight_map]
            if unlisted:
                warnings.append(
                    f"{fname}: {len(unlisted)} tensors not listed in {index_path.name} "
                    f"(e.g. {unlisted[0]!r}); "
                    "counted anyway"
                )
            for name, info in sf.tensors.items():
                if name in weight_map and weight_map[name] != fname:
                    continue
                _add(tensors, name, TensorRef(info, sf), dups)
    else:
        for fpath in shard_files:
            sf = SafetensorsFile(fpath)
            if _is_trace_header(sf):
                raise InvalidInputError("this is a moediag trace, not a checkpoint", fpath)
            files.append(sf)
            for name, info in sf.tensors.items():
                _add(tensors, name, TensorRef(info, sf), dups)
    if dups:
        warnings.append(
            f"{len(dups)} tensor names appear in more than one file (e.g. {dups[0]!r}; a model-parallel "
            "split?); the first file's copy is used"
        )
    if not tensors:
        raise InvalidInputError("checkpoint holds no tensors", path)
    tensors = _openai_gpt_oss_aliases(tensors, warnings)
    return Inventory(
        path=path,
        files=files,
        tensors=tensors,
        config=config,
        config_path=config_path,
        index_path=index_path,
        warnings=warnings,
    )


def _add(tensors: dict[str, TensorRef], name: str, ref: TensorRef, dups: list[str]) -> None:
    if name in tensors:
        dups.append(name)
        return
    tensors[name] = ref


#: OpenAI's original GPT-OSS release (the ``original/`` folder) names its MoE tensors differently from
#: transformers; the same tensors, renamed as transformers' convert_gpt_oss_weights_to_hf.py does (with
#: ``mxfp4=True``: blocks and scales are stored unchanged).
_OPENAI_GPT_OSS = (
    (
        re.compile(r"^block\.(\d+)\.mlp\.mlp1_weight\.(blocks|scales)$"),
        r"block.\1.mlp.experts.gate_up_proj_\2",
    ),
    (re.compile(r"^block\.(\d+)\.mlp\.mlp2_weight\.(blocks|scales)$"), r"block.\1.mlp.experts.down_proj_\2"),
    (re.compile(r"^block\.(\d+)\.mlp\.mlp1_weight$"), r"block.\1.mlp.experts.gate_up_proj"),
    (re.compile(r"^block\.(\d+)\.mlp\.mlp2_weight$"), r"block.\1.mlp.experts.down_proj"),
    (re.compile(r"^block\.(\d+)\.mlp\.mlp1_bias$"), r"block.\1.mlp.experts.gate_up_proj_bias"),
    (re.compile(r"^block\.(\d+)\.mlp\.mlp2_bias$"), r"block.\1.mlp.experts.down_proj_bias"),
    (re.compile(r"^block\.(\d+)\.mlp\.gate\.(weight|bias)$"), r"block.\1.mlp.router.\2"),
)


def _openai_gpt_oss_aliases(tensors: dict[str, TensorRef], warnings: list[str]) -> dict[str, TensorRef]:
    """Present an OpenAI-original GPT-OSS checkpoint under transformers' names (reads use the disk name)."""
    if not any(_OPENAI_GPT_OSS[0][0].match(n) or _OPENAI_GPT_OSS[2][0].match(n) for n in tensors):
        return tensors
    out: dict[str, TensorRef] = {}
    for name, ref in tensors.items():
        for pattern, repl in _OPENAI_GPT_OSS:
            if pattern.match(name):
                name = pattern.sub(repl, name)
                break
        out[name] = ref
    warnings.append(
        "OpenAI's original GPT-OSS names (block.L.mlp.mlp1_weight ...): read as transformers' layout "
        "(mlp.experts.gate_up_proj ..., mlp.router)"
    )
    return out
