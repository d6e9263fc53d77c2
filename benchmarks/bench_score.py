"""Scoring long texts: `gpt2 score`'s sliding window against transformers computing the same
perplexity with the loop of its perplexity guide, side by side in one process; and the peak
memory of scoring as the text grows.

    python benchmarks/bench_score.py                        # small shape, 100,000 tokens
    python benchmarks/bench_score.py --tokens 20000 --strides 512
    python benchmarks/bench_score.py --no-memory --rounds 2   # each side twice, in turn
    python benchmarks/bench_score.py --memory-only

Throughput: tokens scored per second over the same 100,000 token ids (random: speed does not
depend on them), at each stride, both in float32; the two mean NLLs agree within float rounding.
The anchor is the guide's loop (https://huggingface.co/docs/transformers/perplexity): one
`model(input_ids, labels=target_ids)` per window, under torch.no_grad(), weighting each window's
mean loss by the number of tokens it averages over.
With `--rounds N` both sides score the whole text N times at each stride, taking turns at going
first, and the median ratio is printed: a shared machine's speed drifts over the minutes a
side takes, and a single pair of runs reads that drift as a ratio.
Target: >= 1.5x at stride 512 and 1024.

Memory: the peak RSS (VmHWM) of a child process that loads a model and runs `score_text` (as
`gpt2 score` does) on texts of growing size, and the most memory resident between windows in
the first and in the second half of the windows (memory that grew with the text would show
as a second half above the first); a 2-layer, 64-wide model with GPT-2's vocabulary and window
keeps it quick, since what grows with the text does not depend on the model's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, ROOT, checkpoint, median  # noqa: E402

HWM = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024"
RSS = "int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def guide_loop(model, ids, stride: int, window: int) -> tuple[float, int]:
    """The Hugging Face perplexity guide's loop: (NLL sum, tokens scored)."""
    import torch

    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + window, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            neg_log_likelihood = outputs.loss
        # the tokens its loss averages over (the guide's `num_valid_tokens - batch_size` is one
        # short per window whenever the window starts with context)
        num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += neg_log_likelihood.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


def one_round(args, lm, ref, ids: list[int], window: int, stride: int, round_: int) -> dict:
    """Both sides over the whole text at one stride; odd rounds run transformers first, so
    that neither side always runs in the other's wake."""
    import torch

    from gpt2cli.runtime.scoring import score_token_ids

    def ours() -> tuple[float, object]:
        t = time.perf_counter()
        result = score_token_ids(lm, ids, stride=stride)
        return time.perf_counter() - t, result

    def theirs() -> tuple[float, tuple[float, int]]:
        t = time.perf_counter()
        result = guide_loop(ref, ids, stride, window)
        return time.perf_counter() - t, result

    loads = [load()]
    if round_ % 2:
        theirs_s, (nll_sum, scored) = theirs()
        loads.append(load())
        ours_s, mine = ours()
    else:
        ours_s, mine = ours()
        loads.append(load())
        theirs_s, (nll_sum, scored) = theirs()
    loads.append(load())
    assert scored == mine.scored, (scored, mine.scored)
    # Same sums up to float32 rounding, which 12 random layers amplify (logits differ by up to
    # ~3 in 5.6 of spread at GPT-2 small's shape, for the old full-logits path too)
    assert abs(mine.nll - nll_sum / scored) <= 1e-3 * abs(nll_sum / scored)
    r = {
        "shape": args.shape,
        "tokens": args.tokens,
        "stride": stride,
        "round": round_ + 1,
        "first": "transformers" if round_ % 2 else "gpt2cli",
        "windows": mine.windows,
        "threads": torch.get_num_threads(),
        "gpt2cli_tok_s": round(scored / ours_s, 1),
        "transformers_tok_s": round(scored / theirs_s, 1),
        "ratio": round(theirs_s / ours_s, 3),
        "gpt2cli_s": round(ours_s, 1),
        "transformers_s": round(theirs_s, 1),
        "nll": round(mine.nll, 6),
        "transformers_nll": round(nll_sum / scored, 6),
        "load_average": loads,
    }
    if not args.json:
        print(
            f"stride {stride:5d} round {round_ + 1} ({r['first']} first): {r['windows']} "
            f"windows, gpt2cli {r['gpt2cli_tok_s']:8.1f} tok/s ({ours_s:.0f} s), transformers "
            f"{r['transformers_tok_s']:8.1f} tok/s ({theirs_s:.0f} s): {r['ratio']:.2f}x; "
            f"load {' -> '.join(loads)}",
            flush=True,
        )
    return r


