"""Download progress on a terminal: a Rich bar per file (bytes, speed, time left), and one for
checking a large file's sha256. Off a terminal (or with HF_HUB_DISABLE_PROGRESS_BARS) it falls
back to the plain lines of gpt2cli/hub/progress.py."""

from __future__ import annotations

import os
from typing import Any, TextIO

from rich.console import Console

from gpt2cli.console import stderr_console
from gpt2cli.hub.progress import DownloadProgress, FileBar

_TRUE = {"1", "true", "yes", "on"}


class RichDownloadProgress(DownloadProgress):
    """Decides once how downloads are shown; starts the Rich display only when a file actually
    downloads, so a fully cached model prints nothing."""

    def __init__(self, repo_id: str, *, stream: TextIO | None = None) -> None:
        super().__init__(repo_id, stream=stream)
        # Rich honours NO_COLOR / TERM=dumb itself; off a terminal we never start a Live display.
        self.console: Console = stderr_console(self.stream)
        disabled = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in _TRUE
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal and not disabled
        self._progress: Any = None

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            super().line(text)

    def hash_bar(self, filename: str, total: int) -> FileBar | None:
        if not self.live:
            return None
        cls = type("HashBar", (FileBar,), {"display": self, "filename": filename})
        cls.verb = "verifying"
        return cls(total=total)

    def _ensure_progress(self) -> Any:
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
        return self._progress

    def start_file(self, filename: str, total: int | None, initial: int, verb: str) -> Any:
        if not self.live:
            return super().start_file(filename, total, initial, verb)
        progress = self._ensure_progress()
        verb = "resuming" if verb == "downloading" and initial else verb
        return progress.add_task(f"{verb} {filename}", total=total, completed=initial)

    def update_file(self, task: Any, *, advance: int = 0, total: int | None = None) -> None:
        if task is None:
            return
        if total is not None:
            self._progress.update(task, total=total)
        if advance:
            self._progress.advance(task, advance)

    def finish_file(self, task: Any) -> None:
        if task is None or self._progress is None:
            return
        for t in self._progress.tasks:
            if t.id == task and t.total is None:  # size was unknown: show the bar as full
                self._progress.update(task, total=t.completed)
        self._progress.refresh()
