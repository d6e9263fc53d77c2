"""Decode speed: gpt2cli's engine vs transformers' generate(), side by side in one process.

    python benchmarks/bench_decode.py                    # small shape, 256 tokens, float32
    python benchmarks/bench_decode.py --dtype bfloat16   # ours in bf16 vs transformers float32
    python benchmarks/bench_decode.py --shape medium

Both decode the same number of tokens at batch 1 with top-k 40 sampling, alternating runs;
tokens/s is tokens / wall time of the whole call (a 5-token prompt, so prefill is one step).
Peak RSS is measured in a child process that only loads and generates with gpt2cli.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checkpoint, median, ours_run  # noqa: E402

PROMPT = "The meaning of life is"
HWM = "print(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024)"


def transformers_run(model, ids, tokens: int) -> float:
    import torch

    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            do_sample=True,
            top_k=40,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=0,
        )
    wall = time.perf_counter() - t
    assert out.shape[1] - ids.shape[1] == tokens
    return tokens / wall


def rss_child(folder: Path, dtype: str, tokens: int) -> dict:
    """Peak RSS of a process that loads and generates, and of one that only imports torch.
    VmHWM, not ru_maxrss: a child's ru_maxrss includes its parent's peak at fork."""
    root = str(Path(__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {root!r});"
        "import torch; from gpt2cli import load_model, complete, SamplingParams;"
        f"lm = load_model({str(folder)!r}, device='cpu', dtype={dtype!r});"
        f"complete(lm, 'Hello', SamplingParams(seed=0), max_tokens={tokens}, ignore_eos=True);"
        f"{HWM}"
    )
    bare = f"import torch; {HWM}"
    run = lambda c: float(subprocess.check_output([sys.executable, "-c", c], text=True))  # noqa: E731
    peak, torch_only = run(code), run(bare)
    size_mb = (folder / "model.safetensors").stat().st_size / 2**20
    return {
        "peak_rss_mb": peak,
        "import_torch_rss_mb": torch_only,
        "safetensors_mb": size_mb,
        "rss_over_file": (peak - torch_only) / size_mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="small", choices=["small", "medium", "large", "xl"])
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "int8", "int4"]
    )
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child process")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args()

    folder = checkpoint(args.shape)
    rss = {} if args.no_rss else rss_child(folder, args.dtype, args.tokens)

    import torch
    import transformers

    from gpt2cli import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(folder, device="cpu", dtype=args.dtype)
    transformers.logging.set_verbosity_error()
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])

    ours_run(lm, PROMPT, 64)  # warm-up both: the first runs of a process are slower
    transformers_run(ref, ids, 64)
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(ours_run(lm, PROMPT, args.tokens)[0])
        theirs.append(transformers_run(ref, ids, args.tokens))
    result = {
        "shape": args.shape,
        "dtype": args.dtype,
        "tokens": args.tokens,
        "threads": torch.get_num_threads(),
        "gpt2cli_tok_s": round(median(ours), 2),
        "transformers_fp32_tok_s": round(median(theirs), 2),
        "ratio": round(median(ours) / median(theirs), 3),
    }
    result |= {k: round(v, 3) for k, v in rss.items()}
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"shape {args.shape}, {args.tokens} tokens, batch 1, top-k 40, "
        f"{result['threads']} threads, median of {args.repeats}"
    )
    print(f"  gpt2cli ({args.dtype}):     {result['gpt2cli_tok_s']:8.2f} tok/s")
    print(f"  transformers (float32): {result['transformers_fp32_tok_s']:8.2f} tok/s")
    print(f"  ratio:                  {result['ratio']:8.3f}x")
    if not args.no_rss:
        print(
            f"  peak RSS {result['peak_rss_mb']:.0f} MB (import torch alone "
            f"{result['import_torch_rss_mb']:.0f} MB; safetensors {result['safetensors_mb']:.0f}"
            f" MB; (peak - torch) / file = {result['rss_over_file']:.2f})"
        )


if __name__ == "__main__":
    main()
