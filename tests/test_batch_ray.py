"""`gpt2 batch --ray` on a real Ray cluster: a local head node started for these tests on
127.0.0.1 (2 CPUs, no dashboard) and always stopped at teardown; its rows equal the local run's,
resuming included. And the one-line error when no cluster answers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, gpt2
from tests.test_batch_cli import batch, by_id, prompts, read_jsonl, write_jsonl

pytest.importorskip("ray", reason='needs the [ray] extra: pip install -e ".[test,ray]"')

# Ray binds to the machine's outward address unless told otherwise; the tests stay on loopback.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """`ray start --head --block` in a session of its own; yields its address. Teardown sends
    SIGTERM (Ray stops the processes it started), then SIGKILL to whatever is left of that
    session's process group."""
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="gpt2ray-", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    argv = [
        ray, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
        "--include-dashboard=false", "--node-ip-address", "127.0.0.1", "--temp-dir", temp,
        "--disable-usage-stats", "--object-store-memory", str(100 * 2**20),
        "--dashboard-agent-listen-port", str(free_port()),
    ]  # fmt: skip
    log = open(Path(temp) / "start.log", "w+b")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **LOOPBACK},
    )
    try:
        deadline = time.monotonic() + 180
        while b"will now block forever" not in Path(log.name).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray start failed:\n" + Path(log.name).read_text(errors="replace"))
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_rows_on_ray_equal_the_local_run(
    ray_cluster: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    rows = [{"prompt": p} for p in prompts(8, seed=7)]
    rows[2]["samples"] = 3  # more samples than a batch of 2 holds
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["-n", "8", "-s", "5", "-b", "2"]
    local = tmp_path / "local.jsonl"
    assert batch(tiny_checkpoint, str(inp), "-o", str(local), *args).returncode == 0
    expected = by_id(read_jsonl(local))

    out = tmp_path / "ray.jsonl"
    out.write_text("".join(line + "\n" for line in local.read_text().splitlines()[:2]))
    proc = batch(
        tiny_checkpoint, str(inp), "-o", str(out), *args, "-w", "2", "--ray", ray_cluster,
        env=LOOPBACK,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 2 of 8 rows" in proc.stderr and "6 rows → " in proc.stderr
    assert "Traceback" not in proc.stderr
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == list(range(1, 9))
    assert by_id(records) == expected


def test_no_cluster_is_a_one_line_error(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    closed = f"127.0.0.1:{free_port()}"
    out = str(tmp_path / "out.jsonl")
    for args, env in [(["--ray", closed], {}), (["--ray"], {"RAY_ADDRESS": closed})]:
        proc = gpt2("batch", str(inp), "-o", out, *args, env={**LOOPBACK, **env})
        assert_one_line_error(proc, 1, f"no Ray cluster answers at {closed}", "ray start --head")
