"""`gpt2 score`: perplexity and per-token logprobs against transformers on the tiny checkpoint
(128-token window), for a text inside the window and one scored with a sliding window."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt2cli.runtime.loader import load_model
from gpt2cli.runtime.scoring import score_ids, score_text
from gpt2cli.runtime.sliding import slide
from tests.support.cli import ESCAPE, assert_one_line_error, gpt2, spawn_in_terminal

SHORT = "The quick brown fox jumps over the lazy dog."
LONG = "Once upon a time, in a land far away, there lived a curious student. " * 20
COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;5;\d+)m")


@pytest.fixture(scope="module")
def oracle(tiny_checkpoint: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint)).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path):
    from gpt2cli.text.tokenizer import Tokenizer

    return Tokenizer.from_folder(tiny_checkpoint)


def reference_nlls(oracle, ids: list[int], window: int, stride: int) -> list[float]:
    """The Hugging Face perplexity guide's sliding window, with transformers' own loss: windows
    start every `stride` tokens, and only tokens not scored by an earlier window count."""
    total, counts, prev_end = [], 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        trg_len = end - prev_end
        input_ids = torch.tensor([ids[begin:end]])
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = oracle(input_ids, labels=target).loss.item()  # mean over shifted labels
        n = int((target[:, 1:] != -100).sum())
        total.append(loss * n)
        counts += n
        prev_end = end
        if end == len(ids):
            break
    return [math.fsum(total), counts]


def score(ckpt: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return gpt2("score", "-m", str(ckpt), "--device", "cpu", *args, **kwargs)


def test_short_text_matches_transformers(oracle, tokenizer, tiny_checkpoint: Path) -> None:
    proc = score(tiny_checkpoint, "--json", "--tokens", SHORT)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    ids = [tokenizer.eot_id, *tokenizer.encode(SHORT)]  # scored after <|endoftext|>
    assert len(ids) < 128 and record["windows"] == 1 and record["bos"] is True
    with torch.no_grad():
        nll = oracle(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        logp = torch.log_softmax(oracle(torch.tensor([ids])).logits[0], dim=-1)
    assert record["tokens_scored"] == len(ids) - 1
    assert record["nll"] == pytest.approx(nll, rel=1e-5)
    assert record["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert [t["id"] for t in record["tokens"]] == ids[1:]
    expected = [logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert [t["logprob"] for t in record["tokens"]] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("stride", "bos"), [(48, False), (127, True)])
def test_long_text_sliding_window_matches_transformers(
    oracle, tokenizer, tiny_checkpoint: Path, stride: int, bos: bool
) -> None:
    ids = [tokenizer.eot_id] * bos + tokenizer.encode(LONG)
    assert len(ids) > 2 * 128
    flag = "--bos" if bos else "--no-bos"
    proc = score(tiny_checkpoint, "--json", flag, "--stride", str(stride), "-", input=LONG)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    total, count = reference_nlls(oracle, ids, 128, stride)
    assert count == len(ids) - 1  # every token but the first (BOS or not), each once
    assert record["tokens_scored"] == count and record["stride"] == stride
    assert record["windows"] > 2
    assert record["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_stride_of_a_whole_window_matches_transformers(
    oracle, tokenizer, tiny_checkpoint: Path
) -> None:
    """Windows that do not overlap: the first token of each has no context and is not scored,
    as in the Hugging Face guide's loop."""
    ids = [tokenizer.eot_id] + tokenizer.encode(LONG)
    proc = score(tiny_checkpoint, "--json", "--stride", "128", "-", input=LONG)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    total, count = reference_nlls(oracle, ids, 128, 128)
    windows = -(-len(ids) // 128)
    assert record["windows"] == windows and count == len(ids) - windows
    assert record["tokens_scored"] == count
    assert record["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_each_token_scored_once_with_its_window_context(tiny_checkpoint: Path) -> None:
    lm = load_model(str(tiny_checkpoint), device="cpu")
    ids = lm.tokenizer.encode(LONG)[:300]
    logprobs, windows = score_ids(lm, ids, stride=100)
    assert logprobs[0] is None and all(lp is not None for lp in logprobs[1:])
    assert windows == 3  # windows at 0, 100 and 200 reach the end (300)
    # token 200 is scored in the window starting at 100: 100 tokens of context
    alone, _ = score_ids(lm, ids[100:201], stride=100)
    assert logprobs[200] == pytest.approx(alone[-1], abs=1e-5)


def test_tokens_table_on_a_pipe_is_plain(tokenizer, tiny_checkpoint: Path) -> None:
    proc = score(tiny_checkpoint, "--tokens", input=SHORT)
    assert proc.returncode == 0, proc.stderr
    assert ESCAPE not in proc.stdout and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["#", "token", "id", "logprob", "p", "bar"]
    ids = tokenizer.encode(SHORT)
    assert len(lines) == 1 + len(ids) + 1
    assert [int(line.split()[0]) for line in lines[1:-1]] == list(range(len(ids)))
    assert lines[1].split()[1:3] == [json.dumps(tokenizer.token_text(ids[0])), str(ids[0])]
    assert lines[-1].startswith("perplexity ") and f"{len(ids)} tokens scored" in lines[-1]


def test_terminal_tokens_coloured_unless_no_color(tiny_checkpoint: Path) -> None:
    args = ["score", "-m", str(tiny_checkpoint), "--device", "cpu", "--tokens", SHORT]
    assert COLOUR.search(spawn_in_terminal(*args))
    plain = spawn_in_terminal(*args, env={"NO_COLOR": "1"})
    assert not COLOUR.search(plain) and '" quick"' in plain and "perplexity" in plain


def test_errors(tiny_checkpoint: Path) -> None:
    assert_one_line_error(score(tiny_checkpoint, "--stride", "0", "x"), 2, "--stride")
    assert_one_line_error(score(tiny_checkpoint, "--stride", "129", "x"), 2, "--stride", "128")
    assert_one_line_error(score(tiny_checkpoint), 2, "nothing to score")


def test_score_help_does_not_import_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpt2cli", "score", "--help"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert "Usage" in proc.stdout and "--stride" in proc.stdout
    assert not re.search(r"\|\s+torch(\.|$)", proc.stderr, re.M)


def one_window_at_a_time(lm, ids: list[int], stride: int) -> list[float | None]:
    """The plain loop: one full forward pass per window, every logit computed."""
    window, out, done = lm.context_length, [None] * len(ids), 1
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        logits = lm.model(torch.tensor([ids[begin:end]]), lm.model.new_cache(1), all_logits=True)
        logp = torch.log_softmax(logits[0], dim=-1)
        for pos in range(max(done, begin + 1), end):
            out[pos] = logp[pos - begin - 1, ids[pos]].item()
        done = end
        if end == len(ids):
            break
    return out


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("stride", [1, 7, 64, 127, 128])
def test_windows_batched_in_passes_score_as_one_at_a_time(
    tiny_checkpoint: Path, stride: int, workers: int
) -> None:
    """Several windows per pass (and the output head on the scored rows only, the last block
    on the rows that reach it), passes on one thread or on several at once, give every token
    the logprob the plain one-window-per-pass loop gives, in order."""
    lm = load_model(str(tiny_checkpoint), device="cpu")
    ids = lm.tokenizer.encode(LONG)[: 128 + 3 * stride + 5]
    expected = one_window_at_a_time(lm, ids, stride)
    threads = torch.get_num_threads()
    for per_pass in (128, 3 * 128, 4096):
        got = [None] * len(ids)
        passes = 0
        last = 0
        for part in slide(
            lm.model, torch.tensor(ids), 128, stride, tokens_per_pass=per_pass, workers=workers
        ):
            assert part.positions[0] > last  # in order
            last = int(part.positions[-1])
            passes += 1
            for pos, lp in zip(part.positions.tolist(), part.logprobs.tolist()):
                assert got[pos] is None  # each token once
                got[pos] = lp
        assert [g is None for g in got] == [e is None for e in expected]
        assert [g for g in got if g is not None] == pytest.approx(
            [e for e in expected if e is not None], abs=1e-5
        )
        assert passes > 1 or per_pass == 4096
        assert torch.get_num_threads() == threads


def test_full_windows_are_shared_evenly_between_workers(tiny_checkpoint: Path) -> None:
    """Two full windows and a short last one on 2 workers: a pass each, not both full ones in
    one pass (one thread busy, the other idle after the short window)."""
    lm = load_model(str(tiny_checkpoint), device="cpu")
    ids = torch.arange(2 * 128 + 10) % 50
    sizes = [len(p.logprobs) for p in slide(lm.model, ids, 128, 128, workers=2)]
    assert sizes == [127, 127, 9]
    one = [len(p.logprobs) for p in slide(lm.model, ids, 128, 128, workers=1)]
    assert one == [254, 9]  # one thread: windows are still packed into its passes


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_head_reduced_by_vocabulary_slices_as_log_softmax(
    tiny_checkpoint: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scored rows' log-probabilities, merged over slices of the vocabulary and blocks of
    rows, are the log-softmax of the whole head's logits at the targets, wherever the target
    falls: first or last id of a slice, the last (shorter) slice."""
    from gpt2cli.runtime import sliding

    columns = 96  # the tiny vocabulary (1000) in 11 slices, the last of 40
    monkeypatch.setattr(sliding, "HEAD_COLUMNS", columns)
    lm = load_model(str(tiny_checkpoint), device="cpu", dtype=dtype)
    vocab = lm.model.config.vocab_size
    assert vocab % columns and vocab > 4 * columns
    edges = [0, columns - 1, columns, 2 * columns + 5, vocab - vocab % columns, vocab - 1]
    targets = torch.tensor(edges + list(range(7, vocab, vocab // 9)))
    ids = torch.tensor([lm.tokenizer.encode(LONG)[: len(targets)]])
    hidden = lm.model.hidden_states(ids)[0]
    expected = torch.log_softmax(lm.model.head(hidden), -1).gather(-1, targets[:, None])[:, 0]
    width = columns if lm.model.head_sliceable else vocab  # int8: the whole head at once
    for elements in (width * 4, 1 << 23):  # blocks of 4 rows, or all rows at once
        got = sliding._logprobs(lm.model, hidden, targets, elements)
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_last_block_on_the_later_rows_only(tiny_checkpoint: Path) -> None:
    """hidden_states(ids, skip): the rows after `skip` as the whole pass gives them."""
    lm = load_model(str(tiny_checkpoint), device="cpu")
    ids = torch.tensor([lm.tokenizer.encode(LONG)[:128], lm.tokenizer.encode(LONG)[5:133]])
    full = lm.model.hidden_states(ids)
    for skip in (1, 50, 127):
        tail = lm.model.hidden_states(ids, skip)
        assert tail.shape == (2, 128 - skip, full.shape[-1])
        torch.testing.assert_close(tail, full[:, skip:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="skip"):
        lm.model.hidden_states(ids, 128)


def test_passes_on_workers_stop_cleanly(tiny_checkpoint: Path) -> None:
    """Leaving the loop early, or a pass that fails, leaves torch's thread count as it was;
    the failure reaches the caller."""
    lm = load_model(str(tiny_checkpoint), device="cpu")
    ids = torch.tensor(lm.tokenizer.encode(LONG)[:600])
    threads = torch.get_num_threads()
    parts = slide(lm.model, ids, 128, 16, tokens_per_pass=128, workers=2)
    next(parts)
    parts.close()
    assert torch.get_num_threads() == threads

    class Broken(RuntimeError):
        pass

    calls = []

    def hidden_states(idx: torch.Tensor, skip: int = 0) -> torch.Tensor:
        calls.append(skip)
        if len(calls) == 3:
            raise Broken("pass 3")
        return real(idx, skip)

    real = lm.model.hidden_states
    lm.model.hidden_states = hidden_states  # type: ignore[method-assign]
    try:
        with pytest.raises(Broken):
            list(slide(lm.model, ids, 128, 16, tokens_per_pass=128, workers=2))
    finally:
        del lm.model.hidden_states
    assert torch.get_num_threads() == threads
    assert len(calls) < len(range(0, 600 - 128, 16)) + 1  # the passes after it not all started


def scoring_script(checkpoint: Path, setup: str, consume: str) -> str:
    """A child's script: load `checkpoint`, run `setup`, then `consume` the passes (`parts`)
    of 600 tokens scored by 2 workers."""
    return f"""
import torch
from gpt2cli.runtime.loader import load_model
from gpt2cli.runtime.sliding import slide
lm = load_model({str(checkpoint)!r}, device="cpu")
ids = torch.arange(600) % 50
{setup}
parts = slide(lm.model, ids, 128, 16, tokens_per_pass=128, workers=2)
{consume}
"""


def test_ctrl_c_does_not_wait_for_passes_in_flight(tiny_checkpoint: Path) -> None:
    """Ctrl-C while passes run on the worker threads ends the process at once: the workers
    are not joined at exit (each pass here would take a minute)."""
    code = scoring_script(
        tiny_checkpoint,
        """
import time
real = lm.model.hidden_states
def slow(idx, skip=0):
    time.sleep(60)
    return real(idx, skip)
lm.model.hidden_states = slow
print("scoring", flush=True)
""",
        "list(parts)",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"scoring\n"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - start < 10
    assert b"KeyboardInterrupt" in err


def test_a_script_that_scored_side_by_side_exits_cleanly(tiny_checkpoint: Path) -> None:
    """Once the passes are done, the worker threads are joined: a daemon thread still ending
    while the interpreter finalized aborted the process (exit 134) in 12 of 20 runs."""
    code = scoring_script(
        tiny_checkpoint, "torch.set_num_threads(2)", "print(sum(len(p.logprobs) for p in parts))"
    )
    for _ in range(5):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert (done.returncode, done.stdout, done.stderr) == (0, "599\n", "")


def test_verbose_says_how_windows_are_scored(tiny_checkpoint: Path) -> None:
    two = score(tiny_checkpoint, "-v", "--threads", "2", SHORT)
    assert two.returncode == 0, two.stderr
    assert "2 windows scored side by side, 1 thread each" in two.stderr
    one = score(tiny_checkpoint, "-v", "--threads", "1", SHORT)
    assert one.returncode == 0 and "side by side" not in one.stderr


def test_without_tokens_nothing_per_token_is_kept(tiny_checkpoint: Path) -> None:
    lm = load_model(str(tiny_checkpoint), device="cpu")
    seen = []
    result = score_text(lm, LONG, stride=32, tokens=False, progress=lambda *a: seen.append(a))
    full = score_text(lm, LONG, stride=32)
    assert result.tokens is None and len(full.tokens) == len(lm.tokenizer.encode(LONG))
    assert result.nll == pytest.approx(full.nll, rel=1e-9) and result.scored == full.scored
    assert seen[0] == (0, result.windows) and seen[-1] == (result.windows, result.windows)
