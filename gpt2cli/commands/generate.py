"""`gpt2 generate`: continue a prompt, streaming the text as it is decoded."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer

from gpt2cli.commands import options
from gpt2cli.commands.open_model import check_model
from gpt2cli.commands.options import DEFAULT_GENERATION as GEN
from gpt2cli.errors import Interrupted
from gpt2cli.types import GenerationConfig, LoadOptions, SamplingParams, check_given

if TYPE_CHECKING:
    from gpt2cli.runtime.loader import LoadedModel
    from gpt2cli.types import Completion
    from gpt2cli.ui.render import Renderer

HELP = (
    "Continue a prompt with GPT-2, streaming the text as it is decoded.\n\n"
    "The prompt is the PROMPT argument, text piped on stdin ([bold]-[/bold] reads stdin "
    "explicitly), or both: stdin first, then a newline, then the argument. With no prompt at all "
    "GPT-2 writes an unconditional sample, starting from the model's BOS token (<|endoftext|> "
    "for GPT-2).\n\n"
    "Sampling flags not given take the model's generation_config.json values (a fine-tune's "
    "own defaults), else the built-in defaults; --verbose says which.\n\n"
    "On a terminal the prompt is shown dim, then the continuation, then a stats line on stderr. "
    "On a pipe only the continuation is written, as plain text; --json writes one JSON object "
    "per sample.\n\n"
    "--show-probs colours each token by its probability; --top-candidates N shows, after the "
    "text, the N most likely tokens at each step and which one was sampled."
)

EPILOG = """[bold]Examples[/bold]

  gpt2 generate "The meaning of life is"
  gpt2 generate -m medium -n 50 -t 0.8 --seed 42 "Once upon a time"
  cat notes.txt | gpt2 generate "In summary:" --stop "\\n\\n"
  echo "Q: What is GPT-2?" | gpt2 generate --json --samples 3 | jq -r .text
  gpt2 generate -m ./my-finetuned-gpt2 --device cpu --dtype float32 "Hello"
  gpt2 generate --show-probs --top-candidates 10 --explain-steps 3 "The capital of France is"
  gpt2 generate --context-shift -n 3000 --ignore-eos "Chapter 1" > story.txt
