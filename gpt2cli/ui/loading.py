"""The "Loading …" note shown on a terminal's stderr while a model loads."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

from rich.control import Control, ControlType
from rich.text import Text

from gpt2cli import console as _out


@contextlib.contextmanager
def loading(name: str, err: TextIO | None = None) -> Iterator[None]:
    """A "Loading …" note on a terminal's stderr while the model loads, erased afterwards.
    (Not a spinner: a download's own progress bars may print meanwhile.)"""
    err = err if err is not None else sys.stderr
    console = _out.stderr_console(err)
    if not _out.isatty(err) or console.is_dumb_terminal:  # no way to erase it afterwards
        yield
        return
    note = Text(f"Loading {name}…", style="dim")
    note.truncate(max(console.width - 1, 1), overflow="ellipsis")  # one line: erasable
    console.print(note, end="", soft_wrap=True)
    console.file.flush()
    try:
        yield
    finally:
        console.control(Control.move_to_column(0), Control((ControlType.ERASE_IN_LINE, 0)))
        console.file.flush()
