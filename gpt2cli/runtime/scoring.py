"""How likely the model finds a text, token by token; and what it could have picked instead.

`score_text` gives the perplexity of a text, exp(mean negative log-likelihood), and on request
every token's log-probability given the text before it. The first token has nothing before it to
predict it from, so by default the text is scored after the model's BOS token (its bos_token_id:
`<|endoftext|>`, GPT-2's document separator, used as a BOS token as GPT-2 evaluations usually
do) and every token of the text is scored; with `bos=False` (or a model without a BOS token) the
first token is left unscored (its logprob is None), as in the Hugging Face perplexity guide.

A text longer than the window is scored with a sliding window, as in that guide: windows of
`window` tokens start every `stride` tokens; each token is scored once, in the first window that
scores it, with the tokens before it in that window as context (at least window - stride, at most
window - 1 tokens). `runtime/sliding.py` does the passes, in memory that does not grow with the
text: only its token ids and the running sums are kept, unless every token's score is asked for.

`candidate_steps` recomputes, for tokens already sampled, the model's most likely next tokens
and the distribution sampling actually drew from (after repetition penalty, temperature, top-k
and top-p), so a table can show where the cut fell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gpt2cli.errors import ParamError, UsageError
from gpt2cli.runtime.loader import LoadedModel
from gpt2cli.runtime.sampling import apply_repetition_penalty, candidate_distribution
from gpt2cli.runtime.sliding import slide, window_count
from gpt2cli.types import SamplingParams

Progress = Callable[[int, int], None]  # (windows done, windows in all)


@dataclass(frozen=True)
class TokenScore:
    id: int
    text: str
    logprob: float | None  # None: not predicted (the first token, without BOS)


@dataclass(frozen=True)
class TextScore:
    nll_sum: float  # negative log-likelihood of the scored tokens, in nats
    scored: int  # tokens scored
    window: int
    stride: int
    windows: int  # windows scored
    bos: bool
    tokens: list[TokenScore] | None = None  # the text's tokens (not the BOS), when asked for

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per scored token, in nats."""
        return self.nll_sum / self.scored

    @property
    def perplexity(self) -> float:
        """exp(nll); inf beyond the float range (a mean NLL above ~709.78 nats)."""
        try:
            return math.exp(self.nll)
        except OverflowError:
            return math.inf


