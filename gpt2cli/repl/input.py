"""Where REPL entries come from: a terminal (readline line editing, history file, tab completion
of commands) or a pipe (line by line, no prompts); and how lines make one entry."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO

from gpt2cli.ui.prompt_input import decode_utf8

PS1, PS2 = ">>> ", "... "
BLOCK = '"""'


class LineSource(Protocol):
    interactive: bool

    def read(self, prompt: str) -> str:
        """One line without its newline; EOFError at the end of input."""
        ...


def read_entry(source: LineSource) -> str:
    """One entry: a line, lines joined by a trailing backslash, or a block between triple
    quotes. A line starting with / is a command and is never continued. At the end of piped
    input, an entry left open is still an entry."""
    line = source.read(PS1)
    if line.startswith("/") and not line.startswith("//"):
        return line
    lines: list[str] = []
    try:
        if line.lstrip().startswith(BLOCK):
            line = line.lstrip()[len(BLOCK) :]
            if not line.rstrip().endswith(BLOCK):  # else opened and closed on one line
                if line:
                    lines.append(line)
                while not (line := source.read(PS2)).rstrip().endswith(BLOCK):
                    lines.append(line)
            tail = line.rstrip()[: -len(BLOCK)]
            if tail.strip():
                lines.append(tail)
            return "\n".join(lines)
        while line.endswith("\\"):
            lines.append(line[:-1])
            line = source.read(PS2)
        lines.append(line)
        return "\n".join(lines)
    except EOFError:
        if source.interactive or not lines:
            raise
        return "\n".join(lines)


class PipedInput:
    """Entries from a pipe or a file: no prompts, no line editing. Bytes that are not UTF-8 are
    replaced, and `warn` says so once per line, as `gpt2 generate` does for stdin."""

    interactive = False

    def __init__(self, stream: TextIO, warn: Callable[[str], None] | None = None) -> None:
        self.stream, self.warn = stream, warn
        self.raw: BinaryIO | None = getattr(stream, "buffer", None)
        self.lines = 0

    def read(self, prompt: str) -> str:
        if self.raw is None:
            line = self.stream.readline()
        else:
            data = self.raw.readline()
            line, warnings = decode_utf8(data, f"input line {self.lines + 1}")
            for warning in warnings if self.warn is not None else ():
                self.warn(warning)
        if not line:
            raise EOFError
        self.lines += 1
        return line.removesuffix("\n").removesuffix("\r")

    def close(self) -> None:
        pass


class TerminalInput:
    """Entries typed at a terminal, with readline's line editing and history; the history file
    is read at the start and written at the end. `completions` maps a line's first word to what
    <Tab> offers for its second ("" to what it offers for the first): commands and their
    arguments."""

    interactive = True

    def __init__(
        self, history: Path | None, completions: dict[str, Iterable[str]] | None = None
    ) -> None:
        self.completions = completions or {}
        try:
            import readline
        except ImportError:  # pragma: no cover - Python built without readline
            readline = None
        self.readline, self.history = readline, history
        if readline is None:
            return
        readline.set_history_length(1000)
        if history is not None and history.is_file():
            with contextlib.suppress(OSError):
                readline.read_history_file(history)
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self._complete)
        libedit = "libedit" in (readline.__doc__ or "")
        readline.parse_and_bind("bind ^I rl_complete" if libedit else "tab: complete")

    def read(self, prompt: str) -> str:
        return input(prompt)

    def close(self) -> None:
        if self.readline is None or self.history is None:
            return
        with contextlib.suppress(OSError):
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(self.history)
            os.chmod(self.history, 0o600)  # prompts can be private, like a shell's history

    def _complete(self, text: str, state: int) -> str | None:
        line = self.readline.get_line_buffer()
        words = line.split(" ")
        options = self.completions.get("" if len(words) == 1 else words[0], ())
        if len(words) > 2:
            options = ()
        matches = [f"{o} " for o in options if o.startswith(text)]
        return matches[state] if state < len(matches) else None


def history_path() -> Path | None:
    """$XDG_DATA_HOME/gpt2cli/history (~/.local/share/... by default); None when
    GPT2_NO_HISTORY=1 asks for no history file."""
    if os.environ.get("GPT2_NO_HISTORY", "") not in ("", "0"):
        return None
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):  # unset or relative: the XDG default
        base = "~/.local/share"
    return Path(base).expanduser() / "gpt2cli" / "history"
