"""Prompt text -> a stream of events: one request through the scheduler.

    lm = load_model("small")
    for event in generate(lm, "Hello", SamplingParams(seed=1), max_tokens=20):
        if isinstance(event, Delta):
            print(event.text, end="")

Events, in order: one `Start`; then `Delta`s (interleaved across samples, each carrying the text
that became printable with that token, possibly ""); then one `Finish` per sample.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any

from gpt2cli.errors import UsageError
from gpt2cli.runtime.loader import LoadedModel
from gpt2cli.runtime.scheduler import Request, Scheduler
from gpt2cli.types import Completion, Event, Finish, GenerationConfig, SamplingParams


def fit_prompt(
    ids: list[int], window: int, max_tokens: int, context_shift: bool = False
) -> tuple[list[int], int]:
    """Keep the last tokens of a prompt, leaving room in the window to generate `max_tokens`
    (at most half the window). The last token sampled needs no slot of its own, so a prompt
    of `window - max_tokens + 1` tokens still fits. Returns (kept ids, number dropped).

    With `context_shift`, when `max_tokens` is more than half the window the context will
    shift anyway, whatever is cut: then the prompt keeps up to a whole window, so the tokens
    before the first shift see all of it, and a prompt that fits the window is never cut.
    (Up to half a window, cutting is still better: every token then has at least
    `window - max_tokens` tokens of context, more than the half window a shift keeps.)"""
    room = min(max_tokens, window // 2)
    keep = window if context_shift and max_tokens > room else window - room + 1
    if len(ids) <= keep:
        return ids, 0
    return ids[-keep:], len(ids) - keep


def make_request(
    lm: LoadedModel,
    prompt: str,
    params: SamplingParams | None = None,
    config: GenerationConfig | None = None,
    key: object = None,
) -> Request:
    """A Request for `prompt`: tokenized (an empty prompt starts from the BOS token), fitted to
    the window, and seeded (a random seed when `params` has none, reported in Start)."""
    params = params or SamplingParams()
    config = config or GenerationConfig()
    if params.seed is None:
        params = dataclasses.replace(params, seed=random.SystemRandom().randrange(2**31))
    ids = lm.tokenizer.encode(prompt)
    if not ids:
        if lm.bos_id is None:
            raise UsageError(
                "this model declares no bos_token_id and has no <|endoftext|> token to start "
                "from: give a prompt"
            )
        ids = [lm.bos_id]
    ids, dropped = fit_prompt(ids, lm.context_length, config.max_tokens, config.context_shift)
    return Request(ids, params, config, key=key, dropped=dropped)


def generate(
    lm: LoadedModel,
    prompt: str,
    params: SamplingParams | None = None,
    config: GenerationConfig | None = None,
    **options: Any,
) -> Iterator[Event]:
    """Continue `prompt`, yielding events as tokens are decoded (see the module docstring).

    `config` says what to generate (GenerationConfig); its fields can also be passed as keyword
    arguments (`max_tokens=20, samples=2`), which override it. An empty prompt starts from the
    model's BOS token (bos_token_id; <|endoftext|> for GPT-2). `samples` continuations decode
    as one batch."""
    config = config or GenerationConfig()
    if options:
        config = dataclasses.replace(config, **options)
    request = make_request(lm, prompt, params, config)
    scheduler = Scheduler(lm, max_batch=config.samples)
    scheduler.submit(request)
    while not scheduler.idle:
        for _, event in scheduler.step():
            yield event


def complete(
    lm: LoadedModel,
    prompt: str,
    params: SamplingParams | None = None,
    config: GenerationConfig | None = None,
    **options: Any,
) -> list[Completion]:
    """Run `generate` to the end and return one Completion per sample."""
    done: dict[int, Completion] = {}
    for event in generate(lm, prompt, params, config, **options):
        if isinstance(event, Finish):
            done[event.sample] = event.completion
    return [done[i] for i in sorted(done)]
