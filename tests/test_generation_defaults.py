"""A checkpoint's own generation settings (issue 12): generation_config.json (else config.json)
read as transformers reads it, and `resolve_defaults`, where the flags meet those defaults and
the built-in ones. The end-to-end checks against transformers are in test_compat*.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2cli.model.generation_config import read_generation_defaults
from gpt2cli.types import BUILT_IN, FLAG, GenerationDefaults, resolve_defaults
from tests.support.checkpoints import derive_checkpoint
from tests.support.cli import gpt2
from tests.test_compat import EOT_999, GREEDY, PROMPT, ours

CONFIG = {"model_type": "gpt2", "vocab_size": 1000, "bos_token_id": 7, "eos_token_id": [8, 9]}


def read(tmp_path: Path, generation: object | None = None, config: dict = CONFIG):
    if generation is not None:
        text = generation if isinstance(generation, str) else json.dumps(generation)
        (tmp_path / "generation_config.json").write_text(text)
    return read_generation_defaults(tmp_path, config, vocab_size=1000)


def test_generation_config_json_alone_decides(tmp_path: Path) -> None:
    """With a generation_config.json, config.json's ids do not count (as in transformers)."""
    defaults, warnings = read(tmp_path, {"eos_token_id": 5})
    assert (defaults.source, defaults.bos_token_id, defaults.eos_token_ids) == (
        "generation_config.json", None, (5,)
    )  # fmt: skip
    assert warnings == []


def test_without_generation_config_json_config_json_decides(tmp_path: Path) -> None:
    config = CONFIG | {"temperature": 0.5, "n_embd": 64, "task_specific_params": {}}
    defaults, _ = read(tmp_path, config=config)
    assert (defaults.source, defaults.bos_token_id, defaults.eos_token_ids) == (
        "config.json", 7, (8, 9)
    )  # fmt: skip
    assert defaults.values == {"temperature": 0.5}
    assert defaults.unknown == ()  # config.json's model keys are not generation settings


def test_invalid_generation_config_json_falls_back_to_config_json(tmp_path: Path) -> None:
    defaults, warnings = read(tmp_path, "{not json")
    assert defaults.eos_token_ids == (8, 9)
    assert len(warnings) == 1 and "generation_config.json is not valid JSON" in warnings[0]


def test_bad_ids_and_values_are_dropped_with_a_warning(tmp_path: Path) -> None:
    generation = {
        "bos_token_id": 1000, "eos_token_id": [3, -1, "x"], "top_p": 0, "temperature": 0.7,
        "max_new_tokens": 0, "do_sample": "yes",
    }  # fmt: skip
    defaults, warnings = read(tmp_path, generation)
    assert (defaults.bos_token_id, defaults.eos_token_ids) == (None, (3,))
    assert defaults.values == {"temperature": 0.7}
    said = " ".join(warnings)
    for word in ("bos_token_id 1000", "eos_token_id -1", "eos_token_id 'x'", "top_p", "do_sample"):
        assert word in said
    assert "max_new_tokens" in said


def test_keys_that_change_the_output_are_listed(tmp_path: Path) -> None:
    generation = {
        "num_beams": 1, "typical_p": 1.0, "no_repeat_ngram_size": 3, "max_length": 50,
        "pad_token_id": 0, "transformers_version": "4.0", "length_penalty": 2.0, "my_key": 1,
    }  # fmt: skip
    defaults, _ = read(tmp_path, generation)
    assert defaults.ignored == ("max_length", "no_repeat_ngram_size")  # values at their default
    assert defaults.unknown == ("my_key",)  # are no change; beam-only keys need num_beams
    with_new_tokens, _ = read(tmp_path, {"max_length": 50, "max_new_tokens": 10})
    assert with_new_tokens.ignored == ()  # transformers then ignores max_length too
    assert with_new_tokens.values == {"max_tokens": 10}


def test_resolve_defaults_flag_over_checkpoint_over_built_in() -> None:
    checkpoint = GenerationDefaults(values={"top_k": 5, "top_p": 0.9, "max_tokens": 7})
    values, sources = resolve_defaults({"top_k": 40, "temperature": None}, checkpoint)
    assert values == {
        "temperature": 1.0, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.0, "max_tokens": 7
    }  # fmt: skip
    assert sources["top_k"] == FLAG  # equal to the built-in default, and still the flag's
    assert sources["top_p"] == sources["max_tokens"] == "generation_config.json"
    assert sources["temperature"] == sources["repetition_penalty"] == BUILT_IN


@pytest.mark.parametrize(
    ("given", "temperature"),
    [
        ({}, 0.0),
        ({"repetition_penalty": 1.2}, 0.0),
        ({"top_p": 0.5}, 0.8),
        ({"temperature": 2.0}, 2.0),
    ],
)
def test_do_sample_false_is_greedy_unless_a_sampling_flag_is_given(given, temperature) -> None:
    checkpoint = GenerationDefaults(values={"temperature": 0.8}, greedy=True)
    values, sources = resolve_defaults(given, checkpoint)
    assert values["temperature"] == temperature
    if temperature == 0.0:
        assert sources["temperature"] == "generation_config.json do_sample: false"


@pytest.fixture(scope="module")
def greedy_checkpoint(tmp_path_factory, tiny_checkpoint: Path) -> Path:
    generation = EOT_999 | {"do_sample": False, "max_new_tokens": 6, "num_beams": 3}
    folder = tmp_path_factory.mktemp("gen") / "greedy"
    return derive_checkpoint(tiny_checkpoint, folder, files={"generation_config.json": generation})


def test_repl_takes_the_checkpoint_defaults(greedy_checkpoint: Path, tiny_checkpoint: Path):
    """The REPL resolves its settings as generate does: greedy, 6 tokens; /show says so."""
    expected = [c.text for c in (complete_one(tiny_checkpoint, p) for p in (PROMPT, "The quick"))]
    args = ("repl", "-m", str(greedy_checkpoint), "--device", "cpu", "-s", "1")
    proc = gpt2(*args, input=f"{PROMPT}\nThe quick\n/show\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(text + "\n" for text in expected)
    assert "num_beams" in proc.stderr  # not applied, and said so
    shown = dict(line.split(None, 1) for line in proc.stderr.splitlines() if "  " in line)
    assert (shown["max_tokens"], shown["temperature"]) == ("6", "0.0")


def complete_one(folder: Path, prompt: str):
    from gpt2cli.runtime.generate import complete

    return complete(ours(folder), prompt, GREEDY, max_tokens=6)[0]
