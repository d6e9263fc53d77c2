"""The scheduler on a thread of its own, and the bridge between it and the request handlers on
the event loop.

The engine thread runs `scheduler.step()` while there is work and sleeps when there is none. A
request submitted from a handler joins the running batch at the next step (the scheduler
prefills it and it starts decoding); a finished one leaves; a cancelled one (its client went
away) ends at the next step. Each step's events go to the event loop in one
`call_soon_threadsafe`, where `_dispatch` hands each to the sink of its request: handlers never
touch the model, the engine thread never touches a connection.

Bookkeeping (`waiting`, `running`, the per-request sinks) lives on the event-loop thread only,
so it needs no lock: the scheduler's own `submit`/`cancel` are the only calls that cross.
Other model work (scoring an echoed prompt) runs on the engine thread too, between steps, through
`run_job`, so the model is only ever used by one thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpt2cli.runtime.loader import LoadedModel
from gpt2cli.runtime.scheduler import Request, Scheduler
from gpt2cli.types import Event, Finish, Start

log = logging.getLogger("gpt2cli.serve")


@dataclass(frozen=True)
class Failed:
    """Not a scheduler event: the request was ended by the server (shutting down, or a step
    that failed), with the reason to give the client."""

    message: str
    status: int = 503


Sink = Callable[[Event | Failed], None]


@dataclass
class _Slot:
    sink: Sink
    samples: int
    started: bool = False
    finished: int = 0


class Engine:
    """Decodes submitted requests together, `max_batch` sequences at a time, with at most
    `max_queue` requests waiting for a free row."""

    def __init__(self, lm: LoadedModel, max_batch: int, max_queue: int) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.lm = lm
        self.scheduler = Scheduler(lm, max_batch=max_batch)
        self.max_queue = max_queue
        self.waiting = 0  # submitted, not yet admitted
        self.running = 0  # admitted, not yet finished
        self.peak_running = 0  # the most requests ever decoding at once
        self.served = 0  # finished
        self.cancelled = 0  # ended early: the client went away, or the server stopped
        self.closed = False
        self._slots: dict[int, _Slot] = {}
        self._keys = itertools.count()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]]
        self._jobs = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    # -- lifetime (event-loop thread) ----------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="gpt2-engine", daemon=True)
        self._thread.start()

    def close(self, message: str = "the server is shutting down") -> None:
        """Refuse new requests and end every one in flight with `message`."""
        self.closed = True
        self._fail_all(message)

    def stop(self) -> None:
        """Stop the engine thread (after `close`)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    # -- requests (event-loop thread) ----------------------------------------------------------
    def new_key(self) -> int:
        return next(self._keys)

    def has_room(self, requests: int) -> bool:
        """Whether `requests` more can wait for a row without passing `max_queue`."""
        return self.waiting + requests <= self.max_queue

    def submit(self, request: Request, sink: Sink) -> None:
        """Decode `request`; its events (and a possible `Failed`) go to `sink` on this loop."""
        if self.closed:
            raise RuntimeError("the engine is closed")
        self._slots[request.key] = _Slot(sink, request.config.samples)  # type: ignore[index]
        self.waiting += 1
        self.scheduler.submit(request)
        self._wake.set()

    def cancel(self, key: int) -> None:
        """End request `key` at the next step; nothing more reaches its sink. A request already
        finished (or never submitted) is left alone."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        if slot.started:
            self.running -= 1
        else:
            self.waiting -= 1
        self.cancelled += 1
        self.scheduler.cancel(key)
        self._wake.set()

    async def run_job(self, job: Callable[[], Any]) -> Any:
        """Run `job()` on the engine thread between two steps; its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((job, future))
        self._wake.set()
        return await asyncio.wrap_future(future)

    def _dispatch(self, events: list) -> None:
        for key, event in events:
            slot = self._slots.get(key)
            if slot is None:  # cancelled meanwhile
                continue
            if isinstance(event, Start):
                slot.started = True
                self.waiting -= 1
                self.running += 1
                self.peak_running = max(self.peak_running, self.running)
            slot.sink(event)
            if isinstance(event, Finish):
                slot.finished += 1
                if slot.finished == slot.samples:
                    del self._slots[key]
                    self.running -= 1
                    self.served += 1

    def _fail_all(self, message: str, status: int = 503) -> None:
        for key, slot in list(self._slots.items()):
            self.cancel(key)
            slot.sink(Failed(message, status))

    # -- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.clear()
            self._run_jobs()
            if self._stop:
                return
            if self.scheduler.idle:
                self._wake.wait()
                continue
            try:
                events = self.scheduler.step()
            except Exception as exc:  # a bug: end what is in flight, keep serving
                message = f"decoding failed: {type(exc).__name__}: {exc}"
                log.error(message, exc_info=log.isEnabledFor(logging.DEBUG))
                self._to_loop(self._fail_all, message, 500)
                continue
            if events:
                self._to_loop(self._dispatch, events)

    def _run_jobs(self) -> None:
        while True:
            try:
                job, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except Exception as exc:
                future.set_exception(exc)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the server is gone
            self._stop = True
