"""Config files: discovery, precedence (defaults < file < flags), and errors that name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from moediag.checks.config import load_config
from moediag.errors import ConfigError, UsageError
from moediag.io.config_file import find_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    cfg = load_config(cwd=tmp_path)
    assert cfg["max_vio"] == 1.0 and cfg.sources["max_vio"] == "default" and cfg.file is None


def test_precedence_defaults_file_flags(tmp_path: Path) -> None:
    f = write(
        tmp_path / "pyproject.toml", "[tool.moediag.check]\nmax_vio = 0.5\nmax_cv = 0.4\nmax_aux_loss = 1.2\n"
    )
    cfg = load_config(cwd=tmp_path, flags={"max_cv": "0.3", "max_vio": None})
    assert cfg["max_vio"] == 0.5 and cfg.sources["max_vio"] == str(f)  # file over default
    assert cfg["max_cv"] == 0.3 and cfg.sources["max_cv"] == "flag"  # flag over file
    assert cfg["min_entropy"] == 0.8 and cfg.sources["min_entropy"] == "default"
    assert cfg["max_aux_loss"] == 1.2
    assert load_config(cwd=tmp_path, flags={"max_aux_loss": "off"})["max_aux_loss"] is None


def test_found_from_a_subfolder_upward(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.moediag.check]\nlayers = '0,2-3'\nstrict = true\n")
    (tmp_path / ".git").mkdir()
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert find_config(sub) == tmp_path / "pyproject.toml"
    cfg = load_config(cwd=sub)
    assert cfg["layers"] == (0, 2, 3) and cfg["strict"] is True


def test_pyproject_without_the_table_is_passed_over(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.moediag.check]\nmax_dead = 2\n")
    write(tmp_path / "sub" / "pyproject.toml", "[project]\nname = 'x'\n")
    assert load_config(cwd=tmp_path / "sub")["max_dead"] == 2


def test_moediag_toml_wins_in_its_folder(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.moediag.check]\nmax_dead = 2\n")
    write(tmp_path / "moediag.toml", "[check]\nmax_dead = 3\n")
    assert load_config(cwd=tmp_path)["max_dead"] == 3


def test_search_stops_at_the_repository_root(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.moediag.check]\nmax_dead = 2\n")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert find_config(tmp_path / "repo") is None


def test_explicit_config_file(tmp_path: Path) -> None:
    f = write(tmp_path / "ci" / "gate.toml", "[check]\nscope = 'model'\n")
    assert load_config(f)["scope"] == "model"
    g = write(tmp_path / "other.toml", "[tool.moediag.check]\nscope = 'model'\n")
    assert load_config(g)["scope"] == "model"
    with pytest.raises(ConfigError, match="no \\[tool.moediag.check\\] table"):
        load_config(write(tmp_path / "empty.toml", "[x]\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("max_vioo = 1.0", "unknown key 'max_vioo'.*did you mean 'max_vio'"),
        ("max_vio = 'high'", "key 'max_vio': expected a number or off"),
        ("max_dead = 1.5", "key 'max_dead': expected an integer"),
        ("max_vio = -1", "key 'max_vio': must be >= 0"),
        ("scope = 'everything'", "key 'scope': expected one of layer, model"),
        ("strict = 'yes'", "key 'strict': expected true or false"),
        ("layers = '1-'", "key 'layers'"),
    ],
)
def test_bad_key_or_value_names_file_and_key(tmp_path: Path, body: str, match: str) -> None:
    f = write(tmp_path / "pyproject.toml", f"[tool.moediag.check]\n{body}\n")
    with pytest.raises(ConfigError, match=match) as info:
        load_config(cwd=tmp_path)
    assert info.value.path == str(f)
    assert str(f) in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    f = write(tmp_path / "moediag.toml", "[check\nmax_vio = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(cwd=tmp_path)
    assert info.value.path == str(f)


def test_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    with pytest.raises(UsageError, match="--max-vio: expected a number or off"):
        load_config(cwd=tmp_path, flags={"max_vio": "lots"})
