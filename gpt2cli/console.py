"""The one place output streams are set up: Rich consoles for stdout (the model's text) and
stderr (everything else), one-line warnings, notes and errors, the --debug switch, and what
happens to stdout when its reader goes away.

Every console prints text literally (no markup, no highlighting, no emoji codes): model text
and file names are shown as they are. Rich itself honours NO_COLOR and TERM=dumb."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TextIO

from rich.console import Console
from rich.text import Text

from gpt2cli.errors import ClosedPipe, one_line

_debug = os.environ.get("GPT2_DEBUG", "") not in ("", "0")


def debug_enabled() -> bool:
    """Whether `--debug` (or GPT2_DEBUG=1) asked for tracebacks instead of one-line errors."""
    return _debug


def enable_debug() -> None:
    global _debug
    _debug = True


class _Console(Console):
    """A Console whose closed pipe ends the command quietly (exit 141) instead of Rich's own
    SystemExit(1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence_stdout()
        raise ClosedPipe


def stdout_console(file: TextIO | None = None) -> Console:
    return _Console(
        file=file if file is not None else sys.stdout, highlight=False, markup=False, emoji=False
    )


def stderr_console(file: TextIO | None = None) -> Console:
    return _Console(
        file=file if file is not None else sys.stderr, highlight=False, markup=False, emoji=False
    )


def note(message: str | Text, console: Console | None = None, style: str = "") -> None:
    """A message on stderr: word-wrapped on a terminal, one line per message in a log."""
    console = console or stderr_console()
    text = message if isinstance(message, Text) else Text(message, style=style)
    console.print(text, soft_wrap=not console.is_terminal)


def warn(message: str, console: Console | None = None) -> None:
    """`gpt2: warning: ...` on stderr, in yellow where colour shows."""
    note(Text(f"gpt2: warning: {message}", style="yellow"), console)


def info(message: str, console: Console | None = None) -> None:
    """A dim note on stderr (the stats line, --verbose details)."""
    note(Text(message, style="dim"), console)


def error(message: str) -> None:
    """`gpt2: error: ...` as one line on stderr (plain, so it reads the same in a log)."""
    sys.stderr.write(f"gpt2: error: {one_line(message)}\n")
    sys.stderr.flush()


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def tolerate_unencodable_output() -> None:
    """Replace characters the terminal's encoding cannot show: a non-UTF-8 locale must not end
    a run in the middle of the model's text."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]


def silence_stdout() -> None:
    """After a closed pipe (`gpt2 generate ... | head -c 10`): point stdout at /dev/null so the
    interpreter's final flush of buffered text cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def stdout_is_silenced() -> bool:
    """Whether stdout now points at /dev/null (after a closed pipe was detected)."""
    try:
        out, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return (out.st_dev, out.st_ino) == (null.st_dev, null.st_ino)
