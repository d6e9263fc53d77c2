"""Continuous batching: many sequences of different lengths decoded together, one token each per
forward pass. The one decoder behind `generate` (and `--samples`), `gpt2 batch` and `gpt2 serve`.

A `Request` is a prompt with its sampling parameters and what to generate; each of its samples
becomes a sequence in a row of a shared KV cache. Every `step()`:

1. admits waiting requests while rows are free: the prompt is prefilled once into one row (and
   copied into its other samples' rows), which gives the logits of its first token;
2. samples the next token of every active sequence from its logits (each sequence draws from
   its own generator, so its tokens do not depend on what else is in the batch, up to float
   rounding in batched products);
3. feeds the new tokens in one forward pass over rows [0, n), each at its own position (rows of
   finished sequences are holes until a new request takes them).

Events come out tagged with the request's key: `Start` when admitted, `Delta` per token and
`Finish` per sample, as `gpt2cli/types.py` describes. A sequence ends at an end-of-text token,
at `max_tokens`, at a stop string, when cancelled, or when the window is full; with
`context_shift` a full window instead keeps the last `window // 2` tokens, re-read from
position 0 (GPT-2's positions are absolute and learned, so cached keys cannot be moved).

`submit` and `cancel` may be called from other threads; `step` from one thread only.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from gpt2cli.runtime.loader import LoadedModel
from gpt2cli.runtime.sampling import sample_next, sample_seed
from gpt2cli.runtime.steppers import make_stepper
from gpt2cli.text.sample_text import SampleText
from gpt2cli.types import (
    Completion,
    Delta,
    Event,
    Finish,
    GenerationConfig,
    SamplingParams,
    Start,
    decode_rate,
)


@dataclass
class Request:
    """A prompt to continue. `params.seed` must be set (the caller draws one when the user did
    not); `dropped` is how many prompt tokens were cut to fit (reported in Start).
    `first_sample`: the index of this request's first sample, for a row whose samples are split
    over several requests (more samples than a batch holds): sample i draws from the generator
    of sample `first_sample + i` of the seed, and its events carry that index."""

    prompt_ids: list[int]
    params: SamplingParams
    config: GenerationConfig = field(default_factory=GenerationConfig)
    key: Hashable = None
    dropped: int = 0
    first_sample: int = 0
    submitted: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.params.seed is None:
            raise ValueError("a Request needs a seed")
        if not self.prompt_ids:
            raise ValueError("a Request needs at least one prompt token")


class _Sequence:
    """One sample of a request, decoding in one cache row."""

    def __init__(self, request: Request, sample: int, row: int, lm: LoadedModel) -> None:
        self.request, self.sample, self.row = request, sample, row
        self.context = list(request.prompt_ids)  # the tokens in the cache row, in order
        self.generated: list[int] = []
        self.logprobs: list[float] = []
        self.text = SampleText(lm.tokenizer, request.config.stop)
        device = lm.device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(sample_seed(request.params.seed or 0, sample))
        self.seen: torch.Tensor | None = None
        if request.params.repetition_penalty != 1.0:
            self.seen = torch.zeros(lm.config.vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(self.context, device=device)] = True
        self.pending: int | None = None  # sampled, not yet fed to the model
        self.last_logprob: float | None = None  # of the pending token
        self.top: tuple[tuple[int, float], ...] | None = None  # likeliest alternatives
        self.shifts = 0

    @property
    def position(self) -> int:
        """Where the pending token goes in the cache row."""
        return len(self.context)


class Scheduler:
    """Decodes the requests it is given, `max_batch` sequences at a time (see the module
    docstring)."""

    def __init__(self, lm: LoadedModel, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.lm = lm
        self.window = lm.context_length
        self.eos_ids = lm.eos_ids
        self.stepper = make_stepper(lm.model, max_batch, cuda_graphs=lm.cuda_graphs)
        self.rows: list[_Sequence | None] = [None] * max_batch
        self.logits = torch.empty(max_batch, lm.config.vocab_size, device=lm.device)
        self._waiting: deque[Request] = deque()
        self._cancelled: set[Hashable] = set()
        self._lock = threading.Lock()
        self._first: dict[int, float] = {}  # id(request) -> time of its first token

    @property
    def max_batch(self) -> int:
        return len(self.rows)

    # -- from any thread -----------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        if request.config.samples > self.max_batch:
            raise ValueError(
                f"{request.config.samples} samples do not fit a batch of {self.max_batch}"
            )
        with self._lock:
            self._waiting.append(request)

    def cancel(self, key: Hashable) -> None:
        """End the request `key` at the next step (its samples finish as "cancelled")."""
        with self._lock:
            self._cancelled.add(key)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(seq is not None for seq in self.rows)

    @property
    def idle(self) -> bool:
        return not self.active and not self.waiting

    # -- the decode loop -------------------------------------------------------------------------
    def step(self) -> list[tuple[Hashable, Event]]:
        """Admit what fits, sample one token for every sequence, feed them: the events of it."""
        out: list[tuple[Hashable, Event]] = []
        self._drop_cancelled(out)
        self._admit(out)
        fed: list[_Sequence] = []
        for seq in self._sample_all():
            if self._after_token(seq, out):
                fed.append(seq)
        self._feed(fed, out)
        return out

    def _drop_cancelled(self, out: list[tuple[Hashable, Event]]) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                self._waiting = deque(r for r in self._waiting if r.key not in cancelled)
        for seq in self.rows:
            if seq is not None and seq.request.key in cancelled:
                self._finish(seq, "cancelled", out)

    def _admit(self, out: list[tuple[Hashable, Event]]) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    return
                request = self._waiting[0]
                free = [i for i, seq in enumerate(self.rows) if seq is None]
                if len(free) < request.config.samples:
                    return
                self._waiting.popleft()
            rows = free[: request.config.samples]
            n = request.config.samples
            start = Start(len(request.prompt_ids), request.dropped, request.params.seed or 0, n)
            out.append((request.key, start))
            first = request.first_sample
            seqs = [_Sequence(request, first + i, row, self.lm) for i, row in enumerate(rows)]
            ids = torch.tensor(request.prompt_ids, device=self.lm.device)
            logits = self.stepper.prefill(rows[0], ids)
            self.logits[rows] = logits
            if n > 1:
                self.stepper.copy_prefix(rows[0], rows[1:], len(request.prompt_ids))
            for seq in seqs:
                self.rows[seq.row] = seq

    def _sample_all(self) -> list[_Sequence]:
        """Sample every active sequence's next token from its logits, one group of rows per set
        of sampling parameters; sets `pending` (and logprobs)."""
        seqs = [seq for seq in self.rows if seq is not None]
        groups: dict[tuple, list[_Sequence]] = {}
        for seq in seqs:
            p = seq.request.params
            key = (p.temperature, p.top_k, p.top_p, p.repetition_penalty)
            groups.setdefault(key, []).append(seq)
        for group in groups.values():
            logits = self._rows_logits([seq.row for seq in group])
            params = group[0].request.params
            seen = None
            if params.repetition_penalty != 1.0:
                seen = torch.stack([seq.seen for seq in group])  # type: ignore[misc]
            generators = [seq.generator for seq in group]
            picked = sample_next(logits, params, None, seen, generators).tolist()
            want = [s for s in group if s.request.config.wants_logprobs]
            if want:
                self._logprobs(group, logits, picked)
            for seq, token in zip(group, picked):
                seq.pending = token
                if seq.seen is not None:
                    seq.seen[token] = True
        return seqs

    def _rows_logits(self, rows: list[int]) -> torch.Tensor:
        """The logits of `rows`: a view where they are consecutive (the usual case; copying
        four rows of 50257 there and back took 30-40 us a step on the 2-core Zen 5, a tenth of
        a 4-sample int4 step's cost over one sample's)."""
        first = rows[0]
        if rows == list(range(first, first + len(rows))):
            return self.logits[first : first + len(rows)]
        return self.logits.index_select(0, torch.tensor(rows, device=self.lm.device))

    def _logprobs(self, group: list[_Sequence], logits: torch.Tensor, picked: list[int]) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)
        chosen = logp.gather(-1, torch.tensor(picked, device=logp.device).unsqueeze(-1))
        for i, (seq, lp) in enumerate(zip(group, chosen.squeeze(-1).tolist())):
            config = seq.request.config
            if not config.wants_logprobs:
                continue
            top = None
            if config.top_logprobs:
                values, indices = torch.topk(logp[i], config.top_logprobs)
                top = tuple(zip(indices.tolist(), values.tolist()))
            seq.top, seq.last_logprob = top, lp

    def _after_token(self, seq: _Sequence, out: list[tuple[Hashable, Event]]) -> bool:
        """Emit the pending token and decide what happens next; True when it must be fed."""
        request, token = seq.request, seq.pending
        assert token is not None
        config = request.config
        self._first.setdefault(id(request), time.perf_counter())
        if token in self.eos_ids and not config.ignore_eos:
            self._finish(seq, "eos", out)
            return False
        seq.generated.append(token)
        logprob = seq.last_logprob if config.wants_logprobs else None
        if logprob is not None:
            seq.logprobs.append(logprob)
        text, stopped = seq.text.add(seq.text.decoder.push(token))
        top = seq.top if config.top_logprobs else None
        out.append((request.key, Delta(seq.sample, text, token, logprob, top, seq.shifts)))
        if stopped:
            self._finish(seq, "stop", out, flush=False)
            return False
        if len(seq.generated) >= config.max_tokens:
            self._finish(seq, "length", out)
            return False
        if seq.position >= self.window:
            if not config.context_shift:
                self._finish(seq, "context", out)
                return False
            self._shift(seq)
            return False  # re-read: its logits are ready, nothing to feed
        return True

    def _shift(self, seq: _Sequence) -> None:
        """The window is full: keep the last window // 2 tokens (the pending one included) and
        re-read them from position 0."""
        assert seq.pending is not None
        seq.context = (seq.context + [seq.pending])[-(self.window // 2) :]
        seq.pending = None
        seq.shifts += 1
        ids = torch.tensor(seq.context, device=self.lm.device)
        self.logits[seq.row] = self.stepper.prefill(seq.row, ids)

    def _feed(self, fed: Sequence[_Sequence], out: list[tuple[Hashable, Event]]) -> None:
        if not fed:
            return
        n = max(seq.row for seq in fed) + 1
        tokens = [0] * n
        # Rows not fed this step are holes: a free row writes a dummy at its position 0 (a new
        # request's prefill overwrites it), a live one at its next position (overwritten when
        # its own token is fed); either way nobody reads it, and its logits are dropped.
        positions = [seq.position if seq is not None else 0 for seq in self.rows[:n]]
        for seq in fed:
            tokens[seq.row] = seq.pending  # type: ignore[call-overload]
        logits = self.stepper.decode(torch.tensor(tokens, device=self.lm.device), positions)
        if len(fed) == n:  # every row [0, n) fed: one copy (a row at a time took 4x as long)
            self.logits[:n] = logits
        else:
            for seq in fed:
                self.logits[seq.row] = logits[seq.row]
        for seq in fed:
            seq.context.append(seq.pending)  # type: ignore[arg-type]
            seq.pending = None

    def _finish(
        self, seq: _Sequence, reason: str, out: list[tuple[Hashable, Event]], flush: bool = True
    ) -> None:
        request = seq.request
        if flush:
            rest, stopped = seq.text.finish()
            if stopped and reason == "length":
                reason = "stop"
            if rest:
                out.append((request.key, Delta(seq.sample, rest, None)))
        now = time.perf_counter()
        first = self._first.get(id(request))
        completion = Completion(
            text=seq.text.text,
            finish_reason=reason,
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(seq.generated),
            seed=request.params.seed or 0,
            model=self.lm.name,
            time_to_first_token_s=(first if first is not None else now) - request.submitted,
            tokens_per_s=decode_rate(len(seq.generated), first, now),
            token_ids=seq.generated,
            logprobs=seq.logprobs if request.config.logprobs else None,
            prompt_ids=request.prompt_ids,
            shifts=seq.shifts,
            end_token=seq.pending if reason == "eos" else None,
        )
        out.append((request.key, Finish(seq.sample, completion)))
        self.rows[seq.row] = None
        if not any(s is not None and s.request is request for s in self.rows):
            self._first.pop(id(request), None)
