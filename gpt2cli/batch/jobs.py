"""What passes between the driver of `gpt2 batch` and its workers (jobs out, results back), and
the loop every worker runs. No torch: the driver of a run on worker processes or on Ray never
loads a model itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gpt2cli.batch.rows import Row
from gpt2cli.types import Completion
from gpt2cli.ui.records import completion_json


@dataclass(frozen=True)
class Job:
    """A row handed to a worker; `seq` numbers jobs 0, 1, 2... in the order handed out."""

    seq: int
    row: Row


@dataclass(frozen=True)
class Result:
    """A finished row: its OUTPUT record, tokens generated, prompt tokens cut to fit."""

    seq: int
    record: dict
    tokens: int
    dropped: int


def row_record(row_id: str | int, completions: list[Completion]) -> dict:
    """The OUTPUT line of a row: `generate --json`'s fields plus `id`; with several samples,
    `{"id": ..., "samples": [one such record per sample]}`."""
    if len(completions) == 1:
        return {"id": row_id, **completion_json(completions[0])}
    return {"id": row_id, "samples": [completion_json(c) for c in completions]}


class Decoder(Protocol):
    """What `serve_jobs` drives (gpt2cli/batch/engine.py's RowDecoder)."""

    batch_size: int

    @property
    def waiting(self) -> int: ...

    @property
    def idle(self) -> bool: ...

    def add(self, job: Job) -> None: ...

    def step(self) -> list[Result]: ...


NO_MORE = None  # what a job source returns when every job has been handed out


def serve_jobs(
    decoder: Decoder,
    next_job: Callable[[bool], Job | None | bool],
    emit: Callable[[Result], None],
) -> None:
    """Decode jobs until the source runs dry. `next_job(block)` returns a Job, NO_MORE when
    there will be no more, or False when none is ready yet (only when `block` is False: a busy
    decoder never waits for work). Keeps a batch's worth of requests queued, so that a row that
    finishes is replaced in the very next step."""
    more = True
    while True:
        while more and decoder.waiting < decoder.batch_size:
            job = next_job(decoder.idle)
            if job is NO_MORE:
                more = False
            elif job is False:
                break
            else:
                decoder.add(job)  # type: ignore[arg-type]
        if decoder.idle:
            if not more:
                return
            continue
        for result in decoder.step():
            emit(result)
