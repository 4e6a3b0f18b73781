"""Help and usage errors for people: fits 80 columns, full flag names, plain metavars, one-line errors.

typer's own rich help squeezes six columns into the terminal (at 80 columns flag names are cut:
``--min-path-accura…``) and shows Python types as metavars (``<bool>``, ``<list[Path]>``). This module
renders the same information (usage, description, typer's ``rich_help_panel`` groups) as two columns:
the flag with its metavar in full, and the help wrapped beside it, or under it when the flag is long.
Usage errors become one line, ``moediag: error: ...``, in plain language.
"""

from __future__ import annotations

import difflib
import enum
import re
import shutil
import textwrap
from pathlib import PurePath
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

try:  # typer >= 0.20 vendors click; older typer uses click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

#: Options every command accepts anywhere on the line (handled in moediag.cli.app before parsing).
GLOBAL_OPTIONS = (
    ("--debug", "Show the traceback of an error."),
    ("--quiet", "Print only results, warnings and errors: no progress, notes or 'wrote' lines."),
    ("--no-color", "Plain text without colour (also when NO_COLOR is set or output is piped)."),
)

#: more panels for a command's help, by command name: (title, rows of (name, text)), e.g. plot's figures
EXTRA_PANELS: dict[str, tuple[str, list[tuple[str, str]]]] = {}

MAX_WIDTH = 100
_NAME_COLUMN = 30  # widest flag column; longer flags get their help on the next line

_TYPE_METAVARS = {int: "INT", float: "NUMBER", str: "TEXT", bool: ""}


def help_width() -> int:
    """The width help is laid out for: the terminal's (or $COLUMNS), at most :data:`MAX_WIDTH`."""
    return max(40, min(MAX_WIDTH, shutil.get_terminal_size((80, 24)).columns))


def help_console() -> Console:
    from moediag.cli.flags import colour_enabled

    return Console(
        width=help_width(),
        highlight=False,
        soft_wrap=False,
        markup=False,
        color_system="auto" if colour_enabled() else None,
    )


def _choices(param: Any) -> list[str] | None:
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and getattr(desc, "is_choice", False) and desc.choices:
        return [str(c.value if isinstance(c, enum.Enum) else c) for c in desc.choices]
    choices = getattr(getattr(param, "type", None), "choices", None)
    if choices:
        return [str(c.value if isinstance(c, enum.Enum) else c) for c in choices]
    return None


def _annotation(param: Any) -> Any:
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    origin = getattr(annotation, "__origin__", None)
    args = getattr(annotation, "__args__", None)
    if origin in (list, tuple) and args:
        annotation = args[0]
    return annotation


def metavar(param: Any) -> str:
    """The word shown after a flag (or for an argument): the declared metavar, the choices joined by
    ``|``, or a plain type word (INT, NUMBER, TEXT, PATH); nothing for a switch."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return str(param.metavar)
    choices = _choices(param)
    if choices:
        return "|".join(choices)
    annotation = _annotation(param)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "PATH"
    if annotation in _TYPE_METAVARS:
        return _TYPE_METAVARS[annotation]
    name = getattr(getattr(param, "type", None), "name", "") or "text"
    return {"integer": "INT", "float": "NUMBER", "path": "PATH", "boolean": ""}.get(name, name.upper())


def argument_name(param: Any) -> str:
    name = str(param.metavar or (param.name or "").upper())
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name


def usage_line(command: Any, ctx: Any) -> str:
    """``moediag check [OPTIONS] PATH``: optional arguments in brackets, repeatable ones with ``...``."""
    pieces = [ctx.command_path]
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    if any(p.param_type_name == "option" for p in params):
        pieces.append("[OPTIONS]")
    for p in params:
        if p.param_type_name == "argument":
            name = argument_name(p)
            pieces.append(name if p.required else f"[{name}]")
    if hasattr(command, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _default_text(param: Any) -> str | None:
    show = getattr(param, "show_default", None)
    if isinstance(show, str):
        return show
    if show is False or param.required:
        return None
    default = param.default
    if callable(default) or default is None or default == () or default == []:
        return None
    if getattr(param, "is_flag", False):
        if not param.secondary_opts:
            return None
        return param.opts[0] if default else param.secondary_opts[0]
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, (list, tuple)):
        return ", ".join(str(getattr(d, "value", d)) for d in default)
    return str(default)


def _flag_text(param: Any) -> str:
    if param.param_type_name == "argument":
        return argument_name(param)
    shorts = [o for o in param.opts if not o.startswith("--")]
    longs = [o for o in param.opts if o.startswith("--")]
    names = ", ".join(shorts + longs)
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    mv = metavar(param)
    return f"{names} {mv}" if mv else names


def _help_text(param: Any) -> str:
    text = " ".join((getattr(param, "help", None) or "").split())
    extra = []
    default = _default_text(param) if param.param_type_name == "option" else None
    if default is not None:
        extra.append(f"default: {default}")
    if param.required and param.param_type_name == "option":
        extra.append("required")
    if extra:
        text = f"{text} [{'; '.join(extra)}]".strip()
    return text


def _rows(rows: list[tuple[str, str]], width: int, name_style: str) -> Text:
    """Two columns in ``width`` characters: names (never cut) and help wrapped beside or below them."""
    column = min(max((len(n) for n, _ in rows), default=0), _NAME_COLUMN)
    help_width = max(20, width - column - 2)
    out = Text()
    for i, (name, help_text) in enumerate(rows):
        lines = textwrap.wrap(help_text, help_width, break_on_hyphens=False) or [""]
        if i:
            out.append("\n")
        _append_name(out, name, name_style)
        if len(name) > column:
            out.append("\n" + " " * (column + 2) + lines[0])
        else:
            out.append(" " * (column - len(name) + 2) + lines[0])
        for line in lines[1:]:
            out.append("\n" + " " * (column + 2) + line)
    return out


def _append_name(out: Text, name: str, style: str) -> None:
    """Flags in ``style``, metavars (upper-case words, choices) in yellow."""
    for token in re.split(r"(\s+|, | / )", name):
        if token.startswith("-"):
            out.append(token, style=style)
        elif token.strip() and token.strip(",/ "):
            out.append(token, style="yellow" if style != "bold" else style)
        else:
            out.append(token)


def _panel(console: Console, title: str, body: Text) -> None:
    console.print(Panel(body, title=title, title_align="left", border_style="dim", padding=(0, 1)))


def _paragraphs(text: str) -> list[str]:
    text = textwrap.dedent(text).split("\f")[0]
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def short_help(command: Any) -> str:
    paragraphs = _paragraphs(command.help or "")
    return paragraphs[0] if paragraphs else ""


def format_help(command: Any, ctx: Any) -> str:
    """``command``'s help (a command or the group), with colour when stdout is a terminal."""
    console = help_console()
    with console.capture() as captured:
        _print_help(console, command, ctx)
    return captured.get()


