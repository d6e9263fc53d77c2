"""Watching the model pick tokens: `generate --show-probs` (colours on a terminal, logprobs in
JSON), `--top-candidates` tables, checked against transformers' logits on the tiny checkpoint;
no colour on a pipe or with NO_COLOR."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pexpect
import pytest
import torch

from gpt2cli.runtime.generate import complete, generate
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.runtime.scoring import Candidate, CandidateStep
from gpt2cli.types import Delta, SamplingParams
from gpt2cli.ui.probs import LEVELS, TokenColourer, candidate_lines, prob_style
from gpt2cli.ui.wrap import visible
from tests.support.cli import (
    ESCAPE,
    assert_one_line_error,
    gpt2,
    gpt2_argv,
    spawn_in_terminal,
    squeeze,
)

COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;5;\d+)m")  # a foreground colour
ROW = re.compile(r'^\s+(\d+)\s+("(?:[^"\\]|\\.)*")\s+(\d+)\s+(\d+\.\d\d)%')


@pytest.fixture(scope="module")
def lm(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def oracle(tiny_checkpoint: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint)).eval()


def reference_logprobs(oracle, ids: list[int]) -> torch.Tensor:
    """log_softmax of transformers' logits at every position: row i predicts ids[i + 1]."""
    with torch.no_grad():
        return torch.log_softmax(oracle(torch.tensor([ids])).logits[0].double(), dim=-1)


