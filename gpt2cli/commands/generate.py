"""`gpt2 generate`: continue a prompt, streaming the text as it is decoded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from gpt2cli.commands import options

if TYPE_CHECKING:
    from gpt2cli.engine import Completion, LoadedModel
    from gpt2cli.render import Renderer
    from gpt2cli.sampling import SamplingParams

HELP = (
    "Continue a prompt with GPT-2, streaming the text as it is decoded.\n\n"
    "The prompt is the PROMPT argument, text piped on stdin ([bold]-[/bold] reads stdin "
    "explicitly), or both: stdin first, then a newline, then the argument. With no prompt at all "
    "GPT-2 writes an unconditional sample, starting from <|endoftext|>.\n\n"
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
    max_tokens: options.MaxTokens = 100,
    temperature: options.Temperature = 1.0,
    top_k: options.TopK = 40,
    top_p: options.TopP = 1.0,
    repetition_penalty: options.RepetitionPenalty = 1.0,
    seed: options.Seed = None,
    stop: options.Stop = None,
    ignore_eos: options.IgnoreEos = False,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            help="How many continuations to decode (as one batch), shown one after another.",
            rich_help_panel=options.SAMPLING_PANEL,
        ),
    ] = 1,
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
            "finish_reason, seed, model, time_to_first_token_s, tokens_per_s.",
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
    params = options.sampling_params(temperature, top_k, top_p, repetition_penalty, seed)
    options.check_count("max_tokens", max_tokens)
    options.check_count("samples", samples)
    stops = options.stop_strings(stop)
    candidates = options.check_candidates(top_candidates, explain_steps)
    choice = options.ModelChoice(model, device, dtype, revision, offline, threads)

    from gpt2cli.io import read_prompt, silence_stdout
    from gpt2cli.render import Renderer

    options.tolerate_unencodable_output()
    renderer = Renderer(json_output=json_output, echo=True if echo else None, verbose=verbose)
    text = read_prompt(prompt)
    for warning in text.warnings:
        renderer.warn(warning)
    try:
        lm = choice.open()
        if verbose:
            renderer.info(options.describe_model(lm))
        from gpt2cli.engine import generate as run

        top_logprobs = 0
        if renderer.mode == "json" and (show_probs or candidates):
            renderer.token_text = lm.tokenizer.token_text
            top_logprobs = candidates or 5
        elif show_probs and renderer.mode == "terminal":
            _colour_tokens(renderer, lm)
        events = run(
            lm,
            text.text,
            params,
            max_tokens=max_tokens,
            stop=stops,
            ignore_eos=ignore_eos,
            samples=samples,
            # per-token log_softmax only when something will show it
            logprobs=show_probs and (renderer.mode == "json" or renderer.delta_spans is not None),
            top_logprobs=top_logprobs,
        )
        shown = renderer.render(events, prompt=text.text, model=lm.name)
        if candidates and renderer.mode != "json" and not renderer.interrupted:
            _explain(renderer, lm, text.text, params, shown, candidates, explain_steps)
    except KeyboardInterrupt:  # before decoding started (importing torch, loading weights)
        renderer.interrupted = True
        renderer.err_console.print()
    except BrokenPipeError:
        silence_stdout()
        raise typer.Exit(141) from None
    if renderer.interrupted:
        raise typer.Exit(130)


def _colour_tokens(renderer: Renderer, lm: LoadedModel) -> None:
    """Colour the streamed tokens by probability, and show the scale on stderr (when the
    terminal shows colour at all)."""
    from gpt2cli.probs import TokenColourer, print_legend, shows_colour

    if not shows_colour(renderer.console):
        return

    renderer.delta_spans = TokenColourer(lm.tokenizer)
    print_legend(renderer.err_console)


def _explain(
    renderer: Renderer,
    lm: LoadedModel,
    prompt: str,
    params: SamplingParams,
    shown: list[Completion],
    top_n: int,
    steps: int | None,
) -> None:
    """The candidate tables after the text: for each sample, its first `steps` tokens."""
    from rich.text import Text

    from gpt2cli.probs import print_candidates
    from gpt2cli.scoring import candidate_steps

    plain = renderer.mode == "plain"
    tok = lm.tokenizer
    for i, completion in enumerate(shown):
        context = (tok.encode(prompt) or [tok.eot_id])[-completion.prompt_tokens :]
        sampled: list[int | None] = list(completion.token_ids)
        if completion.finish_reason == "eos":
            sampled.append(tok.eot_id)  # the step that picked <|endoftext|>
        if len(shown) > 1:
            label = f"sample {i + 1}/{len(shown)}"
            if plain:
                renderer.out.write(f"\n== {label} ==\n")
            else:
                renderer.console.print()
                renderer.console.rule(Text(label), style="dim")
        table = candidate_steps(lm, context, sampled[:steps], params, top_n)
        print_candidates(renderer.console, table, plain)


def register(app: typer.Typer) -> None:
    app.command(
        "generate",
        help=HELP,
        epilog=EPILOG,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(generate)
