from __future__ import annotations

import pytest

from moediag.errors import UsageError
from moediag.importers import IMPORTERS, ImportFormat, parse_format
from moediag.importers.registry import DESCRIPTIONS


@pytest.mark.parametrize("fmt", list(ImportFormat))
def test_every_format_has_an_importer_and_a_description(fmt: ImportFormat) -> None:
    assert callable(IMPORTERS[fmt])
    assert DESCRIPTIONS[fmt]
    assert parse_format(fmt.value) is fmt
    assert parse_format(fmt.value.upper()) is fmt
    assert IMPORTERS[fmt].__module__ == f"moediag.importers.{fmt.value}"


def test_every_format_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "importers.md").read_text()
    for fmt in ImportFormat:
        assert f"## `{fmt.value}`" in doc


def test_unknown_format() -> None:
    with pytest.raises(UsageError, match="choose one of: hf, sglang, megatron, trtllm, vllm"):
        parse_format("deepspeed")
