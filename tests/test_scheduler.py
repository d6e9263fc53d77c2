"""The continuous-batching scheduler: sequences of different lengths decoded together give what
each gives alone; rows are reused as sequences finish; cancelling and context shifts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt2cli.runtime.generate import complete, make_request
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.runtime.scheduler import Request, Scheduler
from gpt2cli.types import Completion, Finish, GenerationConfig, SamplingParams, Start

PROMPTS = [
    "Hello",
    "Once upon a time there was a fox",
    "A",
    "The quick brown fox jumps over the lazy dog and then",
    "Numbers like 1234567890",
    "東京タワー",
    "x y z",
]


@pytest.fixture(scope="module")
def lm(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(tiny_checkpoint, device="cpu")


def run_all(lm: LoadedModel, requests: list[Request], max_batch: int) -> dict:
    """Every request through one scheduler: key -> {sample: Completion}, and the most rows
    that were decoding at once."""
    scheduler = Scheduler(lm, max_batch=max_batch)
    for request in requests:
        scheduler.submit(request)
    done: dict = {r.key: {} for r in requests}
    most = 0
    while not scheduler.idle:
        for key, event in scheduler.step():
            if isinstance(event, Finish):
                done[key][event.sample] = event.completion
        most = max(most, scheduler.active)
    return {"done": done, "most": most}


def alone(lm: LoadedModel, prompt: str, params: SamplingParams, **config) -> list[Completion]:
    return complete(lm, prompt, params, GenerationConfig(**config))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_rows_decode_as_they_would_alone(lm: LoadedModel, temperature: float) -> None:
    """7 prompts of different lengths and max_tokens through 3 rows: each row's tokens are the
    ones it gets when decoded alone with its seed (rows finish and new ones take their place)."""
    requests = []
    for i, prompt in enumerate(PROMPTS):
        params = SamplingParams(temperature=temperature, seed=100 + i)
        config = GenerationConfig(max_tokens=5 + 3 * i, ignore_eos=True)
        requests.append(make_request(lm, prompt, params, config, key=i))
    result = run_all(lm, requests, max_batch=3)
    assert result["most"] == 3
    for i, prompt in enumerate(PROMPTS):
        expected = alone(
            lm,
            prompt,
            SamplingParams(temperature=temperature, seed=100 + i),
            max_tokens=5 + 3 * i,
            ignore_eos=True,
        )[0]
        got = result["done"][i][0]
        assert got.token_ids == expected.token_ids, prompt
        assert got.text == expected.text and got.finish_reason == "length"


def test_samples_of_a_request_share_the_prompt_and_differ(lm: LoadedModel) -> None:
    request = make_request(
        lm, "Hello there", SamplingParams(seed=3), GenerationConfig(max_tokens=12, samples=3), 0
    )
    other = make_request(lm, "Bye", SamplingParams(seed=4), GenerationConfig(max_tokens=7), 1)
    result = run_all(lm, [request, other], max_batch=4)
    samples = result["done"][0]
    assert sorted(samples) == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in samples.values()}) == 3
    again = alone(lm, "Hello there", SamplingParams(seed=3), max_tokens=12, samples=3)
    assert [c.token_ids for c in again] == [samples[i].token_ids for i in range(3)]
    assert (
        result["done"][1][0].token_ids
        == alone(lm, "Bye", SamplingParams(seed=4), max_tokens=7)[0].token_ids
    )


def test_cancel_ends_a_request_and_frees_its_rows(lm: LoadedModel) -> None:
    scheduler = Scheduler(lm, max_batch=2)
    config = GenerationConfig(max_tokens=50, ignore_eos=True)
    for key in ("a", "b", "c"):
        scheduler.submit(make_request(lm, "Hi", SamplingParams(seed=1), config, key))
    finished: dict = {}
    started = []
    steps = 0
    while not scheduler.idle:
        steps += 1
        if steps == 3:
            scheduler.cancel("a")
        for key, event in scheduler.step():
            if isinstance(event, Start):
                started.append(key)
            if isinstance(event, Finish):
                finished[key] = event.completion
    assert started == ["a", "b", "c"]  # c waited for a row and took a's
    assert finished["a"].finish_reason == "cancelled" and finished["a"].completion_tokens == 2
    assert finished["b"].completion_tokens == finished["c"].completion_tokens == 50


def test_context_shift_keeps_the_last_half_and_goes_on(lm: LoadedModel) -> None:
    """Greedy past the window: after each shift the tokens are what the model predicts from the
    kept half of the context, re-read from position 0."""
    window = lm.context_length
    config = GenerationConfig(max_tokens=2 * window, ignore_eos=True, context_shift=True)
    request = make_request(lm, "Hello", SamplingParams(temperature=0, seed=0), config)
    done = run_all(lm, [request], max_batch=1)["done"][None][0]
    assert done.completion_tokens == 2 * window and done.finish_reason == "length"
    assert done.shifts >= 2
    # Replay the policy by hand with full forward passes.
    context = list(request.prompt_ids)
    for token in done.token_ids:
        logits = lm.model(torch.tensor([context]), lm.model.new_cache(1))[0]
        assert int(logits.argmax()) == token
        context.append(token)
        if len(context) > window:  # the token did not fit: keep the last half, it included
            context = context[-(window // 2) :]


def test_without_context_shift_a_full_window_finishes(lm: LoadedModel) -> None:
    window = lm.context_length
    done = alone(lm, "Hello", SamplingParams(seed=0), max_tokens=2 * window, ignore_eos=True)[0]
    assert done.finish_reason == "context" and done.shifts == 0
    assert done.prompt_tokens + done.completion_tokens == window + 1
