"""The `gpt2` command: a Typer app with every command registered explicitly, and the one place
where exceptions become exit statuses (gpt2cli/errors.py's table), Ctrl-C ends a command with
130 and a closed pipe with 141. Nothing here imports torch: `gpt2 --help` and completion stay
fast."""

from __future__ import annotations

import atexit
import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import typer

from gpt2cli import __version__, console
from gpt2cli.commands import batch, cache, generate, options, repl, score, serve
from gpt2cli.errors import EXIT_CLOSED_PIPE, EXIT_INTERRUPTED, ClosedPipe, Interrupted, describe
from gpt2cli.runtime import threads

HELP = """Run OpenAI's GPT-2 locally: generate text, chat in a REPL, score text, continue a file of
prompts, serve an API.

[bold]Examples[/bold]
  gpt2 generate "The meaning of life is"
  echo "Once upon a time" | gpt2 generate -n 50 --json
  gpt2 batch prompts.jsonl -o out.jsonl
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


def _click_exception(name: str) -> type[Exception]:
    """Click's exception class `name`, as the typer in use raises it: typer >= 0.26 vendors its
    own copy of click (and click itself may be absent), older ones use click. Found through
    typer's public `BadParameter`, whose bases they are, so no click import is needed."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


ClickException = _click_exception("ClickException")
ClickUsageError = _click_exception("UsageError")


def _guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Let a closed pipe and Ctrl-C inside a command reach `run`: Typer would turn an EPIPE
    OSError into exit 1 and a KeyboardInterrupt into Abort (exit 1)."""

    @functools.wraps(command)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise ClosedPipe from None
        except KeyboardInterrupt:  # nothing ended the line yet (importing torch, loading...)
            sys.stderr.write("\n")
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


for _group in (generate, repl, score, batch, serve, cache):
    _group.register(app)
for _command in app.registered_commands:
    _command.callback = _guarded(_command.callback)


# -- help screens ------------------------------------------------------------------------------

_CLICK_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT"}


def _plain_value_types() -> None:
    """Typer >= 0.26 writes a Python type after every option, flags included (`--json <bool>`,
    `--help <bool>`, `--stop <list[str]>`), as if a flag took a value. Show what click (and
    older Typer) showed: nothing after a flag, a metavar where one is set, else TEXT, INTEGER or
    FLOAT."""
    from typer import core

    for cls in (core.TyperArgument, core.TyperOption):
        typer_type = getattr(cls, "display_type_rich", None)
        if typer_type is None:  # an older Typer: click's names already
            continue

        def display_type_rich(self: Any, ctx: Any, typer_type: Any = typer_type) -> str | None:
            if getattr(self, "is_flag", False):
                return None
            shown = typer_type(self, ctx)
            if not shown or not shown.startswith("<"):  # an option's own metavar
                return shown
            name = shown.strip("<>.").removeprefix("list[").removesuffix("]")
            return _CLICK_TYPE_NAMES.get(name, name.upper())

        cls.display_type_rich = display_type_rich


class _TrimmedLines:
    """A text stream that drops the spaces ending each line: Rich pads every line of a help
    screen to the console's width, which shows on a pipe, in a file or in `less`."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.pending = stream, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.stream.write(line.rstrip(" ") + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding... of the real stream
        return getattr(self.stream, name)


def _help_without_padding() -> None:
    """Typer's help screens write through a Rich console it makes for each; have those write
    through `_TrimmedLines`."""
    from typer import rich_utils

    make_console = getattr(rich_utils, "_get_rich_console", None)
    if make_console is None:  # pragma: no cover - a Typer that renders help some other way
        return

    def trimmed_console(stderr: bool = False) -> Any:
        made = make_console(stderr=stderr)
        made.file = _TrimmedLines(sys.stderr if stderr else sys.stdout)
        return made

    rich_utils._get_rich_console = trimmed_console


@functools.cache
def _rich_help_patched() -> None:
    _plain_value_types()
    _help_without_padding()


def _patch_help_lazily() -> None:
    """Apply the two changes above when a help screen is drawn, not at start-up: they import
    Typer's Rich help renderer (typer.rich_utils, with rich.markdown and rich.traceback),
    measured at 105-115 ms of every command's start otherwise. Typer itself imports it only
    inside `format_help`."""
    from typer import core

    for cls in (core.TyperCommand, core.TyperGroup):
        original = cls.format_help

        def format_help(self: Any, ctx: Any, formatter: Any, original: Any = original) -> None:
            _rich_help_patched()
            return original(self, ctx, formatter)

        cls.format_help = format_help  # type: ignore[method-assign]


_patch_help_lazily()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    threads.start_sample()  # the idle-CPU sample spans the parsing of the command line
    exit_status: list[int] = []
    atexit.register(_skip_teardown, exit_status)  # first registered: runs after all others
    # numpy is not a dependency; torch warns once that it is missing when fbgemm's packed
    # weights are first used (--dtype int8, 16-bit weights on a CPU): not the user's concern.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    exit_status.append(run(argv))
    sys.exit(exit_status[0])


def _skip_teardown(exit_status: list[int]) -> None:
    """Once every other atexit handler has run, end the process without the interpreter's
    module teardown, which with torch loaded takes ~0.4 s (half of a one-token run's overhead)
    and does nothing a finished command needs."""
    if "torch" not in sys.modules or not exit_status:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(exit_status[0])


def run(argv: list[str] | None = None) -> int:
    """Run the app and return the exit status, turning known failures into one-line errors and
    the exit codes scripts expect: 1 error, 2 usage, 130 Ctrl-C, 141 on a closed pipe. With
    `--debug` (or GPT2_DEBUG=1) errors also show their traceback."""
    argv = batch.expand_ray_flag(sys.argv[1:] if argv is None else list(argv))
    try:
        result = app(args=argv, prog_name="gpt2", standalone_mode=False)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `gpt2` alone: the help, on stdout
            return 0
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, ClickUsageError) and ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        return _fail(message, exc.exit_code)
    except typer.Abort as exc:  # Click's answer to Ctrl-C (it ended the line) or EOF
        if isinstance(exc.__context__, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        return _fail("aborted", 1)
    except SystemExit as exc:  # Rich (Typer's help) met a closed pipe and silenced stdout
        if exc.code == 1 and console.stdout_is_silenced():
            return EXIT_CLOSED_PIPE
        raise
    except Exception as exc:
        message, code = describe(exc)
        if isinstance(exc, (BrokenPipeError, ClosedPipe)):
            console.silence_stdout()
        if message is not None:
            return _fail(message, code, hint=message.startswith("unexpected "))
        return code
    return result if isinstance(result, int) else 0


def _fail(message: str, code: int, hint: bool = False) -> int:
    if console.debug_enabled():
        traceback.print_exc()
    elif hint:
        message += " (run with --debug for the traceback)"
    console.error(message)
    return code
