"""The renderer, in-process, on hand-made event streams: terminal (word wrap, literal text,
nothing drawn twice), plain pipe text, JSON lines, several samples, Ctrl-C, stats, NO_COLOR."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from gpt2cli.types import Completion, Delta, Finish, Start
from gpt2cli.ui.records import JSON_FIELDS
from gpt2cli.ui.render import Renderer
from gpt2cli.ui.wrap import WrappingWriter, visible
from tests.support.cli import ESCAPE, Screen, squeeze


def completion(text: str, reason: str = "length", seed: int = 7) -> Completion:
    return Completion(
        text=text,
        finish_reason=reason,
        prompt_tokens=3,
        completion_tokens=len(text.split()),
        seed=seed,
        model="tiny",
        time_to_first_token_s=0.012,
        tokens_per_s=123.4,
    )


def events(*samples: list[str], order: list[int] | None = None, finish_order=None) -> list:
    """Start, the pieces of every sample interleaved round-robin, then the Finishes."""
    out: list = [Start(prompt_tokens=3, dropped_tokens=0, seed=7, samples=len(samples))]
    longest = max(len(s) for s in samples)
    for step in range(longest):
        for b, pieces in enumerate(samples):
            if step < len(pieces):
                out.append(Delta(b, pieces[step], step))
    for b in finish_order or range(len(samples)):
        out.append(Finish(b, completion("".join(samples[b]))))
    return out


def terminal(width: int = 20) -> tuple[io.StringIO, io.StringIO, Renderer]:
    out, err = io.StringIO(), io.StringIO()
    console = Console(file=out, force_terminal=True, width=width, color_system="standard")
    err_console = Console(file=err, force_terminal=False, width=width)
    return out, err, Renderer(console=console, err_console=err_console, out=out)


def test_plain_is_only_the_continuation_flushed_per_delta() -> None:
    out = io.StringIO()
    renderer = Renderer("plain", out=out, err=io.StringIO())
    done = renderer.render(events(["Hello", " [bold]", " world"]), prompt="Say:")
    assert out.getvalue() == "Hello [bold] world\n"
    assert [c.text for c in done] == ["Hello [bold] world"]


def test_plain_samples_in_order_with_echo() -> None:
    out = io.StringIO()
    renderer = Renderer("plain", echo=True, out=out, err=io.StringIO())
    stream = events(["a", "b"], ["c", "d"], ["e"], finish_order=[2, 1, 0])
    done = renderer.render(stream, prompt="P:")
    assert out.getvalue() == "P:ab\n\nP:cd\n\nP:e\n"
    assert [c.text for c in done] == ["ab", "cd", "e"]


def test_json_lines_in_sample_order() -> None:
    out, err = io.StringIO(), io.StringIO()
    Renderer(json_output=True, out=out, err=err).render(
        events(["x", "y"], ["z"], finish_order=[1, 0])
    )
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["text"] for r in records] == ["xy", "z"]
    assert all(tuple(r) == JSON_FIELDS for r in records)
    assert err.getvalue() == ""  # no stats without --verbose


def test_verbose_stats_line_on_stderr() -> None:
    err = io.StringIO()
    Renderer("plain", verbose=True, out=io.StringIO(), err=err).render(events(["a", "b"]))
    line = err.getvalue().strip()
    assert "2 tokens" not in line  # completion_tokens comes from the Completion (1 word here)
    for part in ("1 tokens", "123.4 tok/s", "first token 0.01 s", "seed 7", "finish: length"):
        assert part in line


def test_terminal_prompt_dim_text_literal_then_stats() -> None:
    out, err, renderer = terminal(width=60)
    renderer.render(events(["[bold]", " not bold", " \x1b[31mred?"]), prompt="A [red]prompt[/red]")
    raw = out.getvalue()
    assert "\x1b[2mA [red]prompt[/red]" in raw  # dim, literal
    assert "[bold] not bold ␛[31mred?" in raw  # literal; the model's ESC made visible
    assert Screen(60).feed(raw).lines == ["A [red]prompt[/red][bold] not bold ␛[31mred?", ""]
    assert "finish: length" in err.getvalue()


def test_terminal_samples_are_separated() -> None:
    out, _, renderer = terminal(width=30)
    renderer.render(events(["one"], ["two"]), prompt="P")
    lines = Screen(30).feed(out.getvalue()).lines
    assert [line for line in lines if "sample" in line][0].count("─") > 5
    assert "Pone" in lines and "Ptwo" in lines
    assert lines.index("Pone") < lines.index("Ptwo")


def test_no_color_keeps_text_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=40, color_system="truecolor")
    renderer = Renderer(console=console, err_console=Console(file=io.StringIO()), out=out)

    class AllRed:
        def reset(self) -> None: ...

        def spans(self, delta):
            return [(delta.text, "red")]

    renderer.delta_spans = AllRed()
    renderer.render(events(["hi", " there"]))
    assert "hi there" in out.getvalue()
    assert "\x1b[31m" not in out.getvalue() and "\x1b[38" not in out.getvalue()


def test_dropped_tokens_warning() -> None:
    err = io.StringIO()
    stream = [Start(3, 42, 1, 1), Delta(0, "x", 1), Finish(0, completion("x"))]
    Renderer("plain", out=io.StringIO(), err=err).render(stream)
    assert "warning" in err.getvalue() and "42 tokens were dropped" in err.getvalue()


def interrupted_stream() -> Iterator:
    yield Start(prompt_tokens=2, dropped_tokens=0, seed=9, samples=2)
    yield Delta(0, "partial", 11)
    yield Delta(1, "other", 12)
    yield Delta(0, " text", 13)
    raise KeyboardInterrupt


@pytest.mark.parametrize("mode", ["terminal", "plain", "json"])
def test_ctrl_c_keeps_what_was_shown(mode: str) -> None:
    if mode == "terminal":
        out, err, renderer = terminal(width=40)
    else:
        out, err = io.StringIO(), io.StringIO()
        renderer = Renderer(mode, out=out, err=err)
    done = renderer.render(interrupted_stream(), prompt="", model="tiny")
    assert renderer.interrupted
    # every sample is still shown, each as far as it got
    assert [(c.text, c.finish_reason, c.completion_tokens) for c in done] == [
        ("partial text", "interrupted", 2),
        ("other", "interrupted", 1),
    ]
    text = out.getvalue()
    assert text.endswith("\n")
    if mode == "json":
        records = [json.loads(line) for line in text.splitlines()]
        assert [r["finish_reason"] for r in records] == ["interrupted"] * 2
        assert records[0]["seed"] == 9 and records[1]["text"] == "other"
    else:
        assert text.index("partial text") < text.index("other")


def test_visible_control_characters() -> None:
    assert visible("a\x1b[2Jb\rc\x07\td\n") == "a␛[2Jb␍c␇\td\n"


WORDS = st.text(alphabet="abcdefghij東京é🎉", min_size=1, max_size=14)
SEPARATORS = st.sampled_from([" ", " ", " ", "  ", "\n", "\t"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(WORDS, SEPARATORS), min_size=1, max_size=30),
    st.lists(st.integers(1, 6), min_size=1, max_size=40),
    st.integers(6, 24),
)
def test_wrapping_writer_property(words, cuts, width: int) -> None:
    text = "".join(w + s for w, s in words)
    pieces, i = [], 0
    for n in cuts * (len(text) // max(sum(cuts), 1) + 1):  # stream it in arbitrary pieces
        if i >= len(text):
            break
        pieces.append(text[i : i + n])
        i += n
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=width, color_system=None)
    writer = WrappingWriter(console)
    for piece in pieces:
        writer.write(piece, "bold")
    writer.end_line()
    screen = Screen(width).feed(out.getvalue())
    assert screen.autowraps == 0  # every line break was ours: no line longer than the width
    assert squeeze("".join(screen.lines)) == squeeze(text)  # nothing lost, nothing twice
    for word, _ in words:  # a word that fits on a line is never split across two
        if len(word) * 2 <= width:
            assert any(word in line for line in screen.lines), (word, screen.lines)
    assert ESCAPE not in "".join(screen.lines)


def test_dumb_terminal_gets_no_cursor_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=12, height=5, color_system=None)
    assert console.is_dumb_terminal
    writer = WrappingWriter(console)
    for piece in ["one two thr", "ee four fi", "ve six"]:
        writer.write(piece)
    writer.end_line()
    assert ESCAPE not in out.getvalue()
    screen = Screen(12).feed(out.getvalue())
    assert screen.autowraps == 0
    assert squeeze("".join(screen.lines)) == squeeze("one two three four five six")
