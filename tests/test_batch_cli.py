"""`gpt2 batch` end to end, as a user runs it: a file of prompts in, one JSON line per prompt
out; rows as `generate` gives them; the same result whatever the batch size, the workers or an
interruption (kill -9, Ctrl-C) and resume; bad rows and bad files; progress on stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gpt2cli.runtime.generate import complete
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.types import GenerationConfig, SamplingParams
from tests.support.checkpoints import CORPUS
from tests.support.cli import assert_one_line_error, gpt2, gpt2_argv

TIMING = ("time_to_first_token_s", "tokens_per_s")
WORDS = CORPUS.split()


def prompts(n: int, seed: int = 0) -> list[str]:
    """n prompts of 1 to ~40 words (mixed lengths), cut from the checkpoints' corpus."""
    out = []
    for i in range(n):
        start = (i * 37 + seed * 11) % len(WORDS)
        length = 1 + (i * 13 + seed) % 40
        out.append(" ".join(WORDS[start : start + length]))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(record: dict) -> dict:
    """A row's result: everything but the timings (which differ from run to run)."""
    if "samples" in record:
        return {**record, "samples": [without_timing(s) for s in record["samples"]]}
    return {k: v for k, v in record.items() if k not in TIMING}


def by_id(records: list[dict]) -> dict:
    return {r["id"]: without_timing(r) for r in records}


def batch(ckpt: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return gpt2("batch", "-m", str(ckpt), "--device", "cpu", *args, **kwargs)


@pytest.fixture(scope="module")
def lm(tiny_checkpoint: Path):
    """The tiny model in this process, on one thread like the `gpt2` the tests start (two
    threads on two busy cores are many times slower for a model this small)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(tiny_checkpoint, device="cpu")
    torch.set_num_threads(threads)


def test_one_line_per_row_with_generates_fields(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Rows with their own settings, bad rows, a prompt too long for the window; a row's seed
    repeats it with `gpt2 generate --seed`; progress lines on a stderr that is not a terminal."""
    rows = [
        {"prompt": "Hello", "id": "a"},
        {"prompt": "Once upon a time there was", "id": "b", "max_tokens": 3},
        {"prompt": "", "id": 7, "temperature": 0},
        {"prompt": "The quick", "id": "many", "samples": 3},
        {"prompt": "Stop", "id": "s", "stop": ["a", "e", "o", " "], "max_tokens": 30},
        {"id": "no-prompt"},
        {"prompt": "x", "id": "hot", "temperature": -2},
        {"prompt": "word " * 200, "id": "long"},  # longer than the tiny model's window
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    proc = batch(tiny_checkpoint, str(inp), "-o", str(out), "-n", "6", "-s", "3", "-b", "2", "-v")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    records = {r["id"]: r for r in read_jsonl(out)}
    assert sorted(records, key=str) == sorted([r["id"] for r in rows], key=str)
    fields = {"id", "text", "prompt_tokens", "completion_tokens", "finish_reason", "seed"}
    fields |= {"model", "context_shifts", *TIMING}
    assert set(records["a"]) == fields
    assert records["a"]["completion_tokens"] <= 6 and records["a"]["model"] == str(tiny_checkpoint)
    assert records["b"]["completion_tokens"] <= 3
    assert records[7]["prompt_tokens"] == 1  # an empty prompt starts from <|endoftext|>
    assert records["s"]["finish_reason"] in ("stop", "eos", "length")
    assert [set(s) for s in records["many"]["samples"]] == [fields - {"id"}] * 3
    assert records["no-prompt"] == {
        "id": "no-prompt",
        "error": "line 6: prompt: missing (every row needs one)",
    }
    assert "temperature" in records["hot"]["error"] and set(records["hot"]) == {"id", "error"}
    assert "2 rows had errors" in proc.stderr and "1 prompt was cut to fit" in proc.stderr
    assert "8 rows → " in proc.stderr and "model " in proc.stderr  # -v: which model, on what
    progress = [line for line in proc.stderr.splitlines() if line.startswith("batch: ")]
    assert len(progress) == 8  # one per row for a small file (about 20 lines for a big one)
    assert progress[-1].startswith("batch: 8/8 rows · ") and " tok/s · ETA " in progress[-1]
    assert "\x1b" not in proc.stderr

    one = gpt2(
        "generate", "-m", str(tiny_checkpoint), "--device", "cpu", "--json", "-n", "6",
        "--seed", str(records["a"]["seed"]), "Hello",
    )  # fmt: skip
    row = without_timing(records["a"])
    del row["id"]
    assert without_timing(json.loads(one.stdout)) == row


def test_rows_match_generate_at_temperature_0(
    tiny_checkpoint: Path, lm: LoadedModel, tmp_path: Path
) -> None:
    """64 prompts of mixed lengths, 8 rows per forward pass: each row's tokens are what
    `generate -t 0` gives alone. Float rounding in batched products could make a near-tie go
    the other way: count how often (README: "Batched and alone")."""
    texts = prompts(64)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in texts])
    out = tmp_path / "out.jsonl"
    proc = batch(tiny_checkpoint, str(inp), "-o", str(out), "-n", "24", "-t", "0", "-b", "8")
    assert proc.returncode == 0, proc.stderr
    records = {r["id"]: r for r in read_jsonl(out)}
    assert len(records) == 64
    differ = []
    for i, prompt in enumerate(texts, start=1):
        alone = complete(lm, prompt, SamplingParams(temperature=0, seed=0), max_tokens=24)[0]
        got = records[i]
        if (got["text"], got["completion_tokens"]) != (alone.text, alone.completion_tokens):
            differ.append(i)
    print(f"batched vs alone at -t 0: {len(differ)} of 64 rows differ")
    assert len(differ) <= 2, differ  # measured: 0 of 64 here
    # ... and as the user types it: the CLI's own generate
    one = gpt2(
        "generate", "-m", str(tiny_checkpoint), "--device", "cpu", "--json", "-t", "0", "-n", "24",
        texts[39],
    )  # fmt: skip
    assert json.loads(one.stdout)["text"] == records[40]["text"]


