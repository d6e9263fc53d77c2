"""Where a prompt comes from: the argument, stdin, or both. No torch, no Rich."""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO


@dataclass
class Prompt:
    text: str
    warnings: list[str] = field(default_factory=list)


def stdin_is_piped(stream: TextIO | None = None) -> bool:
    """True when stdin is a pipe, a file or a socket: something to read rather than a terminal
    or /dev/null (a character device), so `gpt2 generate "x"` never blocks waiting on a tty."""
    stream = sys.stdin if stream is None else stream
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def decode_utf8(data: bytes, what: str) -> tuple[str, list[str]]:
    """Decode UTF-8, replacing invalid bytes with U+FFFD and saying so in a warning."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - data.count("\ufffd".encode())
        return text.removeprefix("\ufeff"), [
            f"{what} is not valid UTF-8: {bad} invalid byte sequence(s) replaced with U+FFFD"
        ]
    return text.removeprefix("\ufeff"), []


def read_stdin(stream: TextIO | None = None) -> tuple[str, list[str]]:
    """All of stdin as text, and any warning about invalid UTF-8."""
    stream = sys.stdin if stream is None else stream
    if stream is None:
        return "", []
    raw: BinaryIO | None = getattr(stream, "buffer", None)
    if raw is None:
        return stream.read(), []
    return decode_utf8(raw.read(), "stdin")


def read_prompt(argument: str | None, stdin: TextIO | None = None) -> Prompt:
    """The prompt: the argument, piped stdin (`-` forces reading it), or stdin text, a newline,
    then the argument when both are given. "" means no prompt (an unconditional sample)."""
    warnings: list[str] = []
    if argument is not None and argument != "-":
        # An argument that was not valid UTF-8 arrives with surrogate escapes: replace them.
        fixed = argument.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if fixed != argument:
            warnings.append("the prompt argument is not valid UTF-8: invalid bytes replaced")
        argument = fixed
    if argument != "-" and not stdin_is_piped(stdin):
        return Prompt(argument or "", warnings)
    text, stdin_warnings = read_stdin(stdin)
    warnings += stdin_warnings
    if argument not in (None, "-"):
        text = f"{text}\n{argument}" if text else argument
    return Prompt(text, warnings)