def throughput(args) -> list[dict]:
    import torch
    import transformers

    from gpt2cli import load_model
    from gpt2cli.runtime.scoring import score_token_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = checkpoint(args.shape)
    lm = load_model(folder, device="cpu", dtype="float32")
    transformers.logging.set_verbosity_error()
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    window = lm.context_length
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, lm.config.vocab_size - 1, (args.tokens,), generator=g).tolist()
    warm = ids[: window + 64]
    score_token_ids(lm, warm, stride=64)  # warm-up both
    guide_loop(ref, warm, 64, window)

    results = []
    for stride in args.strides:
        for round_ in range(args.rounds):
            results.append(one_round(args, lm, ref, ids, window, stride, round_))
        if args.rounds > 1 and not args.json:
            ratios = [r["ratio"] for r in results if r["stride"] == stride]
            print(
                f"stride {stride:5d}: median ratio {median(ratios):.2f}x over "
                f"{len(ratios)} rounds ({', '.join(f'{x:.2f}' for x in ratios)})",
                flush=True,
            )
    return results


def memory(args) -> list[dict]:
    """Peak RSS of scoring texts of growing size, each in a fresh child process."""
    from tests.support.checkpoints import CORPUS, build_checkpoint

    folder = CACHE / "score-tiny"
    if not (folder / "tokenizer.json").is_file():
        print(f"building a 2-layer checkpoint in {folder} ...", file=sys.stderr)
        build_checkpoint(folder, n_positions=1024, vocab_size=50257)
    words = CORPUS.split()
    out = []
    for mb in args.memory_mb:
        path = CACHE / f"score-text-{mb}mb.txt"
        if not path.is_file():
            reps = int(mb * 2**20 / (len(" ".join(words)) + 1)) + 1
            path.write_text(" ".join(words * reps)[: int(mb * 2**20)], encoding="utf-8")
        code = (
            f"import sys, time; sys.path.insert(0, {str(ROOT)!r});"
            "from gpt2cli import load_model; from gpt2cli.runtime.scoring import score_text;"
            f"lm = load_model({str(folder)!r}, device='cpu');"
            f"text = open({str(path)!r}, encoding='utf-8').read(); t = time.perf_counter();"
            "halves = [0, 0]\n"
            "def seen(done, total):\n"
            f"    half = int(2 * done > total); halves[half] = max(halves[half], {RSS})\n"
            f"r = score_text(lm, text, stride=512, tokens=False, progress=seen);"
            f"print(r.scored, time.perf_counter() - t, {HWM}, *halves)"
        )
        result = subprocess.check_output([sys.executable, "-c", code]).split()
        scored, seconds, peak, first, second = result
        out.append(
            {
                "text_mb": mb,
                "tokens": int(scored),
                "peak_rss_mb": round(float(peak)),
                "first_half_rss_mb": round(float(first)),
                "second_half_rss_mb": round(float(second)),
                "s": seconds,
            }
        )
        if not args.json:
            print(
                f"{mb:5.1f} MB of text, {int(scored):8d} tokens: peak RSS {float(peak):6.0f} MB; "
                f"most resident between windows, first half {float(first):.0f} MB, second half "
                f"{float(second):.0f} MB ({float(seconds):.0f} s)",
                flush=True,
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="small", choices=["small", "medium", "large", "xl"])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--strides", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--rounds", type=int, default=1, help="both sides this many times at each stride"
    )
    ap.add_argument("--memory-mb", type=float, nargs="+", default=[0.5, 1, 5])
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result: dict = {}
    if not args.memory_only:
        result["throughput"] = throughput(args)
    if not args.no_memory:
        result["memory"] = memory(args)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