def run(ckpt: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return gpt2("generate", "-m", str(ckpt), "--device", "cpu", *args, **kwargs)


def test_json_tokens_carry_the_reference_logprobs(lm, oracle, tiny_checkpoint: Path) -> None:
    prompt = "Once upon a time"
    args = ["-n", "12", "-s", "4", "--samples", "2", "--ignore-eos", "--json", "--show-probs"]
    proc = run(tiny_checkpoint, *args, "--top-candidates", "5", prompt)
    assert proc.returncode == 0, proc.stderr
    expected = complete(
        lm, prompt, SamplingParams(seed=4), max_tokens=12, samples=2, ignore_eos=True
    )
    context = lm.tokenizer.encode(prompt)
    for line, reference in zip(proc.stdout.splitlines(), expected, strict=True):
        record = json.loads(line)
        assert record["text"] == reference.text  # the text is unchanged by --show-probs
        tokens = record["tokens"]
        assert [t["id"] for t in tokens] == reference.token_ids
        logp = reference_logprobs(oracle, context + reference.token_ids)[len(context) - 1 :]
        for step, token in enumerate(tokens):
            assert token["text"] == lm.tokenizer.token_text(token["id"])
            assert token["logprob"] == pytest.approx(logp[step, token["id"]].item(), abs=1e-4)
            best = torch.topk(logp[step], 5)
            assert [t["id"] for t in token["top"]] == best.indices.tolist()
            assert [t["logprob"] for t in token["top"]] == pytest.approx(
                best.values.tolist(), abs=1e-4
            )


def parse_tables(text: str) -> list[dict]:
    """The plain candidate tables: title, rows (rank, text, id, percent), the sampled ids, and
    after how many rows the cut line is drawn."""
    tables = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines or not lines[0].startswith(("step ", "next token")):
            continue
        table: dict = {"title": lines[0], "rows": [], "sampled": [], "cut_after": None}
        for line in lines[1:]:
            if "cut --" in line:
                table["cut_after"] = len(table["rows"])
            elif m := ROW.match(line):
                rank, label, token, pct = m.groups()
                table["rows"].append((int(rank), json.loads(label), int(token), float(pct)))
                if line.endswith("<- sampled"):
                    table["sampled"].append(int(token))
        tables.append(table)
    return tables


def test_candidate_tables_list_the_most_likely_tokens(lm, oracle, tiny_checkpoint: Path) -> None:
    prompt = "The quick brown"
    args = ["-n", "6", "-s", "2", "-k", "3", "--ignore-eos", "--top-candidates", "5"]
    proc = run(tiny_checkpoint, *args, "--explain-steps", "4", prompt)
    assert proc.returncode == 0, proc.stderr
    assert ESCAPE not in proc.stdout
    params = SamplingParams(seed=2, top_k=3)
    (reference,) = complete(lm, prompt, params, max_tokens=6, ignore_eos=True)
    assert proc.stdout.startswith(reference.text + "\n\n")  # the normal output, unchanged
    tables_text = proc.stdout[len(reference.text) :]
    tables = parse_tables(tables_text)
    assert len(tables) == 4  # --explain-steps
    context = lm.tokenizer.encode(prompt)
    logp = reference_logprobs(oracle, context + reference.token_ids)[len(context) - 1 :]
    for step, table in enumerate(tables):
        best = torch.topk(logp[step], 5)
        assert [r[0] for r in table["rows"]] == [1, 2, 3, 4, 5]
        assert [r[2] for r in table["rows"]] == best.indices.tolist()
        assert [r[1] for r in table["rows"]] == [lm.tokenizer.token_text(i) for i in best.indices]
        expected_pct = [100 * math.exp(v) for v in best.values.tolist()]
        assert [r[3] for r in table["rows"]] == pytest.approx(expected_pct, abs=0.006)
        assert table["sampled"] == [reference.token_ids[step]]  # top-k 3: always among them
        assert table["cut_after"] == 3  # the top-k cut, drawn after the third row
        assert table["title"].startswith(f"step {step + 1}: sampled ")


def test_candidate_lines_show_a_sampled_token_further_down() -> None:
    cands = [Candidate(i, f"t{i}", p, s) for i, p, s in [(7, 0.5, 0.6), (8, 0.3, 0.4), (9, 0.1, 0)]]
    chosen = Candidate(42, " far", 0.001, 0.002)
    step = CandidateStep(0, cands, chosen, 17, kept=2, cut="top-p")
    lines = candidate_lines(step)
    assert lines[0] == 'step 1: sampled " far" (rank 17, p 0.10%)'
    assert any("-- top-p cut --" in line for line in lines)
    assert any(line.strip() == "..." for line in lines)
    last = [line for line in lines if ROW.match(line)][-1]
    assert ROW.match(last).groups()[:3] == ("17", '" far"', "42") and last.endswith("<- sampled")
    assert "cut" in [line for line in lines if ROW.match(line)][2]
    assert lines[-1] == "top-p kept 2 tokens for sampling"


def test_colourer_follows_tokens_through_held_text(lm: LoadedModel) -> None:
    """Text held back (a possible stop string, a split character) keeps its token's colour."""
    events = generate(
        lm, "Hello", SamplingParams(seed=5), max_tokens=40, stop=["zz", "e "], logprobs=True
    )
    deltas = [e for e in events if isinstance(e, Delta)]
    colourer = TokenColourer(lm.tokenizer)
    spans = [s for d in deltas for s in colourer.spans(d)]
    assert "".join(text for text, _ in spans) == "".join(d.text for d in deltas)
    # every span's style is the colour of a token that was sampled
    styles = {prob_style(math.exp(d.logprob)) for d in deltas if d.token_id is not None}
    assert {style for text, style in spans if text} <= styles | {None}

    # by hand: the first token's text is only released with the second, each keeps its colour
    a, b = lm.tokenizer.encode("a")[0], lm.tokenizer.encode("b")[0]
    colourer.reset()
    assert colourer.spans(Delta(0, "", a, math.log(0.9))) == []
    assert colourer.spans(Delta(0, "ab", b, math.log(0.01))) == [
        ("a", prob_style(0.9)),
        ("b", prob_style(0.01)),
    ]
    assert prob_style(0.9) != prob_style(0.01) and len({c for *_, c in LEVELS}) == len(LEVELS)


def spawn_terminal(ckpt: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return spawn_in_terminal("generate", "-m", str(ckpt), "--device", "cpu", *args, env=env)


def test_terminal_colours_tokens_with_a_legend(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    args = ["-n", "30", "-s", "8", "--ignore-eos", "--show-probs"]
    raw = spawn_terminal(
        tiny_checkpoint, *args, "--top-candidates", "3", "--explain-steps", "1", "Hi"
    )
    (reference,) = complete(lm, "Hi", SamplingParams(seed=8), max_tokens=30, ignore_eos=True)
    assert "token probability:" in raw and "■ <5%" in raw  # the legend
    text_part = raw[raw.index("\x1b[2mHi") : raw.index(f"{reference.completion_tokens} tokens ·")]
    assert COLOUR.search(text_part), "generated tokens should be coloured"
    assert squeeze(re.sub(r"\x1b\[[0-9;]*[mGK]", "", text_part)) == squeeze(
        visible("Hi" + reference.text)
    )
    assert "step 1: sampled" in raw and "◀ sampled" in raw  # the Rich candidate table


def test_no_colour_with_no_color_or_on_a_pipe(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    raw = spawn_terminal(
        tiny_checkpoint, "-n", "20", "-s", "9", "--show-probs", "Hi", env={"NO_COLOR": "1"}
    )
    assert not COLOUR.search(raw) and "token probability" not in raw
    proc = run(tiny_checkpoint, "-n", "20", "-s", "9", "--show-probs", "Hi")
    assert proc.returncode == 0 and proc.stderr == ""
    (reference,) = complete(lm, "Hi", SamplingParams(seed=9), max_tokens=20)
    assert proc.stdout == reference.text + "\n"  # exactly the normal output: no escape codes


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--top-candidates", "0"], "--top-candidates"),
        (["--top-candidates", "21"], "--top-candidates"),
        (["--explain-steps", "0"], "--explain-steps"),
    ],
)
def test_bad_probability_flags_exit_2(args: list[str], flag: str) -> None:
    assert_one_line_error(gpt2("generate", "-m", "./no-such-model", *args, "Hi"), 2, flag)


def test_repl_explain_and_probs_piped(lm, oracle, tiny_checkpoint: Path) -> None:
    """/explain shows the next token's candidates (on stderr, like every REPL message) for the
    running text or the given text; /probs is refused politely on a pipe."""
    script = "Hello\n/explain\n/explain  world\n/probs on\n/probs maybe\n/probs off\nHi\n"
    proc = gpt2("repl", "-m", str(tiny_checkpoint), "--device", "cpu", "-n", "5", "-s", "1",
                "-k", "3", input=script)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    params = SamplingParams(seed=1, top_k=3)
    first = complete(lm, "Hello", params, max_tokens=5)[0].text
    assert proc.stdout == first + "\n" + complete(lm, "Hi", params, max_tokens=5)[0].text + "\n"
    assert ESCAPE not in proc.stdout + proc.stderr
    tables = parse_tables(proc.stderr)
    assert [t["title"] for t in tables] == ["next token", "next token"]
    for table, text in zip(tables, ["Hello" + first, " world"]):
        ids = lm.tokenizer.encode(text)
        best = torch.topk(reference_logprobs(oracle, ids)[-1], 10)
        assert [r[2] for r in table["rows"]] == best.indices.tolist()
        expected_pct = [100 * math.exp(v) for v in best.values.tolist()]
        assert [r[3] for r in table["rows"]] == pytest.approx(expected_pct, abs=0.006)
        assert table["cut_after"] == 3 and table["sampled"] == []
    assert "colour terminal only" in proc.stderr and "usage: /probs on|off" in proc.stderr


def test_repl_probs_toggle_on_a_terminal(tiny_checkpoint: Path) -> None:
    argv = gpt2_argv("repl", "-m", str(tiny_checkpoint), "--device", "cpu", "-n", "8", "-s", "3")
    env = {**os.environ, "TERM": "xterm-256color"}
    child = pexpect.spawn(argv[0], argv[1:], env=env, encoding="utf-8", dimensions=(40, 120))
    child.expect_exact(">>> ", timeout=60)
    child.sendline("/probs on")
    child.expect_exact("token probability:")
    child.expect_exact(">>> ")
    child.sendline("Hello")
    child.expect(r"tokens · .* seed 3")
    assert COLOUR.search(child.before), "tokens coloured with /probs on"
    child.expect_exact(">>> ")
    child.sendline("/probs off")
    child.expect_exact("probabilities: off")
    child.expect_exact(">>> ")
    child.sendline("Hello")
    child.expect(r"tokens · .* seed 3")
    assert not COLOUR.search(child.before.split("Hello", 1)[1]), "no colour with /probs off"
    child.expect_exact(">>> ")
    child.sendline("/explain")
    child.expect_exact("next token")
    child.expect_exact("kept 40 tokens for sampling")
    child.expect_exact(">>> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF, timeout=30)
