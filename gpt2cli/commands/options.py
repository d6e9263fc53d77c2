"""Options shared by the commands that run the model (`generate`, `repl`): one definition of each
flag, its default and help, and the checks that turn a bad value into a one-line usage error
naming the flag. Nothing here imports torch, so bad flags fail before the slow import.

A command declares its parameters with these aliases::

    def generate(model: options.Model = "small", top_k: options.TopK = 40, ...) -> None:
        params = options.sampling_params(temperature, top_k, top_p, repetition_penalty, seed)
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpt2cli.errors import ParamError
from gpt2cli.sampling import SamplingParams, validate_param

if TYPE_CHECKING:
    from gpt2cli.engine import LoadedModel

SIZES = ("small", "medium", "large", "xl")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")

MODEL_PANEL = "Model"
SAMPLING_PANEL = "Sampling"
OUTPUT_PANEL = "Output"
PROBS_PANEL = "Probabilities"
MAX_CANDIDATES = 20

_debug = bool(os.environ.get("GPT2_DEBUG"))


def debug_enabled() -> bool:
    """Whether `--debug` (or GPT2_DEBUG=1) asked for tracebacks instead of one-line errors."""
    return _debug


def _set_debug(value: bool) -> bool:
    global _debug
    _debug = _debug or value
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
        autocompletion=_complete_from(SIZES),
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
        help="auto (bfloat16 on a GPU that supports it, else float32), float32, bfloat16, float16.",
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
        help="CPU threads for torch (default: torch's choice, all cores).",
        show_default=False,
        rich_help_panel=MODEL_PANEL,
    ),
]
MaxTokens = Annotated[
    int,
    typer.Option(
        "--max-tokens", "-n", help="Most tokens to generate.", rich_help_panel=SAMPLING_PANEL
    ),
]
Temperature = Annotated[
    float,
    typer.Option(
        "--temperature",
        "-t",
        help="Sampling temperature; 0 is greedy.",
        rich_help_panel=SAMPLING_PANEL,
    ),
]
TopK = Annotated[
    int,
    typer.Option(
        "--top-k",
        "-k",
        help="Sample from the k most likely tokens; 0 turns it off, 1 is greedy.",
        rich_help_panel=SAMPLING_PANEL,
    ),
]
TopP = Annotated[
    float,
    typer.Option(
        "--top-p",
        "-p",
        help="Nucleus sampling: the smallest set of tokens with this much probability, in (0, 1].",
        rich_help_panel=SAMPLING_PANEL,
    ),
]
RepetitionPenalty = Annotated[
    float,
    typer.Option(
        "--repetition-penalty",
        help="Penalise tokens already seen (> 1 discourages repeats; 1 turns it off; 0.01-100).",
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
        help="Keep going past <|endoftext|> instead of stopping there.",
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


def flag_for(param: str) -> str:
    """The command-line flag for a Python parameter name: `top_k` -> `--top-k`."""
    return "--" + param.replace("_", "-")


def describe(exc: ParamError) -> str:
    """A one-line message naming the flag: `invalid value for --top-k: must be ...`."""
    return f"invalid value for {flag_for(exc.param)}: {exc.detail}"


def sampling_params(
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    seed: int | None,
) -> SamplingParams:
    """Validated SamplingParams (raises ParamError naming the parameter)."""
    return SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )


def check_candidates(top_candidates: int | None, explain_steps: int | None) -> int:
    """The number of candidates to show per token (0: no tables), from --top-candidates and
    --explain-steps (which alone means 5)."""
    if top_candidates is not None and not 1 <= top_candidates <= MAX_CANDIDATES:
        raise ParamError(
            "top_candidates", f"must be an integer in [1, {MAX_CANDIDATES}], got {top_candidates}"
        )
    if explain_steps is not None and explain_steps < 1:
        raise ParamError("explain_steps", f"must be an integer >= 1, got {explain_steps}")
    if top_candidates is None:
        return 5 if explain_steps is not None else 0
    return top_candidates


def check_count(name: str, value: int) -> int:
    """Validate `max_tokens` or `samples` without importing torch."""
    validate_param(name, value)
    return value


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def stop_strings(values: list[str] | None) -> list[str]:
    """`--stop` values with `\\n`, `\\t`, `\\r` and `\\\\` read as the characters they name."""
    out = []
    for value in values or []:
        text = re.sub(r"\\[ntr\\]", lambda m: _ESCAPES[m.group(0)], value)
        if not text:
            raise ParamError("stop", "must not be empty")
        out.append(text)
    return out


@dataclass(frozen=True)
class ModelChoice:
    """Where the model comes from and what it runs on; checked before torch is imported."""

    model: str = "small"
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    offline: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        device = self.device.lower()
        if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
            raise ParamError(
                "device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )
        if self.dtype.lower() not in DTYPES:
            raise ParamError(
                "dtype", f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}"
            )
        if self.threads is not None and self.threads < 1:
            raise ParamError("threads", f"must be an integer >= 1, got {self.threads!r}")
        if not self.model.strip():
            raise ParamError("model", "must not be empty")

    def check_device(self) -> None:
        """Import torch and check that the device and dtype are usable here (ParamError if not),
        before any download."""
        from gpt2cli.engine import pick_device, pick_dtype

        pick_dtype(self.dtype, pick_device(self.device))

    def resolve(self) -> Path:
        """The local checkpoint folder, downloading it first when needed (with the hub's own
        progress display on stderr). No torch."""
        from gpt2cli.hub import resolve_model

        return resolve_model(
            self.model, revision=self.revision, offline=True if self.offline else None
        )

    def open(self, name: str | None = None) -> LoadedModel:
        """Check the device, resolve (downloading, with its own progress) and load the model
        -- `name` instead of `self.model` when given -- with a "Loading" note on a terminal."""
        from gpt2cli.render import loading

        picked = dataclasses.replace(self, model=name) if name else self
        with loading(picked.model):
            picked.check_device()  # before a download that would be wasted
        folder = picked.resolve()
        with loading(picked.model):
            return picked.load(folder)

    def load(self, folder: Path | None = None) -> LoadedModel:
        """Import torch and load the model from `folder` (resolved when not given). Raises
        ParamError for an unavailable device or dtype."""
        from gpt2cli.engine import load_model

        folder = folder if folder is not None else self.resolve()
        lm = load_model(folder, device=self.device, dtype=self.dtype, threads=self.threads)
        return dataclasses.replace(lm, name=self.model)


def describe_model(lm: LoadedModel) -> str:
    """The --verbose line about the loaded model."""
    dtype = str(lm.dtype).removeprefix("torch.")
    return f"model {lm.name} ({lm.path}) on {lm.device}, {dtype}, window {lm.context_length} tokens"


def tolerate_unencodable_output() -> None:
    """Replace characters the terminal's encoding cannot show: a non-UTF-8 locale must not end
    a run in the middle of the model's text."""
    import contextlib
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")
