"""The Hugging Face cache on disk: what it holds of GPT-2 (`gpt2 models`) and removing a model
or one revision of it (`gpt2 rm`), through huggingface_hub's cache API. Never touches the
network, never imports torch."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpt2cli.errors import Gpt2Error, ModelNotFoundError, UsageError
from gpt2cli.hub.integrity import broken_reason
from gpt2cli.hub.names import DEFAULT_REVISION, SIZES, local_folder, repo_id_for
from gpt2cli.hub.progress import human_size
from gpt2cli.model.config import (
    SHARD_INDEX,
    SINGLE_FILE,
    is_complete,
    is_gpt2_config,
    weight_files,
)


@dataclass(frozen=True)
class CachedModel:
    """One row of `gpt2 models`: a size or a cached GPT-2 repo at one revision."""

    name: str  # the size name, or the repo id for other repos
    repo_id: str
    revision: str  # the refs pointing at it ("main", "v1"), else the short commit
    commit: str | None
    size_on_disk: int
    status: str  # "yes" (config and all weights cached), "partial", "unusable", or "no"
    path: Path | None
    note: str = ""  # why it is unusable; what a partial download kept


@dataclass(frozen=True)
class Removal:
    """What `gpt2 rm` is about to delete; `execute()` does it."""

    label: str
    size_on_disk: int
    execute: Callable[[], None]


def cache_dir() -> Path:
    """The hub cache folder (HF_HUB_CACHE, or HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _scan():  # -> HFCacheInfo | None
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(cache_dir())
    except CacheNotFound:
        return None


def _is_gpt2(folder: Path) -> bool:
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return is_gpt2_config(raw) and isinstance(raw, dict) and "model_type" in raw


def cached_repo_ids() -> list[str]:
    """Repo ids of every cached GPT-2 model. Read from the cache's folder names and snapshot
    config.json files, without `scan_cache_dir` (which stats every blob): shell completion
    calls this on every <TAB>. No torch, no network."""
    try:
        folders = sorted(cache_dir().glob("models--*"))
    except OSError:
        return []
    found = []
    for folder in folders:
        try:
            snapshots = list((folder / "snapshots").iterdir())
        except OSError:
            continue
        if any(_is_gpt2(snapshot) for snapshot in snapshots):
            # The cache's own naming (huggingface_hub's repo_folder_name): "--" joins the parts;
            # a repo id cannot contain "--".
            found.append(folder.name.removeprefix("models--").replace("--", "/"))
    return sorted(found)


def cached_models() -> list[CachedModel]:
    """The four sizes (cached or not) and every other cached GPT-2 repo, one row per revision."""
    info = _scan()
    repos = [r for r in info.repos if r.repo_type == "model"] if info is not None else []
    by_id = {r.repo_id: r for r in repos}
    names = {repo_id: size for size, repo_id in SIZES.items()}
    others = [r for r in cached_repo_ids() if r not in names]
    rows: list[CachedModel] = []
    for repo_id in [*SIZES.values(), *others]:
        name = names.get(repo_id, repo_id)
        repo = by_id.get(repo_id)
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified) if repo else []
        if not revisions:
            rows.append(CachedModel(name, repo_id, DEFAULT_REVISION, None, 0, "no", None))
        kept = _partial_bytes(info, repo.repo_path) if info is not None and repo else 0
        for rev in revisions:
            status, note = _status(repo_id, rev.snapshot_path, rev.commit_hash, kept)
            rows.append(
                CachedModel(
                    name=name,
                    repo_id=repo_id,
                    revision=", ".join(sorted(rev.refs)) or rev.commit_hash[:12],
                    commit=rev.commit_hash,
                    size_on_disk=rev.size_on_disk,
                    status=status,
                    path=rev.snapshot_path,
                    note=note,
                )
            )
    return rows


def _partial_bytes(info, repo_path: Path) -> int:  # info: HFCacheInfo
    """Bytes of stopped downloads kept in the repo's blobs/ for the next run to resume."""
    return sum(
        f.size_on_disk for f in info.incomplete_files if f.file_path.parent.parent == repo_path
    )


def _status(repo_id: str, snapshot: Path, commit: str, kept: int) -> tuple[str, str]:
    """yes, partial (a download can finish it), or unusable (no download can: the Hub has no
    safetensors weights at this commit, or serves them broken), with a note saying why."""
    if is_complete(snapshot):
        for file in weight_files(snapshot):
            blob = Path(os.path.realpath(file))
            problem = broken_reason(blob.parent.parent, blob.name)
            if problem is not None:
                return "unusable", f"{file.name} is broken on the Hub ({problem})"
        return "yes", ""
    if _known_absent(repo_id, SINGLE_FILE, commit) and _known_absent(repo_id, SHARD_INDEX, commit):
        return "unusable", "no safetensors weights on the Hub"
    if kept:
        return "partial", f"{human_size(kept)} of a download kept: gpt2 download resumes it"
    return "partial", ""


def _known_absent(repo_id: str, filename: str, commit: str) -> bool:
    """The cache remembers (`.no_exist`) that the Hub has no such file at this commit."""
    from huggingface_hub import _CACHED_NO_EXIST, try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=commit, cache_dir=cache_dir())
    return found is _CACHED_NO_EXIST


def plan_removal(name: str, revision: str | None = None) -> Removal:
    """What removing `name` (every cached revision, or just `revision`) would delete. Only that
    repo is considered: another repo that shares a commit hash (mirrors pushed from one git
    history) is never touched."""
    if local_folder(name) is not None:
        raise UsageError(
            f"{name!r} is a local folder, not a cached model; gpt2 rm only removes models "
            "from the Hugging Face cache"
        )
    repo_id = repo_id_for(name)
    info = _scan()
    repos = info.repos if info is not None else ()
    repo = next((r for r in repos if r.repo_id == repo_id and r.repo_type == "model"), None)
    if info is None or repo is None:
        raise ModelNotFoundError(f"{repo_id} is not in the cache ({cache_dir()})")
    only_this_repo = dataclasses.replace(info, repos=frozenset({repo}))
    if revision is None:
        commits = [rev.commit_hash for rev in repo.revisions]
        label = repo_id
    else:
        commits = [rev.commit_hash for rev in repo.revisions if _matches(rev, revision)]
        if len(commits) != 1:
            raise ModelNotFoundError(f"revision {revision!r} of {repo_id} is not in the cache")
        label = f"{repo_id}@{revision}"
    strategy = only_this_repo.delete_revisions(*commits)
    if not commits:  # a repo folder with no snapshot left (debris): remove the folder
        strategy = dataclasses.replace(strategy, repos=frozenset({repo.repo_path}))
    # Second guard: huggingface_hub's delete_revisions assumes a commit belongs to one repo.
    planned = [*strategy.repos, *strategy.snapshots, *strategy.blobs, *strategy.refs]
    outside = [p for p in planned if not Path(p).is_relative_to(repo.repo_path)]
    if outside:
        raise Gpt2Error(f"refusing to remove {outside[0]}: it is outside {repo.repo_path}")
    size = repo.size_on_disk if revision is None else strategy.expected_freed_size
    return Removal(label, size, strategy.execute)


def _matches(rev, revision: str) -> bool:  # rev: CachedRevisionInfo
    """A branch or tag pointing at `rev`, or a prefix (7+ characters) of its commit hash."""
    return revision in rev.refs or (len(revision) >= 7 and rev.commit_hash.startswith(revision))
