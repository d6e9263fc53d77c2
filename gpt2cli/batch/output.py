"""The OUTPUT of `gpt2 batch`: JSON Lines, one object per input row, appended and flushed one
row at a time, so that a run can be killed at any moment and resumed. No torch.

Opening OUTPUT takes an exclusive lock (two runs appending to one file would duplicate rows),
reads the ids already written, and cuts a torn last line (a kill in the middle of a write leaves
a line without its newline): the next row starts on a clean line and the torn one is decoded
again. Each row is then one `os.write` of a whole line on an unbuffered descriptor: once written
it is in the file, whatever happens to this process next.

`--ordered` holds finished rows until the rows before them are written (`OrderedRows`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from gpt2cli.batch.rows import id_key
from gpt2cli.errors import UsageError


class BadOutput(UsageError):
    """OUTPUT cannot be resumed or written (exit 2)."""


class Output:
    """OUTPUT, opened for appending rows. `done` holds the id keys of the rows already in it;
    `torn` is True when a torn last line was cut."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.done: set[str] = set()
        self.torn = False
        self.written = 0
        if name == "-":
            self.fd = sys.stdout.fileno()
            return
        path = Path(name)
        if path.is_dir():
            raise BadOutput(f"cannot write {name}: it is a directory")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise BadOutput(f"cannot write {name}: {exc.strerror or exc}") from None
        try:
            self._lock()
            self._read_done()
        except BaseException:
            os.close(self.fd)
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one run at a time is on the user
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadOutput(f"{self.name} is being written by another gpt2 batch") from None

    def _read_done(self) -> None:
        """Collect the ids already written; cut a torn last line."""
        good = 0  # offset just past the last whole line
        number = 0
        with os.fdopen(os.dup(self.fd), "rb") as f:
            f.seek(0)
            for raw in f:
                number += 1
                if not raw.endswith(b"\n"):
                    self.torn = True  # a line cut short by a kill: decode that row again
                    break
                good += len(raw)
                if not raw.strip():
                    continue
                self.done.add(id_key(self._row_id(raw, number)))
        if self.torn:
            os.ftruncate(self.fd, good)

    def _row_id(self, raw: bytes, number: int) -> str | int:
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("id"), (str, int)):
            raise BadOutput(
                f"{self.name} line {number} is not a row of gpt2 batch output, so it cannot be"
                " resumed; write to another file"
            )
        return record["id"]

    def write(self, record: dict) -> None:
        """Append one row as one line, written through to the file at once."""
        try:
            data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: JSON's \u escapes still say it exactly
            data = (json.dumps(record) + "\n").encode("ascii")
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.written += 1

    def close(self) -> None:
        if self.name != "-" and self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


class OrderedRows:
    """Writes rows in input order: a finished row waits until every row before it (by `seq`,
    0, 1, 2... in the order they were handed out) is written."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.next = 0
        self.held: dict[int, dict] = {}

    def write(self, seq: int, record: dict) -> None:
        self.held[seq] = record
        while self.next in self.held:
            self.output.write(self.held.pop(self.next))
            self.next += 1

    @property
    def waiting(self) -> int:
        """Finished rows held back for an earlier one."""
        return len(self.held)
