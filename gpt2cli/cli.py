"""The `gpt2` command: a Typer app. Commands live in gpt2cli/commands/, one module per group, each
with a `register(app)`. Nothing here imports torch: `gpt2 --help` and completion stay fast."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer

from gpt2cli import __version__
from gpt2cli.commands import options
from gpt2cli.errors import Gpt2Error, ParamError
from gpt2cli.io import silence_stdout


def _click_exception(name: str) -> type[Exception]:
    """Click's exception class `name`, as the typer in use raises it: typer >= 0.26 vendors its
    own copy of click (and click itself may be absent), older ones use click. Found through
    typer's public `BadParameter`, whose bases they are, so no click import is needed."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


ClickException = _click_exception("ClickException")
ClickUsageError = _click_exception("UsageError")

HELP = """Run OpenAI's GPT-2 locally: generate text, chat in a REPL, score text.

[bold]Examples[/bold]
  gpt2 generate "The meaning of life is"
  echo "Once upon a time" | gpt2 generate -n 50 --json
  gpt2 generate --help
"""

app = typer.Typer(
    name="gpt2",
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


class ClosedPipe(Exception):
    """stdout's reader went away. Deliberately not an OSError: Typer turns an EPIPE OSError
    into exit status 1, and a closed pipe should end quietly with 141 (128 + SIGPIPE)."""


class Interrupted(Exception):
    """Ctrl-C inside a command. Typer turns KeyboardInterrupt into a bare exit 130; this lets
    `run` end the line first, so the shell prompt does not land after `^C`."""


def _closed_pipe_hook(console: object) -> None:
    """Rich's Console.on_broken_pipe, which would raise SystemExit(1)."""
    console.quiet = True  # type: ignore[attr-defined]
    silence_stdout()
    raise ClosedPipe


def _guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so that a closed pipe and Ctrl-C reach `run` (see the two classes)."""

    @functools.wraps(command)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise ClosedPipe from None
        except KeyboardInterrupt:
            raise Interrupted from None

    return call


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"gpt2cli {__version__}")
        except BrokenPipeError:
            raise ClosedPipe from None
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Show the version and exit.",
        callback=_version,
        is_eager=True,
    ),
    debug: options.Debug = False,
) -> None:
    """Run OpenAI's GPT-2 locally."""


def error(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise."""
    sys.stderr.write(f"gpt2: error: {one_line(message)}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def _register_commands() -> None:
    import importlib

    for name in ("generate", "cache", "repl", "score"):
        try:
            module = importlib.import_module(f"gpt2cli.commands.{name}")
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != f"gpt2cli.commands.{name}":
                raise
            continue
        module.register(app)
    for command in app.registered_commands:
        command.callback = _guarded(command.callback)
    import rich.console  # Typer's help and our tables print through Rich

    rich.console.Console.on_broken_pipe = _closed_pipe_hook


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    code = run(argv)
    if "torch" in sys.modules:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, which with torch loaded takes
    ~0.4 s (half of a one-token run's overhead) and does nothing a finished command needs:
    output is flushed and atexit handlers run first."""
    import atexit

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    atexit._run_exitfuncs()
    os._exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the app and return the exit status, turning known failures into one-line errors and
    the exit codes scripts expect: 1 error, 2 usage, 130 Ctrl-C, quiet on a closed pipe. With
    `--debug` (or GPT2_DEBUG=1) errors also show their traceback."""
    try:
        result = app(args=argv, prog_name="gpt2", standalone_mode=False)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `gpt2` alone: help is already printed
            return exc.exit_code
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, ClickUsageError) and ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        return _fail(message, exc.exit_code)
    except typer.Abort:
        return _fail("aborted", 1)
    except ParamError as exc:
        return _fail(options.describe(exc), exc.exit_code)
    except Gpt2Error as exc:
        return _fail(str(exc), exc.exit_code)
    except (KeyboardInterrupt, Interrupted):
        sys.stderr.write("\n")
        return 130
    except (BrokenPipeError, ClosedPipe):
        silence_stdout()
        return 141
    except OSError as exc:
        return _fail(str(exc), 1)
    except Exception as exc:
        return _fail(f"unexpected {type(exc).__name__}: {exc}", 1, hint=True)
    return result if isinstance(result, int) else 0


def _fail(message: str, code: int, hint: bool = False) -> int:
    if options.debug_enabled():
        traceback.print_exc()
    elif hint:
        message += " (run with --debug for the traceback)"
    error(message, code)
    return code
