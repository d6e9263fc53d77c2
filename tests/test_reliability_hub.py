"""Reliability of the model cache (issue 10, items 1-4, 10, 12, 16): `gpt2 rm`, `gpt2 download`
and completion against a fake Hub (tests/fakehub.py), with the standard Hugging Face cache in a
temp HF_HOME. Each test drives the installed `gpt2` in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.checkpoints import build_checkpoint
from tests.support.cli import gpt2
from tests.support.fakehub import FakeHub, gpt2_command, repo_cache, run_gpt2

REPO = "test/tiny"
SHARED_COMMIT = "5eed" * 10  # one git history pushed to several repos: one commit sha


# -- helpers --------------------------------------------------------------------------------------


def hub_cache() -> Path:
    return Path(os.environ["HF_HOME"]) / "hub"


def download(*args: str) -> Path:
    result = run_gpt2("download", *args)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def error_line(result: subprocess.CompletedProcess) -> str:
    """Exit 1, no traceback, and stderr is `gpt2: downloading ...` / `gpt2: warning: ...` lines
    then one `gpt2: error:` line, which is returned."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("gpt2: error: "), result.stderr
    for line in lines[:-1]:
        assert line.startswith(("gpt2: downloading ", "gpt2: warning: ")), result.stderr
    return lines[-1]


def models() -> dict[str, list[dict[str, str]]]:
    """`gpt2 models` on a pipe: the rows of each name."""
    result = run_gpt2("models")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    rows: dict[str, list[dict[str, str]]] = {}
    for line in lines:
        row = dict(zip(header.split("\t"), line.split("\t")))
        rows.setdefault(row["name"], []).append(row)
    return rows


def incomplete_files() -> list[Path]:
    """Partial downloads anywhere in the cache."""
    return [p for p in hub_cache().rglob("*") if p.name.endswith(".incomplete")]


def partial_bytes() -> int:
    """The most bytes any partial download holds (0 when there is none)."""
    sizes = [0]
    for path in incomplete_files():
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return max(sizes)


def wait_for(what: str, condition: Callable[[], object], timeout: float = 60) -> object:
    """Poll `condition` until it is truthy (a signal, never a fixed sleep); fail after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def sharded_copy(checkpoint: Path, folder: Path) -> Path:
    """`checkpoint` with its weights split in two safetensors shards plus an index."""
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(checkpoint / name, folder / name)
    tensors = load_file(checkpoint / "model.safetensors")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def snapshot_files(repo_id: str) -> list[Path]:
    return sorted(p for p in (repo_cache(repo_id) / "snapshots").rglob("*") if not p.is_dir())


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~14 MB of weights: more than huggingface_hub's 10 MB write chunk, so a killed download
    leaves bytes on disk."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "big", n_layer=4, n_embd=256)


# -- 1. rm --revision -----------------------------------------------------------------------------


def test_rm_revision_removes_only_the_named_repo(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """User saw: with several repos cached at one commit (mirrors pushed from one git history),
    `gpt2 rm test/tinyhub --revision main --yes` printed `removed test/tinyhub@main` and deleted
    another repo (`delete_revisions(commit)` is cache-wide and takes the first repo holding that
    commit). Expected: exactly the named repo's revision goes; every other repo stays whole."""
    sharded = sharded_copy(tiny_checkpoint, tmp_path / "sharded")
    for repo, folder in (
        ("test/tiny", tiny_checkpoint),
        ("test/sharded", sharded),
        ("test/tinyhub", tiny_checkpoint),
    ):
        fake_hub.add_repo(repo, folder, commit=SHARED_COMMIT)
        assert download(repo).name == SHARED_COMMIT
    # More mirrors of that history, as other tools cached them (a copy of the cache folder, blobs
    # hard-linked): which repo today's code empties depends on set order; with 23 candidates it
    # is almost never the named one.
    for i in range(20):
        shutil.copytree(
            repo_cache("test/tiny"),
            repo_cache(f"test/mirror-{i}"),
            symlinks=True,
            copy_function=os.link,
        )
    repos = ["test/tiny", "test/sharded", "test/tinyhub", *(f"test/mirror-{i}" for i in range(20))]
    files = {repo: snapshot_files(repo) for repo in repos}

    for victim in ("test/tinyhub", "test/sharded"):
        result = run_gpt2("rm", victim, "--revision", "main", "--yes")
        assert result.returncode == 0, result.stderr
        assert f"removed {victim}@main" in result.stderr
        assert not (repo_cache(victim) / "snapshots" / SHARED_COMMIT).exists(), (
            f"{victim}@main is still cached"
        )
        repos.remove(victim)
        damaged = [r for r in repos if not all(p.is_file() for p in files[r])]
        assert damaged == [], f"`gpt2 rm {victim} --revision main` removed files of {damaged}"


# -- 2. a killed download -------------------------------------------------------------------------


