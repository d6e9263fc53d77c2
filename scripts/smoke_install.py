"""Install gpt2cli as a user does and run its commands: the CI smoke stage.

    python3 scripts/smoke_install.py [--venv DIR] [--extra serve] [--keep]

A fresh virtual environment gets `pip install torch==2.13.0`, then `pip install .` (not editable,
no extras unless --extra names one), and that environment's `gpt2` runs on a tiny checkpoint
built by the tests' own builder: generate (argument, piped stdin, --json, --context-shift,
--dtype int8, bfloat16 and int4), score (short and long texts), repl on piped stdin, batch over
a file of prompts (and, without the [ray] extra, `batch --ray` giving the install command), a
fine-tune's own files, download from a fake Hub on 127.0.0.1, then generate offline. Then
`gpt2 serve`: without the serve extra it must give the install hint; the extra is then added
(`pip install ".[serve]"`, as a user would) and the server must answer /health and a completion
on 127.0.0.1. Any runtime dependency that is imported but not declared fails here, which the
test suite (installed with the test extras, which pull numpy and more) cannot see.

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
    venv: Path, env: dict[str, str], *args: str, stdin: str | None = None, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run the fresh environment's `gpt2`; fail loudly (with its stderr) on another exit
    status than `expect`."""
    proc = subprocess.run(
        [str(venv / "bin" / "gpt2"), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    shown = " ".join(args)
    if proc.returncode != expect:
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


def check_batch(venv: Path, env: dict[str, str], home: Path, model: str, extra: str | None) -> None:
    inp = home / "prompts.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Hello", "Once", "")))
    out = home / "out.jsonl"
    gpt2(venv, env, "batch", str(inp), "-o", str(out), "-m", model, "-n", "5")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [1, 2, 3], rows
    assert all(r["completion_tokens"] >= 1 for r in rows), rows
    if extra == "ray":
        return
    proc = subprocess.run(
        [str(venv / "bin" / "gpt2"), "batch", str(inp), "-o", str(out), "--ray"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    hint = 'pip install "gpt2cli[ray]"'
    if proc.returncode != 2 or hint not in proc.stderr or "Traceback" in proc.stderr:
        sys.stderr.write(proc.stderr)
        raise SystemExit("smoke: FAILED: gpt2 batch --ray without Ray must name the extra")
    print(f"  gpt2 batch --ray (no ray) -> {proc.stderr.strip()!r}", flush=True)


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


def check(venv: Path, home: Path, extra: str | None = None) -> None:
    from tests.support.checkpoints import build_checkpoint
    from tests.support.fakehub import FakeHub

    ckpt = build_checkpoint(home / "tiny", layout="hub")
    env = environment(home, venv)
    m = str(ckpt)
    step("the installed gpt2, from outside the checkout")
    gpt2(venv, env, "--version")
    # Help screens are tidied through Typer internals (gpt2cli/cli.py): a newer Typer shows here.
    out = gpt2(venv, env, "generate", "--help")
    padded = [line for line in out.stdout.splitlines() if line != line.rstrip()]
    assert "<bool>" not in out.stdout and not padded, "generate --help shows <bool> or pads lines"
    out = gpt2(venv, env, "generate", "-m", m, "-n", "8", "-s", "1", "Hello there")
    assert out.stdout.strip(), "generate printed nothing"
    out = gpt2(venv, env, "generate", "-m", m, "-n", "8", "-s", "1", stdin="Once upon a time")
    assert out.stdout.strip(), "generate on stdin printed nothing"
    out = gpt2(venv, env, "generate", "-m", m, "-n", "5", "-s", "1", "--json", "Hi")
    record = json.loads(out.stdout)
    assert record["completion_tokens"] >= 1 and record["seed"] == 1, record
    out = gpt2(venv, env, "score", "-m", m, "--json", "The quick brown fox.")
    assert json.loads(out.stdout)["perplexity"] > 0
    long_text = "The quick brown fox jumps over the lazy dog. " * 60  # past the 128 window
    out = gpt2(venv, env, "score", "-m", m, "--json", "--stride", "128", stdin=long_text)
    assert json.loads(out.stdout)["windows"] > 1
    shift = ["--context-shift", "--ignore-eos", "-n", "300", "--json"]
    out = gpt2(venv, env, "generate", "-m", m, *shift, "-s", "1", "Hi")
    record = json.loads(out.stdout)
    assert record["finish_reason"] == "length" and record["context_shifts"] >= 2, record
    for dtype in ("int8", "bfloat16"):  # fbgemm's packed weights on a CPU
        args = ("-m", m, "--dtype", dtype, "-v", "--json", "-n", "5", "Hi")
        out = gpt2(venv, env, "generate", *args)
        assert json.loads(out.stdout)["completion_tokens"] >= 1, out.stdout
        assert "deprecated" not in out.stderr and "Warning" not in out.stderr, out.stderr
        print(f"  --dtype {dtype} -v -> {out.stderr.splitlines()[0]!r}", flush=True)
    # int4 runs only on gpt2cli's own kernels (compiled at install where a C compiler is found)
    probe = "from gpt2cli.model import native; print(native.available())"
    built = (
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=env
        ).stdout.strip()
        == "True"
    )
    args = ("-m", m, "--dtype", "int4", "-v", "--json", "-n", "5", "Hi")
    out = gpt2(venv, env, "generate", *args, expect=0 if built else 2)
    if built:
        assert json.loads(out.stdout)["completion_tokens"] >= 1, out.stdout
        assert "int4 weights (4-bit" in out.stderr, out.stderr
    else:
        assert "int4 needs gpt2cli's own kernels" in out.stderr, out.stderr
    print(f"  --dtype int4 -v -> {out.stderr.splitlines()[0]!r}", flush=True)
    out = gpt2(venv, env, "repl", "-m", m, "-n", "5", stdin="Hello\n/set temperature 0\nWorld\n")
    assert len(out.stdout.strip().splitlines()) >= 1, "repl printed nothing"
    check_batch(venv, env, home, m, extra)

    step("a fine-tune: untied head, added_tokens.json, generation_config.json defaults")
    ft = build_checkpoint(
        home / "finetune", layout="transformers", untied_head=True, tokenizer="vocab_merges",
        vocab_size=1002, tokenizer_vocab_size=1000,
        generation_config={"eos_token_id": [999, 1001], "do_sample": False, "max_new_tokens": 6},
    )  # fmt: skip
    (ft / "added_tokens.json").write_text(json.dumps({"<|user|>": 1000, "<|end|>": 1001}))
    runs = [gpt2(venv, env, "generate", "-m", str(ft), "--json", "<|user|>Hi") for _ in range(2)]
    first, second = (json.loads(out.stdout) for out in runs)
    assert first["text"] == second["text"], "do_sample: false is not greedy"  # no seed given
    assert first["completion_tokens"] <= 6 and first["prompt_tokens"] <= 3, first

    hub = FakeHub()
    try:
        hub.add_repo("smoke/tiny", ckpt)
        henv = {**env, "HF_ENDPOINT": hub.url}
        out = gpt2(venv, henv, "download", "smoke/tiny")
        assert Path(out.stdout.strip()).is_dir()
        step("a stopped download resumes (huggingface_hub's http_get with a Range request)")
        hub.add_repo("smoke/big", build_checkpoint(home / "big", n_layer=4, n_embd=256))
        hub.drop["model.safetensors"] = [11_000_000]  # past one 10 MB write chunk
        hub.fail_after_drop = 503  # then the Hub is down: the run gives up, keeping 10 MB
        stopped = gpt2(venv, henv, "download", "smoke/big", expect=1)
        assert "downloaded so far are kept" in stopped.stderr, stopped.stderr
        hub.fail_status = None
        out = gpt2(venv, henv, "download", "smoke/big")
        assert "gpt2: resuming smoke/big/model.safetensors at 10.5 MB" in out.stderr, out.stderr
        assert hub.requests("GET", "model.safetensors")[-1].range == "bytes=10485760-"
    finally:
        hub.stop()
    step("completion of cached repos, without torch")
    out = gpt2(
        venv,
        {
            **env,
            "_GPT2_COMPLETE": "complete_bash",
            "COMP_WORDS": "gpt2 rm smoke/",
            "COMP_CWORD": "2",
        },
    )
    assert out.stdout.split() == ["smoke/big", "smoke/tiny"], out.stdout
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
        check(venv, work / "home", args.extra)
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
