"""`gpt2 download`, `gpt2 models`, `gpt2 rm`: the model cache (the standard Hugging Face cache,
shared with transformers; HF_HOME / HF_HUB_CACHE move it)."""

from __future__ import annotations

import sys

import typer

from gpt2cli.commands.completion import complete_cached_model

MODEL_HELP = "small, medium, large, xl, a Hub repo id (owner/name), or a local folder."


def download(
    model: str = typer.Argument("small", help=MODEL_HELP, show_default=True),
    revision: str = typer.Option(
        "main", "--revision", help="Branch, tag or commit of the Hub repo.", show_default=True
    ),
) -> None:
    """Download a model into the cache once, so later runs (and --offline) use it.

    Prints the local folder on stdout; progress goes to stderr.

    Fetches config.json, the safetensors weights and the tokenizer files, never .bin or .h5.

    [bold]Examples[/bold]

    [dim]$[/dim] gpt2 download                  [dim]# GPT-2 small (124M), about 550 MB[/dim]

    [dim]$[/dim] gpt2 download xl

    [dim]$[/dim] gpt2 download someone/gpt2-poems --revision v1.0
    """
    from gpt2cli.hub.fetch import resolve_model
    from gpt2cli.ui.downloads import RichDownloadProgress

    folder = resolve_model(model, revision=revision, progress=RichDownloadProgress)
    typer.echo(str(folder))


def models() -> None:
    """List the four GPT-2 sizes and every other GPT-2 model in the cache.

    Shows repo id, revision, size on disk and whether it is downloaded (yes, partial, unusable, no).

    partial: gpt2 download finishes it, resuming a stopped download.

    unusable: no download can fix it (no safetensors weights, or broken on the Hub).

    On a pipe the table is tab-separated, with sizes in bytes.

    [bold]Examples[/bold]

    [dim]$[/dim] gpt2 models

    [dim]$[/dim] gpt2 models | awk -F'\\t' '$5 == "yes" {print $2}'
    """
    from gpt2cli.hub.cache import cache_dir, cached_models

    rows = cached_models()
    if not sys.stdout.isatty():
        typer.echo("name\trepo_id\trevision\tsize_bytes\tdownloaded")
        for r in rows:
            typer.echo(f"{r.name}\t{r.repo_id}\t{r.revision}\t{r.size_on_disk}\t{r.status}")
        return
    from rich.filesize import decimal
    from rich.table import Table
    from rich.text import Text

    from gpt2cli.console import stdout_console

    table = Table(caption=f"cache: {cache_dir()}", caption_justify="left")
    notes = any(r.note for r in rows)
    for column in ("Model", "Repo id", "Revision", "Size", "Downloaded", "Note")[: 5 + notes]:
        table.add_column(column, justify="right" if column == "Size" else "left")
    colour = {"yes": "green", "partial": "yellow", "unusable": "red", "no": "dim"}
    for r in rows:
        size = decimal(r.size_on_disk) if r.commit else "-"
        # Names, revisions and notes come from disk: plain Text, so they print as typed.
        cells = [r.name, r.repo_id, r.revision, size, Text(r.status, style=colour[r.status])]
        table.add_row(*cells, *([Text(r.note)] if notes else []))
    stdout_console().print(table)


def rm(
    model: str = typer.Argument(
        ...,
        help="small, medium, large, xl, or a Hub repo id.",
        autocompletion=complete_cached_model,
    ),
    revision: str = typer.Option(
        None, "--revision", help="Remove only this cached revision (branch, tag or commit)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove a model from the cache (every cached revision, unless --revision is given).

    Asks for confirmation first; --yes skips the question (for scripts).

    [bold]Examples[/bold]

    [dim]$[/dim] gpt2 rm xl

    [dim]$[/dim] gpt2 rm someone/gpt2-poems --revision v1.0 --yes
    """
    from rich.filesize import decimal

    from gpt2cli.hub.cache import plan_removal

    removal = plan_removal(model, revision)
    size = decimal(removal.size_on_disk)
    if not yes and not _confirm(f"Remove {removal.label} ({size}) from the cache?"):
        sys.stderr.write("gpt2: nothing removed\n")
        raise typer.Exit(1)
    removal.execute()
    sys.stderr.write(f"gpt2: removed {removal.label} ({size})\n")


def _confirm(question: str) -> bool:
    """Ask on stderr, read one line of stdin; anything but y/yes is a no. Not typer.confirm:
    click reads the answer with `input(" ")`, which writes a space on stdout, and at the end of
    input it leaves the question's line unterminated."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline() if sys.stdin is not None else ""
    except (OSError, ValueError):  # stdin closed, or not text
        answer = ""
    if not answer.endswith("\n"):  # end of input: the user's Enter did not end the line
        sys.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")


def register(app: typer.Typer) -> None:
    """Add `download`, `models` and `rm` to the app."""
    app.command("download")(download)
    app.command("models")(models)
    app.command("rm")(rm)
