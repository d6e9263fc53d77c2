"""How a download reports progress, without any terminal library: `DownloadProgress` is what
fetch.py talks to. This plain version writes one line per downloaded file to stderr (for pipes,
logs and the Python API); gpt2cli/ui/downloads.py draws Rich bars on a terminal.

huggingface_hub is handed a per-file bar class (`tqdm_class`) instead of its own tqdm bars, so
nothing else ever draws on the terminal."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TextIO


@contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """huggingface_hub logs multi-line warnings (retries, xet hints); our display says enough.
    A user who set HF_HUB_VERBOSITY keeps their setting. Its `warnings.warn` calls ("Not
    enough free disk space ...", printed by Python with the library's source line) are
    silenced too: a full disk ends in our one-line error, and transfer.py warns about space
    for the weights in our own words."""
    from huggingface_hub.utils import logging as hub_logging  # configures its logger on import

    previous = hub_logging.get_verbosity()
    if previous == logging.WARNING:
        hub_logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"huggingface_hub(\.|$)")
            yield
    finally:
        hub_logging.set_verbosity(previous)


def human_size(size: int | None) -> str:
    """Bytes as a short decimal size: `548.1 MB`."""
    if size is None:
        return "size unknown"
    value, unit = float(size), "bytes"
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


class DownloadProgress:
    """Progress of one repo's download: `line` for messages, `bar_class(filename)` for
    `hf_hub_download(tqdm_class=...)`, `hash_bar` while a large file's sha256 is checked.
    Subclasses override `start_file`, `update_file`, `finish_file` to draw bars."""

    def __init__(self, repo_id: str, *, stream: TextIO | None = None) -> None:
        self.repo_id = repo_id
        self.stream = stream if stream is not None else sys.stderr

    def __enter__(self) -> DownloadProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        pass

    def line(self, text: str) -> None:
        """One plain line on stderr (a warning or a status)."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def bar_class(self, filename: str) -> type:
        """A tqdm-compatible class for one file, to pass to `hf_hub_download(tqdm_class=...)`."""
        return type("FileBar", (FileBar,), {"display": self, "filename": filename})

    def hash_bar(self, filename: str, total: int) -> FileBar | None:
        """A bar while checking a large file's sha256 (None: checked quietly)."""
        return None

    # -- called by FileBar ---------------------------------------------------------------------
    def start_file(self, filename: str, total: int | None, initial: int, verb: str) -> Any:
        if verb == "downloading" and initial:
            self.line(
                f"gpt2: resuming {self.repo_id}/{filename} at {human_size(initial)} "
                f"of {human_size(total)}"
            )
        elif verb == "downloading":
            self.line(f"gpt2: downloading {self.repo_id}/{filename} ({human_size(total)})")
        return None

    def update_file(self, task: Any, *, advance: int = 0, total: int | None = None) -> None:
        pass

    def finish_file(self, task: Any) -> None:
        pass


ProgressFactory = Callable[[str], DownloadProgress]  # repo id -> its progress


class FileBar:
    """The subset of tqdm's interface huggingface_hub calls on a download bar (`update`,
    `update_transfer`, `set_postfix_str`, `total`, `close`, context manager). Having
    `update_transfer` makes hub's Xet downloads use this single bar instead of two."""

    display: DownloadProgress
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

    def __enter__(self) -> FileBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
