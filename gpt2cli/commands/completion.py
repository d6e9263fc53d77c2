"""Shell completion of model names: the sizes, the repos in the Hugging Face cache, and folders.
It runs on every <TAB>, so it reads folder names and small config.json files only: no torch, no
network, no stat of every blob (huggingface_hub's `scan_cache_dir` does that)."""

from __future__ import annotations

import os
from pathlib import Path

from gpt2cli.hub.names import SIZES


def complete_model(incomplete: str) -> list[str]:
    """`-m`: the four sizes, then other cached repo ids, then folders (once something is typed,
    so that `-m <TAB>` stays a short list)."""
    from gpt2cli.hub.cache import cached_repo_ids  # on <TAB> only: ~20 ms of imports

    size_repos = set(SIZES.values())
    names = [*SIZES, *(r for r in cached_repo_ids() if r not in size_repos)]
    return [n for n in names if n.startswith(incomplete)] + _folders(incomplete)


def complete_cached_model(incomplete: str) -> list[str]:
    """`gpt2 rm`: what is in the cache, sizes by their name."""
    from gpt2cli.hub.cache import cached_repo_ids

    by_repo = {repo: size for size, repo in SIZES.items()}
    names = [by_repo.get(r, r) for r in cached_repo_ids()]
    return [n for n in names if n.startswith(incomplete)]


def _folders(incomplete: str) -> list[str]:
    """Sub-folders matching a partly typed path, written as typed (`./ck` -> `./ckpt/`, `~/m`
    -> `~/models/`); hidden ones only when a dot is typed."""
    if not incomplete:
        return []
    head, sep, tail = incomplete.rpartition("/")
    base = Path(os.path.expanduser(head + sep)) if sep else Path(".")
    try:
        with os.scandir(base) as entries:
            names = [
                e.name
                for e in entries
                if e.name.startswith(tail)
                and (tail.startswith(".") or not e.name.startswith("."))
                and e.is_dir()
            ]
    except OSError:
        return []
    return [f"{head}{sep}{name}/" for name in sorted(names)]
