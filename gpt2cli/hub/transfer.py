"""Resumable downloads of the weights into the Hugging Face cache, and no partial file left
behind once a model is whole.

Why not `hf_hub_download` alone: huggingface_hub 2.4 cannot resume a download across runs. Its
`_download_to_tmp_and_move` writes each download to a file named for that one process,
`blobs/<etag>.<random>.incomplete`, and deletes it in a `finally:`. So a Ctrl-C or a network
failure past the library's own retries throws away what was downloaded (the next run of a 6 GB
xl starts from byte 0), and a SIGKILL (OOM killer, `kill -9`) leaves a file no run ever uses
or deletes (seen in tests/test_reliability_hub.py).

So for the weight files this module moves the bytes itself, with the library's own parts: the
metadata request (`get_hf_file_metadata`: etag, size, download URL), the per-blob lock every
huggingface_hub download of that blob takes, and `http_get`, which sends `Range: bytes=N-`,
starts over if the server ignores the range, retries a broken transfer and checks the size. The
partial file has a fixed name, `blobs/<etag>.incomplete` (the name huggingface_hub 1.x used), is
kept when the transfer stops, and is picked up by the next run. `hf_hub_download` then finds
the blob and only links it into the snapshot (and keeps `refs/`, `.no_exist/` as it does).

Files stored with Xet are fetched over the plain HTTP URL the Hub gives for them, as
huggingface_hub does when hf_xet is not installed: an Xet transfer cannot resume from a partial
file.

huggingface_hub is imported inside functions; never torch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from gpt2cli.hub.failures import download_failed, network_errors
from gpt2cli.hub.progress import DownloadProgress, human_size

_SUFFIX = ".incomplete"


def _storage(repo_id: str) -> tuple[Path, Path]:
    """The repo's folder in the cache and its folder of locks."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    name = repo_folder_name(repo_id=repo_id, repo_type="model")
    cache = Path(constants.HF_HUB_CACHE)
    return cache / name, cache / ".locks" / name


def fetch_blob(repo_id: str, filename: str, commit: str, display: DownloadProgress) -> None:
    """Put the blob of `filename` at `commit` into the repo's blobs/, resuming a partial file,
    unless it is there already. A failed metadata request does nothing: the `hf_hub_download`
    the caller runs next meets it again and handles it (it records a missing file in
    `.no_exist`, and raises the library's errors)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import WeakFileLock

    url = hf_hub_url(repo_id, filename, revision=commit)
    try:
        meta = get_hf_file_metadata(url)
    except network_errors():
        return
    if meta.etag is None or meta.location is None:
        return
    storage, locks = _storage(repo_id)
    blobs = storage / "blobs"
    blob = blobs / meta.etag
    if blob.exists():
        return
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        locks.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise download_failed(filename, repo_id, exc) from None
    with WeakFileLock(locks / f"{meta.etag}.lock"):
        if blob.exists():  # another process downloaded it while we waited
            return
        # Under the lock no live download writes this blob: every partial of it is ours now.
        partial = _adopt_partial(blobs, meta.etag, written_in_order=meta.xet_file_data is None)
        source, headers = _source(url, meta.location, meta.xet_file_data is None)
        _transfer(partial, source, headers, meta.size, repo_id, filename, display)
        os.replace(partial, blob)


def _adopt_partial(blobs: Path, etag: str, *, written_in_order: bool) -> Path:
    """The partial file to resume: ours (`<etag>.incomplete`), or the largest one a killed
    huggingface_hub download left (`<etag>.<id>.incomplete`) when the library wrote it front to
    back (plain HTTP; Xet may write out of order). Every other partial of the blob is deleted."""
    ours = blobs / f"{etag}{_SUFFIX}"
    theirs = sorted(blobs.glob(f"{etag}.*{_SUFFIX}"), key=_size, reverse=True)
    if written_in_order and theirs and _size(theirs[0]) > _size(ours):
        os.replace(theirs.pop(0), ours)
    for orphan in theirs:
        orphan.unlink(missing_ok=True)
    return ours


def _source(url: str, location: str, plain: bool) -> tuple[str, dict[str, str]]:
    """Where to GET the bytes, with which headers, as huggingface_hub decides it (its private
    `_get_metadata_or_catch_error`): the redirect target of a plain file, without the token
    unless that target is the Hub itself (a signed CDN URL needs none); an Xet file through its
    resolve URL."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers()
    if not plain or location == url:
        return url, headers
    hub = {_origin(u) for u in (url, constants.ENDPOINT, "https://huggingface.co", "https://hf.co")}
    if _origin(location) not in hub:
        headers.pop("authorization", None)
    return location, headers


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _transfer(
    partial: Path,
    url: str,
    headers: dict[str, str],
    size: int | None,
    repo_id: str,
    filename: str,
    display: DownloadProgress,
) -> None:
    """Append the rest of the file to `partial`. A stopped transfer keeps what it wrote (the
    next run resumes), except bytes that failed the size check."""
    from huggingface_hub.file_download import http_get

    done = _size(partial)
    if size is not None and done > size:  # not a prefix of this file
        partial.unlink()
        done = 0
    _warn_if_short_of_space(partial.parent, filename, size, done, display)
    try:
        with open(partial, "ab") as f:  # positioned at its end: `done`
            http_get(
                url,
                f,
                resume_size=done,
                headers=headers,
                expected_size=size,
                displayed_filename=filename,
                tqdm_class=display.bar_class(filename),
            )
    except KeyboardInterrupt:
        kept = _keep_or_delete(partial)
        if kept:
            display.line(
                f"gpt2: {human_size(kept)} of {filename} kept in the cache: "
                "run the command again to resume"
            )
        raise
    except network_errors() as exc:
        wrong_size = isinstance(exc, OSError) and "Consistency check failed" in str(exc)
        if wrong_size:
            partial.unlink(missing_ok=True)
        kept = 0 if wrong_size else _keep_or_delete(partial)
        raise download_failed(filename, repo_id, exc, kept) from None


def _keep_or_delete(partial: Path) -> int:
    """The bytes of `partial` kept for the next run; an empty one is deleted."""
    kept = _size(partial)
    if not kept:
        partial.unlink(missing_ok=True)
    return kept


def _warn_if_short_of_space(
    folder: Path, filename: str, size: int | None, done: int, display: DownloadProgress
) -> None:
    """One line before a transfer that the disk cannot hold (huggingface_hub warns with
    `warnings.warn`, which prints its own source line; we silence that one)."""
    if size is None:
        return
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < size - done:
        display.line(
            f"gpt2: warning: {filename} needs {human_size(size - done)} more but only "
            f"{human_size(free)} is free in {folder}"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def sweep_partials(repo_id: str) -> None:
    """Delete the partial downloads left in the repo's blobs/ that no live download holds. Run
    once every file a checkpoint needs is in place: what is left is an older commit's file, or
    what a killed huggingface_hub download left, which would otherwise stay forever."""
    from huggingface_hub.utils import WeakFileLock

    storage, locks = _storage(repo_id)
    try:
        partials = list((storage / "blobs").glob(f"*{_SUFFIX}"))
    except OSError:
        return
    for partial in partials:
        etag = partial.name.split(".", 1)[0]
        try:
            # A download in progress holds its blob's lock: wait a moment, then leave it be
            # (filelock's Timeout is an OSError; so is a cache we may not write).
            with WeakFileLock(locks / f"{etag}.lock", timeout=0.1):
                partial.unlink(missing_ok=True)
        except OSError:
            pass
