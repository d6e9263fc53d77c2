"""Reliability of the command line (issue 10, items 5-7, 9, 11, 13-15, 17; item 8 is in
tests/test_score_reliability.py): clean one-line errors
instead of `unexpected ...`, and rough edges of help, warnings, sampling, JSON and the Python
API. Each CLI test drives the installed `gpt2` in a subprocess, as a user would."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.checkpoints import build_checkpoint, edited_checkpoint
from tests.support.cli import assert_one_line_error, gpt2, gpt2_argv

# -- helpers --------------------------------------------------------------------------------------


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit `code` with one `gpt2: error:` line (mentioning `words`) that is not the catch-all
    `unexpected <Exception>`; returns the line."""
    assert "unexpected" not in proc.stderr, proc.stderr
    assert_one_line_error(proc, code, *words)
    return proc.stderr.strip()


def run_with_importtime(
    *args: str, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -m gpt2cli ARGS`; return the run (its stderr without the import-time lines)
    and every module it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpt2cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        timeout=60,
    )
    lines = proc.stderr.splitlines(keepends=True)
    timing = [line for line in lines if line.startswith("import time:") and "|" in line]
    modules = {line.rsplit("|", 1)[1].strip() for line in timing}
    proc.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return proc, modules


def imports_torch(modules: set[str]) -> bool:
    return any(m == "torch" or m.startswith("torch.") for m in modules)


def constant_logits(source: Path, folder: Path, margin: float) -> Path:
    """A copy of `source` whose logits are the same at every position: `margin` for
    <|endoftext|>, 0 for every other token, so each token of a text scores about -margin nats.
    (ln_f's weight is 0 and its bias is margin * e0; the tied embedding's column 0 is 0 except
    for <|endoftext|>'s row.)"""

    def one_hot_column(wte: torch.Tensor) -> torch.Tensor:
        wte = wte.clone()
        wte[:, 0] = 0.0
        wte[-1, 0] = 1.0
        return wte

    def bias(b: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(b)
        out[0] = margin
        return out

    return edited_checkpoint(
        source,
        folder,
        tensors={"wte.weight": one_hot_column, "ln_f.weight": torch.zeros_like, "ln_f.bias": bias},
    )


@pytest.fixture(scope="module")
def nan_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with NaN in ln_f.weight: every logit is NaN."""
    folder = tmp_path_factory.mktemp("ckpt") / "nan"
    nan = {"ln_f.weight": lambda t: torch.full_like(t, float("nan"))}
    return edited_checkpoint(tiny_checkpoint, folder, tensors=nan)


# -- 5. sizes in config.json ----------------------------------------------------------------------


def test_absurd_n_layer_fails_fast_with_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """User saw: a config.json with `n_layer: 100000000` ran for 135 s and ended in `unexpected
    MemoryError` (every expected tensor shape was built before any check). Expected: a one-line
    checkpoint error about as fast as any other config error (the sizes config.json implies are
    checked against the weight file's size first)."""
    zero_heads = edited_checkpoint(tiny_checkpoint, tmp_path / "zero-heads", config={"n_head": 0})
    deep = edited_checkpoint(tiny_checkpoint, tmp_path / "deep", config={"n_layer": 100_000_000})

    def run(folder: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
        def limit_memory() -> None:  # today's run must not take the machine's memory with it
            resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

        start = time.monotonic()
        try:
            proc = subprocess.run(
                gpt2_argv("generate", "-m", str(folder), "-n", "1", "Hi"),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                preexec_fn=limit_memory,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"gpt2 generate -m {folder.name} still ran after {timeout:.0f} s")
        return proc, time.monotonic() - start

    base, baseline = run(zero_heads, 120)  # a config error caught up front: torch's import, all
    one_line_error(base, 1)
    proc, _ = run(deep, 2 * baseline + 10)
    line = one_line_error(proc, 1)
    assert "config" in line, line


# -- 6. vocabulary sizes --------------------------------------------------------------------------


def test_config_vocab_smaller_than_the_tokenizer_names_both_sizes(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """User saw: `unexpected IndexError: index 15496 is out of bounds` when config.json's
    vocab_size (and the weights) are smaller than the tokenizer's vocabulary. Expected: one
    error line naming both sizes."""
    folder = build_checkpoint(tmp_path / "vocab500", vocab_size=500)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):  # a 1000-token tokenizer
        shutil.copy(tiny_checkpoint / name, folder / name)
    proc = gpt2("generate", "-m", str(folder), "-n", "3", "The quick brown fox")
    one_line_error(proc, 1, "500", "1000")


# -- 7. NaN weights -------------------------------------------------------------------------------


def test_nan_weights_are_a_one_line_error(nan_checkpoint: Path) -> None:
    """User saw: `unexpected RuntimeError: probability tensor contains either inf, nan or
    element < 0` from weights holding NaN. Expected: one error line saying the model's output
    is not finite."""
    proc = gpt2("generate", "-m", str(nan_checkpoint), "-n", "3", "--seed", "1", "Hello")
    line = one_line_error(proc, 1).lower()
    assert any(word in line for word in ("nan", "inf", "not a number", "finite")), line


def test_an_error_in_one_repl_answer_does_not_end_the_session(
    nan_checkpoint: Path, tiny_checkpoint: Path
) -> None:
    """User saw: in a scripted REPL, the NaN error of one answer ended the whole session (exit 1,
    `unexpected RuntimeError`). Expected: the error is reported and the next entries still run:
    here /model switches to a sound model, whose answer reaches stdout. (The exit status may
    still report the failed entry.)"""
    script = f"Hello\n/model {tiny_checkpoint}\nHello\n"
    proc = gpt2("repl", "-m", str(nan_checkpoint), "-n", "3", "--seed", "1", input=script)
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr, proc.stderr
    assert "error" in proc.stderr.lower(), "the failed entry was not reported"
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stdout.strip(), "the entry after the failed one produced nothing"


# -- 9. model names checked before torch ----------------------------------------------------------


def test_unknown_model_name_is_a_usage_error_before_torch() -> None:
    """User saw: `-m huge` (not a size, not owner/name, not a folder) failed with exit 1 after
    torch's ~5 s import. Expected: exit 2 at once, torch never imported."""
    proc, modules = run_with_importtime("generate", "-m", "huge", "Hi")
    one_line_error(proc, 2, "huge")
    assert not imports_torch(modules)


@pytest.mark.parametrize("path", ["./nope", "{tmp}/nope/x"])
def test_missing_folder_says_no_such_folder_before_torch(tmp_path: Path, path: str) -> None:
    """User saw: `-m ./nope` answered "unknown model './nope': use small, medium, ...", as if
    the name were misspelled, after importing torch. Expected: it says there is no such
    folder, before torch is imported."""
    path = path.format(tmp=tmp_path)
    proc, modules = run_with_importtime("generate", "-m", path, "Hi", cwd=tmp_path)
    assert proc.returncode in (1, 2), proc.stderr
    one_line_error(proc, proc.returncode, "no such folder")
    assert not imports_torch(modules)


# -- 11. help -------------------------------------------------------------------------------------


def help_text(*command: str) -> str:
    proc = gpt2(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def panels(text: str) -> dict[str, str]:
    """Each option of a Rich help screen -> the title of the panel it is listed in."""
    found: dict[str, str] = {}
    panel = ""
    for line in text.splitlines():
        title = re.match(r"\s*╭─ (.+?) ─", line)
        if title:
            panel = title.group(1)
        option = re.match(r"\s*│\s+(--[\w-]+)", line)
        if option:
            found[option.group(1)] = panel
    return found


@pytest.mark.parametrize("command", ["generate", "repl", "score"])
def test_help_shows_no_python_types(command: str) -> None:
    """User saw: a type after every flag: `--json <bool>`, `--stop <list[str]>`. Expected:
    nothing after a flag that takes no value, and no Python type names."""
    lines = help_text(command).splitlines()
    typed = [line.strip("│ ") for line in lines if "<bool>" in line or "[str]" in line]
    assert typed == [], typed[:3]


def test_help_on_a_pipe_has_no_trailing_spaces() -> None:
    """User saw: help piped to a file or `less` had every line padded to 80 columns with
    spaces. Expected: no line ends in a space."""
    text = help_text("generate")
    padded = [line for line in text.splitlines() if line != line.rstrip()]
    assert padded == [], f"{len(padded)} lines end in spaces, e.g. {padded[1]!r}"


def test_help_panels_fit_their_options() -> None:
    """User saw: `repl --mode` listed under Sampling and `score --stride` / `--bos` under
    Probabilities. Expected: panels of their own (e.g. Session, Scoring)."""
    assert panels(help_text("repl")).get("--mode") != "Sampling"
    score = panels(help_text("score"))
    assert "Probabilities" not in (score.get("--stride"), score.get("--bos")), score


def test_gpt2_alone_is_help_with_0_or_usage_with_2() -> None:
    """User saw: `gpt2` alone printed the whole help on stdout and exited 2 (an error code for
    a success's output). Expected: help on stdout with exit 0, or usage on stderr with 2."""
    proc = gpt2()
    if proc.returncode == 0:
        assert "Usage" in proc.stdout
    else:
        assert proc.returncode == 2, proc.returncode
        assert proc.stdout == "", f"exit 2 with stdout {proc.stdout.strip()[:60]!r}..."
        assert "Usage" in proc.stderr


# -- 13. flags silently ignored -------------------------------------------------------------------


def warnings_in(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("gpt2: warning: ")]


def test_echo_with_json_warns(tiny_checkpoint: Path) -> None:
    """User saw: `--echo --json` silently dropped --echo. Expected: a warning naming it."""
    proc = gpt2("generate", "-m", str(tiny_checkpoint), "--json", "--echo", "-n", "2", "Hi")
    assert [w for w in warnings_in(proc) if "--echo" in w], f"no warning: {proc.stderr!r}"


def test_revision_with_a_local_folder_warns(tiny_checkpoint: Path) -> None:
    """User saw: `--revision v1` with a local folder was silently ignored. Expected: a warning
    naming --revision."""
    proc = gpt2("generate", "-m", str(tiny_checkpoint), "--revision", "v1", "-n", "2", "Hi")
    assert [w for w in warnings_in(proc) if "--revision" in w], f"no warning: {proc.stderr!r}"


# -- 14. absurd temperatures ----------------------------------------------------------------------


def test_temperature_beyond_float32_keeps_top_k_meaningful(tiny_checkpoint: Path) -> None:
    """User saw: `-t 1e39` (beyond float32's range) made every logit equal, so top-k kept
    whatever tokens torch.topk returns for ties (ids 0-39 with GPT-2's vocabulary) and sampled
    among them. Expected: refused as a usage error (exit 2 naming --temperature), or clamped,
    so every sampled token is still among the model's top-k."""
    proc = gpt2(
        "generate",
        *("-m", str(tiny_checkpoint), "-t", "1e39", "-k", "20", "--top-candidates", "20"),
        *("-n", "12", "--seed", "1", "--json", "Hello"),
    )
    if proc.returncode == 2:
        one_line_error(proc, 2, "--temperature")
        return
    assert proc.returncode == 0, proc.stderr
    tokens = json.loads(proc.stdout)["tokens"]  # each with the model's 20 likeliest ("top")
    outside = [t["id"] for t in tokens if t["id"] not in {c["id"] for c in t["top"]}]
    assert outside == [], f"sampled outside the top 20: {outside}"


# -- 15. JSON on an ASCII stream ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["generate", "score"])
def test_json_on_an_ascii_stream_is_valid_and_lossless(
    tiny_checkpoint: Path, tmp_path: Path, command: str
) -> None:
    """User saw: with PYTHONIOENCODING=ascii, --json turned every non-ASCII character into `?`.
    Expected: valid JSON that keeps every character (\\u escapes where the stream cannot encode
    them). The model's folder name is non-ASCII, and comes back in the `model` field."""
    model = shutil.copytree(tiny_checkpoint, tmp_path / "modèle-東京")
    args = ["-n", "3", "--seed", "1"] if command == "generate" else []
    proc = gpt2(
        command, "-m", str(model), *args, "--json", "Café", env={"PYTHONIOENCODING": "ascii"}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.isascii(), proc.stdout
    assert json.loads(proc.stdout)["model"] == str(model), proc.stdout


# -- 17. one validation for the API and the CLI; REPL input ---------------------------------------


def test_api_refuses_an_empty_stop_string(tiny_checkpoint: Path) -> None:
    """User saw: `--stop ""` is a usage error on the command line, but the Python API took
    `stop=[""]` silently. Expected: the same validation, a ParamError (a ValueError) naming
    stop."""
    from gpt2cli import SamplingParams, complete, generate, load_model

    lm = load_model(tiny_checkpoint, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="stop"):
        list(generate(lm, "Hi", SamplingParams(seed=1), max_tokens=2, stop=[""]))
    with pytest.raises(ValueError, match="stop"):
        complete(lm, "Hi", SamplingParams(seed=1), max_tokens=2, stop=["\n", ""])


def test_repl_warns_on_invalid_utf8_like_generate(tiny_checkpoint: Path) -> None:
    """User saw: `generate` warns when stdin is not valid UTF-8, the REPL silently replaced the
    bad bytes. Expected: the REPL warns too (and still answers)."""
    proc = gpt2("repl", "-m", str(tiny_checkpoint), "-n", "2", "--seed", "1", input=b"caf\xe9\n")
    assert proc.returncode == 0, proc.stderr
    warned = [w for w in proc.stderr.splitlines() if w.startswith("gpt2: warning: ")]
    assert [w for w in warned if "UTF-8" in w], f"no warning: {proc.stderr!r}"
