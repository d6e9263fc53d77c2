"""The sampling values a generating command (generate, repl) runs with: each flag the user gave,
else the checkpoint's default (generation_config.json), else the built-in one, resolved in one
place (`types.resolve_defaults`). A warning names the checkpoint's generation keys that gpt2cli
does not apply; --verbose says where each value came from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpt2cli.types import BUILT_IN, DEFAULTABLE, FLAG, SamplingParams, resolve_defaults

if TYPE_CHECKING:
    from gpt2cli.runtime.loader import LoadedModel
    from gpt2cli.ui.render import Renderer


def _source(name: str, source: str) -> str:
    if source == FLAG:
        return "--" + name.replace("_", "-")
    return "built-in default" if source == BUILT_IN else source


def resolve_sampling(
    lm: LoadedModel, given: dict[str, object | None], seed: int | None, renderer: Renderer
) -> tuple[SamplingParams, int]:
    """(SamplingParams, max tokens) for `lm` from the flags `given` (None: not given)."""
    defaults = lm.generation
    values, sources = resolve_defaults(given, defaults)
    if defaults.ignored:
        renderer.warn(
            f"{defaults.source} sets {', '.join(defaults.ignored)}, which gpt2cli does not apply "
            "(transformers' generate would)"
        )
    if renderer.verbose:
        shown = (f"{name} {values[name]} ({_source(name, sources[name])})" for name in DEFAULTABLE)
        renderer.info("sampling: " + ", ".join(shown))
        if defaults.unknown:
            unknown = ", ".join(defaults.unknown)
            renderer.info(f"{defaults.source}: keys transformers does not know either: {unknown}")
        renderer.info(_tokens_line(lm))
    params = SamplingParams(
        temperature=values["temperature"],  # type: ignore[arg-type]
        top_k=values["top_k"],  # type: ignore[arg-type]
        top_p=values["top_p"],  # type: ignore[arg-type]
        repetition_penalty=values["repetition_penalty"],  # type: ignore[arg-type]
        seed=seed,
    )
    return params, values["max_tokens"]  # type: ignore[return-value]


def _tokens_line(lm: LoadedModel) -> str:
    """Where samples start and end, and which file said so (for --verbose)."""

    def named(ids: list[int]) -> str:
        return ", ".join(f"{i} {lm.tokenizer.token_text(i)!r}" for i in ids) or "none"

    g = lm.generation

    def source(declared: bool) -> str:
        return g.source if declared else "none declared: <|endoftext|>"

    bos = [] if lm.bos_id is None else [lm.bos_id]
    return (
        f"end tokens: {named(sorted(lm.eos_ids))} ({source(g.eos_token_ids is not None)}); "
        f"start token: {named(bos)} ({source(g.bos_token_id is not None)})"
    )
