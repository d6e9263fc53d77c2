"""Shell completions: the committed scripts match what the app generates, completion answers,
and neither completion nor --help imports torch (both must stay instant)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_completions", ROOT / "scripts/gen_completions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_committed_completions_match_the_app(shell: str) -> None:
    generated = load_generator().completion_script(shell)
    committed = (ROOT / "completions" / f"gpt2.{shell}").read_text()
    assert committed == generated, "run: python3 scripts/gen_completions.py"


def run_with_importtime(*args: str, env: dict[str, str] | None = None) -> tuple[str, set[str]]:
    """Run `python -m gpt2cli ARGS`; return stdout and every module it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpt2cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "gpt2cli.cli" in modules, proc.stderr[-2000:]
    return proc.stdout, modules


def no_torch(modules: set[str]) -> bool:
    return not any(m == "torch" or m.startswith("torch.") for m in modules)


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    out, modules = run_with_importtime(*args)
    assert "Usage" in out
    assert no_torch(modules)


def bash_complete(words: str) -> tuple[list[str], set[str]]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {"_GPT2_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    out, modules = run_with_importtime(env=env)
    return out.split(), modules


def test_completion_answers_without_torch() -> None:
    options, modules = bash_complete("gpt2 generate --to")
    assert options == ["--top-k", "--top-p", "--top-candidates"]
    assert no_torch(modules)


def test_completion_of_commands_and_values() -> None:
    commands, _ = bash_complete("gpt2 ge")
    assert commands == ["generate"]
    sizes, _ = bash_complete("gpt2 generate -m ")
    assert sizes == ["small", "medium", "large", "xl"]
    dtypes, _ = bash_complete("gpt2 generate --dtype b")
    assert dtypes == ["bfloat16"]


def test_installed_script_completes() -> None:
    """The console script itself (what the shell scripts call) answers too."""
    import shutil

    gpt2 = shutil.which("gpt2")
    if gpt2 is None:
        pytest.skip("gpt2 is not installed on PATH")
    env = {
        **os.environ,
        "_GPT2_COMPLETE": "complete_bash",
        "COMP_WORDS": "gpt2 generate --ignore",
        "COMP_CWORD": "2",
    }
    proc = subprocess.run([gpt2], capture_output=True, text=True, env=env, timeout=30)
    assert proc.stdout.split() == ["--ignore-eos"]
