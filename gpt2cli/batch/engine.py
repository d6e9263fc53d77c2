"""Rows in, OUTPUT records out, through one continuous-batching Scheduler: what every worker of
`gpt2 batch` runs (in this process, in a worker process, or in a Ray actor).

The scheduler decodes up to `batch_size` sequences per forward pass, prompts of any length side
by side, and a finished row's place is taken by the next one at once. A row with more samples
than the batch holds is split into several requests of at most `batch_size` samples; each part
starts at its own sample index, so sample i always draws from the same generator (the i-th of the
row's seed) and the row's result does not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gpt2cli.batch.jobs import Job, Result, row_record
from gpt2cli.runtime.generate import make_request
from gpt2cli.runtime.loader import LoadedModel
from gpt2cli.runtime.scheduler import Scheduler
from gpt2cli.types import Completion, Finish, Start


@dataclass
class _Open:
    job: Job
    samples: dict[int, Completion] = field(default_factory=dict)
    dropped: int = 0


class RowDecoder:
    """Decodes the rows `add`ed to it; `step()` returns those that finished."""

    def __init__(self, lm: LoadedModel, batch_size: int) -> None:
        self.lm = lm
        self.batch_size = batch_size
        self.scheduler = Scheduler(lm, max_batch=batch_size)
        self.open: dict[int, _Open] = {}

    @property
    def waiting(self) -> int:
        """Requests queued for a free row of the batch."""
        return self.scheduler.waiting

    @property
    def idle(self) -> bool:
        return not self.open

    def add(self, job: Job) -> None:
        row = job.row
        request = make_request(self.lm, row.prompt, row.params, row.config, key=job.seq)
        total = row.config.samples
        self.open[job.seq] = _Open(job)
        for first in range(0, total, self.batch_size):
            config = dataclasses.replace(row.config, samples=min(self.batch_size, total - first))
            part = dataclasses.replace(request, config=config, first_sample=first)
            self.scheduler.submit(part)

    def step(self) -> list[Result]:
        done = []
        for seq, event in self.scheduler.step():
            entry = self.open[seq]
            if isinstance(event, Start):
                entry.dropped = event.dropped_tokens
            elif isinstance(event, Finish):
                entry.samples[event.sample] = event.completion
                if len(entry.samples) == entry.job.row.config.samples:
                    del self.open[seq]
                    done.append(self._result(entry))
        return done

    def _result(self, entry: _Open) -> Result:
        completions = [entry.samples[i] for i in sorted(entry.samples)]
        record = row_record(entry.job.row.id, completions)
        tokens = sum(c.completion_tokens for c in completions)
        return Result(entry.job.seq, record, tokens, entry.dropped)
