"""`gpt2 serve`: GPT-2 behind OpenAI's completions API (gpt2cli/serve/), with continuous
batching. The web stack is the optional extra `gpt2cli[serve]`; without it the command says how
to install it, before loading anything."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from gpt2cli.commands import options
from gpt2cli.errors import Gpt2Error, ParamError
from gpt2cli.types import LoadOptions

HELP = (
    "Serve GPT-2 over HTTP with OpenAI's completions API, decoding concurrent requests together "
    "(continuous batching).\n\n"
    "Endpoints: POST /v1/completions (plain or streamed), GET /v1/models, GET /health. Any "
    "OpenAI client works: point its base URL at http://HOST:PORT/v1. The server listens on "
    "127.0.0.1 unless --host says otherwise; with --api-key (or GPT2_API_KEY) every /v1 request "
    "must send 'Authorization: Bearer KEY'.\n\n"
    'Requires the serve extra: pip install "gpt2cli[serve]". Ctrl-C stops it (exit 130).'
)

EPILOG = """[bold]Examples[/bold]

  gpt2 serve
  gpt2 serve -m medium --port 8080 --max-batch 8
  GPT2_API_KEY=secret gpt2 serve --host 0.0.0.0
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
      -d '{"prompt": "Once upon a time", "max_tokens": 20}'
"""

SERVER_PANEL = "Server"
INSTALL_HINT = 'gpt2 serve needs the serve extra: pip install "gpt2cli[serve]"'


def _require_extra() -> None:
    """Fail with the install hint when the web stack is absent."""
    from gpt2cli.serve import missing_extra

    missing = missing_extra()
    if missing:
        raise Gpt2Error(f"{INSTALL_HINT} (missing: {', '.join(missing)})")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server reachable from other machines with no key, if that is so."""
    from gpt2cli.serve.network import is_loopback

    if api_key or is_loopback(host):
        return None
    return (
        f"listening on {host} without an API key: anyone who can reach this machine can use "
        "the model (set --api-key or GPT2_API_KEY)"
    )


def serve(
    model: options.Model = "small",
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on.", rich_help_panel=SERVER_PANEL),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", help="Port to listen on (0: any free port).", rich_help_panel=SERVER_PANEL
        ),
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="GPT2_API_KEY",
            help="Require 'Authorization: Bearer KEY' on /v1 requests [env: GPT2_API_KEY].",
            show_default=False,
            show_envvar=False,
            rich_help_panel=SERVER_PANEL,
        ),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            help="Most sequences decoded together (a request's n samples count one each).",
            rich_help_panel=SERVER_PANEL,
        ),
    ] = 16,
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue",
            help="Most requests waiting for a free row; more get 503.",
            rich_help_panel=SERVER_PANEL,
        ),
    ] = 64,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="Log every request on stderr.",
            rich_help_panel=SERVER_PANEL,
        ),
    ] = True,
    device: options.Device = "auto",
    dtype: options.Dtype = "auto",
    revision: options.Revision = None,
    offline: options.Offline = False,
    threads: options.Threads = None,
    debug: options.Debug = False,
) -> None:
    if not 0 <= port <= 65535:
        raise ParamError("port", f"must be in [0, 65535], got {port}")
    if max_batch < 1:
        raise ParamError("max_batch", f"must be an integer >= 1, got {max_batch}")
    load = LoadOptions(model, device, dtype, revision, offline or None, threads, batch=max_batch)
    if max_queue < 1:
        raise ParamError("max_queue", f"must be an integer >= 1, got {max_queue}")
    api_key = api_key or None  # GPT2_API_KEY="" means no key
    _require_extra()

    from gpt2cli import console
    from gpt2cli.serve.network import bind

    warning = exposure_warning(host, api_key)
    if warning:
        console.warn(warning)
    sock = bind(host, port)  # before loading: a port in use fails at once
    try:
        _run(load, sock, max_batch, max_queue, api_key, access_log)
    finally:
        sock.close()


def _run(
    load: LoadOptions,
    sock: socket.socket,
    max_batch: int,
    max_queue: int,
    api_key: str | None,
    access_log: bool,
) -> None:
    from gpt2cli import console
    from gpt2cli.commands.open_model import open_model
    from gpt2cli.hub.names import SIZES
    from gpt2cli.serve.app import create_app
    from gpt2cli.serve.engine import Engine
    from gpt2cli.serve.network import url_of
    from gpt2cli.serve.server import serve

    lm = open_model(load)
    engine = Engine(lm, max_batch=max_batch, max_queue=max_queue)
    aliases = frozenset({SIZES[load.model]} if load.model in SIZES else ())
    app = create_app(engine, model_id=load.model, aliases=aliases, api_key=api_key)
    url = url_of(sock)

    def ready() -> None:
        key = ", API key required" if api_key else ""
        console.note(
            f"gpt2: serving {load.model} at {url}/v1 (max batch {max_batch}, queue "
            f"{max_queue}{key}); Ctrl-C stops"
        )

    # Returns after Ctrl-C, which uvicorn then raises again: KeyboardInterrupt -> exit 130.
    serve(app, engine, sock, ready, access_log=access_log, debug=console.debug_enabled())


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        help=HELP,
        epilog=EPILOG,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(serve)
