"""`gpt2 batch`: continue every prompt of a file, writing one JSON line per prompt; resumable,
on local worker processes or on a Ray cluster."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from gpt2cli.commands import options
from gpt2cli.commands.options import DEFAULT_GENERATION as GEN
from gpt2cli.commands.options import DEFAULT_PARAMS as PARAMS
from gpt2cli.errors import Interrupted, ParamError, UsageError
from gpt2cli.types import GenerationConfig, LoadOptions, SamplingParams

if TYPE_CHECKING:
    from rich.console import Console

    from gpt2cli.batch.output import Output
    from gpt2cli.batch.rows import InputFile, RowDefaults
    from gpt2cli.batch.run import Pool, Summary

BATCH_PANEL = "Batch"
DEFAULT_BATCH_SIZE = 16
MAX_BATCH_SIZE = 256

HELP = (
    "Continue every prompt of INPUT, writing one JSON line per prompt to OUTPUT.\n\n"
    "INPUT is JSON Lines, one object per prompt: [bold]prompt[/bold] (required), [bold]id"
    "[/bold] (default: the line number), and optionally max_tokens, temperature, top_k, top_p, "
    "repetition_penalty, seed, stop, samples and context_shift, which override the flags for "
    "that row. A .txt file (or --format text) is one prompt per line. - reads stdin.\n\n"
    "Each OUTPUT line has the fields of generate --json plus id (with samples > 1: id and a "
    "samples list); a bad row gets {id, error}. Rows are written as they finish. Run the same "
    "command again to resume: rows already in OUTPUT are skipped. A row's seed is its own, or "
    "derived from --seed and its id, so its result does not depend on the batch, the workers or "
    "resuming; repeat it with generate --seed."
)

EPILOG = """[bold]Examples[/bold]

  gpt2 batch prompts.jsonl -o out.jsonl -n 64
  gpt2 batch questions.txt -o answers.jsonl -t 0 --stop "\\n" --ordered
  gpt2 batch stories.jsonl -o stories.out.jsonl -n 3000 --context-shift
  cat prompts.jsonl | gpt2 batch - -o out.jsonl --workers 2
  gpt2 batch prompts.jsonl -o out.jsonl --ray 10.0.0.5:6379