"""


def generate(
    prompt: Annotated[
        str | None,
        typer.Argument(
            help="Text to continue; - reads stdin. Omit it for an unconditional sample.",
            metavar="PROMPT",
            show_default=False,
        ),
    ] = None,
    model: options.Model = "small",
    max_tokens: options.MaxTokens = None,
    temperature: options.Temperature = None,
    top_k: options.TopK = None,
    top_p: options.TopP = None,
    repetition_penalty: options.RepetitionPenalty = None,
    seed: options.Seed = None,
    stop: options.Stop = None,
    ignore_eos: options.IgnoreEos = GEN.ignore_eos,
    context_shift: options.ContextShift = GEN.context_shift,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            help="How many continuations to decode (as one batch), shown one after another.",
            rich_help_panel=options.SAMPLING_PANEL,
        ),
    ] = GEN.samples,
    device: options.Device = "auto",
    dtype: options.Dtype = "auto",
    revision: options.Revision = None,
    offline: options.Offline = False,
    threads: options.Threads = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object per sample on stdout: text, prompt_tokens, completion_tokens, "
            "finish_reason, seed, model, time_to_first_token_s, tokens_per_s, context_shifts.",
            rich_help_panel=options.OUTPUT_PANEL,
        ),
    ] = False,
    echo: Annotated[
        bool,
        typer.Option(
            "--echo",
            help="On a pipe, write the prompt before the continuation.",
            rich_help_panel=options.OUTPUT_PANEL,
        ),
    ] = False,
    show_probs: options.ShowProbs = False,
    top_candidates: options.TopCandidates = None,
    explain_steps: options.ExplainSteps = None,
    verbose: options.Verbose = False,
    debug: options.Debug = False,
) -> None:
    # Every flag is checked before torch is imported, so a typo fails in a fraction of a second.
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    given |= {"repetition_penalty": repetition_penalty, "max_tokens": max_tokens, "seed": seed}
    check_given(given)
    config = GenerationConfig(
        samples=samples,
        stop=options.stop_strings(stop),
        ignore_eos=ignore_eos,
        context_shift=context_shift,
    )
    from gpt2cli.ui.probs import candidates_to_show

    candidates = candidates_to_show(top_candidates, explain_steps)
    load = LoadOptions(model, device, dtype, revision, offline or None, threads, batch=samples)
    load = check_model(load)

    from gpt2cli import console
    from gpt2cli.commands.open_model import open_model
    from gpt2cli.commands.sampling import resolve_sampling
    from gpt2cli.ui.prompt_input import read_prompt
    from gpt2cli.ui.render import Renderer

    console.tolerate_unencodable_output()
    renderer = Renderer(json_output=json_output, echo=True if echo else None, verbose=verbose)
    if echo and json_output:
        renderer.warn("--echo is ignored with --json: each record holds the continuation only")
    text = read_prompt(prompt)
    for warning in text.warnings:
        renderer.warn(warning)
    lm = open_model(load)
    if verbose:
        renderer.info(lm.describe())
    params, max_tokens = resolve_sampling(lm, given, seed, renderer)
    from gpt2cli.runtime.generate import generate as run

    top_logprobs = 0
    if renderer.mode == "json" and (show_probs or candidates):
        renderer.token_text = lm.tokenizer.token_text
        top_logprobs = candidates or 5
    elif show_probs and renderer.mode == "terminal":
        _colour_tokens(renderer, lm)
    # per-token log_softmax only when something will show it
    logprobs = show_probs and (renderer.mode == "json" or renderer.delta_spans is not None)
    config = dataclasses.replace(
        config, max_tokens=max_tokens, logprobs=logprobs, top_logprobs=top_logprobs
    )
    shown = renderer.render(run(lm, text.text, params, config), prompt=text.text, model=lm.name)
    if candidates and renderer.mode != "json" and not renderer.interrupted:
        _explain(renderer, lm, params, shown, candidates, explain_steps, context_shift)
    if renderer.interrupted:
        raise Interrupted


def _colour_tokens(renderer: Renderer, lm: LoadedModel) -> None:
    """Colour the streamed tokens by probability, and show the scale on stderr (when the
    terminal shows colour at all)."""
    from gpt2cli.ui.probs import TokenColourer, print_legend, shows_colour

    if not shows_colour(renderer.console):
        return

    renderer.delta_spans = TokenColourer(lm.tokenizer)
    print_legend(renderer.err_console)


def _explain(
    renderer: Renderer,
    lm: LoadedModel,
    params: SamplingParams,
    shown: list[Completion],
    top_n: int,
    steps: int | None,
    context_shift: bool = False,
) -> None:
    """The candidate tables after the text: for each sample, its first `steps` tokens."""
    from rich.text import Text

    from gpt2cli.runtime.scoring import candidate_steps
    from gpt2cli.ui.probs import print_candidates

    plain = renderer.mode == "plain"
    for i, completion in enumerate(shown):
        context = completion.prompt_ids  # as the model saw it (after any truncation)
        sampled: list[int | None] = list(completion.token_ids)
        if completion.end_token is not None:
            sampled.append(completion.end_token)  # the step that picked an end token
        if len(shown) > 1:
            label = f"sample {i + 1}/{len(shown)}"
            if plain:
                renderer.out.write(f"\n== {label} ==\n")
            else:
                renderer.console.print()
                renderer.console.rule(Text(label), style="dim")
        table = candidate_steps(
            lm, context, sampled[:steps], params, top_n, context_shift=context_shift
        )
        print_candidates(renderer.console, table, plain)


def register(app: typer.Typer) -> None:
    app.command(
        "generate",
        help=HELP,
        epilog=EPILOG,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(generate)
