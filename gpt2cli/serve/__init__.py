"""`gpt2 serve`: GPT-2 behind OpenAI's completions API, many clients decoded together.

    protocol.py   the request body, checked field by field (torch-free), and OpenAI's error object
    choices.py    events -> OpenAI's `choices` (text, legacy logprobs, finish_reason)
    engine.py     the scheduler on its own thread, handing events to the request handlers
    app.py        the Starlette app: routes, API key, errors, streaming
    network.py    the listening socket (bound before the model loads), loopback or not
    server.py     uvicorn on that socket, Ctrl-C, the ready line

Nothing here knows about Rich or Typer (commands/serve.py is the command); the web stack
(Starlette, uvicorn) is the optional extra `gpt2cli[serve]` and is imported by app.py and
server.py only (`missing_extra` checks for them without the command importing them).
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