def _print_help(console: Console, command: Any, ctx: Any) -> None:
    width = console.width
    console.print(Text("Usage: ", style="bold") + Text(usage_line(command, ctx), style="bold"))
    paragraphs = _paragraphs(command.help or "")
    for i, paragraph in enumerate(paragraphs):
        console.print()
        text = textwrap.fill(
            paragraph, width - 2, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
        )
        console.print(Text(text, style="" if i == 0 else "dim"))
    console.print()
    panels: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        default_panel = "Arguments" if param.param_type_name == "argument" else "Options"
        panel = getattr(param, "rich_help_panel", None) or default_panel
        panels.setdefault(panel, []).append((_flag_text(param), _help_text(param)))
    order = ["Arguments", *[p for p in panels if p not in ("Arguments", "Options")], "Options"]
    for title in order:
        if title in panels:
            _panel(console, title, _rows(panels[title], width - 4, "bold cyan"))
    extra = EXTRA_PANELS.get(getattr(command, "name", "") or "")
    if extra is not None:
        _panel(console, extra[0], _rows(extra[1], width - 4, "bold cyan"))
    if hasattr(command, "list_commands"):
        rows = []
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                rows.append((name, short_help(sub)))
        _panel(console, "Commands", _rows(rows, width - 4, "bold cyan"))
    else:
        _panel(
            console, "Global options (anywhere on the line)", _rows(list(GLOBAL_OPTIONS), width - 4, "bold")
        )
    if command.epilog:
        console.print(Text(" ".join(command.epilog.split())))


# ---------------------------------------------------------------------------------------------- errors

_PYDANTIC = {
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "bool_parsing": "expected true or false",
    "finite_number": "expected a finite number",
}


def _param_label(param: Any) -> str:
    if param is None:
        return ""
    if param.param_type_name == "argument":
        return argument_name(param)
    longs = [o for o in param.opts if o.startswith("--")]
    return (longs or param.opts)[0]


def _bad_value(exc: Any) -> str:
    """The reason a value was refused, in plain words (typer >= 0.20 reports pydantic's wording)."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
        except (IndexError, TypeError, ValueError):  # pragma: no cover
            first = None
        if first is not None:
            value = first.get("input")
            got = f", got {value!r}" if isinstance(value, str) else ""
            kind = first.get("type", "")
            if kind in _PYDANTIC:
                return _PYDANTIC[kind] + got
            message = str(first.get("msg", exc.message))
            return _plain(message)
    return _plain(exc.message)


def _plain(message: str) -> str:
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    message = re.sub(r"^Input should be ", "expected ", message)
    choices = re.match(r"^('[^']*') is not one of (.*)\.$", message)
    if choices:
        names = [c.strip().strip("'") for c in choices.group(2).split(",")]
        message = f"{choices.group(1)} is not one of {', '.join(names)}"
    return message.rstrip(".")


def usage_error_line(exc: Any) -> str:
    """One line for a click usage error: what was wrong, in plain words, and where to read more."""
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    if isinstance(exc, click_exceptions.NoSuchOption):
        close = difflib.get_close_matches(exc.option_name, list(exc.possibilities or ()), n=1, cutoff=0.7)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"no such option {exc.option_name}{hint}{where}"
    if isinstance(exc, click_exceptions.MissingParameter):
        label = _param_label(exc.param)
        what = "argument" if exc.param is not None and exc.param.param_type_name == "argument" else "option"
        return f"missing {what} {label}{where}"
    if isinstance(exc, click_exceptions.BadParameter):
        label = _param_label(exc.param) or (exc.param_hint if isinstance(exc.param_hint, str) else "")
        return f"{label}: {_bad_value(exc)}{where}" if label else f"{_bad_value(exc)}{where}"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = re.sub(r"^No such command '([^']*)'\.", r"no such command '\1';", message)
    message = message.replace("Did you mean", "did you mean").rstrip(";")
    message = re.sub(r"^Got unexpected extra argument\(s\) \((.*)\)$", r"unexpected argument(s): \1", message)
    return f"{_plain(message)}{where}"
