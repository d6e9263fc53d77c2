"""How likely the model finds a text, token by token; and what it could have picked instead.

`score_text` gives every token's log-probability given the text before it, and the perplexity
exp(mean negative log-likelihood). The first token has nothing before it to predict it from, so
by default the text is scored after `<|endoftext|>` (GPT-2's document separator, used as a BOS
token as GPT-2 evaluations usually do) and every token of the text is scored; with `bos=False`
the first token is left unscored (its logprob is None), as in the Hugging Face perplexity guide.

A text longer than the window is scored with a sliding window, as in that guide: windows of
`window` tokens start every `stride` tokens; each token is scored once, in the first window that
scores it, with the tokens before it in that window as context (at least window - stride, at most
window - 1 tokens).

`candidate_steps` recomputes, for tokens already sampled, the model's most likely next tokens
and the distribution sampling actually drew from (after repetition penalty, temperature, top-k
and top-p), so a table can show where the cut fell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gpt2cli.errors import ParamError, UsageError
from gpt2cli.runtime.loader import LoadedModel
from gpt2cli.runtime.sampling import apply_repetition_penalty, candidate_distribution
from gpt2cli.types import SamplingParams


@dataclass(frozen=True)
class TokenScore:
    id: int
    text: str
    logprob: float | None  # None: not predicted (the first token, without BOS)


@dataclass(frozen=True)
class TextScore:
    tokens: list[TokenScore]  # the text's tokens (not the BOS)
    window: int
    stride: int
    windows: int  # forward passes made
    bos: bool

    @property
    def scored(self) -> int:
        return sum(t.logprob is not None for t in self.tokens)

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per scored token, in nats."""
        return -math.fsum(t.logprob for t in self.tokens if t.logprob is not None) / self.scored

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


def default_stride(window: int) -> int:
    return max(window // 2, 1)


def score_ids(
    lm: LoadedModel, ids: Sequence[int], *, stride: int | None = None
) -> tuple[list[float | None], int]:
    """Log-probability of each of `ids` given those before it (None for the first), and the
    number of windows used. Raises ParamError for a stride outside [1, window - 1]."""
    window = lm.context_length
    stride = default_stride(window) if stride is None else stride
    if not 1 <= stride < window:
        raise ParamError("stride", f"must be in [1, {window - 1}] for this model, got {stride}")
    out: list[float | None] = [None] * len(ids)
    if len(ids) < 2:
        return out, 0
    all_ids = torch.tensor(ids, device=lm.device)
    done, windows = 1, 0  # positions < done are scored (position 0 never is)
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        logits = lm.model(all_ids[None, begin:end], lm.model.new_cache(1), all_logits=True)[0]
        # logits[j] predicts ids[begin + j + 1]: score positions done..end-1
        rows = logits[done - begin - 1 : end - begin - 1]
        logp = torch.log_softmax(rows.float(), dim=-1)
        picked = logp.gather(-1, all_ids[done:end, None]).squeeze(-1)
        out[done:end] = picked.tolist()
        done, windows = end, windows + 1
        if end == len(ids):
            break
    return out, windows


def score_text(
    lm: LoadedModel, text: str, *, stride: int | None = None, bos: bool = True
) -> TextScore:
    """Score `text` (see the module docstring). Raises UsageError when there is nothing to
    score, ParamError for a bad stride."""
    tok = lm.tokenizer
    ids = tok.encode(text)
    if not ids or (len(ids) < 2 and not bos):
        raise UsageError("nothing to score: the text has no token the model could predict")
    window = lm.context_length
    logprobs, windows = score_ids(lm, [tok.eot_id, *ids] if bos else ids, stride=stride)
    if bos:
        logprobs = logprobs[1:]
    tokens = [TokenScore(i, tok.token_text(i), lp) for i, lp in zip(ids, logprobs)]
    stride = default_stride(window) if stride is None else stride
    return TextScore(tokens, window, stride, windows, bos)


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
) -> list[CandidateStep]:
    """For each token of `sampled` (generated after `context`, in order), the `top_n` most
    likely candidates at that step. A final None in `sampled` stands for the next token, not
    sampled yet. An empty context is `<|endoftext|>`, as for generation; a context too long for
    the window keeps its last tokens."""
    if not sampled:
        return []
    if len(sampled) > lm.context_length:
        raise ValueError("more sampled tokens than fit in the window")
    context = list(context) or [lm.tokenizer.eot_id]
    context = context[max(0, len(context) + len(sampled) - 1 - lm.context_length) :]
    fed = [*context, *sampled[:-1]]
    ids = torch.tensor([fed], device=lm.device)
    logits = lm.model(ids, lm.model.new_cache(1), all_logits=True)[0, len(context) - 1 :]
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool, device=lm.device)
        seen[0, ids[0, : len(context)]] = True
    steps = []
    for i, chosen in enumerate(sampled):
        if seen is not None and i:
            seen[0, sampled[i - 1]] = True
        steps.append(_step(lm, i, logits[i : i + 1].float(), chosen, params, top_n, seen))
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
