"""`gpt2 serve`: GPT-2 behind OpenAI's completions API, many clients decoded together.

    protocol.py   the request body, checked field by field (torch-free), and OpenAI's error object
    choices.py    events -> OpenAI's `choices` (text, legacy logprobs, finish_reason)
    engine.py     the scheduler on its own thread, handing events to the request handlers
    app.py        the Starlette app: routes, API key, errors, requests checked and submitted
    responses.py  a plain response's choices, or a stream of server-sent events
    network.py    the listening socket (bound before the model loads), loopback or not
    server.py     uvicorn on that socket, Ctrl-C, the ready line

Nothing here knows about Rich or Typer (commands/serve.py is the command); the web stack
(Starlette, uvicorn) is the optional extra `gpt2cli[serve]`, imported by app.py, responses.py
and server.py only (`missing_extra` checks for it without the command importing it).
"""

from __future__ import annotations

import importlib

EXTRA_MODULES = ("starlette", "uvicorn")


def missing_extra() -> list[str]:
    """The modules of the serve extra that cannot be imported here."""
    missing = []
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing
