"""End to end: `gpt2 generate -m owner/name` fetches the checkpoint from the (fake) Hub once,
then runs from the cache, online or offline."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.fakehub import FakeHub, gpt2_command, run_gpt2

REPO = "tester/tiny"
GENERATE = ("generate", "-m", REPO, "-n", "5", "--seed", "1", "Once upon a time")


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*gpt2_command(), *args],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_generate_downloads_once_then_runs_from_the_cache(
    fake_hub: FakeHub, tiny_checkpoint: Path
) -> None:
    fake_hub.add_repo(REPO, tiny_checkpoint, files={"pytorch_model.bin": b"never" * 100})

    first = run_gpt2(*GENERATE)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip(), "the model wrote nothing"
    assert f"gpt2: downloading {REPO}/model.safetensors" in first.stderr
    assert fake_hub.gets("model.safetensors") == 1

    fake_hub.log.clear()
    second = run_gpt2(*GENERATE)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert fake_hub.requests("GET") == []  # no weights, no file at all
    assert "downloading" not in second.stderr
    assert not [r for r in fake_hub.log if r.filename == "pytorch_model.bin"]

    fake_hub.stop()
    # Three runs at once (two cores): --offline, HF_HUB_OFFLINE=1, and an uncached model.
    runs = {
        "flag": start(*GENERATE, "--offline"),
        "env": start(*GENERATE, env={"HF_HUB_OFFLINE": "1"}),
        "uncached": start(*GENERATE[:2], "tester/absent", *GENERATE[3:], "--offline"),
    }
    done = {name: (p, *p.communicate(timeout=120)) for name, p in runs.items()}
    for name in ("flag", "env"):
        proc, out, err = done[name]
        assert proc.returncode == 0, (name, err)
        assert out == first.stdout, name
        assert "warning" not in err and "downloading" not in err, (name, err)
    proc, out, err = done["uncached"]
    assert proc.returncode == 1 and out == ""
    assert err.splitlines() == [
        "gpt2: error: model 'tester/absent' is not in the cache and --offline is set; "
        "download it first with `gpt2 download tester/absent`"
    ]
