"""Checking a downloaded blob against the sha256 the Hub publishes for it (its LFS etag), and
discarding a bad one so that the next run downloads it again. Never touches the network."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from gpt2cli.errors import DownloadError
from gpt2cli.hub.progress import DownloadProgress

VERIFIED_DIR = ".gpt2cli-verified"  # in a repo's cache folder: one empty file per checked blob
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_BAR_MIN = 64 * 1024 * 1024  # show a "verifying" bar for files at least this big


def verify_blob(pointer: Path, what: str, display: DownloadProgress | None = None) -> None:
    """Check the blob behind a snapshot file against its LFS etag, which is the file's sha256,
    once (a marker remembers it). On a mismatch the blob and its links are deleted."""
    blob = Path(os.path.realpath(pointer))
    etag = blob.name
    if not _SHA256.fullmatch(etag):  # not an LFS blob, or a cache without symlinks
        return
    marker = blob.parent.parent / VERIFIED_DIR / etag
    if marker.exists():
        return
    size = blob.stat().st_size
    big = display is not None and size >= _HASH_BAR_MIN
    bar = display.hash_bar(pointer.name, size) if big and display is not None else None
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    actual = digest.hexdigest()
    if actual != etag:
        discard_blob(blob)
        raise DownloadError(
            f"{what} is corrupt (sha256 {actual[:12]}..., the Hub says {etag[:12]}...); "
            "it was deleted from the cache, run the command again"
        )
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only cache: check again next time
        pass


def discard_blob(blob: Path) -> None:
    """Delete a cached blob and every snapshot link to it. The blob goes first: a dangling link
    reads as missing, so huggingface_hub downloads the file again rather than using it."""
    blob.unlink(missing_ok=True)
    snapshots = blob.parent.parent / "snapshots"
    for link in snapshots.glob("*/**/*") if snapshots.is_dir() else ():
        if link.is_symlink() and Path(os.path.realpath(link)) == blob:
            link.unlink(missing_ok=True)
