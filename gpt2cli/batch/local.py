"""Local workers for `gpt2 batch`: the rows decoded in this process, or in N worker processes
each with its own copy of the model (`--workers N`).

A pool's `run(jobs, emit)` hands out jobs in order and calls `emit(result)` in this process as
each row finishes; only the caller writes OUTPUT. Worker processes are started with `spawn` (a
fresh interpreter: no torch state forked), ignore Ctrl-C (the parent decides when they stop), and
share one job queue, so a worker that finishes its rows early takes more. The parent keeps at
most two batches of rows per worker in flight: rows it has not handed out are not lost if it is
interrupted, and the queue never holds the whole input.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2cli.batch.jobs import NO_MORE, Job, Result, serve_jobs
from gpt2cli.errors import Gpt2Error, describe
from gpt2cli.types import LoadOptions

if TYPE_CHECKING:
    from gpt2cli.runtime.loader import LoadedModel

Emit = Callable[[Result], None]


class InProcessPool:
    """Decode in this process, on a model already loaded."""

    def __init__(self, lm: LoadedModel, batch_size: int) -> None:
        self.lm = lm
        self.batch_size = batch_size
        self.workers = 1

    def start(self) -> None:
        pass

    def run(self, jobs: Iterator[Job], emit: Emit) -> None:
        from gpt2cli.batch.engine import RowDecoder

        decoder = RowDecoder(self.lm, self.batch_size)

        def next_job(block: bool) -> Job | None:
            return next(jobs, NO_MORE)

        serve_jobs(decoder, next_job, emit)

    def close(self) -> None:
        pass


class WorkerFailed(Gpt2Error):
    """A worker could not load the model, or died; exits as the worker's own error would."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _worker(
    folder: str, options: LoadOptions, batch_size: int, threads: int, inbox, outbox
) -> None:  # pragma: no cover - runs in a child process (tests drive it through the CLI)
    """A worker process: load the model, then decode jobs from `inbox` until the None that
    ends them, putting ("row", Result) on `outbox`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    import torch

    from gpt2cli.batch.engine import RowDecoder
    from gpt2cli.runtime.loader import load_folder

    torch.set_num_threads(threads)
    try:
        lm = load_folder(Path(folder), options)
    except Exception as exc:
        outbox.put(("error", describe(exc)))
        return
    outbox.put(("ready", os.getpid()))

    def next_job(block: bool) -> Job | None | bool:
        try:
            return inbox.get(block=block)
        except queue.Empty:
            return False

    try:
        serve_jobs(RowDecoder(lm, batch_size), next_job, lambda r: outbox.put(("row", r)))
    except Exception as exc:
        outbox.put(("error", describe(exc)))


def _exit_with_parent() -> None:  # pragma: no cover - runs in a child process
    """End this worker when the parent dies (`kill -9` included): it would otherwise wait on
    the job queue forever."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class ProcessPool:
    """`workers` processes, each loading the checkpoint in `folder` (already downloaded)."""

    def __init__(
        self,
        folder: Path,
        options: LoadOptions,
        batch_size: int,
        workers: int,
        threads: int | None = None,
    ) -> None:
        self.folder, self.options = folder, options
        self.batch_size, self.workers = batch_size, workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        ctx = multiprocessing.get_context("spawn")
        self.inbox = ctx.Queue()
        self.outbox = ctx.Queue()
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(str(folder), options, batch_size, self.threads, self.inbox, self.outbox),
                daemon=True,
                name=f"gpt2-batch-worker-{i}",
            )
            for i in range(workers)
        ]

    def start(self) -> None:
        """Start the workers and wait until each has loaded the model."""
        for proc in self.procs:
            proc.start()
        ready = 0
        while ready < self.workers:
            kind, value = self._get()
            if kind == "error":
                message, code = value
                raise WorkerFailed(message or "a worker failed", code)
            if kind == "ready":
                ready += 1

    def _get(self) -> tuple[str, object]:
        while True:
            try:
                return self.outbox.get(timeout=0.5)
            except queue.Empty:
                for proc in self.procs:
                    if proc.exitcode not in (None, 0):
                        raise WorkerFailed(
                            f"worker process {proc.pid} died (exit status {proc.exitcode})"
                        ) from None

    def run(self, jobs: Iterator[Job], emit: Emit) -> None:
        limit = 2 * self.batch_size * self.workers
        in_flight = 0
        more = True
        while more or in_flight:
            while more and in_flight < limit:
                job = next(jobs, None)
                if job is None:
                    more = False
                    for _ in self.procs:
                        self.inbox.put(None)
                else:
                    self.inbox.put(job)
                    in_flight += 1
            if not in_flight:
                break
            kind, value = self._get()
            if kind == "row":
                in_flight -= 1
                emit(value)  # type: ignore[arg-type]
            elif kind == "error":
                message, code = value  # type: ignore[misc]
                raise WorkerFailed(f"a worker failed: {message}", code)

    def drain(self, emit: Emit) -> None:
        """Emit the rows that finished but were not collected yet (before stopping early)."""
        while True:
            try:
                kind, value = self.outbox.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            if kind == "row":
                emit(value)  # type: ignore[arg-type]

    def close(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        for q in (self.inbox, self.outbox):
            q.cancel_join_thread()
            q.close()
