"""`gpt2 repl`: an interactive session (gpt2cli/repl/) taking generate's model and sampling
flags."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from gpt2cli.commands import options
from gpt2cli.commands.open_model import check_model
from gpt2cli.commands.options import DEFAULT_GENERATION as GEN
from gpt2cli.repl.settings import MODES, Settings, check_mode
from gpt2cli.types import GenerationConfig, LoadOptions, check_given

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
  gpt2 repl -m medium -t 0.8 --mode continue --context-shift
  printf 'Once upon a time\\n/set temperature 0\\nThe answer is\\n' | gpt2 repl -n 30
"""


def repl(
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
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="fresh: each entry stands alone; continue: the running text is the context.",
            autocompletion=lambda incomplete: [m for m in MODES if m.startswith(incomplete)],
            rich_help_panel=options.SESSION_PANEL,
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
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    given |= {"repetition_penalty": repetition_penalty, "max_tokens": max_tokens, "seed": seed}
    check_given(given)
    config = GenerationConfig(
        stop=options.stop_strings(stop), ignore_eos=ignore_eos, context_shift=context_shift
    )
    mode = check_mode(mode)
    load = check_model(LoadOptions(model, device, dtype, revision, offline or None, threads))

    from gpt2cli import console
    from gpt2cli.commands.open_model import open_model
    from gpt2cli.commands.sampling import resolve_sampling
    from gpt2cli.errors import Interrupted
    from gpt2cli.repl.loop import run_session
    from gpt2cli.repl.session import Session
    from gpt2cli.ui.render import Renderer

    console.tolerate_unencodable_output()
    renderer = Renderer(echo=False, verbose=verbose)
    lm = open_model(load)
    # flags, else the model's generation_config.json, else the built-in defaults (/set changes
    # them from there; /model keeps them)
    params, max_tokens = resolve_sampling(lm, given, seed, renderer)
    config = dataclasses.replace(config, max_tokens=max_tokens)
    session = Session(
        lm,
        Settings(params, config),
        mode=mode,
        renderer=renderer,
        load=lambda name: open_model(check_model(dataclasses.replace(load, model=name))),
        parse_stop=options.stop_strings,
    )
    if run_session(session):
        raise Interrupted


def register(app: typer.Typer) -> None:
    app.command(
        "repl",
        help=HELP,
        epilog=EPILOG,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(repl)
