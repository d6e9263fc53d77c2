"""Run the app with uvicorn, on a socket network.py bound (so a port in use is a one-line
error, `--port 0` picks a free port, and the ready line names the real address).

Ctrl-C (or SIGTERM) follows uvicorn: the first one stops accepting connections and ends every
request in flight (a streamed one gets an error event, a plain one a 503), then the server
stops; uvicorn re-raises the signal afterwards, so Ctrl-C ends `gpt2 serve` with 130 (SIGINT's
KeyboardInterrupt) and SIGTERM like any process it kills. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOGGING_CONFIG

from gpt2cli.serve.engine import Engine


def log_config(access_log: bool, debug: bool = False) -> dict:
    """uvicorn's logging, everything on stderr (stdout carries nothing of the server's), and
    gpt2cli's own server messages in the same format (with tracebacks under --debug)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    level = "DEBUG" if debug else "INFO"
    config["loggers"]["gpt2cli"] = {"handlers": ["default"], "level": level, "propagate": False}
    if not access_log:
        config["loggers"]["uvicorn.access"]["level"] = "WARNING"
    return config


class _Server(uvicorn.Server):
    """uvicorn's server, telling us when it listens and ending in-flight requests at once when
    asked to stop (uvicorn would wait for every stream to finish)."""

    def __init__(self, config: uvicorn.Config, engine: Engine, on_ready: Callable[[], None]):
        super().__init__(config)
        self.engine, self.on_ready = engine, on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.engine.close()
        await super().shutdown(sockets)
        if self.force_exit:  # a second Ctrl-C: uvicorn skips the app's shutdown, which would
            await self.lifespan.shutdown()  # then log a cancelled lifespan; ours is quick


def serve(
    app: Starlette,
    engine: Engine,
    sock: socket.socket,
    on_ready: Callable[[], None],
    *,
    access_log: bool = True,
    debug: bool = False,
) -> None:
    """Serve `app` on `sock` until Ctrl-C or SIGTERM (see the module docstring)."""
    config = uvicorn.Config(
        app,
        log_config=log_config(access_log, debug),
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    _Server(config, engine, on_ready).run(sockets=[sock])
