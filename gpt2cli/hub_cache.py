"""The Hugging Face cache on disk: what it holds of GPT-2 (`gpt2 models`), removing a model
(`gpt2 rm`), and checking a downloaded blob against its sha256. Never touches the network."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpt2cli.errors import DownloadError, ModelNotFoundError, UsageError
from gpt2cli.hub import DEFAULT_REVISION, SIZES, local_folder, repo_id_for
from gpt2cli.hub_progress import DownloadDisplay

VERIFIED_DIR = ".gpt2cli-verified"  # in a repo's cache folder: one empty file per checked blob
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_BAR_MIN = 64 * 1024 * 1024  # show a "verifying" bar for files at least this big


@dataclass(frozen=True)
class CachedModel:
    """One row of `gpt2 models`: a size or a cached GPT-2 repo at one revision."""

    name: str  # the size name, or the repo id for other repos
    repo_id: str
    revision: str  # the refs pointing at it ("main", "v1"), else the short commit
    commit: str | None
    size_on_disk: int
    status: str  # "yes" (config and all weights cached), "partial", or "no"
    path: Path | None


@dataclass(frozen=True)
class Removal:
    """What `gpt2 rm` is about to delete; `execute()` does it."""

    label: str
    size_on_disk: int
    execute: Callable[[], None]


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _repo_folder(repo_id: str) -> Path:
    return _cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _is_complete(folder: Path) -> bool:
    """config.json and every safetensors file of the checkpoint are present."""
    if not (folder / "config.json").is_file():
        return False
    if (folder / "model.safetensors").is_file():
        return True
    index = folder / "model.safetensors.index.json"
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((folder / shard).is_file() for shard in shards)


def _is_gpt2(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "gpt2"


def cached_models() -> list[CachedModel]:
    """The four sizes (cached or not) and every other cached GPT-2 repo, one row per revision."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = [r for r in scan_cache_dir(_cache_dir()).repos if r.repo_type == "model"]
    except CacheNotFound:
        repos = []
    by_id = {r.repo_id: r for r in repos}
    names = {repo_id: size for size, repo_id in SIZES.items()}
    others = sorted(
        r.repo_id
        for r in repos
        if r.repo_id not in names and any(_is_gpt2(rev.snapshot_path) for rev in r.revisions)
    )
    rows: list[CachedModel] = []
    for repo_id in [*SIZES.values(), *others]:
        name = names.get(repo_id, repo_id)
        repo = by_id.get(repo_id)
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified) if repo else []
        if not revisions:
            rows.append(CachedModel(name, repo_id, DEFAULT_REVISION, None, 0, "no", None))
        for rev in revisions:
            rows.append(
                CachedModel(
                    name=name,
                    repo_id=repo_id,
                    revision=", ".join(sorted(rev.refs)) or rev.commit_hash[:12],
                    commit=rev.commit_hash,
                    size_on_disk=rev.size_on_disk,
                    status="yes" if _is_complete(rev.snapshot_path) else "partial",
                    path=rev.snapshot_path,
                )
            )
    return rows


def _commit_for(folder: Path, revision: str) -> str | None:
    ref = folder / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip()
    snapshots = folder / "snapshots"
    matches = [p.name for p in snapshots.iterdir() if p.name.startswith(revision)]
    return matches[0] if len(matches) == 1 and len(revision) >= 7 else None


def plan_removal(name: str, revision: str | None = None) -> Removal:
    """What removing `name` (every cached revision, or just `revision`) would delete."""
    if local_folder(name) is not None:
        raise UsageError(
            f"{name!r} is a local folder, not a cached model; gpt2 rm only removes models "
            "from the Hugging Face cache"
        )
    repo_id = repo_id_for(name)
    folder = _repo_folder(repo_id)
    if not (folder / "snapshots").is_dir():
        raise ModelNotFoundError(f"{repo_id} is not in the cache ({_cache_dir()})")
    if revision is None:
        size = sum(
            p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
        )

        def remove_repo() -> None:
            shutil.rmtree(folder)
            shutil.rmtree(_cache_dir() / ".locks" / folder.name, ignore_errors=True)

        return Removal(repo_id, size, remove_repo)

    from huggingface_hub import scan_cache_dir

    commit = _commit_for(folder, revision)
    if commit is None:
        raise ModelNotFoundError(f"revision {revision!r} of {repo_id} is not in the cache")
    strategy = scan_cache_dir(_cache_dir()).delete_revisions(commit)
    if not (strategy.snapshots or strategy.repos):
        raise ModelNotFoundError(
            f"the cache entry of {repo_id} is damaged; remove the whole model with `gpt2 rm {name}`"
        )
    return Removal(f"{repo_id}@{revision}", strategy.expected_freed_size, strategy.execute)


def verify_blob(pointer: Path, what: str, display: DownloadDisplay | None = None) -> None:
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
