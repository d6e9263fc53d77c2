"""Progress of `gpt2 batch` on stderr: a Rich bar on a terminal (rows done / total, tokens/s,
time left), one plain line every N rows anywhere else (a log file, a pipe, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gpt2cli import console as _out


def plain_every(total: int) -> int:
    """Rows between two plain progress lines: about 20 lines a run, at least one row apart and
    at most 1000."""
    return min(1000, max(1, total // 20))


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class BatchProgress:
    """`total`: every row of INPUT; `done`: rows already in OUTPUT when the run started. The rate
    (tokens/s) and the time left count from `start()`, when decoding begins."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        *,
        err: TextIO | None = None,
        console: Console | None = None,
        every: int | None = None,
    ) -> None:
        self.total, self.done = total, done
        self.err = err if err is not None else sys.stderr
        self.console = console or _out.stderr_console(self.err)
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal
        self.every = every or plain_every(total - done)
        self.rows = 0  # done in this run
        self.tokens = 0
        self.started: float | None = None
        self._bar: Progress | None = None
        self._task = None

    # -- what the run reports ------------------------------------------------------------------
    def start(self) -> None:
        self.started = time.perf_counter()
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("· {task.fields[rate]} · ETA"),
                TimeRemainingColumn(),
                TextColumn("·"),
                TimeElapsedColumn(),
                TextColumn("elapsed"),
                console=self.console,
                transient=False,
            )
            self._task = self._bar.add_task("", total=self.total, completed=self.done, rate="")
            self._bar.start()

    def advance(self, rows: int = 1, tokens: int = 0) -> None:
        self.rows += rows
        self.tokens += tokens
        if self._bar is not None:
            self._bar.update(self._task, advance=rows, rate=f"{self.rate:.1f} tok/s")
        elif self.started is not None and self.rows % self.every == 0:
            self._line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.started is not None and self.rows % self.every != 0:
            self._line()

    def note(self, message: str) -> None:
        """A message above the bar (or a plain line)."""
        if self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False)
        else:
            _out.info(message, self.console)

    # -- figures ---------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started if self.started is not None else 0.0

    @property
    def rate(self) -> float:
        """Tokens generated per second in this run."""
        elapsed = self.elapsed
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        left = self.total - self.done - self.rows
        if not self.rows or not self.elapsed:
            return None
        return left * self.elapsed / self.rows

    def _line(self) -> None:
        eta = self.eta()
        line = (
            f"batch: {self.done + self.rows}/{self.total} rows · {self.rate:.1f} tok/s · "
            f"ETA {_duration(eta) if eta is not None else '?'} · elapsed {_duration(self.elapsed)}"
        )
        self.err.write(line + "\n")
        self.err.flush()
