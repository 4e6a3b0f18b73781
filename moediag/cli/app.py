"""The typer application and the one place where errors become exit codes.

Every command lives in its own module in this package and registers itself on :data:`app`; each is a
thin adapter: parse options, call the library, render the result, return an exit code.

Global options (``--debug``, ``--quiet``, ``--no-color``) are taken out of the command line wherever they
stand before click parses it, so ``moediag import ... --debug`` works as well as ``moediag --debug import``.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import TyperException

from moediag.cli.flags import GLOBAL_FLAGS, is_debug, is_quiet, state
from moediag.errors import ExitCode, MoediagError


def echo_err(message: str) -> None:
    """Human-facing text goes to stderr so stdout stays pure data (JSON, tables on request).
    ``--quiet`` silences it (notes, 'wrote ...' lines); use :func:`warn` for what must still show."""
    if not is_quiet():
        typer.echo(message, err=True)


def warn(message: str) -> None:
    """A warning or error line on stderr, shown even under ``--quiet``."""
    typer.echo(message, err=True)


def split_global_options(args: Sequence[str]) -> list[str]:
    """Set the global flags found anywhere before a ``--`` and return the remaining arguments."""
    out: list[str] = []
    rest = list(args)
    for i, arg in enumerate(rest):
        if arg == "--":
            out.extend(rest[i:])
            break
        if arg in GLOBAL_FLAGS:
            state[GLOBAL_FLAGS[arg]] = True
        else:
            out.append(arg)
    return out


class MoediagCommand(TyperCommand):
    """A command whose help fits 80 columns (moediag/cli/help.py)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from moediag.cli.help import format_help

        formatter.write(format_help(self, ctx))


class MoediagGroup(TyperGroup):
    """Catches moediag's errors once: one line on stderr, exit 2; anything else is exit 3."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from moediag.cli.help import click_exceptions, usage_error_line

        for key in state:
            state[key] = False
        argv = split_global_options(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as exc:
            typer.echo(exc.format_message(), nl=False)
            if standalone_mode:
                sys.exit(exc.exit_code)
            raise
        except click_exceptions.ClickException as exc:
            if is_debug():
                traceback.print_exc()
            warn(f"moediag: error: {usage_error_line(exc)}")
            code = int(ExitCode.INVALID_INPUT) if exc.exit_code == 2 else exc.exit_code
            if standalone_mode:
                sys.exit(code)
            raise
        except typer.Abort:
            warn("moediag: aborted")
            if standalone_mode:
                sys.exit(1)
            raise
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from moediag.cli.help import format_help

        formatter.write(format_help(self, ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MoediagError as exc:
            if is_debug():
                traceback.print_exc()
            warn(f"moediag: error: {exc}")
            raise typer.Exit(int(ExitCode.INVALID_INPUT)) from None
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except KeyboardInterrupt as exc:
            # SIGTERM and SIGHUP arrive here too (see main): the same cleanup as Ctrl-C has run on the way
            signum = getattr(exc, "signum", signal.SIGINT)
            warn(
                "moediag: interrupted" if signum == signal.SIGINT else f"moediag: terminated ({signum.name})"
            )
            raise typer.Exit(128 + int(signum)) from None
        except OSError as exc:
            # an I/O failure no reader or writer turned into a MoediagError (EIO, ELOOP, ...): still one line
            if is_debug():
                traceback.print_exc()
            reason = (exc.strerror or type(exc).__name__).lower()
            where = f"{exc.filename}: " if exc.filename else ""
            warn(f"moediag: error: {where}{reason}")
            raise typer.Exit(int(ExitCode.INVALID_INPUT)) from None
        except Exception as exc:
            name = type(exc).__name__
            if is_debug():
                traceback.print_exc()
            warn(f"moediag: internal error: {name}: {exc} (rerun with --debug for the traceback)")
            raise typer.Exit(int(ExitCode.INTERNAL_ERROR)) from None


class MoediagTyper(typer.Typer):
    """``app.command(...)`` builds :class:`MoediagCommand` unless told otherwise."""

    def command(self, name: str | None = None, *, cls: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().command(name, cls=cls or MoediagCommand, **kwargs)


app = MoediagTyper(
    name="moediag",
    cls=MoediagGroup,
    help="Routing and expert-utilisation diagnostics for Mixture-of-Experts models.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        from moediag import __version__

        typer.echo(f"moediag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Show the traceback of an error (anywhere on the line).",
        rich_help_panel="Global options",
    ),
    quiet: bool = typer.Option(
        False,
        "--quiet",
        help="Print only results, warnings and errors (anywhere on the line).",
        rich_help_panel="Global options",
    ),
    no_color: bool = typer.Option(
        False,
        "--no-color",
        help="Plain text without colour (anywhere on the line).",
        rich_help_panel="Global options",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Is my routing healthy? Inspect traces and checkpoints, report, gate CI.

    Run 'moediag COMMAND --help' for a command's options, 'moediag explain' for what each figure means.
    """
    # the global flags were taken out of the line by MoediagGroup.main; these parameters only document them


def finish(code: int | ExitCode) -> None:
    """End a command with an exit code (0 returns normally)."""
    if int(code) != 0:
        raise typer.Exit(int(code))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so every ``finally``/``except BaseException`` cleanup (temp
    files and folders beside an output) runs before the process exits with 128 + the signal number."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(signum.name)
        self.signum = signum


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signal.Signals(signum))


def install_signal_cleanup() -> None:
    """SIGTERM and SIGHUP clean up like SIGINT (main thread only; a library caller keeps its handlers)."""
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _terminate)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    install_signal_cleanup()
    if hasattr(signal, "SIGPIPE"):
        # `moediag inspect ... | head` : end quietly like other Unix tools when the reader goes away
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    from moediag.analysis.memory import tune_allocator

    tune_allocator()  # reuse freed chunk buffers instead of faulting them in again (moediag/memory.py)
    try:
        app(args=argv, prog_name="moediag")
    except KeyboardInterrupt as exc:  # a signal before or after a command ran (inside one: MoediagGroup)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
