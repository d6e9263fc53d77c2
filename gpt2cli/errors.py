"""Errors a user can act on: each carries a one-line message and the exit code the CLI uses."""

from __future__ import annotations


class Gpt2Error(Exception):
    """A failure with a one-line, user-facing message (the CLI prints it, never a traceback)."""

    exit_code: int = 1


class UsageError(Gpt2Error):
    """A bad value supplied by the user; exits 2 like any usage error."""

    exit_code = 2


class ParamError(UsageError, ValueError):
    """An invalid generation parameter. `param` is the Python name (``top_k``); the CLI maps it
    to its flag (``--top-k``)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        self.detail = message
        super().__init__(f"{param}: {message}")


class CheckpointError(Gpt2Error):
    """A local checkpoint folder that cannot be loaded (missing, truncated, wrong shape...)."""


class ModelNotFoundError(Gpt2Error):
    """A model that is neither a known size, a cached/downloadable repo, nor a folder."""


class DownloadError(Gpt2Error):
    """A download that failed (network, integrity check)."""
