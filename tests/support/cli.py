"""Run the installed `gpt2` command in a subprocess, with the test's environment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from rich.cells import cell_len

ESCAPE = "\x1b"


def gpt2_path() -> str:
    """The installed console script (falls back to `python -m gpt2cli`)."""
    return shutil.which("gpt2") or ""


def gpt2_argv(*args: str) -> list[str]:
    path = gpt2_path()
    return [path, *args] if path else [sys.executable, "-m", "gpt2cli", *args]


def gpt2(
    *args: str,
    input: bytes | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `gpt2 ARGS` with stdout/stderr on pipes; stdin is `input` or /dev/null."""
    if isinstance(input, str):
        input = input.encode()
    proc = subprocess.run(
        gpt2_argv(*args),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """Exit `code`, nothing on stdout, one `gpt2: error:` line on stderr mentioning `words`."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpt2: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


class Screen:
    """Just enough of a terminal to check what the renderer draws: printable text, CR, LF (as
    CR LF, like a tty), SGR (ignored), CHA (`ESC[nG`) and erase-to-end-of-line (`ESC[K`).
    Rows are kept as scrollback, so text printed twice shows up twice."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0
        self.autowraps = 0  # lines the terminal had to wrap itself

    def feed(self, data: str) -> Screen:
        i = 0
        while i < len(data):
            match = _CSI.match(data, i)
            if match:
                params, command = match.groups()
                if command == "G":
                    self.col = int(params or 1) - 1
                elif command == "K":
                    assert params in ("", "0"), params
                    del self.rows[self.row][self.col :]
                elif command not in "mhl":
                    raise AssertionError(f"unexpected escape {match.group(0)!r}")
                i = match.end()
                continue
            ch = data[i]
            i += 1
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._newline()
            else:
                assert ch.isprintable() or ch == " ", repr(ch)
                w = cell_len(ch)
                if self.col + w > self.width:
                    self.autowraps += 1
                    self._newline()
                line = self.rows[self.row]
                line.extend(" " * (self.col + w - len(line)))
                line[self.col] = ch
                for k in range(1, w):
                    line[self.col + k] = ""
                self.col += w
        return self

    def _newline(self) -> None:
        self.row += 1
        self.col = 0
        if self.row == len(self.rows):
            self.rows.append([])

    @property
    def lines(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.rows]


def squeeze(text: str) -> str:
    """Text without spaces, tabs or newlines: what must survive word wrapping unchanged."""
    return "".join(text.split())


def spawn_in_terminal(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `gpt2 ARGS` on a 100x50 pseudo-terminal to the end; return what it showed."""
    import pexpect

    argv = gpt2_argv(*args)
    env = {**os.environ, "COLUMNS": "100", "LINES": "50", "TERM": "xterm-256color", **(env or {})}
    child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(50, 100), encoding="utf-8")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0, child.before
    return child.before
