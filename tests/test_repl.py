"""`gpt2 repl`: driven through a pseudo-terminal (pexpect) and through piped stdin on tiny
checkpoints, its continuations checked against the engine run in-process; the entry reader,
/set parsing and continue mode's context in-process."""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pexpect
import pytest

from gpt2cli.errors import ParamError, UsageError
from gpt2cli.repl.input import read_entry
from gpt2cli.repl.loop import handle
from gpt2cli.repl.session import Session, join
from gpt2cli.repl.settings import Settings, setting_text, updated
from gpt2cli.runtime.generate import complete
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.types import GenerationConfig, SamplingParams, validate_param
from gpt2cli.ui.render import Renderer
from gpt2cli.ui.wrap import visible
from tests.support.cli import gpt2, gpt2_argv, squeeze

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def lm(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(str(tiny_checkpoint), device="cpu")


def spawn(ckpt: Path, *args: str, env: dict[str, str] | None = None) -> pexpect.spawn:
    argv = gpt2_argv("repl", "-m", str(ckpt), "--device", "cpu", *args)
    env = {**os.environ, "TERM": "xterm-256color", **(env or {})}
    return pexpect.spawn(argv[0], argv[1:], env=env, encoding="utf-8", dimensions=(40, 120))


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


def reference(lm: LoadedModel, prompt: str, seed: int, **kwargs) -> str:
    temperature = kwargs.pop("temperature", 1.0)
    params = SamplingParams(seed=seed, temperature=temperature)
    return complete(lm, prompt, params, **kwargs)[0].text


def test_terminal_session(lm: LoadedModel, tiny_checkpoint: Path, isolated_env: Path) -> None:
    history = isolated_env / "data" / "gpt2cli" / "history"
    child = spawn(tiny_checkpoint, "-n", "12", "-s", "4", env={"GPT2_NO_HISTORY": ""})
    child.expect(r"gpt2 repl · \S+ on cpu, float32 · /help", timeout=60)
    child.expect_exact(">>> ")

    child.sendline("Hello [bold]")  # a prompt streams its continuation, then a stats line
    child.expect(r"(\d+) tokens · .* seed 4 · finish: (eos|length)")
    shown = plain(child.before).split("Hello [bold]\n", 1)[1]
    assert squeeze(shown) == squeeze(visible(reference(lm, "Hello [bold]", 4, max_tokens=12)))
    child.expect_exact(">>> ")

    child.sendline("/set temperature 0.25")
    child.expect_exact("temperature = 0.25")
    child.sendline("/show")
    child.expect(r"mode\s+fresh")
    child.expect(r"temperature\s+0\.25\s+top_k\s+40")
    child.sendline("/set top_k -1")  # a bad value: the flag's message, and the session goes on
    child.expect_exact("invalid value for top_k: must be an integer >= 0 (0 turns it off), got -1")
    child.sendline("/nope")
    child.expect_exact("unknown command /nope: type /help")
    child.sendline("Again")
    child.expect(r"seed 4 · finish")
    child.expect_exact(">>> ")

    transcript = isolated_env / "story.txt"
    child.sendline(f"/save {transcript}")
    child.expect_exact("saved 2 exchange(s)")

    child.send("half a line")  # Ctrl-C at the prompt clears the line and says how to leave
    time.sleep(0.2)
    child.sendintr()
    child.expect_exact("Ctrl-D, /quit or /exit leaves")
    child.sendline("/help")  # had the line been kept, this would be a prompt
    child.expect_exact("/save FILE")
    child.expect_exact(">>> ")
    child.sendeof()  # Ctrl-D leaves with status 0
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "Traceback" not in child.before

    saved = transcript.read_text(encoding="utf-8")
    assert saved.startswith(">>> Hello [bold]\n") and "\n>>> Again\n" in saved
    assert ANSI.search(saved) is None
    lines = history.read_text().splitlines()
    assert "Hello [bold]" in lines and "/show" in lines and "half a line" not in lines


def test_ctrl_c_mid_generation_returns_to_the_prompt(long_checkpoint: Path) -> None:
    child = spawn(long_checkpoint, "-v", "-n", "8000", "--ignore-eos", "-s", "1")
    child.expect_exact(">>> ", timeout=60)
    child.sendline("Hello")
    child.expect_exact("first token after", timeout=60)  # decoding has begun (--verbose)
    child.sendintr()
    child.expect(r"finish: interrupted", timeout=30)
    child.expect_exact(">>> ")
    child.sendline("/set max_tokens 3")
    child.sendline("Hi")  # the next entry works
    child.expect(r"3 tokens · .* finish: length")
    child.expect_exact(">>> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before and "KeyboardInterrupt" not in child.before


def test_piped_stdin_writes_only_continuations(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    script = (
        "Hello\n"
        "/set top_p 2\n"  # an error on stderr; the session goes on
        "/set temperature 0.5\n"
        '"""\nTwo\nlines\n"""\n'
        "one \\\nentry\n"
        "\n"  # an empty line is no entry in fresh mode
        "//slash\n"
    )
    args = ("repl", "-m", str(tiny_checkpoint), "--device", "cpu", "-n", "10", "-s", "3")
    proc = gpt2(*args, input=script)
    assert proc.returncode == 0, proc.stderr
    expected = [
        reference(lm, "Hello", 3, max_tokens=10),
        reference(lm, "Two\nlines", 3, max_tokens=10, temperature=0.5),
        reference(lm, "one \nentry", 3, max_tokens=10, temperature=0.5),
        reference(lm, "/slash", 3, max_tokens=10, temperature=0.5),
    ]
    assert proc.stdout == "".join(text + "\n" for text in expected)
    with pytest.raises(ParamError) as flag_error:
        validate_param("top_p", 2.0)
    assert f"invalid value for top_p: {flag_error.value.detail}" in proc.stderr
    assert "temperature = 0.5" in proc.stderr
    assert ">>>" not in proc.stderr and "Traceback" not in proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr


def test_piped_continue_mode_sees_the_running_text(lm: LoadedModel, tiny_checkpoint: Path) -> None:
    args = ("repl", "-m", str(tiny_checkpoint), "--device", "cpu", "-n", "8", "-t", "0")
    proc = gpt2(*args, "--mode", "continue", input="Once upon a time\nthe end\n/quit\nignored\n")
    assert proc.returncode == 0, proc.stderr
    first = reference(lm, "Once upon a time", 0, max_tokens=8, temperature=0)
    story = join("Once upon a time" + first, "the end")
    second = reference(lm, story, 0, max_tokens=8, temperature=0)
    assert second != reference(lm, "the end", 0, max_tokens=8, temperature=0)
    assert proc.stdout == f"{first}\n{second}\n"


def test_model_switch_downloads_from_the_hub(
    lm: LoadedModel, tiny_checkpoint: Path, tiny_checkpoint_transformers: Path, fake_hub
) -> None:
    fake_hub.add_repo("tester/other", tiny_checkpoint_transformers)
    script = "Hi\n/model tester/absent\n/model tester/other\n/show\nHi\n"
    args = ("repl", "-m", str(tiny_checkpoint), "--device", "cpu", "-n", "6", "-s", "2")
    proc = gpt2(*args, input=script)
    assert proc.returncode == 0, proc.stderr
    other = load_model(str(tiny_checkpoint_transformers), device="cpu")
    expected = [reference(lm, "Hi", 2, max_tokens=6), reference(other, "Hi", 2, max_tokens=6)]
    assert expected[0] != expected[1]
    assert proc.stdout == "".join(text + "\n" for text in expected)
    assert "tester/absent" in proc.stderr  # an error, and the session went on
    assert "model: tester/other on cpu, float32" in proc.stderr
    assert re.search(r"model +tester/other \(", proc.stderr)


def test_bad_mode_flag_is_a_usage_error(tiny_checkpoint: Path) -> None:
    proc = gpt2("repl", "-m", str(tiny_checkpoint), "--mode", "chat", input="")
    assert proc.returncode == 2
    assert proc.stderr.startswith("gpt2: error: invalid value for --mode: must be fresh or")


class Lines:
    interactive = False

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)

    def read(self, prompt: str) -> str:
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


@pytest.mark.parametrize(
    "lines, entry",
    [
        (["Hello"], "Hello"),
        (["a \\", "b\\", "c"], "a \nb\nc"),
        (['"""', "x", "", "y", '"""'], "x\n\ny"),
        (['"""x', 'y"""'], "x\ny"),
        (['"""one line"""'], "one line"),
        (["/set stop \\n"], "/set stop \\n"),  # commands never continue
    ],
)
def test_read_entry(lines: list[str], entry: str) -> None:
    assert read_entry(Lines(*lines, "next")) == entry


def test_read_entry_at_the_end_of_input() -> None:
    assert read_entry(Lines('"""', "open", "block")) == "open\nblock"
    assert read_entry(Lines("dangling \\")) == "dangling "
    with pytest.raises(EOFError):
        read_entry(Lines('"""'))
    source = Lines('"""', "typed")
    source.interactive = True  # Ctrl-D in a block at a terminal leaves
    with pytest.raises(EOFError):
        read_entry(source)


def test_set_checks_like_the_flags() -> None:
    s = updated(Settings(), "temperature", "0.25")
    s = updated(s, "top-k", " 5 ")
    s = updated(updated(s, "seed", "none"), "ignore_eos", "on")
    s = updated(s, "stop", "\\n", parse_stop=lambda v: [x.replace("\\n", "\n") for x in v])
    assert (s.params.temperature, s.params.top_k, s.params.seed) == (0.25, 5, None)
    assert [setting_text(s, n) for n in ("seed", "ignore_eos", "stop")] == ["random", "on", "'\\n'"]
    for name, value, flag_value in [("top_k", "1.5", "1.5"), ("max_tokens", "0", 0)]:
        with pytest.raises(ParamError) as repl_error:
            updated(s, name, value)
        with pytest.raises(ParamError) as flag_error:
            validate_param(name, flag_value)
        assert repl_error.value.detail == flag_error.value.detail
    with pytest.raises(UsageError, match="unknown setting 'colour'"):
        updated(s, "colour", "red")


def test_continue_mode_trims_the_running_text_once(lm: LoadedModel) -> None:
    out, err = io.StringIO(), io.StringIO()
    settings = Settings(SamplingParams(seed=2), GenerationConfig(max_tokens=30, ignore_eos=True))
    session = Session(lm, settings, mode="continue", renderer=Renderer("plain", out=out, err=err))
    prompts = []
    for word in ["Once upon a time", "there was", "a fox", "who", "jumped", "and ran"]:
        prompts.append(session.prompt_for(word))
        handle(session, word)
    keep = lm.context_length - 30 + 1  # engine.fit_prompt: the last token needs no slot
    assert all(len(lm.tokenizer.encode(p)) <= keep for p in prompts)
    # each prompt is the running text, trimmed from the left once it outgrows the window
    assert join("Once upon a time" + session.transcript[0][1], "there was").endswith(prompts[1])
    assert join(prompts[-2] + session.transcript[-2][1], "and ran").endswith(prompts[-1])
    assert err.getvalue().count("no longer fits the 128-token window") == 1
    assert "dropped" not in err.getvalue().replace("is dropped", "")  # no renderer warning
    handle(session, "/reset")
    assert session.prompt_for("Fresh start") == "Fresh start"
