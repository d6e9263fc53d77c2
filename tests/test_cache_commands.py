"""`gpt2 models` and `gpt2 rm` on a cache filled through the fake Hub (tests/fakehub.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.fakehub import FakeHub, gpt2_command, repo_cache, run_gpt2


def download(*args: str) -> Path:
    result = run_gpt2("download", *args)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def models() -> dict[tuple[str, str], dict[str, str]]:
    """`gpt2 models` on a pipe (tab-separated), keyed by (name, revision)."""
    result = run_gpt2("models")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split("\t") == ["name", "repo_id", "revision", "size_bytes", "downloaded"]
    rows = [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]
    return {(r["name"], r["revision"]): r for r in rows}


def blob_bytes(repo_id: str) -> int:
    return sum(p.stat().st_size for p in (repo_cache(repo_id) / "blobs").iterdir())


def test_models_lists_sizes_and_cached_gpt2_repos(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    assert [key for key in models()] == [
        ("small", "main"),
        ("medium", "main"),
        ("large", "main"),
        ("xl", "main"),
    ]
    fake_hub.add_repo("openai-community/gpt2", tiny_checkpoint)
    fake_hub.add_repo("tester/tiny", tiny_checkpoint)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    fake_hub.add_repo("tester/bert", bert)
    download("small")
    tiny = download("tester/tiny")
    assert run_gpt2("download", "tester/bert").returncode == 1  # its config.json is now cached

    rows = models()
    assert list(rows) == [
        ("small", "main"),
        ("medium", "main"),
        ("large", "main"),
        ("xl", "main"),
        ("tester/tiny", "main"),
    ]
    small = rows["small", "main"]
    assert small["repo_id"] == "openai-community/gpt2" and small["downloaded"] == "yes"
    assert int(small["size_bytes"]) == blob_bytes("openai-community/gpt2")
    assert rows["medium", "main"]["downloaded"] == "no"
    assert rows["medium", "main"]["size_bytes"] == "0"
    assert rows["tester/tiny", "main"]["downloaded"] == "yes"

    (tiny / "model.safetensors").unlink()
    assert models()["tester/tiny", "main"]["downloaded"] == "partial"


def test_models_table_on_a_terminal(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    fake_hub.add_repo("tester/tiny", tiny_checkpoint)
    download("tester/tiny")
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    child = pexpect.spawn(gpt2_command()[0], ["models"], env=env, encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out
    for text in ("Repo id", "Downloaded", "openai-community/gpt2-xl", "tester/tiny", "kB"):
        assert text in out
    assert "\t" not in out and "\x1b[3" not in out


def test_models_says_which_repos_no_download_can_fix(
    fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A repo without safetensors weights, or with weights broken on the Hub, is `unusable`
    (not `partial`, which `gpt2 download` would finish), and the table says why; a stopped
    download is `partial`, with the bytes kept for the next run."""
    import shutil

    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    from tests.support.checkpoints import build_checkpoint

    config_only = tmp_path / "withbin"
    config_only.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", config_only / "config.json")
    fake_hub.add_repo("tester/withbin", config_only, files={"pytorch_model.bin": b"\x80" * 64})
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    fake_hub.add_repo("tester/broken", broken)
    fake_hub.add_repo("tester/big", build_checkpoint(tmp_path / "big", n_layer=4, n_embd=256))
    for repo in ("tester/withbin", "tester/broken"):
        assert run_gpt2("download", repo).returncode == 1
    fake_hub.drop["model.safetensors"] = [DOWNLOAD_CHUNK_SIZE + 1000]
    fake_hub.fail_after_drop = 503  # the Hub goes down mid-transfer: the run gives up
    stopped = run_gpt2("download", "tester/big")
    assert stopped.returncode == 1 and "10.5 MB downloaded so far are kept" in stopped.stderr
    fake_hub.fail_status = None
    rows = models()
    assert rows["tester/withbin", "main"]["downloaded"] == "unusable"
    assert rows["tester/broken", "main"]["downloaded"] == "unusable"
    assert rows["tester/big", "main"]["downloaded"] == "partial"
    # Once found broken, it is refused again without hashing the file anew.
    again = run_gpt2("download", "tester/broken")
    assert again.returncode == 1 and "broken on the Hugging Face Hub" in again.stderr

    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    child = pexpect.spawn(gpt2_command()[0], ["models"], env=env, encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    out = " ".join(child.before.split())
    assert "no safetensors weights on the Hub" in out, out
    assert "model.safetensors is broken on the Hub (truncated:" in out, out
    assert "10.5 MB of a download kept: gpt2 download resumes it" in out, out


def test_rm_asks_then_removes(fake_hub: FakeHub, tiny_checkpoint: Path) -> None:
    fake_hub.add_repo("tester/tiny", tiny_checkpoint)
    fake_hub.add_repo("openai-community/gpt2", tiny_checkpoint)
    download("tester/tiny")
    download("small")

    for answer in ("n\n", ""):  # "no", and no answer at all (end of input)
        declined = run_gpt2("rm", "tester/tiny", input=answer)
        assert declined.returncode == 1
        assert "Remove tester/tiny (" in declined.stderr and "from the cache?" in declined.stderr
        assert declined.stderr.rstrip().endswith("gpt2: nothing removed")
        assert repo_cache("tester/tiny").is_dir()

    confirmed = run_gpt2("rm", "tester/tiny", input="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "gpt2: removed tester/tiny (" in confirmed.stderr
    assert not repo_cache("tester/tiny").exists()

    forced = run_gpt2("rm", "small", "--yes")
    assert forced.returncode == 0 and "from the cache?" not in forced.stderr
    assert not repo_cache("openai-community/gpt2").exists()
    assert models()["small", "main"]["downloaded"] == "no"

    again = run_gpt2("rm", "small", "--yes")
    assert again.returncode == 1
    assert again.stderr.startswith("gpt2: error: openai-community/gpt2 is not in the cache")
    assert len(again.stderr.splitlines()) == 1
    offline = run_gpt2("download", "tester/tiny", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "not in the cache" in offline.stderr


def test_rm_one_revision(fake_hub: FakeHub, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from tests.support.checkpoints import build_checkpoint

    main = fake_hub.add_repo("tester/tiny", tiny_checkpoint)
    v1 = fake_hub.add_repo("tester/tiny", build_checkpoint(tmp_path / "v1", seed=5), revision="v1")
    download("tester/tiny")
    download("tester/tiny", "--revision", "v1")
    assert {key for key in models() if key[0] == "tester/tiny"} == {
        ("tester/tiny", "main"),
        ("tester/tiny", "v1"),
    }
    result = run_gpt2("rm", "tester/tiny", "--revision", "v1", "--yes")
    assert result.returncode == 0, result.stderr
    assert "removed tester/tiny@v1" in result.stderr
    cache = repo_cache("tester/tiny")
    assert not (cache / "snapshots" / v1).exists() and not (cache / "refs" / "v1").exists()
    assert (cache / "snapshots" / main / "model.safetensors").is_file()
    assert {key for key in models() if key[0] == "tester/tiny"} == {("tester/tiny", "main")}

    missing = run_gpt2("rm", "tester/tiny", "--revision", "v1", "--yes")
    assert missing.returncode == 1 and "revision 'v1' of tester/tiny is not in" in missing.stderr


def test_rm_refuses_folders_and_unknown_names(tiny_checkpoint: Path) -> None:
    folder = run_gpt2("rm", str(tiny_checkpoint), "--yes")
    assert folder.returncode == 2 and "is a local folder, not a cached model" in folder.stderr
    assert tiny_checkpoint.is_dir()
    unknown = run_gpt2("rm", "nonsense", "--yes")
    assert unknown.returncode == 1 and "unknown model 'nonsense'" in unknown.stderr


def test_a_model_transformers_downloaded_is_reused(
    fake_hub: FakeHub, tiny_checkpoint: Path
) -> None:
    """The cache is the standard one: what transformers fetched, gpt2 uses offline."""
    import subprocess
    import sys

    pytest.importorskip("transformers")
    fake_hub.add_repo("tester/tiny", tiny_checkpoint)
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer; "
        "AutoModelForCausalLM.from_pretrained('tester/tiny'); "
        "AutoTokenizer.from_pretrained('tester/tiny')"
    )
    fetched = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert fetched.returncode == 0, fetched.stderr
    fake_hub.stop()
    offline = run_gpt2("download", "tester/tiny", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip()).parent == repo_cache("tester/tiny") / "snapshots"
    assert models()["tester/tiny", "main"]["downloaded"] == "yes"
