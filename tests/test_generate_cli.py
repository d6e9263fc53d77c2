"""`gpt2 generate` end to end: the installed command in a subprocess on a tiny checkpoint, its
output checked against the engine run in-process with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from gpt2cli.runtime.generate import complete
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.types import SamplingParams
from gpt2cli.ui.records import JSON_FIELDS
from gpt2cli.ui.wrap import visible
from tests.support.cli import ESCAPE, Screen, gpt2, gpt2_argv, squeeze


@pytest.fixture(scope="module")
def lm(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(str(tiny_checkpoint), device="cpu")


def run(ckpt: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return gpt2("generate", "-m", str(ckpt), "--device", "cpu", *args, **kwargs)


def reference(lm: LoadedModel, prompt: str, seed: int, **kwargs) -> list:
    return complete(lm, prompt, SamplingParams(seed=seed), **kwargs)


def test_argument_prints_only_the_continuation(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    proc = run(tiny_checkpoint, "-n", "30", "-s", "7", "Hello [bold] world")
    assert proc.returncode == 0, proc.stderr
    expected = reference(lm, "Hello [bold] world", 7, max_tokens=30)[0]
    assert proc.stdout == expected.text + "\n"
    assert proc.stderr == ""  # no stats on a pipe without --verbose
    assert ESCAPE not in proc.stdout


def test_stdin_then_argument_with_echo(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    proc = run(tiny_checkpoint, "-n", "20", "-s", "3", "--echo", "[bold] arg", input="from stdin")
    assert proc.returncode == 0, proc.stderr
    prompt = "from stdin\n[bold] arg"
    expected = reference(lm, prompt, 3, max_tokens=20)[0]
    assert proc.stdout == prompt + expected.text + "\n"


def test_dash_reads_stdin_invalid_utf8_and_long_prompt(
    lm: LoadedModel, tiny_checkpoint: Path
) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 40
    proc = run(
        tiny_checkpoint, "-n", "5", "-s", "1", "--json", "-", input=b"\xff" + long_text.encode()
    )
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2, proc.stderr
    assert "not valid UTF-8" in warnings[0]
    assert "tokens were dropped" in warnings[1]
    record = json.loads(proc.stdout)
    expected = reference(lm, "\ufffd" + long_text, 1, max_tokens=5)[0]
    assert record["prompt_tokens"] == expected.prompt_tokens == lm.context_length - 5 + 1
    assert record["text"] == expected.text


def test_json_samples(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    proc = run(tiny_checkpoint, "-n", "8", "-s", "5", "--samples", "3", "--json", "-v", "Once")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = reference(lm, "Once", 5, max_tokens=8, samples=3)
    assert [r["text"] for r in records] == [c.text for c in expected]
    for r in records:
        assert tuple(r) == JSON_FIELDS
        assert r["seed"] == 5 and r["model"] == str(tiny_checkpoint)
        assert r["finish_reason"] in ("eos", "length") and 1 <= r["completion_tokens"] <= 8
        assert isinstance(r["time_to_first_token_s"], float) and r["tokens_per_s"] >= 0
    stats = [line for line in proc.stderr.splitlines() if "tok/s" in line]
    assert [s.split(":")[0] for s in stats] == ["sample 1/3", "sample 2/3", "sample 3/3"]


def test_unconditional_with_stop_strings(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    full = reference(lm, "", 11, max_tokens=60, ignore_eos=True)[0].text
    stop = next(
        full[i : i + 2] for i in range(10, len(full)) if "\\" not in full[i : i + 2].strip()
    )
    proc = run(
        tiny_checkpoint,
        "-n", "60", "-s", "11", "--ignore-eos", "--json", f"--stop={stop}", "--stop=never!",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["prompt_tokens"] == 1  # <|endoftext|>
    assert record["finish_reason"] == "stop"
    assert record["text"] == full[: full.index(stop)]


def test_terminal_output(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    """On a (pseudo-)terminal: prompt dim, text wrapped to 40 columns and literal, a stats
    line; 6 rows high, so the text outgrows the screen and must still appear exactly once."""
    prompt = "Hello [bold] world, this prompt is long enough to wrap"
    args = ["generate", "-m", str(tiny_checkpoint), "--device", "cpu", "-n", "100", "-s", "2"]
    argv = gpt2_argv(*args, "--ignore-eos", prompt)
    env = {**os.environ, "COLUMNS": "40", "LINES": "6", "TERM": "xterm-256color"}
    child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(6, 40), encoding="utf-8")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0, child.before
    raw = child.before
    assert "\x1b[2mHello [bold] world" in raw
    screen = Screen(40).feed(raw)
    assert screen.autowraps == 0
    expected = reference(lm, prompt, 2, max_tokens=100, ignore_eos=True)[0]
    stats_start = f"{expected.completion_tokens} tokens · "
    at = max(i for i, line in enumerate(screen.lines) if line.startswith(stats_start))
    stats = " ".join(screen.lines[at:])
    assert "seed 2" in stats and f"finish: {expected.finish_reason}" in stats, stats
    shown = "".join(screen.lines[:at])
    assert squeeze(shown) == squeeze(visible(prompt + expected.text))


def test_ctrl_c_stops_and_keeps_the_text(long_checkpoint: Path) -> None:
    argv = gpt2_argv("generate", "-m", str(long_checkpoint), "--device", "cpu")
    proc = subprocess.Popen(
        [*argv, "-n", "8000", "--ignore-eos", "-s", "1", "Hello"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = os.read(proc.stdout.fileno(), 64)  # decoding has started
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert first and (first + rest).endswith(b"\n")
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err


def test_ctrl_c_with_samples_still_writes_every_sample(long_checkpoint: Path) -> None:
    argv = gpt2_argv("generate", "-m", str(long_checkpoint), "--device", "cpu", "--json")
    proc = subprocess.Popen(
        [*argv, "-v", "-n", "8000", "--ignore-eos", "--samples", "3", "-s", "1", "Hello"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # JSON lines only come at the end: --verbose says on stderr when decoding has begun.
    for line in proc.stderr:
        if b"first token after" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert len(records) == 3
    assert {r["finish_reason"] for r in records} == {"interrupted"}
    assert all(r["completion_tokens"] > 0 for r in records)


@pytest.mark.parametrize(
    "args",
    [("--version",), ("--help",), ("generate", "--help"), ("models",), ("download", "TINY")],
    ids=lambda a: " ".join(a),
)
def test_every_command_exits_141_on_a_closed_pipe(
    args: tuple[str, ...], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    argv = gpt2_argv(*(str(tiny_checkpoint) if a == "TINY" else a for a in args))
    script = f"{' '.join(argv)} 2>{tmp_path}/err </dev/null | head -c 0; echo ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60)
    assert proc.stdout == b"141\n"
    assert (tmp_path / "err").read_text() == ""


def test_closed_pipe_is_quiet(long_checkpoint: Path, tmp_path: Path) -> None:
    argv = gpt2_argv("generate", "-m", str(long_checkpoint), "--device", "cpu")
    command = " ".join([*argv, "-n", "8000", "--ignore-eos", "-s", "1", "Hello"])
    script = f"{command} 2>{tmp_path}/err </dev/null | head -c 10; echo ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60)
    assert proc.stdout.endswith(b"141\n")  # ended by the closed pipe, quietly
    assert 0 < len(proc.stdout) - 4 <= 10  # what head let through
    assert (tmp_path / "err").read_text() == ""


def test_stop_escapes() -> None:
    from gpt2cli.commands.options import stop_strings

    assert stop_strings(["\\n", "a\\tb", "\\\\n", "plain"]) == ["\n", "a\tb", "\\n", "plain"]


def test_read_prompt_sources(tmp_path: Path) -> None:
    from gpt2cli.ui.prompt_input import read_prompt

    with open(os.devnull) as devnull:  # not a pipe: never read, so nothing blocks on a tty
        assert read_prompt("arg", devnull).text == "arg"
        assert read_prompt(None, devnull).text == ""
    (tmp_path / "in.txt").write_bytes(b"file text")
    with open(tmp_path / "in.txt") as f:
        assert read_prompt("arg", f).text == "file text\narg"
    with open(tmp_path / "in.txt") as f:
        assert read_prompt("-", f).text == "file text"
    (tmp_path / "empty.txt").write_bytes(b"")
    with open(tmp_path / "empty.txt") as f:
        assert read_prompt("arg", f).text == "arg"
