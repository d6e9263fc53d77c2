"""Streaming text to a terminal, word-wrapped as it arrives, with control characters made
visible. Rich's `Live` re-renders everything it shows, which duplicates lines once the text is
taller than the screen; printing incrementally and wrapping ourselves never redraws."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console
from rich.control import Control, ControlType
from rich.style import StyleType
from rich.text import Text

# Control characters a model can emit (GPT-2 has a token for every byte) would move the cursor or
# recolour the terminal: show them as their Unicode "control pictures" instead.
_VISIBLE = {c: chr(0x2400 + c) for c in range(32) if c not in (9, 10)}
_VISIBLE[127] = "\u2421"
_VISIBLE.update({c: "\ufffd" for c in range(0x80, 0xA0)})


def visible(text: str) -> str:
    """`text` with control characters (other than newline and tab) made visible."""
    return text.translate(_VISIBLE)


class WrappingWriter:
    """Streams text to a terminal console, wrapping at word boundaries as it goes.

    It tracks the cursor column; when a word outgrows the line, the part already printed is
    erased (move to its column, erase to end of line) and reprinted on the next line. Words
    longer than a line are broken at the edge."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.column = 0
        self.word: list[tuple[str, StyleType | None]] = []  # the last word on the line
        self.word_start = 0  # the column it starts at
        self.unprinted = 0  # how many of its characters are not printed yet

    def write(self, text: str, style: StyleType | None = None) -> None:
        out: list[str] = []  # what to print, all in `style`
        self.unprinted = 0  # how many chars of the current word are still in `out`
        width = max(self.console.width, 2)
        for ch in visible(text):
            if ch == "\n":
                out.append("\n")
                self._break(0)
            elif ch in " \t":
                n = 1 if ch == " " else 8 - self.column % 8
                if self.column + n > width:
                    out.append("\n")
                    self._break(0)
                else:
                    out.append(" " * n)
                    self._break(self.column + n)
            else:
                w = cell_len(ch)
                if self.column and self.column + w > width:
                    out = self._wrap(out, style, width, w)
                out.append(ch)
                self.column += w
                self.word.append((ch, style))
                self.unprinted += 1
        self._print([("".join(out), style)])

    def end_line(self) -> None:
        """Finish the current line, if anything is on it."""
        if self.column:
            self._print([("\n", None)])
        self._break(0)

    def _break(self, column: int) -> None:
        self.column = column
        self.word = []
        self.word_start = column
        self.unprinted = 0

    def _wrap(self, out: list[str], style: StyleType | None, width: int, w: int) -> list[str]:
        word_width, start = self.column - self.word_start, self.word_start
        movable = self.word and self.word_start and word_width + w <= width
        if not movable or (self.unprinted < len(self.word) and self.console.is_dumb_terminal):
            self._break(0)
            return [*out, "\n"]
        self.word_start, self.column = 0, word_width
        if self.unprinted == len(self.word):  # not printed yet: break the line before it
            return [*out[: len(out) - self.unprinted], "\n", *out[len(out) - self.unprinted :]]
        self._print([("".join(out), style)])  # the word is all on screen: erase, reprint below
        self.console.control(Control.move_to_column(start), Control((ControlType.ERASE_IN_LINE, 0)))
        self._print([("\n", None), *self.word])
        self.unprinted = 0
        return []

    def _print(self, pieces: list[tuple[str, StyleType | None]]) -> None:
        text = Text()
        run, run_style = "", None
        for piece, style in pieces:  # one span per run of equally styled text
            if style != run_style and run:
                text.append(run, run_style)
                run = ""
            run, run_style = run + piece, style
        text.append(run, run_style)
        if text:
            self.console.print(text, end="", soft_wrap=True)
            self.console.file.flush()
