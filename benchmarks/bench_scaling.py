"""How decode speed holds up: late in the window, and with several samples as one batch.

    python benchmarks/bench_scaling.py [--shape small] [--dtype float32]

1. Decode tokens/s with a ~860-token prompt vs a 5-token prompt (anchor: the start of the
   window). Target: late >= 0.8x start.
2. Token throughput of `samples=4` (one batch) vs `samples=1`. Target: >= 2.5x.
Decode-only rates (time from the first sampled token to the last), median of the repeats, both
sides measured alternately in this one process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checkpoint, median, ours_run  # noqa: E402


def decode_rate(lm, prompt_ids: list[int], tokens: int, samples: int = 1) -> float:
    """Decode-only tokens/s summed over samples."""
    return ours_run(lm, lm.tokenizer.decode(prompt_ids), tokens, samples)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="small")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--late-prompt", type=int, default=860)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from gpt2cli import load_model

    lm = load_model(checkpoint(args.shape), device="cpu", dtype=args.dtype)
    # `gpt2 generate --samples 4` loads its weights packed for 4 rows (Layout.onednn_pack_rows)
    lm4 = load_model(checkpoint(args.shape), device="cpu", dtype=args.dtype, batch=4)
    short = lm.tokenizer.encode("The meaning of life is")
    # a prompt of exactly `late_prompt` tokens that survives a decode/encode round trip
    text_ids = lm.tokenizer.encode(" the cat sat on the mat and" * 400)[: args.late_prompt]
    late = lm.tokenizer.encode(lm.tokenizer.decode(text_ids))[: args.late_prompt]
    tokens = min(args.tokens, lm.context_length - len(late))
    decode_rate(lm, short, 8)  # warm-ups
    decode_rate(lm4, short, 8, samples=4)

    start, late_r, one, four = [], [], [], []
    for _ in range(args.repeats):
        start.append(decode_rate(lm, short, tokens))
        late_r.append(decode_rate(lm, late, tokens))
        one.append(decode_rate(lm, short, tokens, samples=1))
        four.append(decode_rate(lm4, short, tokens, samples=4))
    r = {
        "shape": args.shape,
        "dtype": args.dtype,
        "decode_tokens": tokens,
        "start_tok_s": round(median(start), 2),
        "late_tok_s": round(median(late_r), 2),
        "late_prompt_tokens": len(late),
        "late_over_start": round(median(late_r) / median(start), 3),
        "samples1_tok_s": round(median(one), 2),
        "samples4_tok_s": round(median(four), 2),
        "samples4_over_1": round(median(four) / median(one), 3),
    }
    if args.json:
        print(json.dumps(r))
        return
    print(f"shape {args.shape}, {args.dtype}, {tokens} decoded tokens, median of {args.repeats}")
    print(f"  window start (5-token prompt):  {r['start_tok_s']:8.2f} tok/s")
    print(
        f"  late ({len(late)}-token prompt):     {r['late_tok_s']:8.2f} tok/s"
        f"   ratio {r['late_over_start']:.3f}  (target >= 0.8)"
    )
    print(f"  samples=1:                      {r['samples1_tok_s']:8.2f} tok/s")
    print(
        f"  samples=4 (one batch):          {r['samples4_tok_s']:8.2f} tok/s"
        f"   ratio {r['samples4_over_1']:.3f}  (target >= 2.5)"
    )


if __name__ == "__main__":
    main()
