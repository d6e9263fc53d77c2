"""`gpt2 repl`: an interactive session (gpt2cli/repl.py) taking generate's model and sampling
flags."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from gpt2cli.commands import options
from gpt2cli.repl_settings import MODES, Settings, check_mode

if TYPE_CHECKING:
    pass

HELP = (
    "Explore GPT-2 interactively: load the model once, then type prompts and watch the "
    "continuations stream.\n\n"
    "A line ending in \\ goes on on the next line; three double quotes open and close a "
    "multi-line block. In [bold]fresh[/bold] mode each entry stands alone; in "
    "[bold]continue[/bold] mode the running text (prompts and continuations) is the context, "
    "so a story grows. Type /help in the session for its commands (/set, /show, /mode, /reset, "
    "/model, /save, /probs, /explain, /quit).\n\n"
    "When stdin is not a terminal, entries are read line by line and only the continuations are "
    "written to stdout, so a session can be scripted. History is kept in "
    "$XDG_DATA_HOME/gpt2cli/history unless GPT2_NO_HISTORY=1."
)

EPILOG = """[bold]Examples[/bold]

  gpt2 repl
  gpt2 repl -m medium -t 0.8 --mode continue
  printf 'Once upon a time\\n/set temperature 0\\nThe answer is\\n' | gpt2 repl -n 30
"""


def repl(
    model: options.Model = "small",
    max_tokens: options.MaxTokens = 100,
    temperature: options.Temperature = 1.0,
    top_k: options.TopK = 40,
    top_p: options.TopP = 1.0,
    repetition_penalty: options.RepetitionPenalty = 1.0,
    seed: options.Seed = None,
    stop: options.Stop = None,
    ignore_eos: options.IgnoreEos = False,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="fresh: each entry stands alone; continue: the running text is the context.",
            autocompletion=lambda incomplete: [m for m in MODES if m.startswith(incomplete)],
            rich_help_panel=options.SAMPLING_PANEL,
        ),
    ] = "fresh",
    device: options.Device = "auto",
    dtype: options.Dtype = "auto",
    revision: options.Revision = None,
    offline: options.Offline = False,
    threads: options.Threads = None,
    verbose: options.Verbose = False,
    debug: options.Debug = False,
) -> None:
    # Every flag is checked before torch is imported, as for generate.
    params = options.sampling_params(temperature, top_k, top_p, repetition_penalty, seed)
    options.check_count("max_tokens", max_tokens)
    stops = options.stop_strings(stop)
    choice = options.ModelChoice(model, device, dtype, revision, offline, threads)
    mode = check_mode(mode)
    settings = Settings(params, max_tokens, stops, ignore_eos)

    from gpt2cli.render import Renderer

    options.tolerate_unencodable_output()
    lm = choice.open()

    from gpt2cli.repl import Session, run_session

    session = Session(
        lm,
        settings,
        mode=mode,
        renderer=Renderer(echo=False, verbose=verbose),
        load=choice.open,
        parse_stop=options.stop_strings,
    )
    code = run_session(session)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command(
        "repl",
        help=HELP,
        epilog=EPILOG,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(repl)
