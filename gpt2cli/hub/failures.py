"""Why a download failed, in one line that says what helps: the Hub's and the transfer's errors
as a short reason, and a cache that cannot be written (read-only, someone else's, or a full
disk) told apart from the network, because running the command again cannot fix those.

huggingface_hub is imported inside functions; never torch."""

from __future__ import annotations

import errno
import os

from gpt2cli.errors import DownloadError
from gpt2cli.hub.progress import human_size

_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def network_errors() -> tuple[type[BaseException], ...]:
    """Transfer failures: huggingface_hub's `errors.HTTPError` is its HTTP client's base error
    (connection refused, timeouts, broken transfers), and Xet transfers have their own. OSError
    covers the rest (hub's HfHubHTTPError is one too); `cache_write_error` picks out the local
    ones first."""
    from huggingface_hub import errors

    found: tuple[type[BaseException], ...] = (OSError, errors.HTTPError)
    xet = getattr(errors, "XetDownloadError", None)
    return (*found, xet) if xet is not None else found


def first_line(exc: BaseException) -> str:
    """A short one-line reason: the HTTP status for Hub errors, else the message's first line."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status} {getattr(response, 'reason_phrase', '') or ''}".strip()
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _where() -> tuple[str, str]:
    """The cache folder, and the variable that moves it (HF_HUB_CACHE wins over HF_HOME)."""
    from huggingface_hub import constants

    variable = "HF_HUB_CACHE" if os.environ.get("HF_HUB_CACHE") else "HF_HOME"
    return constants.HF_HUB_CACHE, variable


def cache_write_error(exc: BaseException, kept: int = 0) -> DownloadError | None:
    """The error for a cache that cannot be written, or None when `exc` is something else (a
    network error: socket errors are OSErrors too, with other errnos, and HTTP errors have
    none). `kept`: bytes of a partial download left in the cache for the next run."""
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    local = code == errno.EROFS or (code in _NOT_WRITABLE and exc.filename is not None)
    cache, variable = _where()
    if local:
        fix = "" if code == errno.EROFS else ", or make the folder yours"
        return DownloadError(
            f"the Hugging Face cache at {cache} is not writable ({exc.strerror}): point "
            f"{variable} at a folder you can write, e.g. `export {variable}=~/hf-cache`{fix}"
        )
    if code in _NO_SPACE:
        resumes = (
            f"; the {human_size(kept)} downloaded so far are kept and the next run resumes"
            if kept
            else ""
        )
        return DownloadError(
            f"no space left on the disk of the Hugging Face cache at {cache} ({exc.strerror}): "
            f"free some space, or point {variable} at a larger disk{resumes}"
        )
    return None


def download_failed(filename: str, repo_id: str, exc: BaseException, kept: int = 0) -> Exception:
    """The one-line error for a failed download of `filename`; `kept` bytes of it stay in the
    cache, and the next run resumes from them."""
    local = cache_write_error(exc, kept)
    if local is not None:
        return local
    if kept:
        then = f"the {human_size(kept)} downloaded so far are kept: run the command again to resume"
    else:
        then = "nothing partial was kept, run the command again to retry"
    reason = first_line(exc)
    return DownloadError(f"downloading {filename} from {repo_id} failed ({reason}); {then}")