"""

_RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|\[[0-9a-fA-F:.]+\]:\d+|[\w.-]+:\d+)$")


def expand_ray_flag(argv: list[str]) -> list[str]:
    """`gpt2 batch ... --ray [ADDRESS]`: Typer options cannot take an optional value, so in a
    batch command line a bare `--ray` becomes `--ray=` (RAY_ADDRESS, else auto) and `--ray X`
    becomes `--ray=X` when X looks like a Ray address (auto, local, HOST:PORT, ray://...).
    Anything else after `--ray` (INPUT, another option) is left alone."""
    positional = [i for i, a in enumerate(argv) if not a.startswith("-")]
    if not positional or argv[positional[0]] != "batch":
        return argv
    out = argv[: positional[0] + 1]
    rest = iter(argv[positional[0] + 1 :])
    for arg in rest:
        if arg == "--":
            out += [arg, *rest]
            break
        if arg != "--ray":
            out.append(arg)
            continue
        nxt = next(rest, None)
        if nxt is not None and _RAY_ADDRESS.match(nxt):
            out.append(f"--ray={nxt}")
        else:
            out.append("--ray=")
            if nxt is not None:
                out.append(nxt)
    return out


Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        "-s",
        help="Base seed: a row without its own seed gets one derived from this and its id.",
        rich_help_panel=options.SAMPLING_PANEL,
    ),
]


def batch(
    input: Annotated[
        str,
        typer.Argument(
            help="JSON Lines of prompts (or a .txt file, one prompt per line); - reads stdin.",
            metavar="INPUT",
            show_default=False,
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Where the JSON lines go; an existing file is resumed (- is stdout, no resume).",
            metavar="OUTPUT",
            show_default=False,
            rich_help_panel=BATCH_PANEL,
        ),
    ],
    model: options.Model = "small",
    max_tokens: options.MaxTokens = GEN.max_tokens,
    temperature: options.Temperature = PARAMS.temperature,
    top_k: options.TopK = PARAMS.top_k,
    top_p: options.TopP = PARAMS.top_p,
    repetition_penalty: options.RepetitionPenalty = PARAMS.repetition_penalty,
    seed: Seed = 0,
    stop: options.Stop = None,
    ignore_eos: options.IgnoreEos = GEN.ignore_eos,
    context_shift: options.ContextShift = GEN.context_shift,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            help="Continuations per row (a row's own samples wins).",
            rich_help_panel=options.SAMPLING_PANEL,
        ),
    ] = GEN.samples,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            "-b",
            help=f"Sequences decoded together per worker, 1 to {MAX_BATCH_SIZE}.",
            rich_help_panel=BATCH_PANEL,
        ),
    ] = DEFAULT_BATCH_SIZE,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            help="Worker processes, each with its own copy of the model (default 1; with "
            "--ray: one Ray actor per --threads CPUs of the cluster).",
            show_default=False,
            rich_help_panel=BATCH_PANEL,
        ),
    ] = None,
    ordered: Annotated[
        bool,
        typer.Option(
            "--ordered",
            help="Write rows in input order (default: as they finish).",
            rich_help_panel=BATCH_PANEL,
        ),
    ] = False,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="auto (text for .txt, else JSON Lines), jsonl or text.",
            rich_help_panel=BATCH_PANEL,
        ),
    ] = "auto",
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Run on a Ray cluster: at ADDRESS, else RAY_ADDRESS, else the local one "
            '(auto). Needs pip install "gpt2cli\\[ray]".',
            metavar="[ADDRESS]",
            show_default=False,
            rich_help_panel=BATCH_PANEL,
        ),
    ] = None,
    device: options.Device = "auto",
    dtype: options.Dtype = "auto",
    revision: options.Revision = None,
    offline: options.Offline = False,
    threads: options.Threads = None,
    verbose: options.Verbose = False,
    debug: options.Debug = False,
) -> None:
    # Every flag is checked before torch is imported, so a typo fails in a fraction of a second.
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty, seed)
    config = GenerationConfig(
        max_tokens, samples, options.stop_strings(stop), ignore_eos, context_shift=context_shift
    )
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ParamError("batch_size", f"must be an integer in [1, {MAX_BATCH_SIZE}]")
    load = LoadOptions(model, device, dtype, revision, offline or None, threads, batch=batch_size)
    if workers is not None and workers < 1:
        raise ParamError("workers", f"must be an integer >= 1, got {workers}")
    from gpt2cli.batch.rows import RowDefaults, pick_format

    pick_format(input, format)
    if ray is not None:
        from gpt2cli.batch.ray_pool import import_ray

        import_ray()  # the install hint, before anything is read
    defaults = RowDefaults(params, config)
    plan = _Plan(load, batch_size, workers, threads, ordered, ray, verbose)
    source, out = _open_files(input, output, format, defaults)
    try:
        _run(source, out, defaults, plan)
    finally:
        out.close()
        source.close()


@dataclass(frozen=True)
class _Plan:
    """How the rows are to be decoded (the flags that are not the rows' defaults)."""

    load: LoadOptions
    batch_size: int
    workers: int | None
    threads: int | None
    ordered: bool
    ray: str | None  # None: not on Ray; "": RAY_ADDRESS, else auto
    verbose: bool


def _open_files(
    input: str, output: str, format: str, defaults: RowDefaults
) -> tuple[InputFile, Output]:
    """Scan INPUT (a bad file fails here, exit 2, before any model loads), then open OUTPUT
    (locked, torn line cut, ids already done)."""
    import os

    from gpt2cli.batch.output import Output
    from gpt2cli.batch.rows import scan_input

    if input != "-" and output != "-" and os.path.exists(output):
        if os.path.exists(input) and os.path.samefile(input, output):
            raise UsageError("OUTPUT must not be INPUT")
    source = scan_input(input, format, defaults)
    try:
        out = Output(output)
    except BaseException:
        source.close()
        raise
    return source, out


def _run(source: InputFile, out: Output, defaults: RowDefaults, plan: _Plan) -> None:
    from gpt2cli import console
    from gpt2cli.batch.run import run_batch
    from gpt2cli.ui.batch_progress import BatchProgress

    err = console.stderr_console()
    for warning in source.warnings:
        console.warn(warning, err)
    done = sum(key in out.done for key in source.keys)
    if out.torn:
        console.info(f"{out.name}: dropped a torn last line (that row is decoded again)", err)
    if len(out.done) > done:
        console.warn(f"{out.name} has {len(out.done) - done} rows whose ids are not in INPUT", err)
    if source.count == 0:
        console.info(f"{source.name} has no rows: nothing to do", err)
        return
    if done == source.count:
        console.info(f"all {done} rows of {source.name} are already in {out.name}", err)
        return
    if done:
        console.info(f"resuming: {done} of {source.count} rows are already in {out.name}", err)
    pool = _make_pool(plan, err)
    progress = BatchProgress(source.count, done, console=err)
    summary = run_batch(source, defaults, out, pool, progress, plan.ordered)
    _report(summary, source, out, done, err)
    if summary.interrupted:
        raise Interrupted


def _make_pool(plan: _Plan, err: Console) -> Pool:
    """Ray actors; this process, with the model loaded now; or worker processes, with the
    model downloaded now (with progress bars) and loaded by each worker."""
    from gpt2cli import console

    load, batch_size, workers = plan.load, plan.batch_size, plan.workers
    if plan.ray is not None:
        from gpt2cli.batch.ray_pool import RayPool

        return RayPool(plan.ray or None, load, batch_size, workers, plan.threads)
    if (workers or 1) == 1:
        from gpt2cli.batch.local import InProcessPool
        from gpt2cli.commands.open_model import open_model

        lm = open_model(load)
        if plan.verbose:
            console.info(lm.describe(), err)
        return InProcessPool(lm, batch_size)
    from gpt2cli.batch.local import ProcessPool
    from gpt2cli.hub.fetch import resolve_model
    from gpt2cli.ui.downloads import RichDownloadProgress

    folder = resolve_model(
        load.model, revision=load.revision, offline=load.offline, progress=RichDownloadProgress
    )
    pool = ProcessPool(folder, load, batch_size, workers, plan.threads)
    if plan.verbose:
        console.info(f"{pool.workers} worker processes × {pool.threads} threads, {folder}", err)
    return pool


def _report(summary: Summary, source: InputFile, out: Output, done: int, err: Console) -> None:
    from gpt2cli import console

    total = done + summary.rows
    rate = summary.tokens / summary.seconds if summary.seconds else 0.0
    where = "stdout" if out.name == "-" else out.name
    if summary.errors:
        rows = "1 row had" if summary.errors == 1 else f"{summary.errors} rows had"
        console.warn(f'{rows} errors (written with an "error" field)', err)
    if summary.cut:
        cut = "1 prompt was" if summary.cut == 1 else f"{summary.cut} prompts were"
        console.warn(f"{cut} cut to fit the model's window", err)
    if summary.interrupted:
        held = ""
        if summary.held:
            held = f" ({summary.held} finished rows after an unfinished one were not written,"
            held += " to keep input order)"
        console.info(
            f"interrupted: {total} of {source.count} rows are in {where}{held};"
            " run the same command again to resume",
            err,
        )
        return
    console.info(
        f"{summary.rows} rows → {where} · {summary.tokens} tokens · {rate:.1f} tok/s · "
        f"{summary.seconds:.1f} s",
        err,
    )


def register(app: typer.Typer) -> None:
    app.command(
        "batch",
        help=HELP,
        epilog=EPILOG,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(batch)
