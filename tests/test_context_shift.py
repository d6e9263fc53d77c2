"""Generating past the window (`--context-shift`, `/set context-shift on`): on a checkpoint with a
64-token window, greedy tokens over several shifts are transformers' argmax on the context the
policy defines (the last window // 2 tokens once one more would not fit, re-read from position
0); shifts are counted in the JSON and the stats line; without the flag nothing changes."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch

from gpt2cli.repl.settings import Settings, setting_text, updated
from gpt2cli.runtime.generate import complete, fit_prompt
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.runtime.scoring import candidate_steps
from gpt2cli.types import Delta, GenerationConfig, SamplingParams, Start
from gpt2cli.ui.render import Renderer
from tests.support.batching import decode_together
from tests.support.checkpoints import build_checkpoint
from tests.support.cli import gpt2

WINDOW = 64
PROMPT = "Once upon a time, in a land far away,"
GREEDY = SamplingParams(temperature=0, seed=1)


@pytest.fixture(scope="module")
def short_window(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "window64", n_positions=WINDOW)


@pytest.fixture(scope="module")
def lm(short_window: Path) -> LoadedModel:
    return load_model(str(short_window), device="cpu")


@pytest.fixture(scope="module")
def oracle(short_window: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.GPT2LMHeadModel.from_pretrained(str(short_window)).eval()


def follows_transformers(oracle, prompt_ids: list[int], tokens: list[int]) -> int:
    """Check that every token is transformers' argmax on the policy's context (or within float
    rounding of a tie with it); return how many shifts the policy made. One forward pass per
    stretch of tokens that share a context start: the logits at each of its positions."""
    context, shifts, i = list(prompt_ids), 0, 0
    while i < len(tokens):
        part = tokens[i : i + WINDOW - len(context) + 1]  # until one more would not fit
        with torch.no_grad():
            logits = oracle(torch.tensor([context + part[:-1]])).logits[0, len(context) - 1 :]
        for j, token in enumerate(part):
            best = int(logits[j].argmax())
            assert token == best or logits[j, best] - logits[j, token] < 1e-4, (i + j, best)
        context, i = context + part, i + len(part)
        if len(context) > WINDOW:  # one more token did not fit: keep the last half, it included
            context = context[-(WINDOW // 2) :]
            shifts += 1
    return shifts


@pytest.mark.parametrize(
    ("samples", "graphs"), [(1, False), (3, False), (3, True)], ids=["1", "3", "3-fixed-shape"]
)
def test_greedy_past_the_window_is_transformers_argmax_on_the_shifted_context(
    lm: LoadedModel, oracle, samples: int, graphs: bool
) -> None:
    """130 tokens through a 64-token window (several shifts), with the eager stepper and the
    fixed-shape one CUDA graphs capture."""
    lm = dataclasses.replace(lm, cuda_graphs=graphs)
    config = GenerationConfig(max_tokens=130, samples=samples, ignore_eos=True, context_shift=True)
    done = complete(lm, PROMPT, GREEDY, config)
    assert len(done) == samples
    for c in done:
        assert c.finish_reason == "length" and c.completion_tokens == 130
        assert c.prompt_ids == lm.tokenizer.encode(PROMPT)  # short enough: never cut
        shifts = follows_transformers(oracle, c.prompt_ids, c.token_ids)
        assert c.shifts == shifts >= 3


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "fixed-shape"])
def test_rows_shifting_at_different_steps_decode_as_they_would_alone(
    lm: LoadedModel, graphs: bool
) -> None:
    """Sampled rows of different prompt lengths in one batch shift at different steps; each
    gives the tokens it gives alone with its seed."""
    lm = dataclasses.replace(lm, cuda_graphs=graphs)
    prompts = ["Hi", PROMPT, "The quick brown fox jumps over the lazy dog and then it"]
    config = GenerationConfig(max_tokens=100, ignore_eos=True, context_shift=True)
    batched = decode_together(lm, prompts, config)
    assert len({c.prompt_tokens for c in batched.values()}) == 3
    for i, prompt in enumerate(prompts):
        alone = complete(lm, prompt, SamplingParams(seed=10 + i), config)[0]
        assert batched[i].token_ids == alone.token_ids and batched[i].shifts == alone.shifts >= 2


def test_cli_samples_past_the_window_report_their_shifts(
    short_window: Path, lm: LoadedModel, oracle
) -> None:
    """As a user types it: --max-tokens beyond the window, three greedy samples as JSON."""
    args = ["-m", str(short_window), "--context-shift", "-t", "0", "-n", "150", "--ignore-eos"]
    proc = gpt2("generate", *args, "--samples", "3", "--json", "--show-probs", PROMPT)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["finish_reason"] == "length" and record["completion_tokens"] == 150
        tokens = [t["id"] for t in record["tokens"]]
        shifts = follows_transformers(oracle, lm.tokenizer.encode(PROMPT), tokens)
        assert record["context_shifts"] == shifts >= 3
    stats = gpt2("generate", *args, "-v", PROMPT).stderr
    assert f"finish: length · {records[0]['context_shifts']} context shifts" in stats, stats


def test_without_the_flag_a_full_window_still_finishes(short_window: Path) -> None:
    args = ["-m", str(short_window), "-t", "0", "-n", "150", "--ignore-eos"]
    record = json.loads(gpt2("generate", *args, "--json", PROMPT).stdout)
    assert record["finish_reason"] == "context" and record["context_shifts"] == 0
    assert record["prompt_tokens"] + record["completion_tokens"] == WINDOW + 1
    stats = gpt2("generate", *args, "-v", PROMPT).stderr
    assert "finish: context" in stats and "shift" not in stats


def test_prompt_fitting_with_context_shift() -> None:
    ids = list(range(100))
    # Up to half the window, the prompt still leaves room for the continuation: no shift.
    assert fit_prompt(ids, 64, 20, context_shift=True) == fit_prompt(ids, 64, 20) == (ids[55:], 55)
    # Beyond it (past the window too), the context shifts anyway: keep a whole window.
    assert fit_prompt(ids, 64, 500, context_shift=True) == (ids[36:], 36)
    assert fit_prompt(ids[:60], 64, 500, context_shift=True) == (ids[:60], 0)
    assert fit_prompt(ids[:60], 64, 500) == (ids[27:60], 27)  # without it, as before


def test_a_prompt_that_fits_the_window_is_not_cut(short_window: Path, lm: LoadedModel) -> None:
    prompt = " ".join(["fox"] * 200)
    n = WINDOW - 4
    prompt = lm.tokenizer.decode(lm.tokenizer.encode(prompt)[:n])
    args = ["-m", str(short_window), "-n", "100", "--json", "--ignore-eos", prompt]
    shifted = gpt2("generate", "--context-shift", *args)
    assert shifted.returncode == 0 and "dropped" not in shifted.stderr, shifted.stderr
    record = json.loads(shifted.stdout)
    assert record["prompt_tokens"] == n and record["completion_tokens"] == 100
    assert "tokens were dropped" in gpt2("generate", *args).stderr


def test_candidate_tables_follow_the_shifts(lm: LoadedModel, short_window: Path) -> None:
    """--top-candidates past the window recomputes each step on its shifted context: in
    greedy mode every sampled token is then the top candidate."""
    config = GenerationConfig(max_tokens=150, ignore_eos=True, context_shift=True)
    done = complete(lm, PROMPT, GREEDY, config)[0]
    steps = candidate_steps(lm, done.prompt_ids, done.token_ids, GREEDY, 3, context_shift=True)
    assert len(steps) == 150 and all(s.chosen_rank == 1 for s in steps)
    unshifted = candidate_steps(lm, done.prompt_ids, done.token_ids[:40], GREEDY, 3)
    assert [s.chosen_rank for s in unshifted[:10]] == [1] * 10
    with pytest.raises(ValueError):
        candidate_steps(lm, done.prompt_ids, done.token_ids, GREEDY, 3)
    args = ["-m", str(short_window), "--context-shift", "-t", "0", "-n", "100", "--ignore-eos"]
    proc = gpt2("generate", *args, "--top-candidates", "3", PROMPT)
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr


def test_repl_setting(short_window: Path) -> None:
    settings = updated(Settings(), "context-shift", "on")
    assert settings.generation.context_shift and setting_text(settings, "context_shift") == "on"
    assert not updated(settings, "context_shift", "off").generation.context_shift
    script = "Hello\n/set context-shift on\n/show\nHello\n"
    args = ["-m", str(short_window), "-n", "150", "-t", "0", "--ignore-eos", "-v"]
    proc = gpt2("repl", *args, input=script)
    assert proc.returncode == 0, proc.stderr
    stats = [line for line in proc.stderr.splitlines() if "tok/s" in line]
    assert "finish: context" in stats[0] and "shift" not in stats[0]
    assert "finish: length · " in stats[1] and "context shifts" in stats[1], stats
    assert "context_shift       on" in proc.stderr
    flag = gpt2("repl", "--context-shift", *args, input="Hello\n")
    assert "finish: length · " in flag.stderr, flag.stderr


def test_interrupted_sample_keeps_its_shift_count() -> None:
    def stream():
        yield Start(prompt_tokens=3, dropped_tokens=0, seed=9, samples=1)
        yield Delta(0, "a", 5, shifts=0)
        yield Delta(0, "b", 6, shifts=2)
        raise KeyboardInterrupt

    out = io.StringIO()
    Renderer("json", out=out, err=io.StringIO()).render(stream())
    record = json.loads(out.getvalue())
    assert record["finish_reason"] == "interrupted" and record["context_shifts"] == 2


def test_batch_rows_past_the_window(short_window: Path, lm: LoadedModel, tmp_path: Path) -> None:
    """`gpt2 batch --context-shift`: each row shifts as generate does and reports its shifts;
    a row's own "context_shift" overrides the flag, and a value that is not a boolean is that
    row's error."""
    rows = [
        {"prompt": PROMPT, "id": "a"},
        {"prompt": "Hi", "id": "b"},
        {"prompt": "Hi", "id": "off", "context_shift": False},
        {"prompt": "Hi", "id": "bad", "context_shift": "yes"},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = ["-m", str(short_window), "-t", "0", "-n", "150", "--ignore-eos"]
    proc = gpt2("batch", str(inp), "-o", str(out), *args, "--context-shift", "-b", "1")
    assert proc.returncode == 0, proc.stderr
    assert "1 row had errors" in proc.stderr
    got = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    for key, prompt in (("a", PROMPT), ("b", "Hi")):
        alone = complete(
            lm, prompt, GREEDY, GenerationConfig(150, ignore_eos=True, context_shift=True)
        )
        record = got[key]
        assert record["finish_reason"] == "length" and record["completion_tokens"] == 150
        assert record["text"] == alone[0].text
        assert record["context_shifts"] == alone[0].shifts >= 3
    assert got["off"]["finish_reason"] == "context" and got["off"]["context_shifts"] == 0
    assert got["bad"]["error"] == 'line 4: context_shift: must be true or false, got "yes"'
