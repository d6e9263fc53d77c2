"""Errors a user can act on, and the one table that turns any exception into the one-line
message and exit status the CLI shows (`describe`)."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as a shell reports `... | head`


class Gpt2Error(Exception):
    """A failure with a one-line, user-facing message (the CLI prints it, never a traceback)."""

    exit_code: int = EXIT_ERROR


class UsageError(Gpt2Error):
    """A bad value supplied by the user; exits 2 like any usage error."""

    exit_code = EXIT_USAGE


class ParamError(UsageError, ValueError):
    """An invalid generation parameter. `param` is the Python name (``top_k``); the CLI names
    it by its flag (``--top-k``), the REPL by its setting (``top_k``)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        self.detail = message
        super().__init__(f"{param}: {message}")

    @property
    def flag(self) -> str:
        return "--" + self.param.replace("_", "-")

    def for_flag(self) -> str:
        """`invalid value for --top-k: must be ...`"""
        return f"invalid value for {self.flag}: {self.detail}"

    def for_setting(self) -> str:
        """`invalid value for top_k: must be ...` (the REPL's /set names)."""
        return f"invalid value for {self.param}: {self.detail}"


class CheckpointError(Gpt2Error):
    """A local checkpoint folder that cannot be loaded (missing, truncated, wrong shape...)."""


class ModelNotFoundError(Gpt2Error):
    """A model that is neither a known size, a cached/downloadable repo, nor a folder."""


class DownloadError(Gpt2Error):
    """A download that failed (network, integrity check)."""


class NonFiniteOutputError(Gpt2Error):
    """The model computed NaN or infinite logits (broken weights, or values beyond the dtype's
    range): nothing sensible can be sampled from them."""


class CheckpointWarning(UserWarning):
    """Something in a checkpoint's files that gpt2cli cannot use and leaves out (the CLI shows
    it as a `gpt2: warning:` line)."""


class Interrupted(Exception):
    """Ctrl-C inside a command, after what it printed was ended cleanly (exit 130)."""


class ClosedPipe(Exception):
    """stdout's reader went away (exit 141, quietly). Not an OSError on purpose: Typer turns an
    EPIPE OSError into exit status 1."""


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def describe(exc: BaseException) -> tuple[str | None, int]:
    """The message to print (None: print nothing) and the exit status for `exc`. Anything not
    listed here is a bug, reported as `unexpected ...`."""
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return None, EXIT_INTERRUPTED
    if isinstance(exc, (BrokenPipeError, ClosedPipe)):
        return None, EXIT_CLOSED_PIPE
    if isinstance(exc, ParamError):
        return exc.for_flag(), exc.exit_code
    if isinstance(exc, Gpt2Error):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        return str(exc), EXIT_ERROR
    return f"unexpected {type(exc).__name__}: {exc}", EXIT_ERROR
