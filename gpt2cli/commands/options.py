"""The flags shared by the commands that run the model (`generate`, `repl`, `score`, `batch`,
`serve`): one definition of each flag, its help, its panel and its completion. Defaults come from
gpt2cli/types.py and values are checked there, before torch is imported, so a bad flag fails at
once with a one-line error naming it.

A command declares its parameters with these aliases::

    def generate(model: options.Model = "small", top_k: options.TopK = None, ...)

The sampling flags default to None, meaning "not given": commands/sampling.py then takes the
model's generation_config.json value, else the built-in default (types.py).
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from gpt2cli import console
from gpt2cli.commands.completion import complete_model
from gpt2cli.types import DEVICES, DTYPES, MAX_CANDIDATES, GenerationConfig, SamplingParams

DEFAULT_PARAMS = SamplingParams()
DEFAULT_GENERATION = GenerationConfig()

MODEL_PANEL = "Model"
SAMPLING_PANEL = "Sampling"
OUTPUT_PANEL = "Output"
PROBS_PANEL = "Probabilities"
SCORING_PANEL = "Scoring"
SESSION_PANEL = "Session"


def _set_debug(value: bool) -> bool:
    if value:
        console.enable_debug()
    return value


def _complete_from(choices: tuple[str, ...]):
    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    return complete


Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="small, medium, large, xl, a Hub repo id of a GPT-2 checkpoint, or a local folder.",
        autocompletion=complete_model,
        rich_help_panel=MODEL_PANEL,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
        autocompletion=_complete_from(DEVICES),
        rich_help_panel=MODEL_PANEL,
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        help=(
            "auto (bfloat16 on a GPU that supports it, else float32), float32, bfloat16, "
            "float16, int8 (CPU: weights quantized at load, fastest, close to float32), or int4 "
            "(CPU: 4-bit weights, least memory, less exact)."
        ),
        autocompletion=_complete_from(DTYPES),
        rich_help_panel=MODEL_PANEL,
    ),
]
Revision = Annotated[
    str | None,
    typer.Option(
        "--revision", help="Branch, tag or commit of a Hub checkpoint.", rich_help_panel=MODEL_PANEL
    ),
]
Offline = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Never touch the network: use the local cache only.",
        rich_help_panel=MODEL_PANEL,
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="CPU threads for torch (default: the cores idle when the model loads).",
        show_default=False,
        rich_help_panel=MODEL_PANEL,
    ),
]
# The sampling flags default to None ("not given"): the model's generation_config.json value,
# else the built-in default, applies (commands/sampling.py).
_MODEL_DEFAULT = "the model's own, else"
MaxTokens = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        "-n",
        help=f"Most tokens to generate (default: {_MODEL_DEFAULT} "
        f"{DEFAULT_GENERATION.max_tokens}).",
        show_default=False,
        rich_help_panel=SAMPLING_PANEL,
    ),
]
Temperature = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        "-t",
        help=f"Sampling temperature; 0 is greedy (default: {_MODEL_DEFAULT} "
        f"{DEFAULT_PARAMS.temperature}).",
        show_default=False,
        rich_help_panel=SAMPLING_PANEL,
    ),
]
TopK = Annotated[
    int | None,
    typer.Option(
        "--top-k",
        "-k",
        help="Sample from the k most likely tokens; 0 turns it off, 1 is greedy "
        f"(default: {_MODEL_DEFAULT} {DEFAULT_PARAMS.top_k}).",
        show_default=False,
        rich_help_panel=SAMPLING_PANEL,
    ),
]
TopP = Annotated[
    float | None,
    typer.Option(
        "--top-p",
        "-p",
        help="Nucleus sampling: the smallest set of tokens with this much probability, in (0, 1] "
        f"(default: {_MODEL_DEFAULT} {DEFAULT_PARAMS.top_p}).",
        show_default=False,
        rich_help_panel=SAMPLING_PANEL,
    ),
]
RepetitionPenalty = Annotated[
    float | None,
    typer.Option(
        "--repetition-penalty",
        help="Penalise tokens already seen (> 1 discourages repeats; 1 turns it off; 0.01-100) "
        f"(default: {_MODEL_DEFAULT} {DEFAULT_PARAMS.repetition_penalty}).",
        show_default=False,
        rich_help_panel=SAMPLING_PANEL,
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(
        "--seed",
        "-s",
        help="Random seed, for repeatable output (default: a random one, reported in the stats).",
        show_default=False,
        rich_help_panel=SAMPLING_PANEL,
    ),
]
Stop = Annotated[
    list[str] | None,
    typer.Option(
        "--stop",
        help="Stop when the text contains this string (repeatable; \\n, \\t, \\r and \\\\ are "
        "understood).",
        show_default=False,
        rich_help_panel=SAMPLING_PANEL,
    ),
]
IgnoreEos = Annotated[
    bool,
    typer.Option(
        "--ignore-eos",
        help="Keep going past the model's end tokens (eos_token_id; <|endoftext|> for GPT-2) "
        "instead of stopping there.",
        rich_help_panel=SAMPLING_PANEL,
    ),
]
ContextShift = Annotated[
    bool,
    typer.Option(
        "--context-shift",
        help="When the window is full, keep its last half and go on (re-read from position 0) "
        "instead of finishing with 'context'; --max-tokens may then exceed the window.",
        rich_help_panel=SAMPLING_PANEL,
    ),
]
ShowProbs = Annotated[
    bool,
    typer.Option(
        "--show-probs",
        help="Colour each generated token by the probability it was sampled with (legend on "
        "stderr); with --json, add a tokens list: text, id, logprob and the top alternatives.",
        rich_help_panel=PROBS_PANEL,
    ),
]
TopCandidates = Annotated[
    int | None,
    typer.Option(
        "--top-candidates",
        help=f"After the text, a table per generated token of the N (1 to {MAX_CANDIDATES}) most "
        "likely tokens, marking the sampled one and the top-k/top-p cut.",
        metavar="N",
        show_default=False,
        rich_help_panel=PROBS_PANEL,
    ),
]
ExplainSteps = Annotated[
    int | None,
    typer.Option(
        "--explain-steps",
        help="Candidate tables for the first M generated tokens only (default: all; alone, it "
        "shows 5 candidates).",
        metavar="M",
        show_default=False,
        rich_help_panel=PROBS_PANEL,
    ),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also print the model used (on stderr) and, for generate and repl on a pipe, the "
        "stats line.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
Debug = Annotated[
    bool,
    typer.Option(
        "--debug",
        help="Show a full traceback when something fails.",
        callback=_set_debug,
        is_eager=True,
        rich_help_panel=OUTPUT_PANEL,
    ),
]


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def stop_strings(values: list[str] | None) -> list[str]:
    """`--stop` values with `\\n`, `\\t`, `\\r` and `\\\\` read as the characters they name."""
    # No check here: GenerationConfig refuses an empty stop string, for the API as for the CLI.
    return [re.sub(r"\\[ntr\\]", lambda m: _ESCAPES[m.group(0)], v) for v in values or []]
