"""`gpt2 batch` token throughput against generating the same rows one at a time.

    python benchmarks/bench_batch.py [--checkpoint DIR] [--prompts 256] [--tokens 64]
    python benchmarks/bench_batch.py --sweep          # batch sizes and workers, to pick defaults
    python benchmarks/bench_batch.py --agreement 64   # -t 0: batched rows vs generate alone

At GPT-2 small's shape (a random checkpoint: speed does not depend on the weights), N prompts of
mixed length (4 to 200 tokens, about 100 on average), each continued by exactly `--tokens`
tokens (--ignore-eos), top-k 40, seeded:

1. anchor: the Python API in a loop, in this process, model loaded once and not timed
   (`complete(lm, prompt, ...)` per prompt: what a loop of `gpt2 generate` calls does, minus
   its start-up);
2. `gpt2 batch` with its default settings, as a user runs it (a subprocess: start-up and model
   loading included in its time);
3. `gpt2 batch --batch-size 1`: the same rows one at a time through the same command.

tokens/s = generated tokens / wall time. Targets: 2 >= 3x 1, and 2 >= 2x 3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checkpoint  # noqa: E402

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their has been would more when "
    "time people year way day man thing woman life child world school state family student"
).split()


def make_prompts(n: int, folder: Path) -> list[str]:
    """n prompts of mixed length, deterministic: 4 to 200 tokens (about 100 on average) of the
    checkpoint's tokenizer, made of common words."""
    from gpt2cli.text.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(folder)
    out = []
    for i in range(n):
        target = 4 + (i * 53) % 197
        words: list[str] = []
        while len(tokenizer.encode(" ".join(words))) < target:
            words.append(WORDS[(i * 7 + len(words) * 3) % len(WORDS)])
        out.append(" ".join(words))
    return out


def gpt2_batch(folder: Path, inp: Path, out: Path, tokens: int, *args: str) -> tuple[float, int]:
    """Run `gpt2 batch` to the end: (wall seconds, tokens generated)."""
    if out.exists():
        out.unlink()
    gpt2 = str(Path(sys.executable).parent / "gpt2")
    argv = [gpt2, "batch", str(inp), "-o", str(out), "-m", str(folder), "--device", "cpu"]
    argv += ["-n", str(tokens), "--ignore-eos", "-s", "0", *args]
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return wall, sum(r["completion_tokens"] for r in rows)


def api_loop(lm, prompts: list[str], tokens: int) -> tuple[float, int]:
    from gpt2cli import SamplingParams, complete

    t = time.perf_counter()
    total = 0
    for i, prompt in enumerate(prompts):
        done = complete(lm, prompt, SamplingParams(seed=i), max_tokens=tokens, ignore_eos=True)
        total += done[0].completion_tokens
    return time.perf_counter() - t, total


def agreement(lm, prompts: list[str], tokens: int, batch_size: int) -> int:
    """Rows whose greedy continuation batched differs from the one decoded alone."""
    from gpt2cli import SamplingParams, complete
    from gpt2cli.batch.engine import RowDecoder
    from gpt2cli.batch.jobs import Job
    from gpt2cli.batch.rows import Row
    from gpt2cli.types import GenerationConfig

    params = SamplingParams(temperature=0, seed=0)
    config = GenerationConfig(max_tokens=tokens)
    decoder = RowDecoder(lm, batch_size)
    for i, p in enumerate(prompts):
        decoder.add(Job(i, Row(i, i + 1, i, p, params, config)))
    batched = {}
    while not decoder.idle:
        for result in decoder.step():
            batched[result.seq] = result.record["text"]
    alone = [complete(lm, p, params, config)[0].text for p in prompts]
    return sum(batched[i] != alone[i] for i in range(len(prompts)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="default: benchmarks/.cache/small")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--sweep", action="store_true", help="gpt2 batch at several -b and -w")
    ap.add_argument("--agreement", type=int, metavar="N", help="N rows at -t 0, batched vs alone")
    ap.add_argument("--threads", type=int, help="torch threads on every side (default: all cores)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    threads = ["--threads", str(args.threads)] if args.threads else []
    folder = args.checkpoint or checkpoint("small")
    prompts = make_prompts(args.prompts, folder)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    inp = work / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = work / "out.jsonl"
    load = os.getloadavg()[0]

    if args.sweep:
        for extra in (
            ["-b", "4"],
            ["-b", "8"],
            ["-b", "16"],
            ["-b", "32"],
            ["-b", "16", "-w", "2"],
        ):
            wall, tokens = gpt2_batch(folder, inp, out, args.tokens, *extra, *threads)
            print(f"  gpt2 batch {' '.join(extra):10} {tokens / wall:8.1f} tok/s ({wall:.1f} s)")
        return

    from gpt2cli import load_model

    lm = load_model(folder, device="cpu", threads=args.threads)
    if args.agreement:
        differ = agreement(lm, prompts[: args.agreement], args.tokens, 16)
        print(f"-t 0, {args.tokens} tokens, batch 16: {differ} of {args.agreement} rows differ")
        return

    api_wall, api_tokens = api_loop(lm, prompts, args.tokens)
    del lm
    batch_wall, batch_tokens = gpt2_batch(folder, inp, out, args.tokens, *threads)
    one_wall, one_tokens = gpt2_batch(folder, inp, out, args.tokens, "--batch-size", "1", *threads)
    r = {
        "threads": args.threads or os.cpu_count(),
        "prompts": args.prompts,
        "tokens": args.tokens,
        "load_avg_1min_at_start": round(load, 2),
        "api_loop_tok_s": round(api_tokens / api_wall, 2),
        "batch_tok_s": round(batch_tokens / batch_wall, 2),
        "batch_size_1_tok_s": round(one_tokens / one_wall, 2),
    }
    r["batch_over_api_loop"] = round(r["batch_tok_s"] / r["api_loop_tok_s"], 2)
    r["batch_over_batch_size_1"] = round(r["batch_tok_s"] / r["batch_size_1_tok_s"], 2)
    r["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(r))
        return
    print(
        f"{args.prompts} prompts of mixed length, {args.tokens} tokens each, top-k 40, "
        f"CPU, {r['threads']} threads"
    )
    print(f"  API loop (this process):       {r['api_loop_tok_s']:8.1f} tok/s")
    print(f"  gpt2 batch (defaults):         {r['batch_tok_s']:8.1f} tok/s")
    print(f"  gpt2 batch --batch-size 1:     {r['batch_size_1_tok_s']:8.1f} tok/s")
    print(f"  batch / API loop:              {r['batch_over_api_loop']:8.2f}x  (target >= 3)")
    print(f"  batch / --batch-size 1:        {r['batch_over_batch_size_1']:8.2f}x  (target >= 2)")
    start, end = r["load_avg_1min_at_start"], r["load_avg_1min_at_end"]
    print(f"  load average (1 min): {start} at start, {end} at end")


if __name__ == "__main__":
    main()