def test_killed_download_resumes_and_leaves_no_partial_file(
    fake_hub: FakeHub, big_checkpoint: Path
) -> None:
    """User saw: a download killed with SIGKILL (OOM killer, closed laptop, `kill -9`) leaves
    `blobs/<sha>.<id>.incomplete`; the next run downloads from byte 0 and the orphan stays in the
    cache forever. Expected: the next run resumes from the partial file with an HTTP Range
    request, and no `*.incomplete` file is left anywhere in the cache."""
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    fake_hub.add_repo(REPO, big_checkpoint)
    fake_hub.hold["model.safetensors"] = DOWNLOAD_CHUNK_SIZE + 1_000_000  # then it hangs
    proc = subprocess.Popen(
        [*gpt2_command(), "download", REPO],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the weights' GET", lambda: fake_hub.requests("GET", "model.safetensors"))
        wait_for("bytes of model.safetensors on disk", partial_bytes)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = partial_bytes()
    fake_hub.hold.clear()
    fake_hub.release()
    killed_gets = len(fake_hub.requests("GET", "model.safetensors"))

    folder = download(REPO)
    data = (big_checkpoint / "model.safetensors").read_bytes()
    assert (folder / "model.safetensors").read_bytes() == data
    ranges = [r.range for r in fake_hub.requests("GET", "model.safetensors")[killed_gets:]]
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in ranges if r]
    assert starts and 0 < starts[0] <= partial, (
        f"the run after the kill requested {ranges}: it did not resume from the {partial} bytes "
        "already on disk"
    )
    assert incomplete_files() == []


# -- 3. debris of a failed download ---------------------------------------------------------------


def test_failed_download_of_a_bin_only_repo_is_not_listed_as_partial(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """User saw: `gpt2 download` of a repo with only pytorch_model.bin fails (rightly), but
    leaves its config.json in the cache; `gpt2 models` then lists the repo as `partial`, as if
    finishing the download would make it usable. Expected: the debris is cleaned up, or the row
    says the repo is unusable (not `partial`); and an offline run does not suggest `gpt2
    download`, which cannot help."""
    folder = tmp_path / "withbin"
    folder.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", folder / "config.json")
    fake_hub.add_repo("test/withbin", folder, files={"pytorch_model.bin": b"\x80\x02" * 4096})
    line = error_line(run_gpt2("download", "test/withbin"))
    assert "pytorch_model.bin" in line

    rows = models().get("test/withbin", [])
    assert [r["downloaded"] for r in rows if r["downloaded"] == "partial"] == [], (
        f"gpt2 models lists the failed download as {rows}"
    )
    for args, env in (
        (["download", "test/withbin"], {"HF_HUB_OFFLINE": "1"}),
        (["generate", "-m", "test/withbin", "--offline", "Hi"], {}),
    ):
        line = error_line(run_gpt2(*args, env=env))
        assert "gpt2 download" not in line, line


# -- 4. a broken file on the Hub ------------------------------------------------------------------


def test_truncated_safetensors_on_the_hub_is_blamed_on_the_repo(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """User saw: a repo whose model.safetensors is itself truncated (its sha256 matches what the
    Hub announces) downloads fine, then fails with "it may be truncated: delete it and download
    again", which fetches the same broken bytes. Expected: one error line saying the repo's file
    is broken, naming the repo and the file, and no advice to delete or download again."""
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    fake_hub.add_repo("test/broken", broken)

    line = error_line(run_gpt2("generate", "-m", "test/broken", "-n", "1", "Hi"))
    assert "test/broken" in line and "model.safetensors" in line, line
    assert "download again" not in line and "delete it" not in line, line


# -- 10. disk full, read-only cache ---------------------------------------------------------------

DISK_FULL = """\
# The disk is full: huggingface_hub sees no free space and every download write fails.
import collections, errno, io, os, shutil

_usage = collections.namedtuple("usage", "total used free")
shutil.disk_usage = lambda path: _usage(10**9, 10**9, 0)
_open = io.open


class _Full(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _open_on_a_full_disk(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith(".incomplete"):
        if "w" in mode:
            return _Full(file, "w")
    return _open(file, mode, *args, **kwargs)


io.open = _open_on_a_full_disk
"""

READ_ONLY = """\
# Every write under GPT2_TEST_READ_ONLY fails with GPT2_TEST_ERRNO, as on a read-only mount
# (EROFS) or a cache owned by someone else (EACCES), whoever runs the tests (root included).
import builtins, errno, io, os

_root = os.path.realpath(os.environ["GPT2_TEST_READ_ONLY"])
_errno = getattr(errno, os.environ["GPT2_TEST_ERRNO"])


def _inside(path):
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:  # a file descriptor
        return False
    path = os.path.realpath(os.path.join(os.getcwd(), path))
    return path == _root or path.startswith(_root + os.sep)


def _guard(real, writes=lambda *a, **k: True, paths=1):
    def guarded(*a, **k):
        if writes(*a, **k) and any(_inside(p) for p in a[:paths]):
            raise OSError(_errno, os.strerror(_errno), os.fspath(a[0]))
        return real(*a, **k)

    return guarded


def _writing_mode(file, mode="r", *a, **k):
    return any(c in mode for c in "wax+")


def _writing_flags(path, flags, *a, **k):
    return flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)


_real_access = os.access


def _access(path, mode, *a, **k):
    return not (mode & os.W_OK and _inside(path)) and _real_access(path, mode, *a, **k)


builtins.open = io.open = _guard(io.open, _writing_mode)
os.open = _guard(os.open, _writing_flags)
os.access = _access
for _name in ("mkdir", "rmdir", "unlink", "remove", "utime", "chmod"):
    setattr(os, _name, _guard(getattr(os, _name)))
for _name in ("symlink", "link", "rename", "replace"):
    setattr(os, _name, _guard(getattr(os, _name), paths=2))
"""


def shim(tmp_path: Path, source: str) -> dict[str, str]:
    """The environment that loads `source` as sitecustomize.py in the gpt2 subprocess."""
    folder = tmp_path / "shim"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(source)
    path = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path)}


