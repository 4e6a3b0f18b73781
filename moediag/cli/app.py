"""The typer application and the one place where errors become exit codes.

Every command lives in its own module in this package and registers itself on :data:`app`; each is a
thin adapter: parse options, call the library, render the result, return an exit code.
"""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from moediag.errors import ExitCode, MoediagError

_state = {"debug": False}


def is_debug() -> bool:
    return bool(_state["debug"])


def echo_err(message: str) -> None:
    """Human-facing text goes to stderr so stdout stays pure data (JSON, tables on request)."""
    typer.echo(message, err=True)


class MoediagGroup(TyperGroup):
    """Catches moediag's errors once: one line on stderr, exit 2; anything else is exit 3."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MoediagError as exc:
            if is_debug():
                traceback.print_exc()
            echo_err(f"moediag: error: {exc}")
            raise typer.Exit(int(ExitCode.INVALID_INPUT)) from None
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except KeyboardInterrupt as exc:
            # SIGTERM and SIGHUP arrive here too (see main): the same cleanup as Ctrl-C has run on the way
            signum = getattr(exc, "signum", signal.SIGINT)
            echo_err(
                "moediag: interrupted" if signum == signal.SIGINT else f"moediag: terminated ({signum.name})"
            )
            raise typer.Exit(128 + int(signum)) from None
        except OSError as exc:
            # an I/O failure no reader or writer turned into a MoediagError (EIO, ELOOP, ...): still one line
            if is_debug():
                traceback.print_exc()
            reason = (exc.strerror or type(exc).__name__).lower()
            where = f"{exc.filename}: " if exc.filename else ""
            echo_err(f"moediag: error: {where}{reason}")
            raise typer.Exit(int(ExitCode.INVALID_INPUT)) from None
        except Exception as exc:  # pragma: no cover - exercised through the --debug test
            if is_debug():
                traceback.print_exc()
            name = type(exc).__name__
            echo_err(f"moediag: internal error: {name}: {exc} (rerun with --debug for the traceback)")
            raise typer.Exit(int(ExitCode.INTERNAL_ERROR)) from None


app = typer.Typer(
    name="moediag",
    cls=MoediagGroup,
    help="Routing and expert-utilisation diagnostics for Mixture-of-Experts models.",
    no_args_is_help=True,
    add_completion=False,
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
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Is my routing healthy? Inspect traces and checkpoints, report, gate CI."""
    _state["debug"] = debug


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
    from moediag.memory import tune_allocator

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
