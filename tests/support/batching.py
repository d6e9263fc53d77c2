"""Decode prompts together in one continuous batch, for tests that compare it with each alone."""

from __future__ import annotations

from gpt2cli.runtime.generate import make_request
from gpt2cli.runtime.loader import LoadedModel
from gpt2cli.runtime.scheduler import Scheduler
from gpt2cli.types import Completion, Finish, GenerationConfig, SamplingParams


def decode_together(
    lm: LoadedModel, prompts: list[str], config: GenerationConfig, first_seed: int = 10
) -> dict[int, Completion]:
    """Each prompt i sampled with seed first_seed + i, all in one batch: completions by index."""
    scheduler = Scheduler(lm, max_batch=len(prompts))
    for i, prompt in enumerate(prompts):
        params = SamplingParams(seed=first_seed + i)
        scheduler.submit(make_request(lm, prompt, params, config, key=i))
    done: dict[int, Completion] = {}
    while not scheduler.idle:
        for key, event in scheduler.step():
            if isinstance(event, Finish):
                done[key] = event.completion
    return done
