"""Checking a downloaded blob against the sha256 the Hub publishes for it (its LFS etag), and
discarding a bad one so that the next run downloads it again; then, for a safetensors file,
that its header covers the file exactly: a file that is broken on the Hub itself (its sha256
matches) is the repo's fault, and is said so. Never touches the network, never imports torch.

Markers in a repo's cache folder remember each result: `.gpt2cli-verified/<sha256>` (empty)
and `.gpt2cli-broken/<sha256>` (the reason, one line), so a multi-GB file is hashed once."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from gpt2cli.errors import CheckpointError, DownloadError
from gpt2cli.hub.progress import DownloadProgress

VERIFIED_DIR = ".gpt2cli-verified"  # in a repo's cache folder: one empty file per checked blob
BROKEN_DIR = ".gpt2cli-broken"  # one file per blob broken on the Hub, holding the reason
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_BAR_MIN = 64 * 1024 * 1024  # show a "verifying" bar for files at least this big
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit on the JSON header


def verify_blob(
    pointer: Path, filename: str, repo_id: str, display: DownloadProgress | None = None
) -> None:
    """Check the blob behind a snapshot file against its LFS etag, which is the file's sha256,
    once (a marker remembers it). On a mismatch the blob and its links are deleted
    (DownloadError). A safetensors file the Hub serves broken is kept, and refused with a
    CheckpointError that blames the repo: downloading it again would get the same bytes."""
    blob = Path(os.path.realpath(pointer))
    etag = blob.name
    if not _SHA256.fullmatch(etag):  # not an LFS blob, or a cache without symlinks
        return
    repo_folder = blob.parent.parent
    marker = repo_folder / VERIFIED_DIR / etag
    if marker.exists():
        return
    known = broken_reason(repo_folder, etag)
    if known is not None:
        raise _broken_on_the_hub(filename, repo_id, known)
    actual = _sha256(blob, pointer.name, display)
    if actual != etag:
        discard_blob(blob)
        raise DownloadError(
            f"{filename} from {repo_id} is corrupt (sha256 {actual[:12]}..., the Hub says "
            f"{etag[:12]}...); it was deleted from the cache, run the command again"
        )
    problem = safetensors_problem(blob) if filename.endswith(".safetensors") else None
    if problem is not None:
        _remember(repo_folder / BROKEN_DIR / etag, problem)
        raise _broken_on_the_hub(filename, repo_id, problem)
    _remember(marker, "")


def broken_reason(repo_folder: Path, etag: str) -> str | None:
    """Why the blob `etag` of this repo is broken on the Hub, if a check found it so."""
    try:
        return (repo_folder / BROKEN_DIR / etag).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _broken_on_the_hub(filename: str, repo_id: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{filename} of {repo_id} is broken on the Hugging Face Hub ({problem}); its sha256 "
        "matches the Hub's, so a new download would get the same bytes: tell the repo's owner"
    )


def _sha256(blob: Path, name: str, display: DownloadProgress | None) -> str:
    size = blob.stat().st_size
    big = display is not None and size >= _HASH_BAR_MIN
    bar = display.hash_bar(name, size) if big and display is not None else None
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return digest.hexdigest()


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing, or None: an 8-byte header length, a
    JSON header, and tensor data that ends exactly at the end of the file. Only this framing:
    it needs no torch and reads a few bytes (the loader's safetensors library checks the rest).
    A file cut short, the usual breakage, fails here."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, less than a header"
        n = int.from_bytes(head, "little")
        if n > min(_MAX_HEADER, size - 8):
            return f"truncated or not safetensors: a {n:,}-byte header in a {size:,}-byte file"
        try:
            header = json.loads(f.read(n))
            ends = [
                int(meta["data_offsets"][1])
                for name, meta in header.items()
                if name != "__metadata__"
            ]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "not safetensors: its header is not a valid tensor index"
    expected = 8 + n + max(ends, default=0)
    if expected > size:
        return f"truncated: {size:,} bytes where its header describes {expected:,}"
    if expected < size:
        return f"{size - expected:,} bytes past the end of the data its header describes"
    return None


def _remember(marker: Path, text: str) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(text, encoding="utf-8")
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
