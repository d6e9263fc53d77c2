"""Sampling parameters and logits -> next token.

Order of operations follows the usual GPT-2 practice (and transformers): repetition penalty,
temperature, top-k, then top-p. Top-k is taken with `torch.topk`, so the common case never sorts
the whole 50257-entry vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpt2cli.errors import ParamError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is picked. `temperature=0` or `top_k=1` is greedy decoding.

    `seed=None` means "pick one": the engine draws a random seed and reports it, so every run can
    be repeated with `seed=<that value>`.
    """

    temperature: float = 1.0
    top_k: int = 40
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        validate_param("temperature", self.temperature)
        validate_param("top_k", self.top_k)
        validate_param("top_p", self.top_p)
        validate_param("repetition_penalty", self.repetition_penalty)
        if self.seed is not None:
            validate_param("seed", self.seed)

    @property
    def greedy(self) -> bool:
        # Below 1e-5 a temperature picks the top token anyway (unless logits tie to within
        # 1e-5), and dividing by it would overflow float32.
        return self.temperature < 1e-5 or self.top_k == 1


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_param(name: str, value: object) -> None:
    """Raise ParamError naming `name` and its allowed range when `value` is out of range."""
    if name == "temperature":
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ParamError(name, f"must be a number >= 0 (0 means greedy), got {value!r}")
    elif name == "top_k":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ParamError(name, f"must be an integer >= 0 (0 turns it off), got {value!r}")
    elif name == "top_p":
        if not _is_number(value) or not (0 < value <= 1):
            raise ParamError(name, f"must be in (0, 1], got {value!r}")
    elif name == "repetition_penalty":
        # A bounded range: the logits are float32, and 1e-300 or 1e300 would make them inf.
        if not _is_number(value) or not (0.01 <= value <= 100):
            raise ParamError(
                name, f"must be a number in [0.01, 100] (1 turns it off), got {value!r}"
            )
    elif name == "seed":
        if not isinstance(value, int) or isinstance(value, bool) or not (0 <= value < 2**63):
            raise ParamError(name, f"must be an integer in [0, 2**63), got {value!r}")
    elif name == "max_tokens":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ParamError(name, f"must be an integer >= 1, got {value!r}")
    elif name == "samples":
        if not isinstance(value, int) or isinstance(value, bool) or not (1 <= value <= 64):
            raise ParamError(name, f"must be an integer in [1, 64], got {value!r}")
    else:  # pragma: no cover - programming error
        raise KeyError(name)


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL-style penalty (as in transformers): tokens already present get their logit divided by
    `penalty` when positive and multiplied when negative. `seen` is a (batch, vocab) bool mask."""
    import torch

    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def candidate_distribution(
    logits: torch.Tensor, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The distribution sampling draws from, after temperature, top-k and top-p.

    Returns (probs, ids): `probs` is (batch, n) and `ids` maps its columns to token ids, or is
    None when the columns are the whole vocabulary. Tokens cut by top-k/top-p are absent or 0.
    """
    import torch

    logits = logits.float()
    if params.temperature != 1.0:  # shifted so that a small temperature cannot overflow
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
    ids = None
    if params.top_k and params.top_k < logits.shape[-1]:
        logits, ids = torch.topk(logits, params.top_k, dim=-1)  # sorted, descending
    if params.top_p < 1.0:
        if ids is None:
            logits, ids = torch.sort(logits, dim=-1, descending=True)
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
) -> torch.Tensor:
    """Pick the next token for each row of `logits` (batch, vocab). Returns (batch,) int64."""
    import torch

    if params.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return torch.argmax(logits, dim=-1)
    probs, ids = candidate_distribution(logits, params)
    choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if ids is None:
        return choice
    return ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
