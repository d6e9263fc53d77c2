"""Install gpt2cli as a user does and run its commands: the CI smoke stage.

    python3 scripts/smoke_install.py [--venv DIR] [--extra serve] [--keep]

A fresh virtual environment gets `pip install torch==2.13.0`, then `pip install .` (not editable,
no extras unless --extra names one), and that environment's `gpt2` runs on a tiny checkpoint
built by the tests' own builder: generate (argument, piped stdin, --json), score, repl on piped
stdin, download from a fake Hub on 127.0.0.1, then generate offline. Then `gpt2 serve`: without
the serve extra it must give the install hint; the extra is then added (`pip install
".[serve]"`, as a user would) and the server must answer /health and a completion on 127.0.0.1.
Any runtime dependency that is imported but not declared fails here, which the test suite
(installed with the test extras, which pull numpy and more) cannot see.

The checkpoint builder and the fake Hub run in *this* interpreter (which has the test extras);
only the `gpt2` under test runs from the fresh environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TORCH = "torch==2.13.0"


def step(title: str) -> None:
    print(f"smoke: {title}", flush=True)


def run(argv: list[str]) -> None:
    """Run a setup command quietly; show its output only when it fails."""
    proc = subprocess.run(argv, text=True, capture_output=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"smoke: FAILED: {' '.join(argv)} exited {proc.returncode}")


def gpt2(
    venv: Path, env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the fresh environment's `gpt2`; fail loudly (with its stderr) on a non-zero exit."""
    proc = subprocess.run(
        [str(venv / "bin" / "gpt2"), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    shown = " ".join(args)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"smoke: FAILED: gpt2 {shown} exited {proc.returncode}")
    if "Traceback" in proc.stderr or "warning: Failed" in proc.stderr:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"smoke: FAILED: gpt2 {shown} wrote a traceback or a torch warning")
    print(f"  gpt2 {shown} -> {proc.stdout.strip()[:100]!r}", flush=True)
    return proc


def install(venv: Path, extra: str | None, fresh: bool = True) -> None:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    if fresh:
        step(f"fresh virtualenv in {venv}")
        run([sys.executable, "-m", "venv", str(venv)])
        run([*pip, "--upgrade", "pip"])
        step(f"pip install {TORCH}")
        run([*pip, TORCH])
    target = f".[{extra}]" if extra else "."
    step(f"pip install {target} (not editable)")
    # A copy of the tree, so that no build/ or egg-info of the checkout is reused.
    with tempfile.TemporaryDirectory() as src:
        shutil.copytree(ROOT, src, dirs_exist_ok=True, ignore=_ignored)
        run([*pip, f"{src}{target[1:]}" if extra else src])


def _ignored(folder: str, names: list[str]) -> set[str]:
    skip = {".git", ".venv", "build", "dist", ".cache", "__pycache__", ".pytest_cache"}
    return {n for n in names if n in skip or n.endswith(".egg-info")}


def environment(home: Path, venv: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "VIRTUAL_ENV"))
    }
    return env | {
        "HF_HOME": str(home / "hf"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GPT2_NO_HISTORY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
    }


def check_serve_hint(venv: Path, home: Path) -> None:
    """Without the extra, `gpt2 serve` says how to install it (exit 1, one line)."""
    step("gpt2 serve without the serve extra")
    proc = subprocess.run(
        [str(venv / "bin" / "gpt2"), "serve", "-m", str(home / "tiny")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environment(home, venv),
        timeout=300,
    )
    hint = 'pip install "gpt2cli[serve]"'
    if proc.returncode != 1 or hint not in proc.stderr or "Traceback" in proc.stderr:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"smoke: FAILED: gpt2 serve without the extra exited {proc.returncode}")
    print(f"  gpt2 serve -> {proc.stderr.strip()!r}", flush=True)


def check_serve(venv: Path, home: Path) -> None:
    """With the extra: the server answers /health and a completion, and Ctrl-C stops it."""
    from tests.support.server import ServerProcess, request

    step("gpt2 serve with the serve extra, on 127.0.0.1")
    env = environment(home, venv)
    argv0 = str(venv / "bin" / "gpt2")
    with ServerProcess("-m", str(home / "tiny"), env=env, argv0=argv0) as server:
        status, health = request(server.url + "/health")
        assert status == 200 and health["status"] == "ok", health
        status, done = request(server.url + "/v1/completions", {"prompt": "Hi", "max_tokens": 4})
        assert status == 200 and done["object"] == "text_completion", done
        print(f"  /health -> {health}", flush=True)
        print(f"  /v1/completions -> {done['choices'][0]['text']!r}", flush=True)
        code = server.stop()
        if code != 130 or "Traceback" in server.stderr:
            sys.stderr.write(server.stderr)
            raise SystemExit(f"smoke: FAILED: gpt2 serve exited {code} on Ctrl-C")


def check(venv: Path, home: Path) -> None:
    from tests.support.checkpoints import build_checkpoint
    from tests.support.fakehub import FakeHub

    ckpt = build_checkpoint(home / "tiny", layout="hub")
    env = environment(home, venv)
    m = str(ckpt)
    step("the installed gpt2, from outside the checkout")
    gpt2(venv, env, "--version")
    out = gpt2(venv, env, "generate", "-m", m, "-n", "8", "-s", "1", "Hello there")
    assert out.stdout.strip(), "generate printed nothing"
    out = gpt2(venv, env, "generate", "-m", m, "-n", "8", "-s", "1", stdin="Once upon a time")
    assert out.stdout.strip(), "generate on stdin printed nothing"
    out = gpt2(venv, env, "generate", "-m", m, "-n", "5", "-s", "1", "--json", "Hi")
    record = json.loads(out.stdout)
    assert record["completion_tokens"] >= 1 and record["seed"] == 1, record
    out = gpt2(venv, env, "score", "-m", m, "--json", "The quick brown fox.")
    assert json.loads(out.stdout)["perplexity"] > 0
    out = gpt2(venv, env, "repl", "-m", m, "-n", "5", stdin="Hello\n/set temperature 0\nWorld\n")
    assert len(out.stdout.strip().splitlines()) >= 1, "repl printed nothing"

    hub = FakeHub()
    try:
        hub.add_repo("smoke/tiny", ckpt)
        henv = {**env, "HF_ENDPOINT": hub.url}
        out = gpt2(venv, henv, "download", "smoke/tiny")
        assert Path(out.stdout.strip()).is_dir()
    finally:
        hub.stop()
    oenv = {**env, "HF_HUB_OFFLINE": "1"}
    out = gpt2(venv, oenv, "generate", "-m", "smoke/tiny", "-n", "5", "-s", "2", "Offline")
    assert out.stdout.strip(), "offline generate printed nothing"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="where to make the environment (default: temp)")
    parser.add_argument("--extra", help="install .[EXTRA] instead of . (e.g. serve)")
    parser.add_argument("--keep", action="store_true", help="keep the environment afterwards")
    args = parser.parse_args()
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpt2cli-smoke-"))
    venv = args.venv or work / "venv"
    try:
        install(venv, args.extra)
        check(venv, work / "home")
        if args.extra != "serve":
            check_serve_hint(venv, work / "home")
            install(venv, "serve", fresh=False)
        check_serve(venv, work / "home")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            if args.venv:
                shutil.rmtree(args.venv, ignore_errors=True)
    step(f"passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
