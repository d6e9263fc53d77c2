"""A progress bar on a terminal's stderr for long work counted in steps (the windows of
`gpt2 score`). Nothing at all off a terminal: a pipe or a log gets no escape codes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console

Update = Callable[[int, int], None]  # (steps done, steps in all)


@contextlib.contextmanager
def windows_progress(console: Console, what: str = "scoring") -> Iterator[Update | None]:
    """Yields `update(done, total)` that draws a transient bar on `console` (a terminal), or
    None where no bar can be shown. The bar starts with the first update that has more than
    one step to go, so a one-window text shows nothing, and is erased when the block ends."""
    if not console.is_terminal or console.is_dumb_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(what),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("windows"),
        TimeElapsedColumn(),
        TextColumn("·"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            if total <= 1:
                return
            progress.start()
            task = progress.add_task(what, total=total)
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            progress.stop()