def test_disk_full_is_one_clean_error(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """User saw: with the disk full, huggingface_hub's raw `UserWarning: Not enough free disk
    space ...` leaked to stderr with its source line (`warnings.warn(`) before gpt2's error.
    Expected: only gpt2's own lines on stderr, the error saying the disk is full."""
    fake_hub.add_repo(REPO, tiny_checkpoint)
    result = run_gpt2("download", REPO, env=shim(tmp_path, DISK_FULL))
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr, (
        result.stderr
    )
    line = error_line(result)
    assert "space" in line, line


@pytest.mark.parametrize("errno_name", ["EROFS", "EACCES"])
def test_read_only_cache_says_so_and_how_to_move_it(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path, errno_name: str
) -> None:
    """User saw: with a cache they cannot write (a read-only mount, a shared cache owned by
    another user), `gpt2 download` ended with "run the command again to retry", which cannot
    help. Expected: the error says the cache is not writable and how to point HF_HOME elsewhere.
    (Writes are refused by a sitecustomize shim: chmod does not stop root.)"""
    fake_hub.add_repo(REPO, tiny_checkpoint)
    hub_cache().mkdir(parents=True)
    env = {**shim(tmp_path, READ_ONLY), "GPT2_TEST_READ_ONLY": str(hub_cache())}
    result = run_gpt2("download", REPO, env={**env, "GPT2_TEST_ERRNO": errno_name})
    line = error_line(result)
    assert "HF_HOME" in line, line
    assert "writ" in line or "read-only" in line, line
    assert "run the command again" not in line and "retry" not in line, line
    assert list(hub_cache().iterdir()) == []  # the shim did refuse every write


# -- 12. the rm question on /dev/null -------------------------------------------------------------


def test_rm_question_on_dev_null_goes_to_stderr_with_a_newline(
    fake_hub: FakeHub, tiny_checkpoint: Path
) -> None:
    """User saw: `gpt2 rm test/tiny < /dev/null` wrote a stray space on stdout and
    `... [y/N]:gpt2: nothing removed` on stderr, the answer glued to the question. Expected:
    nothing on stdout; the question on stderr, ended by a newline, then `gpt2: nothing
    removed` on a line of its own; the model stays."""
    fake_hub.add_repo(REPO, tiny_checkpoint)
    download(REPO)
    result = gpt2("rm", REPO)  # stdin is /dev/null
    assert result.returncode == 1, result.stderr
    assert result.stdout == "", repr(result.stdout)
    lines = result.stderr.splitlines()
    assert "gpt2: nothing removed" in lines, repr(result.stderr)
    question = [line for line in lines if "from the cache?" in line]
    assert len(question) == 1 and "nothing removed" not in question[0], repr(result.stderr)
    assert repo_cache(REPO).is_dir()


# -- 16. completion of model names ----------------------------------------------------------------


def bash_complete(words: str, cwd: Path | None = None) -> tuple[list[str], set[str]]:
    """Complete `words` as bash does (click's protocol); return the candidates and every module
    the completion imported."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {
        **os.environ,
        "_GPT2_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpt2cli"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        timeout=60,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "gpt2cli.cli" in modules, proc.stderr[-2000:]
    return proc.stdout.split(), modules


def test_completion_offers_cached_repos_and_folders(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """User saw: `gpt2 rm <TAB>` offered nothing and `gpt2 generate -m <TAB>` only the four
    sizes. Expected: cached repo ids for both (read from the cache, without importing torch),
    and folders for -m."""
    fake_hub.add_repo("tester/tiny", tiny_checkpoint)
    download("tester/tiny")
    work = tmp_path / "work"
    shutil.copytree(tiny_checkpoint, work / "ckpt-folder")

    for words in ("gpt2 rm ", "gpt2 generate -m "):
        found, modules = bash_complete(words, cwd=work)
        assert "tester/tiny" in found, (words, found)
        assert not any(m == "torch" or m.startswith("torch.") for m in modules), words
    assert bash_complete("gpt2 rm tes", cwd=work)[0] == ["tester/tiny"]
    assert "small" in bash_complete("gpt2 generate -m ", cwd=work)[0]
    folders, _ = bash_complete("gpt2 generate -m ./ck", cwd=work)
    assert [f.rstrip("/") for f in folders] == ["./ckpt-folder"], folders
