"""Logits -> next token, as `SamplingParams` (gpt2cli/types.py) say.

Order of operations follows the usual GPT-2 practice (and transformers): repetition penalty,
temperature, top-k, then top-p. Top-k is taken by gpt2cli's kernel on the CPU (`native.topk`, else
`torch.topk`), so the common case never sorts the whole 50257-entry vocabulary.
"""

from __future__ import annotations

import torch

from gpt2cli.errors import NonFiniteOutputError
from gpt2cli.model import native
from gpt2cli.types import SamplingParams

# Above this temperature the distribution is uniform to float32's precision anyway (logits
# span far less than 1e3, and 1e3 / 1e10 is below float32's epsilon); a larger divisor would
# only risk inf / inf = NaN.
MAX_TEMPERATURE = 1e10


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL-style penalty (as in transformers): tokens already present get their logit divided by
    `penalty` when positive and multiplied when negative. `seen` is a (batch, vocab) bool mask."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def candidate_distribution(
    logits: torch.Tensor, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The distribution sampling draws from, after temperature, top-k and top-p.

    Returns (probs, ids): `probs` is (batch, n) and `ids` maps its columns to token ids, or is
    None when the columns are the whole vocabulary. Tokens cut by top-k/top-p are absent or 0.

    Tokens are ranked on the raw logits: dividing by a temperature keeps their order, except
    that a huge one (float32 overflows at 3.4e38) would make them all equal, and top-k would
    then keep whichever tied tokens it returns first (the kernel: the lowest ids)."""
    logits = logits.float()
    ids = None
    if params.top_k and params.top_k < logits.shape[-1]:
        top = native.topk(logits, params.top_k)  # None: not rows of CPU float32 logits
        logits, ids = top or torch.topk(logits, params.top_k, dim=-1)  # sorted, descending
    elif params.top_p < 1.0:
        logits, ids = torch.sort(logits, dim=-1, descending=True)
    if params.temperature != 1.0:  # shifted so that a small temperature cannot overflow
        temperature = min(params.temperature, MAX_TEMPERATURE)
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if params.top_p < 1.0:
        probs = torch.softmax(logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        cut = mass_before >= params.top_p
        cut[..., 0] = False  # the most likely token always stays (top_p may round to 0)
        probs = probs.masked_fill(cut, 0.0)
        return probs / probs.sum(dim=-1, keepdim=True), ids
    return torch.softmax(logits, dim=-1), ids


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Pick the next token for each row of `logits` (batch, vocab). Returns (batch,) int64.

    Rows draw from `generator`, or row b from `generators[b]`: then each sequence of a batch
    picks the same token whatever else is in the batch."""
    if params.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        best, choice = logits.max(dim=-1)  # a NaN is the max: it shows in `best`
        if not torch.isfinite(best).all():
            raise _not_finite()
        return choice
    probs, ids = candidate_distribution(logits, params)
    try:
        if generators is None:
            choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        elif probs.device.type == "cpu":
            choice = _draw_rows(probs, generators)
        else:
            picks = [torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)]
            choice = torch.cat(picks)
    except RuntimeError:  # torch.multinomial refuses NaN and inf (on every device)
        if not torch.isfinite(probs).all():
            raise _not_finite() from None
        raise
    if ids is None:
        return choice
    return ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


def _draw_rows(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One draw from each row of `probs` (CPU), row b from `generators[b]`: the token
    `torch.multinomial(probs[b], 1, generator=generators[b])` draws, as it draws it on the CPU
    (an exponential race: the argmax of p / e, e ~ Exp(1) from the row's generator), with one
    call a row instead of multinomial's several (its checks, its division, its argmax): 9 us a
    row, 18 right after a step's products, on the 2-core Zen 5 (a twentieth of a 4-sample int4
    step's cost over one sample's). tests/test_sampling.py holds the two to the same tokens."""
    if not torch.isfinite(probs).all():
        raise RuntimeError("probabilities are not finite")
    race = torch.empty_like(probs)
    for row, g in zip(race, generators):
        row.exponential_(1, generator=g)
    return (probs / race).argmax(dim=-1)


def _not_finite() -> NonFiniteOutputError:
    return NonFiniteOutputError(
        "the model's output is not finite (NaN or infinite logits): its weights are broken, "
        "or too large for the dtype (try --dtype float32)"
    )


def sample_seed(seed: int, sample: int) -> int:
    """The generator seed of sample `sample` of a request seeded `seed`: the seed itself for the
    first, a splitmix64 mix of both for the others (distinct, and not another request's seed)."""
    if sample == 0:
        return seed
    z = (seed + 0x9E3779B97F4A7C15 * sample) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF
