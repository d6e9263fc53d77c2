"""Model names -> local checkpoint folders, through the standard Hugging Face cache.

Sizes map to openai-community repos, `owner/name` is any Hub repo of a GPT-2 checkpoint, and an
existing folder is used as is. Only what a GPT-2 run needs is fetched (never .bin, .h5, ...), and
config.json comes first so a repo that is not GPT-2 is refused before its weights download. Every
later file is pinned to the commit config.json came from: one snapshot folder holds a consistent
checkpoint, and a cached model costs one metadata request online and none offline.

huggingface_hub is imported inside functions (it pulls in httpx and tqdm); never torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from gpt2cli.errors import CheckpointError, DownloadError, ModelNotFoundError
from gpt2cli.hub.failures import download_failed, first_line, network_errors
from gpt2cli.hub.integrity import verify_blob
from gpt2cli.hub.names import DEFAULT_REVISION, SIZES, local_folder, repo_id_for
from gpt2cli.hub.progress import DownloadProgress, ProgressFactory, quiet_hub_logs
from gpt2cli.hub.transfer import fetch_blob, sweep_partials
from gpt2cli.model.config import SHARD_INDEX, SINGLE_FILE, read_config, shard_names
from gpt2cli.text.special_tokens import FILES as TOKENIZER_EXTRAS

_COMMIT = re.compile(r"[0-9a-f]{40}")


def resolve_model(
    name: str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    progress: ProgressFactory | None = None,
) -> Path:
    """Return the local folder holding checkpoint `name` (a size, a repo id, or a folder),
    downloading what is missing into the Hugging Face cache, with progress on stderr
    (`progress(repo_id)` makes the display; default: a plain line per file).

    offline: True never touches the network; None follows HF_HUB_OFFLINE.
    """
    folder = local_folder(name)
    if folder is not None:
        return folder
    repo_id = repo_id_for(name)
    offline_reason = "--offline" if offline else None
    if offline_reason is None:
        from huggingface_hub import constants

        if constants.is_offline_mode():
            offline_reason = "HF_HUB_OFFLINE=1"
    make_display = progress or DownloadProgress
    with quiet_hub_logs(), make_display(repo_id) as display:
        fetch = _Fetch(name, repo_id, revision or DEFAULT_REVISION, display, offline_reason)
        return fetch.run()


class _NotCached(Exception):
    """A file we may not download (offline or Hub unreachable) and that is not cached."""


class _Fetch:
    """One resolution of a repo id at a revision into a snapshot folder."""

    def __init__(
        self,
        name: str,
        repo_id: str,
        revision: str,
        display: DownloadProgress,
        offline_reason: str | None,
    ) -> None:
        self.name, self.repo_id, self.requested, self.revision = name, repo_id, revision, revision
        self.display = display
        self.offline_reason = offline_reason
        self.unreachable: str | None = None  # why the Hub could not be used, when it could not
        at = "" if revision == DEFAULT_REVISION else f"@{revision}"
        self.label = f"'{name}' ({repo_id}{at})" if name in SIZES else f"'{repo_id}{at}'"

    @property
    def local_only(self) -> bool:
        return self.offline_reason is not None or self.unreachable is not None

    def run(self) -> Path:
        try:
            if not self.local_only and not self._pinned_and_cached():
                self._probe()
            config = self._get("config.json")
            assert config is not None
            self._check_config(config)
            self.revision = config.parent.name  # the commit: every later file comes from it
            self._weights()
            self._tokenizer()
            self._tokenizer_extras()
            self._get("generation_config.json", optional=True)
            sweep_partials(self.repo_id)  # the checkpoint is whole: no partial file is needed
            return config.parent
        except _NotCached:
            raise self._not_cached_error() from None

    # -- the network --------------------------------------------------------------------------

    def _pinned_and_cached(self) -> bool:
        """A commit hash whose config is cached needs no metadata request."""
        return bool(_COMMIT.fullmatch(self.revision)) and self._cached("config.json")

    def _probe(self) -> None:
        """One HEAD on config.json: tells a missing repo or revision apart from an unreachable
        Hub (then a cached copy is used, with a warning, and nothing else touches the network)."""
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        url = hf_hub_url(self.repo_id, "config.json", revision=self.revision)
        try:
            meta = get_hf_file_metadata(url)
        except GatedRepoError:
            why = f"{self.repo_id} is gated: accept its terms on the Hub and set HF_TOKEN"
            return self._fall_back(why, ModelNotFoundError(f"cannot download {self.label}: {why}"))
        except RepositoryNotFoundError:
            why = f"{self.repo_id} was not found on the Hub (a private repo needs HF_TOKEN)"
            return self._fall_back(why, ModelNotFoundError(f"model {self.label}: {why}"))
        except RevisionNotFoundError:
            raise ModelNotFoundError(
                f"revision {self.requested!r} not found in {self.repo_id} "
                "(use a branch, a tag or a commit hash)"
            ) from None
        except RemoteEntryNotFoundError:
            raise CheckpointError(
                f"{self.repo_id} is not a GPT-2 checkpoint: it has no config.json"
            ) from None
        except HfHubHTTPError as exc:  # 5xx, 429, or access refused
            status = getattr(exc.response, "status_code", None)
            hint = ": check HF_TOKEN" if status in (401, 403) else ""
            why = f"the Hugging Face Hub at {constants.ENDPOINT} answered {first_line(exc)}{hint}"
            return self._fall_back(why, None)
        except network_errors() as exc:
            why = f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({first_line(exc)})"
            return self._fall_back(why, None)
        if meta.commit_hash is None:
            why = f"{constants.ENDPOINT} does not answer like a Hugging Face Hub"
            return self._fall_back(why, None)
        if self._cached_commit() == meta.commit_hash:
            # The cache already maps this revision to the Hub's commit: fetch by commit, so
            # cached files need no further request (hub re-checks a branch on every file).
            self.revision = meta.commit_hash

    def _cached_commit(self) -> str | None:
        """The commit the cache maps this revision to (through refs/), if its config is cached."""
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.repo_id, "config.json", revision=self.revision)
        return Path(found).parent.name if isinstance(found, str) else None

    def _fall_back(self, why: str, error: Exception | None) -> None:
        if not self._cached("config.json"):
            if error is not None:
                raise error
            self.unreachable = why
            raise _NotCached
        self.unreachable = why
        self.display.line(f"gpt2: warning: {why}; using the cached copy of {self.label}")

    def _get(
        self, filename: str, *, optional: bool = False, resumable: bool = False
    ) -> Path | None:
        """The cached path of `filename`, downloading it if allowed. None when the repo does not
        have it (optional files only). `resumable` (the weights): transfer.py moves the bytes,
        so that a stopped download resumes in the next run."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if optional and self._known_absent(filename):
            return None
        try:
            if resumable and not self.local_only and not self._cached(filename):
                fetch_blob(self.repo_id, filename, self.revision, self.display)
            path = hf_hub_download(
                self.repo_id,
                filename,
                revision=self.revision,
                local_files_only=self.local_only,
                tqdm_class=self.display.bar_class(filename),
            )
        except RemoteEntryNotFoundError:
            if optional:
                return None
            raise CheckpointError(f"{self.label} has no {filename} on the Hub") from None
        except LocalEntryNotFoundError as exc:
            if not self.local_only:  # the metadata request failed mid-run
                self.unreachable = f"lost the connection to the Hub ({first_line(exc)})"
            raise _NotCached from None
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise ModelNotFoundError(f"model {self.label}: {first_line(exc)}") from None
        except network_errors() as exc:  # the network, or a cache we cannot write
            raise download_failed(filename, self.repo_id, exc) from None
        return Path(path)

    def _cached(self, filename: str) -> bool:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(
            try_to_load_from_cache(self.repo_id, filename, revision=self.revision), str
        )

    def _known_absent(self, filename: str) -> bool:
        """The cache remembers (`.no_exist`) that this commit has no such file."""
        from huggingface_hub import _CACHED_NO_EXIST, try_to_load_from_cache

        found = try_to_load_from_cache(self.repo_id, filename, revision=self.revision)
        return found is _CACHED_NO_EXIST

    def _not_cached_error(self) -> Exception:
        rev = "" if self.requested == DEFAULT_REVISION else f" --revision {self.requested}"
        command = f"gpt2 download {self.name}{rev}"
        state = "only partly cached" if self._cached("config.json") else "not in the cache"
        if self.offline_reason == "--offline":
            return ModelNotFoundError(
                f"model {self.label} is {state} and --offline is set; "
                f"download it first with `{command}`"
            )
        if self.offline_reason is not None:
            return ModelNotFoundError(
                f"model {self.label} is {state} and HF_HUB_OFFLINE=1 is set; "
                f"unset it and run `{command}`"
            )
        return DownloadError(f"{self.unreachable}, and model {self.label} is {state}")

    # -- the checkpoint -----------------------------------------------------------------------

    def _check_config(self, path: Path) -> None:
        """Refuse a repo that is not a GPT-2 this code runs, before its weights download."""
        read_config(path.parent, self.label)

    def _weights(self) -> None:
        try:
            single = self._get(SINGLE_FILE, optional=True, resumable=True)
        except _NotCached:  # offline: a sharded copy may be cached instead
            if not self._cached(SHARD_INDEX):
                raise
            single = None
        if single is not None:
            self._verify(single, SINGLE_FILE)
            return
        index = self._get(SHARD_INDEX, optional=True)
        if index is None:
            raise CheckpointError(
                f"{self.label} has no safetensors weights (model.safetensors or its sharded "
                "index); gpt2cli never loads pytorch_model.bin"
            )
        try:
            shards = shard_names(index)
        except CheckpointError as exc:
            raise CheckpointError(f"{self.label}: {exc}") from None
        for shard in shards:
            path = self._get(shard, resumable=True)
            assert path is not None
            self._verify(path, shard)

    def _tokenizer(self) -> None:
        """tokenizer.json, else vocab.json + merges.txt. A repo with neither still resolves: the
        loader says what is missing (fine-tunes often ship weights only)."""
        try:
            if self._get("tokenizer.json", optional=True) is not None:
                return
        except _NotCached:
            if not self._cached("vocab.json"):
                raise
        if self._get("vocab.json", optional=True) is not None:
            self._get("merges.txt")

    def _tokenizer_extras(self) -> None:
        """The files that add a fine-tune's own tokens (text/special_tokens.py), when the repo
        has them. A copy cached before gpt2cli fetched them still loads offline, without them."""
        for name in TOKENIZER_EXTRAS:
            try:
                self._get(name, optional=True)
            except _NotCached:
                continue

    def _verify(self, pointer: Path, filename: str) -> None:
        verify_blob(pointer, filename, self.repo_id, self.display)
