"""The `gpt2` command: a Typer app. Commands live in gpt2cli/commands/, one module per group, each
with a `register(app)`. Nothing here imports torch: `gpt2 --help` and completion stay fast."""

from __future__ import annotations

import os
import sys

import typer

from gpt2cli import __version__
from gpt2cli.errors import Gpt2Error

app = typer.Typer(
    name="gpt2",
    help="Run OpenAI's GPT-2 locally: generate text, chat in a REPL, score text.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpt2cli {__version__}")
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
) -> None:
    """Run OpenAI's GPT-2 locally: generate text, chat in a REPL, score text."""


def error(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise."""
    sys.stderr.write(f"gpt2: error: {message}\n")
    sys.stderr.flush()
    return typer.Exit(code)


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


_register_commands()


def main() -> None:
    """Console-script entry point: run the app, turning known failures into one-line errors and
    the exit codes scripts expect (1 error, 2 usage, 130 Ctrl-C, quiet on a closed pipe)."""
    try:
        app()
    except Gpt2Error as exc:
        raise SystemExit(error(str(exc), exc.exit_code).exit_code) from None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise SystemExit(130) from None
    except BrokenPipeError:
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141 if os.name != "nt" else 1) from None
