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
- Nothing is cached: a pass attends within each window (`GPT2.hidden_states`), so no KV cache
  the size of the window is allocated or written.
- Only the rows that score a token reach the output head, `head_rows` at a time: a stride-s
  window needs s rows of (vocab,) logits, not window rows, and each chunk of logits is reduced
  to log-probabilities while it is in cache, instead of a (window, vocab) tensor and its
  log-softmax (200 MB each at GPT-2's shape).
(Positions are absolute, so the tokens two windows share sit at different positions in each:
none of a window's hidden states can be reused by the next.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gpt2cli.model.gpt2 import GPT2

TOKENS_PER_PASS = 4096
HEAD_ELEMENTS = 1 << 23  # logits per head chunk: 32 MB of float32, about L3-sized


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
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Scored]:
    """Score `ids` (1-D, any integer dtype, on the model's device) with sliding windows,
    yielding what each pass scored: every position but the first, except the first position
    of each window when stride == window. `progress(windows_done, windows_total)` is called
    before the first pass and after each."""
    n = len(ids)
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, {window}], got {stride}")
    if n < 2:
        return
    total = window_count(n, window, stride)
    lo = max(window - stride, 1)  # windows after the first score from this position on
    per_pass = max(1, tokens_per_pass // window)
    if progress is not None:
        progress(0, total)
    k = 0
    while k < total:
        begin = k * stride
        if k == total - 1:  # the last window, perhaps shorter
            count, length = 1, n - begin
        else:  # windows that end before the text does
            count, length = min(per_pass, total - 1 - k), window
        span = (count - 1) * stride + length
        batch = ids[begin : begin + span].unfold(0, length, stride)  # (count, length)
        where = torch.arange(begin, begin + span, device=ids.device).unfold(0, length, stride)
        hidden = model.hidden_states(batch.long())  # (count, length, d)
        # Each window scores its positions from `first` on, from the rows just before them.
        first = 1 if k == 0 else lo
        rows = _scored(hidden, first - 1, lo - 1, length - 1)
        targets = _scored(batch, first, lo, length).long()
        yield Scored(_scored(where, first, lo, length), _logprobs(model, rows, targets))
        k += count
        if progress is not None:
            progress(k, total)


def _scored(t: torch.Tensor, first: int, lo: int, end: int) -> torch.Tensor:
    """Entries first..end-1 of window 0 of `t`, then lo..end-1 of each other window, in one
    flat sequence (over the first two dimensions)."""
    if t.shape[0] == 1:
        return t[0, first:end]
    rest = t[:, lo:end] if first == lo else t[1:, lo:end]
    rest = rest.reshape(-1, *t.shape[2:])
    return rest if first == lo else torch.cat([t[0, first:end], rest])


def _logprobs(model: GPT2, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each row of `hidden`, computing the logits a chunk of rows at a time."""
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    vocab = model.config.vocab_size
    step = max(1, HEAD_ELEMENTS // vocab)
    for i in range(0, len(targets), step):
        logits = model.head(hidden[i : i + step])  # (rows, vocab) float32
        # log_softmax in place of the target's logit minus `torch.logsumexp`: one fused pass,
        # measured 9.8 ms against 20.5 per chunk of 166 rows (about 4% of a window's time)
        logp = torch.log_softmax(logits, dim=-1)
        out[i : i + step] = logp.gather(-1, targets[i : i + step, None]).squeeze(-1)
    return out
