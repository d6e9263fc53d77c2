"""Decoding past the window: the sustained rate with `--context-shift` against the rate without
any shift, side by side in one process.

    python benchmarks/bench_context.py                  # small shape, float32, 3 windows
    python benchmarks/bench_context.py --dtype bfloat16 --repeats 1

Shifted: 3 windows of tokens (3072 at GPT-2's 1024) from a 5-token prompt, top-k 40,
`context_shift=True`: the window fills after ~1020 tokens, then every 512 tokens the context
becomes its last 512 tokens, re-read from position 0 (one 512-token prefill per shift). Its rate
is decode-only (first sampled token to last), so every shift's prefill counts against it.
Unshifted: the same prompt decoded until the window is full (finish "context"), no shift.
Runs alternate; medians of the repeats. Target: shifted >= 0.7x unshifted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checkpoint, median  # noqa: E402

PROMPT = "The meaning of life is"


def run(lm, tokens: int, shift: bool):
    from gpt2cli import SamplingParams, complete

    return complete(
        lm,
        PROMPT,
        SamplingParams(top_k=40, seed=0),
        max_tokens=tokens,
        ignore_eos=True,
        context_shift=shift,
    )[0]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="small", choices=["small", "medium", "large", "xl"])
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "int8"]
    )
    ap.add_argument("--windows", type=int, default=3, help="tokens to decode, in windows")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from gpt2cli import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(checkpoint(args.shape), device="cpu", dtype=args.dtype)
    window = lm.context_length
    tokens = args.windows * window
    loads = [load()]
    run(lm, 64, shift=False)  # warm-up

    plain, shifted, shifts = [], [], 0
    for _ in range(args.repeats):
        c = run(lm, tokens, shift=False)
        assert c.finish_reason == "context" and c.shifts == 0
        plain.append(c.tokens_per_s)
        c = run(lm, tokens, shift=True)
        assert c.finish_reason == "length" and c.completion_tokens == tokens
        shifted.append(c.tokens_per_s)
        shifts = c.shifts
        loads.append(load())
    # What one shift costs: re-reading half a window (the prefill it does).
    ids = torch.tensor(lm.tokenizer.encode(" the cat sat" * 400)[: window // 2])
    t = time.perf_counter()
    for _ in range(3):
        lm.model(ids.view(1, -1), lm.model.new_cache(1))
    prefill_s = (time.perf_counter() - t) / 3

    result = {
        "shape": args.shape,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "tokens": tokens,
        "shifts": shifts,
        "unshifted_tok_s": round(median(plain), 2),
        "shifted_tok_s": round(median(shifted), 2),
        "ratio": round(median(shifted) / median(plain), 3),
        "shift_prefill_s": round(prefill_s, 3),
        "load_average": loads,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"shape {args.shape} ({args.dtype}), top-k 40, {result['threads']} threads, "
        f"median of {args.repeats}; load average (1/5/15 min) per round: {' | '.join(loads)}"
    )
    print(f"  unshifted, one window (~{window} tokens): {result['unshifted_tok_s']:8.2f} tok/s")
    print(f"  shifted, {tokens} tokens ({shifts} shifts):  {result['shifted_tok_s']:8.2f} tok/s")
    print(f"  ratio:                              {result['ratio']:8.3f}x (target >= 0.7x)")
    print(f"  one shift (prefill of {window // 2} tokens):   {prefill_s:8.3f} s")


if __name__ == "__main__":
    main()
