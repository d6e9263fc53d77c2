"""Reliability of `gpt2 score` (issue 10, item 8): perplexities beyond float range, plurals, and
progress on a terminal for long texts."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tests.support.checkpoints import CORPUS, edited_checkpoint
from tests.support.cli import gpt2, spawn_in_terminal


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


# -- 8. score: huge perplexities, plurals, progress -----------------------------------------------


def test_score_perplexity_beyond_float_range_is_inf(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """User saw: `unexpected OverflowError: math range error` when the mean NLL exceeds 709
    nats (exp overflows). Expected: the score prints, with the perplexity as `inf` (or in
    scientific notation)."""
    model = constant_logits(tiny_checkpoint, tmp_path / "sure", margin=1000.0)
    proc = gpt2("score", "-m", str(model), "The quick brown fox")
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"perplexity (inf|\d\.\d+e\+\d+)", proc.stdout, re.I), proc.stdout


def test_score_prints_a_huge_perplexity_in_scientific_notation(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """User saw: a perplexity of e^300 printed as a 131-digit number. Expected: `inf` or
    scientific notation, never a run of dozens of digits."""
    model = constant_logits(tiny_checkpoint, tmp_path / "sure", margin=300.0)
    proc = gpt2("score", "-m", str(model), "The quick brown fox")
    assert proc.returncode == 0, proc.stderr
    assert "perplexity" in proc.stdout, proc.stdout
    assert not re.search(r"\d{20}", proc.stdout), proc.stdout


def test_score_of_one_token_says_1_token(tiny_checkpoint: Path) -> None:
    """User saw: `1 tokens scored`. Expected: `1 token scored`."""
    proc = gpt2("score", "-m", str(tiny_checkpoint), "a")  # one token
    assert proc.returncode == 0, proc.stderr
    assert "1 token scored" in proc.stdout and "1 tokens" not in proc.stdout, proc.stdout


def test_long_scoring_shows_progress_on_a_terminal(tiny_checkpoint: Path) -> None:
    """User saw: scoring a long text (130 windows, seconds) showed nothing until the result.
    Expected: a Rich progress bar on the terminal meanwhile."""
    text = " ".join(CORPUS.split()) * 20  # ~8000 tokens: 130 windows of 128
    shown = spawn_in_terminal("score", "-m", str(tiny_checkpoint), text)
    assert "windows of 128" in shown, shown[-500:]
    assert "━" in shown or re.search(r"\b\d{1,3}%", shown), shown[-500:]