def default_stride(window: int) -> int:
    return max(window // 2, 1)


def check_stride(stride: int | None, window: int) -> int:
    """The stride to use (default: half the window); ParamError outside [1, window]."""
    stride = default_stride(window) if stride is None else stride
    if not 1 <= stride <= window:
        raise ParamError("stride", f"must be in [1, {window}] for this model, got {stride}")
    return stride


def score_ids(
    lm: LoadedModel, ids: Sequence[int] | torch.Tensor, *, stride: int | None = None
) -> tuple[list[float | None], int]:
    """Log-probability of each of `ids` given those before it in its window (None where not
    scored: the first, and with stride == window the first of each window), and the number of
    windows used. Raises ParamError for a stride outside [1, window]."""
    logprobs, _, _, windows = _score(lm, ids, stride, keep=True)
    assert logprobs is not None
    return logprobs, windows


def score_token_ids(
    lm: LoadedModel,
    ids: Sequence[int] | torch.Tensor,
    *,
    stride: int | None = None,
    progress: Progress | None = None,
) -> TextScore:
    """The sliding-window score of token ids as they are (no BOS added; the first is not
    scored), keeping nothing per token. Raises ParamError for a bad stride."""
    stride = check_stride(stride, lm.context_length)
    _, nll_sum, scored, windows = _score(lm, ids, stride, False, progress)
    return TextScore(nll_sum, scored, lm.context_length, stride, windows, bos=False)


def _score(
    lm: LoadedModel,
    ids: Sequence[int] | torch.Tensor,
    stride: int | None,
    keep: bool,
    progress: Progress | None = None,
) -> tuple[list[float | None] | None, float, int, int]:
    """(every logprob or None when not `keep`, NLL sum, tokens scored, windows)."""
    window = lm.context_length
    stride = check_stride(stride, window)
    ids = torch.as_tensor(ids, device=lm.device)
    n = len(ids)
    every = torch.full((n,), math.nan, dtype=torch.float64) if keep else None
    sums: list[float] = []
    scored = 0
    for part in slide(lm.model, ids, window, stride, progress=progress):
        sums.append(-part.logprobs.double().sum().item())
        scored += len(part.logprobs)
        if every is not None:
            every[part.positions.cpu()] = part.logprobs.double().cpu()
    logprobs = None
    if every is not None:
        logprobs = [None if math.isnan(x) else x for x in every.tolist()]
    windows = window_count(n, window, stride) if n >= 2 else 0
    return logprobs, math.fsum(sums), scored, windows


def score_text(
    lm: LoadedModel,
    text: str,
    *,
    stride: int | None = None,
    bos: bool = True,
    tokens: bool = True,
    progress: Progress | None = None,
) -> TextScore:
    """Score `text` (see the module docstring); with `tokens`, keep every token's score.
    `progress(windows_done, windows_total)` is called as windows are scored. Raises UsageError
    when there is nothing to score, ParamError for a bad stride."""
    tok = lm.tokenizer
    window = lm.context_length
    stride = check_stride(stride, window)
    encoded = tok.encode_long(text)
    bos = bos and lm.bos_id is not None  # a model with no BOS token: as bos=False
    if not encoded or (len(encoded) < 2 and not bos):
        raise UsageError("nothing to score: the text has no token the model could predict")
    text_ids = torch.frombuffer(encoded, dtype=torch.int32)
    ids = torch.cat([torch.tensor([lm.bos_id], dtype=torch.int32), text_ids]) if bos else text_ids
    logprobs, nll_sum, scored, windows = _score(lm, ids, stride, tokens, progress)
    scores = None
    if logprobs is not None:
        logprobs = logprobs[1:] if bos else logprobs
        scores = [
            TokenScore(i, tok.token_text(i), lp) for i, lp in zip(text_ids.tolist(), logprobs)
        ]
    return TextScore(nll_sum, scored, window, stride, windows, bos, scores)


@dataclass(frozen=True)
class Candidate:
    id: int
    text: str
    prob: float  # under the model: softmax of the raw logits
    sample_prob: float  # in the distribution sampling drew from; 0 when cut


@dataclass(frozen=True)
class CandidateStep:
    step: int  # 0 for the first generated token
    candidates: list[Candidate]  # the most likely next tokens, best first
    chosen: Candidate | None  # the token sampled (None: nothing sampled yet)
    chosen_rank: int | None  # its rank by model probability (1 = most likely)
    kept: int  # how many tokens sampling could pick from
    cut: str  # what limited them: "greedy", "top-k", "top-p" or "" (nothing)


def candidate_steps(
    lm: LoadedModel,
    context: Sequence[int],
    sampled: Sequence[int | None],
    params: SamplingParams,
    top_n: int,
    *,
    context_shift: bool = False,
) -> list[CandidateStep]:
    """For each token of `sampled` (generated after `context`, in order), the `top_n` most
    likely candidates at that step. A final None in `sampled` stands for the next token, not
    sampled yet. An empty context is the model's BOS token, as for generation; a context too
    long for the window keeps its last tokens. With `context_shift` the steps may run past the
    window: each is computed on the context the scheduler's shift policy gave it."""
    if not sampled:
        return []
    window = lm.context_length
    if len(sampled) > window and not context_shift:
        raise ValueError("more sampled tokens than fit in the window")
    context = list(context) or ([] if lm.bos_id is None else [lm.bos_id])
    if not context:
        raise ValueError("an empty context needs the model's BOS token, and it has none")
    keep = window if context_shift else window + 1 - len(sampled)
    context = context[max(0, len(context) - keep) :]
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(1, lm.config.vocab_size, dtype=torch.bool, device=lm.device)
        seen[0, torch.tensor(context, device=lm.device)] = True
    steps: list[CandidateStep] = []
    while len(steps) < len(sampled):
        # Steps that share this context: up to the one whose token fills the window.
        first = len(steps)
        part = sampled[first : first + window - len(context) + 1]
        ids = torch.tensor([[*context, *part[:-1]]], device=lm.device)
        logits = lm.model(ids, lm.model.new_cache(1), all_logits=True)[0, len(context) - 1 :]
        for j, chosen in enumerate(part):
            if seen is not None and first + j:
                seen[0, sampled[first + j - 1]] = True
            steps.append(
                _step(lm, first + j, logits[j : j + 1].float(), chosen, params, top_n, seen)
            )
        context = [*context, *part]  # type: ignore[list-item]
        if len(context) > window:  # the last token did not fit: the scheduler's shift
            context = context[-(window // 2) :]
    return steps


def _step(
    lm: LoadedModel,
    i: int,
    logits: torch.Tensor,
    chosen_id: int | None,
    params: SamplingParams,
    top_n: int,
    seen: torch.Tensor | None,
) -> CandidateStep:
    probs = torch.softmax(logits, dim=-1)[0]
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    vocab = logits.shape[-1]
    sample_probs = torch.zeros(vocab, device=logits.device)
    if params.greedy:
        sample_probs[logits.argmax(-1)] = 1.0
        kept, cut = 1, "greedy"
    else:
        dist, dist_ids = candidate_distribution(logits, params)
        if dist_ids is None:
            sample_probs = dist[0]
        else:
            sample_probs[dist_ids[0]] = dist[0]
        by_k = min(params.top_k, vocab) if params.top_k else vocab
        kept = int((dist[0] > 0).sum()) if params.top_p < 1.0 else by_k
        cut = "top-p" if kept < by_k else "top-k" if by_k < vocab else ""
    tok = lm.tokenizer

    def candidate(token: int) -> Candidate:
        return Candidate(
            token, tok.token_text(token), float(probs[token]), float(sample_probs[token])
        )

    chosen, rank = None, None
    if chosen_id is not None:
        chosen = candidate(chosen_id)
        rank = int((probs > probs[chosen_id]).sum()) + 1
    top = torch.topk(probs, min(top_n, vocab)).indices.tolist()
    return CandidateStep(i, [candidate(t) for t in top], chosen, rank, kept, cut)


def prompt_logprobs(
    lm: LoadedModel, ids: Sequence[int], top_n: int = 0
) -> list[tuple[float | None, tuple[tuple[int, float], ...] | None]]:
    """For each of `ids` (at most a window's worth): its log-probability given the tokens before
    it and the `top_n` likeliest tokens at that place, as (id, logprob) best first; (None, None)
    for the first token, which nothing predicts. One forward pass (the server's echoed prompts)."""
    if len(ids) > lm.context_length:
        raise ValueError("more tokens than fit in the window")
    out: list[tuple[float | None, tuple[tuple[int, float], ...] | None]] = [(None, None)]
    if len(ids) < 2:
        return out[: len(ids)]
    all_ids = torch.tensor([list(ids)], device=lm.device)
    logits = lm.model(all_ids, lm.model.new_cache(1), all_logits=True)[0, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, all_ids[0, 1:, None]).squeeze(-1).tolist()
    tops: list[tuple[tuple[int, float], ...] | None] = [()] * len(picked)
    if top_n:
        values, indices = torch.topk(logp, top_n, dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    return out + list(zip(picked, tops))
