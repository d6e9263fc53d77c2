"""Download progress on stderr: a Rich bar per file on a terminal, one plain line per file on a
pipe or log. huggingface_hub is handed a per-file bar class (`tqdm_class`) instead of its own
tqdm bars, so nothing else ever draws on the terminal."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

_TRUE = {"1", "true", "yes", "on"}


@contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """huggingface_hub logs multi-line warnings (retries, xet hints); our display says enough.
    A user who set HF_HUB_VERBOSITY keeps their setting."""
    from huggingface_hub.utils import logging as hub_logging  # configures its logger on import

    previous = hub_logging.get_verbosity()
    if previous == logging.WARNING:
        hub_logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        hub_logging.set_verbosity(previous)


def _human(size: int | None) -> str:
    from rich.filesize import decimal

    return "size unknown" if size is None else decimal(size)


class DownloadDisplay:
    """Decides once how downloads are shown; starts the Rich display only when a file actually
    downloads, so a fully cached model prints nothing."""

    def __init__(self, repo_id: str, *, stream: Any = None) -> None:
        from rich.console import Console

        self.repo_id = repo_id
        self.stream = stream if stream is not None else sys.stderr
        # Rich honours NO_COLOR / TERM=dumb itself; off a terminal we never start a Live display.
        self.console = Console(file=self.stream, highlight=False)
        disabled = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in _TRUE
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal and not disabled
        self._progress: Any = None
        self.downloaded: list[str] = []

    def __enter__(self) -> DownloadDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def line(self, text: str) -> None:
        """One plain line on stderr (a warning or a status), never parsed as markup."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def bar_class(self, filename: str) -> type:
        """A tqdm-compatible class for one file, to pass to `hf_hub_download(tqdm_class=...)`."""
        return type("FileBar", (_FileBar,), {"display": self, "filename": filename})

    def hash_bar(self, filename: str, total: int) -> _FileBar | None:
        """A bar for checking a large file's sha256, on a terminal only (it is quiet on a pipe)."""
        if not self.live:
            return None
        cls = type("HashBar", (_FileBar,), {"display": self, "filename": filename})
        cls.verb = "verifying"
        return cls(total=total)

    # -- called by _FileBar ------------------------------------------------------------------

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
        if verb == "downloading":
            self.downloaded.append(filename)
        if not self.live:
            if verb == "downloading":
                self.line(f"gpt2: downloading {self.repo_id}/{filename} ({_human(total)})")
            return None
        progress = self._ensure_progress()
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


class _FileBar:
    """The subset of tqdm's interface huggingface_hub calls on a download bar (`update`,
    `update_transfer`, `set_postfix_str`, `total`, `close`, context manager). Having
    `update_transfer` makes hub's Xet downloads use this single bar instead of two."""

    display: DownloadDisplay
    filename: str
    verb = "downloading"

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any):
        self.n = initial
        self._total = total
        self._closed = False
        self._task = self.display.start_file(self.filename, total, initial, self.verb)

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value
        self.display.update_file(self._task, total=value)

    def update(self, n: int | float | None = 1) -> None:
        step = int(n or 0)
        self.n += step
        self.display.update_file(self._task, advance=step)

    def update_transfer(self, n: int) -> None:  # network bytes; we show bytes written
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    set_transfer_postfix_str = set_postfix_str

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.display.finish_file(self._task)

    def __enter__(self) -> _FileBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
