"""GPU speed: gpt2cli against transformers on the same CUDA device, side by side in one process.

    python benchmarks/bench_gpu.py                              # small, medium, large, xl
    python benchmarks/bench_gpu.py --shapes small --dtypes bfloat16 --json out.json

For each shape and precision (both sides in the same dtype): decode tokens/s at batch 1 (top-k
40, 256 tokens after a 5-token prompt; the tokens after the first over their wall time),
aggregate tokens/s of 16 sampled continuations decoded together (`--samples 16` against
`generate(num_return_sequences=16)`), and the time to the first token of a 512-token prompt.
Runs alternate between the two sides; medians of `--rounds`. llama.cpp is not the anchor here:
its CUDA build cannot be made on a machine without network access.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_llama import prompt_ids  # noqa: E402
from common import checkpoint, median  # noqa: E402

PROMPT = "The meaning of life is"


def ours_decode(lm, prompt: str, tokens: int, samples: int) -> float:
    from gpt2cli import SamplingParams, complete

    done = complete(
        lm, prompt, SamplingParams(top_k=40, seed=0), max_tokens=tokens, ignore_eos=True,
        samples=samples,
    )  # fmt: skip
    return sum(c.tokens_per_s for c in done)


def ours_prefill(lm, text: str, n: int) -> float:
    from gpt2cli import SamplingParams, complete

    done = complete(lm, text, SamplingParams(top_k=40, seed=0), max_tokens=1, ignore_eos=True)
    assert done[0].prompt_tokens == n
    return done[0].time_to_first_token_s


def theirs_decode(model, ids, tokens: int, samples: int) -> float:
    """Tokens after the first over their wall time, as for ours: one generate() of a single
    token is timed first and subtracted (prompt plus first token)."""
    import torch

    def run(n: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids, do_sample=True, top_k=40, max_new_tokens=n, min_new_tokens=n,
                num_return_sequences=samples, pad_token_id=0,
            )  # fmt: skip
        torch.cuda.synchronize()
        assert out.shape[1] - ids.shape[1] == n
        return time.perf_counter() - t

    first, whole = run(1), run(tokens)
    return samples * (tokens - 1) / max(whole - first, 1e-9)


def theirs_prefill(model, ids) -> float:
    import torch

    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, do_sample=False, max_new_tokens=1, pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def bench(shape: str, dtype: str, args) -> dict:
    import torch
    import transformers

    from gpt2cli import load_model

    folder = checkpoint(shape)
    lm = load_model(folder, device="cuda", dtype=dtype)
    transformers.logging.set_verbosity_error()
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    ref = ref.eval().cuda()
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)], device="cuda")
    text, long_ids = prompt_ids(folder, args.prefill_tokens)
    long = torch.tensor([long_ids], device="cuda")

    ours_decode(lm, PROMPT, 32, 1), theirs_decode(ref, ids, 32, 1)  # warm-up, graphs captured
    ours_decode(lm, PROMPT, 32, args.samples), theirs_decode(ref, ids, 32, args.samples)
    ours_prefill(lm, text, len(long_ids)), theirs_prefill(ref, long)
    rows: dict[str, list[list[float]]] = {"decode": [[], []], "samples": [[], []], "ttft": [[], []]}
    for _ in range(args.rounds):
        rows["decode"][0].append(ours_decode(lm, PROMPT, args.tokens, 1))
        rows["decode"][1].append(theirs_decode(ref, ids, args.tokens, 1))
        rows["samples"][0].append(ours_decode(lm, PROMPT, args.tokens, args.samples))
        rows["samples"][1].append(theirs_decode(ref, ids, args.tokens, args.samples))
        rows["ttft"][0].append(ours_prefill(lm, text, len(long_ids)))
        rows["ttft"][1].append(theirs_prefill(ref, long))
    del lm, ref
    torch.cuda.empty_cache()
    out = {"shape": shape, "dtype": dtype}
    for what, (ours, theirs) in rows.items():
        a, b = median(ours), median(theirs)
        ratio = b / a if what == "ttft" else a / b  # ttft: lower is better
        out[what] = {"gpt2cli": round(a, 4), "transformers": round(b, 4), "ratio": round(ratio, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="small,medium,large,xl")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA GPU here")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results = []
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            r = bench(shape, dtype, args)
            results.append(r)
            d, s, t = r["decode"], r["samples"], r["ttft"]
            print(
                f"{shape:6} {dtype:8} decode {d['gpt2cli']:7.1f} vs {d['transformers']:7.1f} tok/s"
                f" ({d['ratio']:.2f}x) | {args.samples} samples {s['gpt2cli']:7.0f} vs "
                f"{s['transformers']:7.0f} ({s['ratio']:.2f}x) | {args.prefill_tokens}-token "
                f"prompt {t['gpt2cli'] * 1e3:6.1f} vs {t['transformers'] * 1e3:6.1f} ms "
                f"({t['ratio']:.2f}x)",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
