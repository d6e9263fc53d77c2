"""Model download and cache: `gpt2 download` against a fake Hub (tests/fakehub.py), with the
standard Hugging Face cache in a temp HF_HOME."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.checkpoints import build_checkpoint
from tests.support.fakehub import FakeHub, gpt2_command, repo_cache, run_gpt2

REPO = "tester/tiny"
NEEDED = {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"}
NEVER = (
    "pytorch_model.bin",
    "tf_model.h5",
    "flax_model.msgpack",
    "rust_model.ot",
    "onnx/model.onnx",
    "model.tflite",
)


def publish(hub: FakeHub, folder: Path, repo: str = REPO, **kw) -> str:
    """Serve `folder` as `repo`, with the other frameworks' weight files a real repo has."""
    junk = {name: b"never fetch me" * 64 for name in NEVER}
    return hub.add_repo(repo, folder, files=junk, **kw)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with exit 1 and one error line (after any `downloading` lines)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("gpt2: error: "), result.stderr
    assert all(line.startswith("gpt2: downloading ") for line in lines[:-1]), result.stderr
    return lines[-1]


def snapshot_of(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def leftovers(repo: str = REPO) -> list[Path]:
    """Partial downloads anywhere in the repo's cache folder."""
    return [p for p in repo_cache(repo).rglob("*") if ".incomplete" in p.name]


def test_download_fetches_only_what_it_needs(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    commit = publish(fake_hub, tiny_checkpoint)
    result = run_gpt2("download", REPO)
    folder = snapshot_of(result)
    assert folder == repo_cache(REPO) / "snapshots" / commit
    assert {p.name for p in folder.iterdir()} == NEEDED
    for name in NEEDED:
        assert (folder / name).read_bytes() == (tiny_checkpoint / name).read_bytes()
    assert {r.filename for r in fake_hub.requests("GET")} == NEEDED
    assert not [r for r in fake_hub.log if r.filename in NEVER]
    # Not a terminal: one plain line per file, no tqdm or Rich bar, no escape codes.
    lines = result.stderr.splitlines()
    assert len(lines) == len(NEEDED) and all(line.startswith("gpt2: downloading") for line in lines)
    assert f"gpt2: downloading {REPO}/model.safetensors (" in result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr and "%|" not in result.stderr


def test_second_run_downloads_nothing(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    publish(fake_hub, tiny_checkpoint)
    first = snapshot_of(run_gpt2("download", REPO))
    fake_hub.log.clear()
    second = run_gpt2("download", REPO)
    assert snapshot_of(second) == first
    assert fake_hub.requests("GET") == []
    assert [(r.method, r.filename) for r in fake_hub.log] == [("HEAD", "config.json")]
    assert second.stderr == ""


def test_offline_uses_the_cache_with_the_hub_stopped(
    fake_hub: FakeHub, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(fake_hub, tiny_checkpoint)
    folder = snapshot_of(run_gpt2("download", REPO))
    fake_hub.stop()
    offline = run_gpt2("download", REPO, env={"HF_HUB_OFFLINE": "1"})
    assert snapshot_of(offline) == folder and offline.stderr == ""
    # In process, offline=True (the engine's --offline) finds the same folder with no network.
    from huggingface_hub import constants

    from gpt2cli.hub.fetch import resolve_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(repo_cache(REPO).parent))
    assert resolve_model(REPO, offline=True) == folder


def test_uncached_model_offline_is_a_one_line_error(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = one_error_line(run_gpt2("download", "tester/absent", env={"HF_HUB_OFFLINE": "1"}))
    assert "not in the cache" in line and "HF_HUB_OFFLINE=1" in line
    assert "`gpt2 download tester/absent`" in line
    line = one_error_line(
        run_gpt2("download", "medium", "--revision", "v2", env={"HF_HUB_OFFLINE": "1"})
    )
    assert "openai-community/gpt2-medium" in line and "gpt2 download medium --revision v2" in line
    assert fake_hub.log == []

    from huggingface_hub import constants

    from gpt2cli.errors import ModelNotFoundError
    from gpt2cli.hub.fetch import resolve_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(os.environ["HF_HOME"]) / "hub"))
    with pytest.raises(
        ModelNotFoundError,
        match=r"--offline is set; download it first with "
        r"`gpt2 download small`",
    ):
        resolve_model("small", offline=True)


@pytest.mark.parametrize("outage", ["stopped", "503"])
def test_unreachable_hub_falls_back_to_the_cache(
    fake_hub: FakeHub, tiny_checkpoint: Path, outage: str
) -> None:
    publish(fake_hub, tiny_checkpoint)
    folder = snapshot_of(run_gpt2("download", REPO))
    if outage == "stopped":
        fake_hub.stop()
    else:
        fake_hub.fail_status = 503
    result = run_gpt2("download", REPO)
    assert snapshot_of(result) == folder
    lines = result.stderr.splitlines()
    reason = "cannot reach the" if outage == "stopped" else "answered HTTP 503 Service Unavailable"
    assert len(lines) == 1 and lines[0].startswith("gpt2: warning: "), lines
    assert reason in lines[0] and fake_hub.url in lines[0]
    assert "using the cached copy of 'tester/tiny'" in lines[0]
    line = one_error_line(run_gpt2("download", "tester/other"))
    assert reason in line and "'tester/other' is not in the cache" in line


@pytest.mark.parametrize("size", ["tiny", "13MB"])
def test_dropped_connection_recovers_in_the_same_run(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path, size: str
) -> None:
    """huggingface_hub retries a dropped transfer: from the last 10 MB chunk it wrote, with a
    Range request (so a small file starts over)."""
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    if size == "tiny":
        checkpoint, cut, resumed_at = tiny_checkpoint, 300_000, None
    else:
        checkpoint = build_checkpoint(tmp_path / "big", n_layer=4, n_embd=256)
        cut, resumed_at = DOWNLOAD_CHUNK_SIZE + 1_000_000, f"bytes={DOWNLOAD_CHUNK_SIZE}-"
    publish(fake_hub, checkpoint)
    fake_hub.drop["model.safetensors"] = [cut]
    folder = snapshot_of(run_gpt2("download", REPO))
    gets = fake_hub.requests("GET", "model.safetensors")
    assert [g.range for g in gets] == [None, resumed_at]
    data = (checkpoint / "model.safetensors").read_bytes()
    assert (folder / "model.safetensors").read_bytes() == data
    assert leftovers() == []


def test_failed_download_leaves_a_cache_the_next_run_completes(
    fake_hub: FakeHub, tiny_checkpoint: Path
) -> None:
    publish(fake_hub, tiny_checkpoint)
    fake_hub.drop["model.safetensors"] = [300_000]
    fake_hub.fail_after_drop = 500  # the retry finds the Hub down: the run gives up
    line = one_error_line(run_gpt2("download", REPO))
    assert "downloading model.safetensors from tester/tiny failed" in line
    cache = repo_cache(REPO)
    assert leftovers() == []
    assert not [p for p in (cache / "snapshots").rglob("model.safetensors")]
    assert not [p for p in (cache / "blobs").iterdir() if p.stat().st_size >= 300_000]
    line = one_error_line(run_gpt2("download", REPO, env={"HF_HUB_OFFLINE": "1"}))
    assert "only partly cached" in line

    fake_hub.fail_status = None
    folder = snapshot_of(run_gpt2("download", REPO))
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    assert (folder / "model.safetensors").read_bytes() == data


@pytest.mark.parametrize("size", ["tiny", "13MB"])
def test_ctrl_c_mid_download_keeps_what_it_wrote_and_the_next_run_resumes(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path, size: str
) -> None:
    """Ctrl-C during a download keeps the bytes already written (huggingface_hub writes 10 MB
    chunks) as blobs/<sha256>.incomplete, never linked into the snapshot, and says so; the
    next run resumes there with a Range request (a 6 GB xl need not start over) and leaves no
    partial file. Nothing written yet (a small file): nothing is kept."""
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    if size == "tiny":
        checkpoint, hold, kept = tiny_checkpoint, 300_000, 0
    else:
        checkpoint = build_checkpoint(tmp_path / "big", n_layer=4, n_embd=256)
        hold, kept = DOWNLOAD_CHUNK_SIZE + 1_000_000, DOWNLOAD_CHUNK_SIZE
    publish(fake_hub, checkpoint)
    fake_hub.hold["model.safetensors"] = hold  # the body stalls there: time to press Ctrl-C
    proc = subprocess.Popen(
        [*gpt2_command(), "download", REPO],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def written() -> int:
        return sum(p.stat().st_size for p in leftovers() if p.exists())

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        fake_hub.gets("model.safetensors") and leftovers() and written() >= kept
    ):
        time.sleep(0.02)  # polling for the signal: the GET, and the partial file's bytes
    assert fake_hub.gets("model.safetensors") and leftovers(), "the download should be running"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not list((repo_cache(REPO) / "snapshots").rglob("model.safetensors"))
    sha256 = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    if kept:
        assert [(p.name, p.stat().st_size) for p in leftovers()] == [(f"{sha256}.incomplete", kept)]
        assert "kept in the cache: run the command again to resume" in err, err
    else:
        assert leftovers() == [] and "kept" not in err, err

    fake_hub.hold.clear()
    fake_hub.release()
    gets = fake_hub.gets("model.safetensors")
    result = run_gpt2("download", REPO)
    folder = snapshot_of(result)
    assert (folder / "model.safetensors").read_bytes() == (
        checkpoint / "model.safetensors"
    ).read_bytes()
    ranges = [g.range for g in fake_hub.requests("GET", "model.safetensors")[gets:]]
    assert ranges == [f"bytes={kept}-" if kept else None]
    if kept:
        assert f"gpt2: resuming {REPO}/model.safetensors at 10.5 MB of " in result.stderr
    assert leftovers() == []


def test_corrupt_download_is_refused_and_deleted(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    publish(fake_hub, tiny_checkpoint)
    sha256 = hashlib.sha256((tiny_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    fake_hub.corrupt.add("model.safetensors")
    line = one_error_line(run_gpt2("download", REPO))
    assert "model.safetensors from tester/tiny is corrupt" in line and sha256[:12] in line
    cache = repo_cache(REPO)
    assert not (cache / "blobs" / sha256).exists()
    assert not list((cache / "snapshots").rglob("model.safetensors"))
    # A later offline run does not load it: the file is simply not there.
    line = one_error_line(run_gpt2("download", REPO, env={"HF_HUB_OFFLINE": "1"}))
    assert "only partly cached" in line

    fake_hub.corrupt.clear()
    folder = snapshot_of(run_gpt2("download", REPO))
    assert (folder / "model.safetensors").resolve() == cache / "blobs" / sha256


def test_unverified_corrupt_blob_in_cache_is_caught(
    fake_hub: FakeHub, tiny_checkpoint: Path
) -> None:
    """A blob never checked by gpt2cli (put there by transformers, or a run killed between the
    download and the check) is verified on first use."""
    publish(fake_hub, tiny_checkpoint)
    folder = snapshot_of(run_gpt2("download", REPO))
    blob = (folder / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    for marker in (repo_cache(REPO) / ".gpt2cli-verified").iterdir():
        marker.unlink()
    line = one_error_line(run_gpt2("download", REPO, env={"HF_HUB_OFFLINE": "1"}))
    assert "is corrupt" in line
    assert not blob.exists() and not (folder / "model.safetensors").is_symlink()


def test_revision_branch_tag_and_commit(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    main = publish(fake_hub, tiny_checkpoint)
    other = build_checkpoint(tmp_path / "v1", seed=3, tokenizer="vocab_merges")
    v1 = publish(fake_hub, other, revision="v1")
    folder = snapshot_of(run_gpt2("download", REPO, "--revision", "v1"))
    assert folder.name == v1
    assert (folder / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()
    assert (repo_cache(REPO) / "refs" / "v1").read_text() == v1
    assert snapshot_of(run_gpt2("download", REPO, "--revision", main)).name == main
    line = one_error_line(run_gpt2("download", REPO, "--revision", "nope"))
    assert "revision 'nope' not found in tester/tiny" in line


def test_vocab_merges_when_the_repo_has_no_tokenizer_json(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    publish(fake_hub, build_checkpoint(tmp_path / "vm", tokenizer="vocab_merges"))
    folder = snapshot_of(run_gpt2("download", REPO))
    assert {"vocab.json", "merges.txt"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "tokenizer.json").exists()
    fake_hub.log.clear()
    snapshot_of(run_gpt2("download", REPO))
    assert [r.filename for r in fake_hub.log] == ["config.json"]  # the 404 is remembered
    fake_hub.stop()
    assert snapshot_of(run_gpt2("download", REPO, env={"HF_HUB_OFFLINE": "1"})) == folder


def test_sharded_weights(fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sharded"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((tiny_checkpoint / name).read_bytes())
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    publish(fake_hub, folder)

    snapshot = snapshot_of(run_gpt2("download", REPO))
    assert set(shards) <= {p.name for p in snapshot.iterdir()}
    assert fake_hub.gets("model.safetensors") == 0
    assert len(list((repo_cache(REPO) / ".gpt2cli-verified").iterdir())) == 2
    fake_hub.stop()
    assert snapshot_of(run_gpt2("download", REPO, env={"HF_HUB_OFFLINE": "1"})) == snapshot


def test_bin_only_repo_is_refused_without_fetching_bin(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "binonly"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_checkpoint / "config.json").read_bytes())
    publish(fake_hub, folder)
    line = one_error_line(run_gpt2("download", REPO))
    assert "has no safetensors weights" in line and "never loads pytorch_model.bin" in line
    assert not [r for r in fake_hub.log if r.filename in NEVER]


def test_non_gpt2_repo_is_refused_before_its_weights(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    publish(fake_hub, folder, repo="tester/bert")
    line = one_error_line(run_gpt2("download", "tester/bert"))
    assert "not a GPT-2 checkpoint" in line and "model_type 'bert'" in line
    assert {r.filename for r in fake_hub.log} == {"config.json"}


def test_private_repo_needs_hf_token(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    publish(fake_hub, tiny_checkpoint, token="s3cret")
    line = one_error_line(run_gpt2("download", REPO))
    assert "not found on the Hub" in line and "HF_TOKEN" in line
    snapshot_of(run_gpt2("download", REPO, env={"HF_TOKEN": "s3cret"}))
    assert fake_hub.requests("GET")[0].authorization == "Bearer s3cret"


def test_two_downloads_at_once_both_succeed(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    publish(fake_hub, tiny_checkpoint)
    fake_hub.delay = 0.01
    procs = [
        subprocess.Popen(
            [*gpt2_command(), "download", REPO],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    folder = Path(outs[0][0].strip())
    assert (folder / "model.safetensors").read_bytes() == (
        tiny_checkpoint / "model.safetensors"
    ).read_bytes()
    assert fake_hub.gets("model.safetensors") == 1  # the second waited on the lock
    assert leftovers() == []


def test_names_folders_and_bad_names(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    assert snapshot_of(run_gpt2("download", str(tiny_checkpoint))) == tiny_checkpoint
    line = one_error_line(run_gpt2("download", "not-a-model"))
    assert "unknown model 'not-a-model'" in line
    line = one_error_line(run_gpt2("download", "./no/such/folder"))
    assert "unknown model" in line
    assert fake_hub.log == []

    from gpt2cli.hub.names import SIZES, repo_id_for

    assert {size: repo_id_for(size) for size in SIZES} == {
        "small": "openai-community/gpt2",
        "medium": "openai-community/gpt2-medium",
        "large": "openai-community/gpt2-large",
        "xl": "openai-community/gpt2-xl",
    }


def test_progress_bar_on_a_terminal(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    publish(fake_hub, tiny_checkpoint)
    fake_hub.delay = 0.01
    child = pexpect.spawn(
        gpt2_command()[0],
        ["download", REPO],
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"},
        encoding="utf-8",
        timeout=60,
    )
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out
    assert "downloading model.safetensors" in out and "━" in out
    assert "724.6 kB" in out or "725 kB" in out or "kB/s" in out
    assert "\x1b[3" not in out and "\x1b[9" not in out  # NO_COLOR: no foreground colours
    assert "%|" not in out  # no tqdm bar from huggingface_hub


def test_hub_modules_do_not_import_torch() -> None:
    code = (
        "import sys, gpt2cli.hub.fetch, gpt2cli.hub.cache, gpt2cli.commands.cache; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_weights_come_from_where_huggingface_hub_would_fetch_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """transfer.py GETs the redirect target of a plain file, with the token only for the Hub
    itself (never for a signed CDN URL), and an Xet file through its resolve URL, as
    huggingface_hub's own download does."""
    from huggingface_hub import constants

    from gpt2cli.hub.transfer import _source

    monkeypatch.setenv("HF_TOKEN", "s3cret")
    monkeypatch.setattr(constants, "ENDPOINT", "https://mirror.example")
    resolve = "https://mirror.example/o/n/resolve/main/model.safetensors"
    cdn = "https://cdn-lfs.example/abc?signature=x"
    url, headers = _source(resolve, cdn, plain=True)
    assert url == cdn and "authorization" not in headers
    for hub in ("https://huggingface.co/o/n/blob", "https://mirror.example:443/o/n/x"):
        url, headers = _source(resolve, hub, plain=True)
        assert url == hub and headers["authorization"] == "Bearer s3cret"
    url, headers = _source(resolve, cdn, plain=False)  # Xet: the resolve URL redirects itself
    assert url == resolve and headers["authorization"] == "Bearer s3cret"