def test_result_does_not_depend_on_batch_size_or_workers(
    tiny_checkpoint: Path, lm: LoadedModel, tmp_path: Path
) -> None:
    """Sampled rows (temperature 1), one with more samples than the batch holds: the same
    output with 1 row per pass, 4 rows per pass, and 2 worker processes."""
    rows = [{"prompt": p} for p in prompts(12, seed=1)]
    rows[3]["samples"] = 6
    rows[5]["seed"] = 99
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    results = []
    for name, args in [("b1", ["-b", "1"]), ("b4", ["-b", "4"]), ("w2", ["-b", "4", "-w", "2"])]:
        out = tmp_path / f"{name}.jsonl"
        proc = batch(tiny_checkpoint, str(inp), "-o", str(out), "-n", "12", "-s", "7", *args)
        assert proc.returncode == 0, proc.stderr
        results.append(by_id(read_jsonl(out)))
    assert results[0] == results[1] == results[2]
    many = results[0][4]["samples"]
    assert len(many) == 6 and len({s["text"] for s in many}) > 1
    # the 6 samples split over two requests are those of `generate --samples 6` with that seed
    alone = complete(
        lm,
        rows[3]["prompt"],
        SamplingParams(seed=many[0]["seed"]),
        GenerationConfig(max_tokens=12, samples=6),
    )
    assert [s["text"] for s in many] == [c.text for c in alone]
    assert results[0][6]["seed"] == 99


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until OUTPUT has `n` whole lines (the run is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


def start_batch(ckpt: Path, *args: str) -> subprocess.Popen:
    argv = gpt2_argv("batch", "-m", str(ckpt), "--device", "cpu", *args)
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_kill_9_then_resume_has_every_row_once(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # enough rows that the run is still going when the kill lands (see the Ctrl-C test below)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in prompts(60, seed=2)])
    args = ["-n", "40", "--ignore-eos", "-b", "2", "-s", "1"]
    reference = tmp_path / "reference.jsonl"
    assert batch(tiny_checkpoint, str(inp), "-o", str(reference), *args).returncode == 0

    out = tmp_path / "out.jsonl"
    proc = start_batch(tiny_checkpoint, str(inp), "-o", str(out), *args)
    wait_for_lines(out, 4, proc)
    proc.kill()
    proc.wait()
    written = out.read_bytes().count(b"\n")
    assert 4 <= written < 60
    with open(out, "ab") as f:  # as if the kill had come in the middle of a write
        f.write(b'{"id": 23, "text": "half a li')
    again = batch(tiny_checkpoint, str(inp), "-o", str(out), *args)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {written} of 60 rows" in again.stderr
    assert "dropped a torn last line" in again.stderr
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == list(range(1, 61))  # each row exactly once
    assert by_id(records) == by_id(read_jsonl(reference))

    done = batch(tiny_checkpoint, str(inp), "-o", str(out), *args)
    assert done.returncode == 0 and "all 60 rows of" in done.stderr
    assert len(read_jsonl(out)) == 60


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_keeps_finished_rows_and_exits_130(
    tiny_checkpoint: Path, tmp_path: Path, workers: str
) -> None:
    # enough rows that the run is still going when the signal lands: 40 rows of the tiny model
    # ran ~0.4 s past the first two on the 2-core Zen 5, and one full run here failed this test
    # (a run that ends before the signal exits 0), the likely cause
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in prompts(200, seed=3)])
    out = tmp_path / "out.jsonl"
    args = ["-n", "60", "--ignore-eos", "-b", "2", "-w", workers]
    proc = start_batch(tiny_checkpoint, str(inp), "-o", str(out), *args)
    wait_for_lines(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "run the same command again to resume" in err
    data = out.read_bytes()
    assert data.endswith(b"\n")
    first = [json.loads(line)["id"] for line in data.decode().splitlines()]
    assert f"interrupted: {len(first)} of 200 rows" in err
    if workers == "2":
        return  # resuming is the same with worker processes
    again = batch(tiny_checkpoint, str(inp), "-o", str(out), *args)
    assert again.returncode == 0, again.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == list(range(1, 201))


def test_ordered_text_and_stdin_inputs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    texts = prompts(9, seed=4)
    txt = tmp_path / "prompts.txt"
    txt.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out.jsonl"
    proc = batch(tiny_checkpoint, str(txt), "-o", str(out), "-n", "5", "--ordered", "-b", "3")
    assert proc.returncode == 0, proc.stderr
    from_text = read_jsonl(out)
    assert [r["id"] for r in from_text] == list(range(1, 10))  # input order

    stdin = "".join(json.dumps({"prompt": p}) + "\n" for p in texts)
    piped = batch(tiny_checkpoint, "-", "-o", "-", "-n", "5", "--ordered", input=stdin)
    assert piped.returncode == 0, piped.stderr
    from_stdin = [json.loads(line) for line in piped.stdout.splitlines()]
    assert by_id(from_stdin) == by_id(from_text)


def test_bad_files_fail_before_any_model_loads(tmp_path: Path) -> None:
    """`-m` names no model at all: the error is about the file, so nothing tried to load."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    missing = tmp_path / "missing.jsonl"
    out = str(tmp_path / "out.jsonl")
    cases = [
        ([str(bad), "-o", out], "line 2 is not JSON"),
        ([str(missing), "-o", out], "no such file"),
        ([str(bad), "-o", str(bad)], "OUTPUT must not be INPUT"),
        ([str(bad), "-o", out, "-b", "0"], "--batch-size"),
        ([str(bad), "-o", out, "-w", "0"], "--workers"),
        ([str(bad), "-o", out, "--format", "csv"], "--format"),
        ([str(bad), "-o", out, "-t", "-1"], "--temperature"),
    ]
    for args, words in cases:
        proc = gpt2("batch", "-m", str(tmp_path / "no-such-model"), *args)
        assert_one_line_error(proc, 2, words)
    assert not Path(out).exists()


def test_nothing_to_do_loads_no_model(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "id": "x"}])
    out = write_jsonl(tmp_path / "out.jsonl", [{"id": "x", "text": "done before"}])
    proc = gpt2("batch", "-m", str(tmp_path / "no-such-model"), str(inp), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "all 1 rows of" in proc.stderr


def test_ray_without_ray_says_how_to_install_it(tmp_path: Path) -> None:
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    proc = gpt2(
        "batch",
        str(inp),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--ray",
        env={"PYTHONPATH": str(fake.parent)},
    )
    assert_one_line_error(proc, 2, 'pip install "gpt2cli[ray]"')


def test_progress_bar_on_a_terminal(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import pexpect

    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in prompts(6, seed=6)])
    argv = gpt2_argv(
        "batch",
        "-m",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        str(inp),
        "-o",
        str(tmp_path / "out.jsonl"),
        "-n",
        "4",
    )
    env = {**os.environ, "COLUMNS": "120", "LINES": "20", "TERM": "xterm-256color"}
    child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(20, 120), encoding="utf-8")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "6/6" in child.before and "tok/s" in child.before and "ETA" in child.before
