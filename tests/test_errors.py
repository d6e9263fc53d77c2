"""Bad flags exit 2 with one line naming the flag; a missing or broken model exits 1 with one
line; never a traceback unless --debug asks for one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, gpt2

BAD_FLAGS = [
    (["-k", "-1"], "--top-k"),
    (["--top-k", "many"], "--top-k"),
    (["-t", "-0.5"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["-n", "0"], "--max-tokens"),
    (["--max-tokens", "ten"], "--max-tokens"),
    (["--repetition-penalty", "0"], "--repetition-penalty"),
    (["--repetition-penalty", "-1"], "--repetition-penalty"),
    (["--samples", "0"], "--samples"),
    (["--seed", "-3"], "--seed"),
    (["--threads", "0"], "--threads"),
    (["--device", "tpu"], "--device"),
    (["--dtype", "int2"], "--dtype"),
    (["--stop", ""], "--stop"),
    (["--no-such-flag"], "--no-such-flag"),
]


@pytest.mark.parametrize(("args", "flag"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_exits_2_naming_it(args: list[str], flag: str) -> None:
    # The model does not exist: flags are checked first, before torch is even imported.
    proc = gpt2("generate", "-m", "./no-such-model", *args, "Hello")
    assert_one_line_error(proc, 2, flag)
    assert proc.stdout == ""


def test_unavailable_device_exits_2(tiny_checkpoint: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("cuda is available here")
    proc = gpt2("generate", "-m", str(tiny_checkpoint), "--device", "cuda", "Hello")
    assert_one_line_error(proc, 2, "--device", "cuda")


def test_missing_model_exits_1(tmp_path: Path) -> None:
    proc = gpt2("generate", "-m", str(tmp_path / "nowhere"), "Hello")
    assert_one_line_error(proc, 1, "nowhere")


def test_broken_model_exits_1(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.json", "merges.txt"):
        (broken / name).write_bytes((tiny_checkpoint / name).read_bytes())
    weights = (tiny_checkpoint / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated
    proc = gpt2("generate", "-m", str(broken), "Hello")
    assert_one_line_error(proc, 1)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = gpt2("generate", "--debug", "-m", str(tmp_path / "nowhere"), "Hello")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("gpt2: error: ")


def test_usage_error_is_one_line_without_a_box() -> None:
    proc = gpt2("frobnicate")
    assert_one_line_error(proc, 2, "frobnicate")
    assert "╭" not in proc.stderr


def test_version() -> None:
    proc = gpt2("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("gpt2cli ")
