"""The driver of `gpt2 batch`: INPUT's rows not yet in OUTPUT handed to a pool of workers (this
process, worker processes, or Ray actors), each finished row written to OUTPUT at once. No
torch: the model lives in the pool.

Rows are numbered (`seq`) in input order as they are handed out; a bad row is written as an
error on the spot, without reaching a worker. Ctrl-C stops the pool after the rows it had
finished are written; what was in flight is decoded again by the next run (`Output` skips what
is already there), with the same result, since a row's seed depends only on its id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gpt2cli.batch.jobs import Job, Result
from gpt2cli.batch.output import OrderedRows, Output
from gpt2cli.batch.rows import BadRow, InputFile, RowDefaults, id_key


class Pool(Protocol):
    workers: int

    def start(self) -> None: ...

    def run(self, jobs: Iterator[Job], emit: Callable[[Result], None]) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    def start(self) -> None: ...

    def note(self, message: str) -> None: ...

    def advance(self, rows: int = 1, tokens: int = 0) -> None: ...

    def close(self) -> None: ...


@dataclass
class Summary:
    rows: int = 0  # written in this run, errors included
    errors: int = 0
    tokens: int = 0
    cut: int = 0  # rows whose prompt was cut to fit the window
    held: int = 0  # --ordered: finished rows not written because an earlier one was not done
    seconds: float = 0.0
    interrupted: bool = False


def run_batch(
    source: InputFile,
    defaults: RowDefaults,
    output: Output,
    pool: Pool,
    progress: Progress,
    ordered: bool = False,
) -> Summary:
    """Decode every row of `source` whose id is not in `output` yet; returns what was done.
    KeyboardInterrupt is caught: the summary says `interrupted`."""
    summary = Summary()
    written_before = output.written
    in_order = OrderedRows(output) if ordered else None

    def write(seq: int, record: dict) -> None:
        if in_order is not None:
            in_order.write(seq, record)
        else:
            output.write(record)

    def jobs() -> Iterator[Job]:
        seq = 0
        for row in source.rows(defaults):
            if id_key(row.id) in output.done:
                continue
            if isinstance(row, BadRow):
                write(seq, {"id": row.id, "error": row.error})
                summary.errors += 1
                progress.advance(1, 0)
            else:
                yield Job(seq, row)
            seq += 1

    def emit(result: Result) -> None:
        write(result.seq, result.record)
        summary.tokens += result.tokens
        summary.cut += result.dropped > 0
        progress.advance(1, result.tokens)

    t0 = None
    try:
        pool.start()
        progress.start()
        if getattr(pool, "note", None):
            progress.note(f"gpt2: warning: {pool.note}")
        t0 = time.perf_counter()
        pool.run(jobs(), emit)
    except KeyboardInterrupt:
        summary.interrupted = True
        drain = getattr(pool, "drain", None)
        if drain is not None:
            drain(emit)
    finally:
        pool.close()
        progress.close()
        summary.seconds = time.perf_counter() - t0 if t0 is not None else 0.0
        summary.held = in_order.waiting if in_order is not None else 0
        summary.rows = output.written - written_before
    return summary
