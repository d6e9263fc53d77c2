"""`gpt2 score`: how likely GPT-2 finds a text: its perplexity, and token by token."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from gpt2cli.commands import options
from gpt2cli.commands.open_model import check_model
from gpt2cli.errors import ParamError, UsageError
from gpt2cli.types import LoadOptions

if TYPE_CHECKING:
    from gpt2cli.runtime.loader import LoadedModel
    from gpt2cli.runtime.scoring import TextScore

HELP = (
    "Score a text with GPT-2: its perplexity, exp(mean negative log-likelihood per token); "
    "lower means the model finds the text more likely.\n\n"
    "The text is the TEXT argument, text piped on stdin ([bold]-[/bold] reads stdin "
    "explicitly), or both (stdin, a newline, then the argument). It is scored after the "
    "model's BOS token (bos_token_id: <|endoftext|> for GPT-2), so its first token is scored too "
    "(--no-bos leaves the first token unscored). A text longer than the model's window is "
    "scored with a sliding window: windows start every --stride tokens, and each token is "
    "scored once, with up to window - 1 tokens of context. On a terminal a progress bar shows "
    "the windows scored.\n\n"
    "--tokens adds a table of every token's log-probability, coloured on a terminal as "
    "generate --show-probs colours tokens; --json writes one JSON object for scripts."
)

EPILOG = """[bold]Examples[/bold]

  gpt2 score "The quick brown fox jumps over the lazy dog."
  gpt2 score --tokens "Colorless green ideas sleep furiously."
  cat essay.txt | gpt2 score -m medium --stride 256 --json | jq .perplexity
"""


def score(
    text: Annotated[
        str | None,
        typer.Argument(help="Text to score; - reads stdin.", metavar="TEXT", show_default=False),
    ] = None,
    model: options.Model = "small",
    tokens: Annotated[
        bool,
        typer.Option(
            "--tokens",
            help="A table of every token: id, log-probability and probability.",
            rich_help_panel=options.OUTPUT_PANEL,
        ),
    ] = False,
    stride: Annotated[
        int | None,
        typer.Option(
            "--stride",
            help="For texts longer than the window: a new window every N tokens, in "
            "[1, window] (default: half the window).",
            metavar="N",
            show_default=False,
            rich_help_panel=options.SCORING_PANEL,
        ),
    ] = None,
    bos: Annotated[
        bool,
        typer.Option(
            "--bos/--no-bos",
            help="Score the text after the model's BOS token (<|endoftext|> for GPT-2), so that "
            "its first token is scored too.",
            rich_help_panel=options.SCORING_PANEL,
        ),
    ] = True,
    device: options.Device = "auto",
    dtype: options.Dtype = "auto",
    revision: options.Revision = None,
    offline: options.Offline = False,
    threads: options.Threads = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object on stdout: perplexity, nll, tokens_scored, window, stride, "
            "windows, bos, model (and tokens, with --tokens).",
            rich_help_panel=options.OUTPUT_PANEL,
        ),
    ] = False,
    verbose: options.Verbose = False,
    debug: options.Debug = False,
) -> None:
    if stride is not None and stride < 1:
        raise ParamError("stride", f"must be an integer >= 1, got {stride}")
    load = check_model(LoadOptions(model, device, dtype, revision, offline or None, threads))

    from rich.text import Text

    from gpt2cli import console
    from gpt2cli.commands.open_model import open_model
    from gpt2cli.ui.prompt_input import read_prompt
    from gpt2cli.ui.records import json_line

    console.tolerate_unencodable_output()
    out = console.stdout_console()
    source = read_prompt(text)
    for warning in source.warnings:
        console.warn(warning)
    if not source.text:
        raise UsageError("nothing to score: give TEXT, or pipe text on stdin")

    lm = open_model(load)
    if verbose:
        from gpt2cli.runtime.sliding import score_workers

        console.info(lm.describe())
        workers = score_workers(lm.device, windows=sys.maxsize)
        if workers > 1:
            console.info(f"a long text: {workers} windows scored side by side, 1 thread each")
    if bos and lm.bos_id is None:
        console.warn(
            "this model declares no bos_token_id and has no <|endoftext|>: the first token is "
            "left unscored (as with --no-bos)"
        )

    from gpt2cli.runtime.scoring import score_text
    from gpt2cli.ui.progress import windows_progress

    with windows_progress(console.stderr_console()) as progress:
        result = score_text(
            lm, source.text, stride=stride, bos=bos, tokens=tokens, progress=progress
        )
    if json_output:
        sys.stdout.write(json_line(score_record(result, lm, tokens), sys.stdout))
        sys.stdout.flush()
        return

    from gpt2cli.ui.probs import print_score_tokens, score_summary

    if tokens:
        print_score_tokens(out, result, plain=not out.is_terminal)
    out.print(Text(score_summary(result)), soft_wrap=True)


def score_record(result: TextScore, lm: LoadedModel, tokens: bool) -> dict:
    perplexity = result.perplexity
    record: dict = {
        "perplexity": perplexity if math.isfinite(perplexity) else None,  # JSON has no inf
        "nll": result.nll,
        "tokens_scored": result.scored,
        "window": result.window,
        "stride": result.stride,
        "windows": result.windows,
        "bos": result.bos,
        "model": lm.name,
    }
    if tokens and result.tokens is not None:
        record["tokens"] = [
            {"text": t.text, "id": t.id, "logprob": t.logprob} for t in result.tokens
        ]
    return record


def register(app: typer.Typer) -> None:
    app.command(
        "score",
        help=HELP,
        epilog=EPILOG,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(score)
