"""The decode loop: events, finish reasons, stop strings, seeds, batches, long prompts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2cli.errors import ParamError
from gpt2cli.runtime.generate import complete, fit_prompt, generate
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.types import Delta, Finish, SamplingParams, Start


@pytest.fixture(scope="module")
def lm(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(tiny_checkpoint, device="cpu")


def test_events_stream_text_that_adds_up(lm: LoadedModel) -> None:
    events = list(generate(lm, "Hello", SamplingParams(seed=7), max_tokens=25, samples=2))
    assert isinstance(events[0], Start) and events[0].seed == 7 and events[0].samples == 2
    finishes = {e.sample: e.completion for e in events if isinstance(e, Finish)}
    assert set(finishes) == {0, 1}
    for b, done in finishes.items():
        streamed = "".join(e.text for e in events if isinstance(e, Delta) and e.sample == b)
        assert streamed == done.text == lm.tokenizer.decode(done.token_ids)
        assert done.finish_reason == "length" and done.completion_tokens == 25
        assert done.seed == 7 and done.prompt_tokens == len(lm.tokenizer.encode("Hello"))
    assert finishes[0].token_ids != finishes[1].token_ids  # a batch holds distinct samples


def test_same_seed_same_text_across_processes(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    code = (
        "import json,sys; from gpt2cli import load_model, complete, SamplingParams;"
        f"lm = load_model({str(tiny_checkpoint)!r}, device='cpu');"
        "c = complete(lm, 'The fox', SamplingParams(seed=1234, top_k=0), max_tokens=30)[0];"
        "print(json.dumps(c.token_ids))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = complete(lm, "The fox", SamplingParams(seed=1234, top_k=0), max_tokens=30)[0]
    assert json.loads(out.stdout) == here.token_ids
    other = complete(lm, "The fox", SamplingParams(seed=1235, top_k=0), max_tokens=30)[0]
    assert other.token_ids != here.token_ids


def test_random_seed_is_reported_and_repeatable(lm: LoadedModel) -> None:
    first = complete(lm, "x", SamplingParams(top_k=0), max_tokens=20)[0]
    again = complete(lm, "x", SamplingParams(top_k=0, seed=first.seed), max_tokens=20)[0]
    assert again.token_ids == first.token_ids


def test_stop_string_ends_text_before_it(lm: LoadedModel) -> None:
    params = SamplingParams(temperature=0)
    full = complete(lm, "Once upon", params, max_tokens=40, ignore_eos=True)[0].text
    stop = full[10:13]
    assert len(stop) == 3
    cut = full.index(stop)
    events = list(generate(lm, "Once upon", params, max_tokens=40, ignore_eos=True, stop=[stop]))
    done = next(e.completion for e in events if isinstance(e, Finish))
    assert done.finish_reason == "stop"
    assert done.text == full[:cut]
    assert "".join(e.text for e in events if isinstance(e, Delta)) == full[:cut]
    # a stop string that never appears changes nothing
    same = complete(lm, "Once upon", params, max_tokens=40, ignore_eos=True, stop=["\x00\x01"])
    assert same[0].text == full and same[0].finish_reason == "length"


def test_empty_prompt_starts_from_endoftext(lm: LoadedModel) -> None:
    start = next(iter(generate(lm, "", SamplingParams(seed=1), max_tokens=3)))
    assert isinstance(start, Start) and start.prompt_tokens == 1
    unconditional = complete(lm, "", SamplingParams(temperature=0), max_tokens=10)[0]
    explicit = complete(lm, "<|endoftext|>", SamplingParams(temperature=0), max_tokens=10)[0]
    assert unconditional.token_ids == explicit.token_ids


def test_long_prompt_keeps_its_last_tokens(lm: LoadedModel) -> None:
    window = lm.context_length
    prompt = " ".join(f"w{i}" for i in range(400))
    n = len(lm.tokenizer.encode(prompt))
    assert n > window
    start = next(iter(generate(lm, prompt, SamplingParams(seed=1), max_tokens=10)))
    assert start.prompt_tokens == window - 10 + 1  # the last sampled token needs no slot
    assert start.dropped_tokens == n - (window - 9)
    # room is left for max_tokens (at most half the window), no more
    ids = list(range(window))
    assert fit_prompt(ids, window, 1) == (ids, 0)
    assert fit_prompt(ids[:-4], window, 5) == (ids[:-4], 0)
    assert fit_prompt(ids, window, 5) == (ids[4:], 4)
    assert fit_prompt(ids, window, 10_000) == (ids[window // 2 - 1 :], window // 2 - 1)


def test_window_full_finishes_with_context(lm: LoadedModel) -> None:
    window = lm.context_length
    prompt = " ".join(f"w{i}" for i in range(30))
    done = complete(lm, prompt, SamplingParams(seed=3), max_tokens=500, ignore_eos=True)[0]
    assert done.finish_reason == "context"
    # the last sampled token needs no cache slot: prompt + completion = window + 1
    assert done.prompt_tokens + done.completion_tokens == window + 1


def test_endoftext_finishes_with_eos(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    forward = type(lm.model).forward
    calls = {"n": 0}

    def eot_on_third_step(self, idx, cache, all_logits=False):
        logits = forward(self, idx, cache, all_logits).clone()
        calls["n"] += 1
        if calls["n"] == 3:
            logits[:, lm.tokenizer.eot_id] = 1e4
        return logits

    monkeypatch.setattr(type(lm.model), "forward", eot_on_third_step)
    done = complete(lm, "Hi", SamplingParams(seed=1), max_tokens=20)[0]
    assert done.finish_reason == "eos" and done.completion_tokens == 2
    calls["n"] = 0
    kept = complete(lm, "Hi", SamplingParams(seed=1), max_tokens=20, ignore_eos=True)[0]
    assert kept.finish_reason == "length" and kept.token_ids[2] == lm.tokenizer.eot_id


def test_logprobs_and_top_alternatives(lm: LoadedModel) -> None:
    events = list(generate(lm, "Hi", SamplingParams(seed=2), max_tokens=5, top_logprobs=3))
    deltas = [e for e in events if isinstance(e, Delta) and e.token_id is not None]
    for d in deltas:
        assert d.logprob is not None and d.logprob <= 0
        assert d.top is not None and len(d.top) == 3
        assert d.top[0][1] >= d.top[1][1] >= d.top[2][1]
    ids = torch.tensor([lm.tokenizer.encode("Hi")])
    first = torch.log_softmax(lm.model(ids, lm.model.new_cache(1))[0], -1)
    assert abs(first[deltas[0].token_id].item() - deltas[0].logprob) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "param"), [({"max_tokens": 0}, "max_tokens"), ({"samples": 0}, "samples")]
)
def test_bad_arguments_name_the_parameter(lm: LoadedModel, kwargs: dict, param: str) -> None:
    with pytest.raises(ParamError) as info:
        list(generate(lm, "x", **kwargs))
    assert info.value.param == param
