"""The sliding-window pass behind `gpt2 score`: every token's log-probability given the tokens
before it in its window, computed in memory that does not grow with the text.

Windows of `window` tokens start every `stride` tokens (the Hugging Face perplexity guide's
loop); window k scores the tokens the windows before it did not reach, so with k >= 1 and a full
window, its last `stride` tokens, each with at least window - stride tokens of context. (With
stride = window the windows do not overlap, and the first token of each has no context, so it
is not scored, as in that guide.)

How it is fast:
- Windows are packed into the batch dimension: a pass runs up to `tokens_per_pass // window`
  full windows together, which amortises each pass's fixed costs when windows are short.
- On a CPU with several threads, passes run side by side, each on one thread
  (`score_workers`), instead of one pass on all of them.
- Nothing is cached: a pass attends within each window (`GPT2.hidden_states`), so no KV cache
  the size of the window is allocated or written. A window's rows before those it scores are
  context: the last block computes only their keys and values.
- Only the rows that score a token reach the output head: a stride-s window needs s rows of
  (vocab,) logits, not window rows. They are computed a block at a time (HEAD_ELEMENTS logits
  shared by the passes side by side: 1024 rows by 4096 ids each with 2) and each block is
  reduced to a running logsumexp while it is in cache, instead of a (window, vocab) tensor and
  its log-softmax (200 MB each at GPT-2's shape).
(Positions are absolute, so the tokens two windows share sit at different positions in each:
none of a window's hidden states can be reused by the next.)
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from gpt2cli.model.gpt2 import GPT2

TOKENS_PER_PASS = 4096
MAX_WORKERS = 4  # passes at once: measured on 2 cores only
HEAD_ELEMENTS = 1 << 23  # logits in head chunks at once: 32 MB of float32, about L3-sized
HEAD_COLUMNS = 4096  # the vocabulary slice of a head chunk (see _logprobs)


def window_count(n: int, window: int, stride: int) -> int:
    """How many windows cover `n` tokens: the first starts at 0, the last reaches the end."""
    if n <= window:
        return 1
    return -(-(n - window) // stride) + 1


@dataclass(frozen=True)
class Scored:
    """What one pass scored: the log-probability of ids[positions[i]] for each i."""

    positions: torch.Tensor  # int64, increasing
    logprobs: torch.Tensor  # float32, on the model's device


def slide(
    model: GPT2,
    ids: torch.Tensor,
    window: int,
    stride: int,
    *,
    tokens_per_pass: int = TOKENS_PER_PASS,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Scored]:
    """Score `ids` (1-D, any integer dtype, on the model's device) with sliding windows,
    yielding what each pass scored, in order: every position but the first, except the first
    position of each window when stride == window. `progress(windows_done, windows_total)` is
    called before the first pass and after each. `workers`: how many passes run at once, each
    on one thread (default: see `score_workers`)."""
    n = len(ids)
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, {window}], got {stride}")
    if n < 2:
        return
    total = window_count(n, window, stride)
    if workers is None:
        workers = score_workers(ids.device, total)
    workers = max(1, min(workers, total))
    # Full windows are shared evenly between the workers: passes of 2 windows of 1024 tokens
    # put both full windows of a 2,101-token text on one thread and the short last one on the
    # other (9.7-11.0 s against 5.1 s now, small's shape); a pass of one 1024-token window is
    # as fast per token as a pass of two.
    per_pass = max(1, min(tokens_per_pass // window // workers, -(-(total - 1) // workers)))
    passes = _passes(n, window, stride, total, per_pass)
    # Passes side by side share the head's chunk size: measured with 2 workers on a 2-layer
    # model with GPT-2's vocabulary (the head dominates), scoring 130k tokens peaked at 890 MB
    # RSS with a whole chunk each, 553 MB with half (one worker: 526 MB), at the same speed.
    head = HEAD_ELEMENTS // workers
    if progress is not None:
        progress(0, total)
    done = 0
    run = functools.partial(_pass, model, ids, window, stride, head)
    results = map(run, passes) if workers == 1 else _in_workers(run, passes, workers)
    for part, count in results:
        yield part
        done += count
        if progress is not None:
            progress(done, total)


def score_workers(device: torch.device, windows: int) -> int:
    """How many passes run at once: on a CPU with several torch threads, as many as there
    are threads (at most MAX_WORKERS, at most one per window), each pass on one thread; else 1.
    Why: a window's products are large enough to keep one core busy on their own, and passes
    that share nothing need no barrier between the threads. One OpenMP team of 2 threads waits
    at every op's end for the slower thread, which a shared or busy machine makes common.
    Measured on a 2-core Zen 3 VM at GPT-2 small's shape, 1024-token windows, the two ways
    alternating in one process: 2 windows in a median 5.69 s as two 1-thread passes against
    6.57 s on 2 threads together (14 rounds), 8 windows 20.5 s against 21.3 (3 rounds); the
    logprobs are the same to the bit."""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), MAX_WORKERS, windows))


_Pass = tuple[int, int, int]  # (first window, windows, their length)


def _passes(n: int, window: int, stride: int, total: int, per_pass: int) -> Iterator[_Pass]:
    k = 0
    while k < total:
        if k == total - 1:  # the last window, perhaps shorter
            count, length = 1, n - k * stride
        else:  # windows that end before the text does
            count, length = min(per_pass, total - 1 - k), window
        yield k, count, length
        k += count


def _pass(
    model: GPT2, ids: torch.Tensor, window: int, stride: int, head: int, p: _Pass
) -> tuple[Scored, int]:
    """Score windows k..k+count-1 together, `head` logits at a time: (what they scored, count)."""
    k, count, length = p
    begin = k * stride
    lo = max(window - stride, 1)  # windows after the first score from this position on
    span = (count - 1) * stride + length
    batch = ids[begin : begin + span].unfold(0, length, stride)  # (count, length)
    where = torch.arange(begin, begin + span, device=ids.device).unfold(0, length, stride)
    # Each window scores its positions from `first` on, from the rows just before them; the
    # rows before those are context, whose final states are not needed.
    first = 1 if k == 0 else lo
    skip = first - 1
    hidden = model.hidden_states(batch.long(), skip)  # (count, length - skip, d)
    rows = _scored(hidden, 0, lo - 1 - skip, length - 1 - skip)
    targets = _scored(batch, first, lo, length).long()
    return Scored(_scored(where, first, lo, length), _logprobs(model, rows, targets, head)), count


def _in_workers(
    run: Callable[[_Pass], tuple[Scored, int]], passes: Iterator[_Pass], workers: int
) -> Iterator[tuple[Scored, int]]:
    """`run` each pass on `workers` threads of one torch thread each, a few passes ahead of
    what has been yielded (so that memory does not grow with the text), yielding in order.
    torch's thread count is restored at the end, and passes not started are cancelled.

    The threads are daemon threads, not a ThreadPoolExecutor's: the interpreter joins an
    executor's threads before it exits, so Ctrl-C during `gpt2 score` waited for the passes in
    flight (measured at small's shape, stride 1024: exit 130 came 5.5-8.6 s after the signal).
    A daemon thread still running a pass is simply ended with the process. Once every pass is
    done, though, the threads are joined (they are idle: it takes no time): a daemon thread
    still ending while the interpreter finalizes aborts the process ("terminate called without
    an active exception", exit 134), which 12 of 20 scripts that scored and then returned did."""
    threads = torch.get_num_threads()
    jobs: queue.SimpleQueue[tuple[Future[tuple[Scored, int]], _Pass] | None] = queue.SimpleQueue()

    def work() -> None:
        torch.set_num_threads(1)
        while (job := jobs.get()) is not None:
            future, p = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(run(p))
            except BaseException as exc:  # handed to the caller, as an executor does
                future.set_exception(exc)

    started = [
        threading.Thread(target=work, name="gpt2cli-score", daemon=True) for _ in range(workers)
    ]
    for thread in started:
        thread.start()
    pending: deque[Future[tuple[Scored, int]]] = deque()
    finished = False
    try:
        for p in passes:
            pending.append(Future())
            jobs.put((pending[-1], p))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        finished = True
    finally:
        for future in pending:
            future.cancel()
        for _ in range(workers):
            jobs.put(None)
        if finished:  # idle threads, ending now: see the docstring
            for thread in started:
                thread.join()
        torch.set_num_threads(threads)


def _scored(t: torch.Tensor, first: int, lo: int, end: int) -> torch.Tensor:
    """Entries first..end-1 of window 0 of `t`, then lo..end-1 of each other window, in one
    flat sequence (over the first two dimensions)."""
    if t.shape[0] == 1:
        return t[0, first:end]
    rest = t[:, lo:end] if first == lo else t[1:, lo:end]
    rest = rest.reshape(-1, *t.shape[2:])
    return rest if first == lo else torch.cat([t[0, first:end], rest])


def _logprobs(
    model: GPT2, hidden: torch.Tensor, targets: torch.Tensor, elements: int = HEAD_ELEMENTS
) -> torch.Tensor:
    """log p(target) for each row of `hidden`: the target's logit minus the logsumexp of its
    row's logits, computed a block of `elements` logits at a time (rows by vocabulary slices of
    HEAD_COLUMNS) and merged slice by slice, so that no (rows, vocab) tensor is made.
    Why slices of the vocabulary rather than whole rows: the logits of a block are reduced
    while they are in cache, and each block multiplies many rows. Measured on one Zen 3 core
    at small's shape, 1024 rows: 1.24-1.30 s for 4096 or 2048 columns of 1024 rows, against
    1.46-1.52 s for whole rows 83 to 512 at a time (the whole head, log_softmax and gather)."""
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    width = HEAD_COLUMNS if model.head_sliceable else model.config.vocab_size
    step = max(1, elements // width)
    for i in range(0, len(targets), step):
        wanted = targets[i : i + step, None]
        lse = torch.full((len(wanted),), -torch.inf, device=hidden.device)
        picked = torch.zeros(len(wanted), 1, device=hidden.device)
        for first, logits in model.head_slices(hidden[i : i + step], HEAD_COLUMNS):
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))  # -inf + x: exactly x
            inside = wanted - first
            here = (inside >= 0) & (inside < logits.shape[-1])
            column = logits.gather(-1, inside.clamp(0, logits.shape[-1] - 1))
            picked = torch.where(here, column, picked)
        out[i : i + step] = picked.squeeze(-1) - lse
    return out
