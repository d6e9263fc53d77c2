"""Sampling: top-k, top-p, temperature, repetition penalty, validation."""

from __future__ import annotations

import pytest
import torch

from gpt2cli.errors import NonFiniteOutputError, ParamError
from gpt2cli.runtime.sampling import apply_repetition_penalty, sample_next
from gpt2cli.types import SamplingParams


def draws(logits: torch.Tensor, params: SamplingParams, n: int = 400) -> set[int]:
    g = torch.Generator().manual_seed(0)
    batch = logits.expand(n, -1)
    return set(sample_next(batch, params, g).tolist())


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(1, 500, generator=torch.Generator().manual_seed(3)) * 3


@pytest.mark.parametrize("k", [1, 2, 5, 40])
def test_top_k_stays_in_the_k_most_likely(logits: torch.Tensor, k: int) -> None:
    allowed = set(torch.topk(logits[0], k).indices.tolist())
    seen = draws(logits, SamplingParams(top_k=k, temperature=2.0))
    assert seen <= allowed
    if k > 1:
        assert len(seen) > 1


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_top_p_stays_in_the_nucleus(logits: torch.Tensor, p: float) -> None:
    probs = torch.softmax(logits[0], -1)
    order = torch.argsort(probs, descending=True)
    mass, nucleus = 0.0, set()
    for i in order.tolist():  # smallest set whose mass reaches p
        nucleus.add(i)
        mass += probs[i].item()
        if mass >= p:
            break
    seen = draws(logits, SamplingParams(top_k=0, top_p=p))
    assert seen <= nucleus
    # combined with top-k: within both
    seen_k = draws(logits, SamplingParams(top_k=3, top_p=p))
    assert seen_k <= set(torch.topk(logits[0], 3).indices.tolist())


def test_temperature_zero_equals_top_k_one() -> None:
    batch = torch.randn(64, 1000, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(1)
    a = sample_next(batch, SamplingParams(temperature=0), g)
    b = sample_next(batch, SamplingParams(top_k=1, temperature=1.7), g)
    assert torch.equal(a, b)
    assert torch.equal(a, batch.argmax(-1))


def test_full_vocabulary_sampling_follows_the_distribution() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits.expand(20000, -1), SamplingParams(top_k=0), g)
    freq = torch.bincount(picks, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)


def test_same_seed_same_draws(logits: torch.Tensor) -> None:
    p = SamplingParams(top_k=0)
    a = sample_next(logits.expand(50, -1), p, torch.Generator().manual_seed(9))
    b = sample_next(logits.expand(50, -1), p, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_repetition_penalty_lowers_seen_tokens() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]
    # greedy with a strong penalty avoids the seen favourite
    greedy = SamplingParams(temperature=0, repetition_penalty=3.0)
    assert sample_next(logits, greedy, None, seen).item() == 2


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("temperature", -0.1, ">= 0"),
        ("temperature", float("nan"), ">= 0"),
        ("top_k", -1, ">= 0"),
        ("top_k", 2.5, "integer"),
        ("top_p", 0.0, "(0, 1]"),
        ("top_p", 1.5, "(0, 1]"),
        ("repetition_penalty", 0.0, "[0.01, 100]"),
        ("repetition_penalty", 1e-300, "[0.01, 100]"),
        ("seed", -3, "2**63"),
    ],
)
def test_invalid_values_name_the_parameter(field: str, value: object, words: str) -> None:
    with pytest.raises(ParamError) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field
    assert field in str(info.value) and words in str(info.value)


def test_extreme_values_stay_finite() -> None:
    """Accepted extremes must not overflow float32 into NaN probabilities."""
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(2)) * 30 - 200
    g = torch.Generator().manual_seed(0)
    for params in (
        SamplingParams(temperature=1e-45, top_k=0),
        SamplingParams(temperature=1e-4, top_k=0),
        SamplingParams(top_p=1e-300, top_k=0),
        SamplingParams(repetition_penalty=0.01, top_k=0),
        SamplingParams(repetition_penalty=100, temperature=50),
    ):
        seen = torch.ones_like(logits, dtype=torch.bool)
        picks = sample_next(logits, params, g, seen)
        assert picks.shape == (4,)
    # a tiny temperature is greedy, a tiny top_p keeps exactly the most likely token
    assert torch.equal(sample_next(logits, SamplingParams(temperature=1e-7), g), logits.argmax(-1))
    tiny_p = SamplingParams(top_p=1e-300, top_k=0, temperature=3.0)
    assert torch.equal(sample_next(logits, tiny_p, g), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1e39, 1e300])
def test_a_huge_temperature_keeps_the_top_k(logits: torch.Tensor, temperature: float) -> None:
    """float32 turns such a temperature into inf and every scaled logit into 0: the k tokens
    kept must still be the k most likely, not the first of a tie."""
    allowed = set(torch.topk(logits[0], 5).indices.tolist())
    seen = draws(logits, SamplingParams(top_k=5, temperature=temperature))
    assert seen == allowed  # uniform over the five: 400 draws see them all
    nucleus = draws(logits, SamplingParams(top_k=0, top_p=0.01, temperature=temperature))
    assert nucleus <= set(torch.topk(logits[0], 5).indices.tolist())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    "params", [SamplingParams(temperature=0), SamplingParams(), SamplingParams(top_p=0.5)]
)
def test_non_finite_logits_are_a_clean_error(bad: float, params: SamplingParams) -> None:
    logits = torch.zeros(2, 50)
    logits[1, :] = bad  # a whole row (a broken model), not one masked token
    with pytest.raises(NonFiniteOutputError, match="not finite"):
        sample_next(logits, params, torch.Generator().manual_seed(0))


def test_rows_with_their_own_generators_draw_what_multinomial_draws() -> None:
    """Each row's draw from its own generator is torch.multinomial's, draw for draw."""
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(2)) * 2
    probs = torch.softmax(logits, -1)  # what sample_next draws from (no top-k, no top-p)
    ours = [torch.Generator().manual_seed(i) for i in range(6)]
    theirs = [torch.Generator().manual_seed(i) for i in range(6)]
    for _ in range(50):
        got = sample_next(logits, SamplingParams(top_k=0), generators=ours)
        want = [torch.multinomial(p, 1, generator=g).item() for p, g in zip(probs, theirs)]
        assert got.tolist() == want
