"""Shared helpers for the benchmarks: random checkpoints at real GPT-2 shapes, RSS, timing."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
SHAPES = {  # name: (n_layer, n_embd, n_head)
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
    "large": (36, 1280, 20),
    "xl": (48, 1600, 25),
}

sys.path.insert(0, str(ROOT))


def checkpoint(shape: str) -> Path:
    """A random-weight checkpoint at `shape` (built once, then reused from benchmarks/.cache)."""
    from tests.support.checkpoints import build_checkpoint

    folder = CACHE / shape
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        n_layer, n_embd, n_head = SHAPES[shape]
        print(f"building a random {shape} checkpoint in {folder} ...", file=sys.stderr)
        build_checkpoint(
            folder,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_positions=1024,
            vocab_size=50257,
        )
    return folder


def ours_run(lm, prompt: str, tokens: int, samples: int = 1) -> tuple[float, float]:
    """One gpt2cli generation, batch `samples`, top-k 40: (tokens/s over the whole call,
    decode-only tokens/s summed over samples)."""
    from gpt2cli import SamplingParams, complete

    t = time.perf_counter()
    done = complete(
        lm,
        prompt,
        SamplingParams(top_k=40, seed=0),
        max_tokens=tokens,
        ignore_eos=True,
        samples=samples,
    )
    wall = time.perf_counter() - t
    return sum(c.completion_tokens for c in done) / wall, sum(c.tokens_per_s for c in done)


def median(values: list[float]) -> float:
    return statistics.median(values)
