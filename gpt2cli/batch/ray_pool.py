"""`gpt2 batch --ray`: the rows decoded by Ray actors on a Ray cluster; this process (the
driver) hands out rows and alone writes OUTPUT, so resuming works as it does locally.

Actors, not Ray Data's `map_batches`: each actor keeps one model and one continuous-batching
scheduler for the whole run, so a finished row is replaced in the next forward pass and batches
never wait for their slowest row (`map_batches` calls a function per fixed batch, which must end
before the next starts); each finished row comes back on its own, in a small message, and is
written at once (Ray Data returns whole output blocks through the object store); and the driver
needs nothing but `ray` itself, with no Data execution plan to start on a small cluster.

Each actor resolves the model by name through the Hugging Face cache of its own node
(downloading it there when needed), or loads the local folder given (which must then exist at
the same path on every node). gpt2cli must be installed on every node, like any Ray workload's
code. The actor decodes in a thread of its own; `put` gives it rows and `take` returns the rows
it finished, so the driver keeps each actor two batches ahead, as the local process pool does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from gpt2cli.batch.jobs import NO_MORE, Job, Result, serve_jobs
from gpt2cli.batch.local import WorkerFailed
from gpt2cli.errors import Gpt2Error, UsageError, describe
from gpt2cli.types import LoadOptions

INSTALL_HINT = 'gpt2 batch --ray needs Ray: pip install "gpt2cli[ray]"'
START_HINT = "start one with `ray start --head`"
_HOST_PORT = re.compile(r"^(?:ray://)?(\[[^\]]+\]|[^:/\s]+):(\d+)$")


class NoCluster(Gpt2Error):
    """No Ray cluster answers at the address given."""


def import_ray():
    """The `ray` module, or UsageError with the install command when it is not installed."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def cluster_address(given: str | None) -> str:
    """The address `--ray` connects to: the one given, else RAY_ADDRESS, else `auto`."""
    return given or os.environ.get("RAY_ADDRESS") or "auto"


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at a HOST:PORT address (`ray.init` would retry it for
    minutes). `auto` is left to Ray, which fails fast when it finds no cluster."""
    match = _HOST_PORT.match(address)
    if match is None:
        return
    host, port = match.group(1).strip("[]"), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        raise NoCluster(f"no Ray cluster answers at {address}; {START_HINT}") from None


class BatchActor:
    """The body of a Ray actor (made one with `ray.remote` by RayPool): one model, one
    scheduler, decoding in its own thread."""

    def __init__(
        self, options: LoadOptions, folder: str | None, batch_size: int, threads: int
    ) -> None:
        self.error: tuple[str | None, int] | None = None
        self.crash: str | None = None
        self.inbox: queue.Queue[Job | None] = queue.Queue()
        self.results: queue.Queue[Result] = queue.Queue()
        try:
            import torch

            from gpt2cli.batch.engine import RowDecoder
            from gpt2cli.runtime.loader import load_folder, load_model

            torch.set_num_threads(threads)
            lm = load_folder(Path(folder), options) if folder else load_model(options)
        except Exception as exc:
            self.error = describe(exc)
            return
        decoder = RowDecoder(lm, batch_size)
        self.thread = threading.Thread(target=self._decode, args=(decoder,), daemon=True)
        self.thread.start()

    def _decode(self, decoder) -> None:
        try:
            serve_jobs(decoder, self._next_job, self.results.put)
        except Exception as exc:  # reported by the next `take`
            self.crash = describe(exc)[0] or type(exc).__name__

    def ready(self) -> tuple[str | None, int] | None:
        """None once the model is loaded; else the (message, exit status) of the failure."""
        return self.error

    def put(self, jobs: list[Job | None]) -> None:
        for job in jobs:
            self.inbox.put(job)

    def take(self, timeout: float = 1.0) -> list[Result]:
        """The rows finished since the last call (waiting up to `timeout` for the first)."""
        if self.crash is not None and self.results.empty():
            raise RuntimeError(self.crash)
        try:
            done = [self.results.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                done.append(self.results.get_nowait())
            except queue.Empty:
                return done

    def _next_job(self, block: bool) -> Job | None | bool:
        try:
            return self.inbox.get(block=block)
        except queue.Empty:
            return False


class RayPool:
    """`workers` BatchActors on the cluster at `address` (default: one per `threads` CPUs)."""

    def __init__(
        self,
        address: str | None,
        options: LoadOptions,
        batch_size: int,
        workers: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.ray = import_ray()
        self.address = cluster_address(address)
        self.options = options
        self.batch_size = batch_size
        self.requested = workers
        self.threads = threads or 1
        self.workers = workers or 0
        self.actors: list = []
        self.note: str | None = None  # a warning for the user, once started

    def start(self) -> None:
        """Connect, start the actors, and wait until each has loaded the model."""
        ray = self.ray
        check_reachable(self.address)
        try:
            ray.init(
                address=self.address,
                logging_level=logging.ERROR,
                log_to_driver=False,
                configure_logging=True,
            )
        except ConnectionError as exc:
            raise NoCluster(f"no Ray cluster found ({_first_line(exc)}); {START_HINT}") from None
        resources = ray.cluster_resources()
        gpus = 1 if self.options.device.lower().startswith("cuda") else 0
        # Actors the cluster cannot place would wait for resources forever: start what fits.
        fit = int(resources.get("CPU", 0)) // self.threads
        if gpus:
            fit = min(fit, int(resources.get("GPU", 0)))
        if fit < 1:
            what = "a GPU" if gpus else f"{self.threads} CPUs"
            raise NoCluster(f"the Ray cluster at {self.address} has no room for a worker ({what})")
        self.workers = min(self.requested or fit, fit)
        if self.requested and self.requested > fit:
            self.note = f"the Ray cluster has room for {fit} workers, not {self.requested}"
        folder = None
        model = Path(self.options.model).expanduser()
        if model.is_dir():  # a local folder: the same path on every node
            folder = str(model.resolve())
        actor = ray.remote(num_cpus=self.threads, num_gpus=gpus, max_concurrency=4)(BatchActor)
        self.actors = [
            actor.remote(self.options, folder, self.batch_size, self.threads)
            for _ in range(self.workers)
        ]
        for failure in self._get([a.ready.remote() for a in self.actors]):
            if failure is not None:
                message, code = failure
                raise WorkerFailed(f"a Ray worker failed: {message}", code)

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayError as exc:
            raise WorkerFailed(f"a Ray worker failed: {_first_line(exc)}") from None

    def run(self, jobs: Iterator[Job], emit: Callable[[Result], None]) -> None:
        ray = self.ray
        ahead = 2 * self.batch_size
        in_flight = dict.fromkeys(range(len(self.actors)), 0)
        takes = {self.actors[i].take.remote(): i for i in in_flight}
        more = True
        while more or any(in_flight.values()):
            for i, actor in enumerate(self.actors):  # top up every actor, in order
                batch = []
                while more and in_flight[i] + len(batch) < ahead:
                    job = next(jobs, NO_MORE)
                    if job is NO_MORE:
                        more = False
                    else:
                        batch.append(job)
                if batch:
                    actor.put.remote(batch)
                    in_flight[i] += len(batch)
            if not any(in_flight.values()):
                break
            ready, _ = ray.wait(list(takes), num_returns=1, timeout=2.0)
            for ref in ready:
                i = takes.pop(ref)
                for result in self._get(ref):
                    in_flight[i] -= 1
                    emit(result)
                takes[self.actors[i].take.remote()] = i

    def close(self) -> None:
        ray = self.ray
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        with contextlib.suppress(Exception):
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
