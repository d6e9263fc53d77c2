"""Showing a generation: the one place that decides, once, how the engine's events are shown.

- terminal: the prompt dim, the continuation streamed as tokens arrive, word-wrapped as it goes
  (gpt2cli/wrap.py; no `Live`, so text taller than the screen is never redrawn or duplicated),
  then a stats line on stderr. Model text is `rich.text.Text`, never markup: `[bold]` prints
  as `[bold]`.
- plain (a pipe): only the continuation (`echo` adds the prompt), written and flushed as it
  streams; no colour or escape codes; stats on stderr only when asked.
- json: one JSON object per sample on stdout.

Samples decode as one batch and their events interleave; the first is streamed live while the
others are buffered, then each is shown in turn, separated by a rule on a terminal.

Ctrl-C while rendering stops decoding: what was shown stays, the line is ended, the partial
sample is returned with finish_reason "interrupted" and `Renderer.interrupted` is set.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TextIO

from rich.console import Console
from rich.style import StyleType
from rich.text import Text

from gpt2cli import console as _out
from gpt2cli.types import Completion, Delta, Event, Finish, Start, decode_rate
from gpt2cli.ui.records import completion_json, json_line, stats_line, token_records
from gpt2cli.ui.wrap import WrappingWriter

MODES = ("terminal", "plain", "json")


class DeltaSpans(Protocol):
    """Colours a generation's text piece by piece (see gpt2cli/probs.py's TokenColourer)."""

    def reset(self) -> None: ...

    def spans(self, delta: Delta) -> list[tuple[str, StyleType | None]]: ...


class Renderer:
    """Renders one generation's event stream; reusable for many (the REPL keeps one).

    mode: "terminal", "plain" or "json"; None picks json when `json_output`, else terminal when
    stdout is a terminal, else plain. echo: show the prompt before the continuation (default: on
    a terminal only). stats: the stats line on stderr (default: on a terminal or with verbose).
    delta_spans: optional colouring of each Delta's text in pieces on a terminal (e.g. by token
    probability).
    token_text: when given, each JSON record carries a `tokens` list (see `token_records`)."""

    def __init__(
        self,
        mode: str | None = None,
        *,
        json_output: bool = False,
        echo: bool | None = None,
        stats: bool | None = None,
        verbose: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
        console: Console | None = None,
        err_console: Console | None = None,
        delta_spans: DeltaSpans | None = None,
        token_text: Callable[[int], str] | None = None,
    ) -> None:
        self.out = out_stream = out if out is not None else sys.stdout
        if mode is None:
            is_tty = console.is_terminal if console is not None else _isatty(out_stream)
            mode = "json" if json_output else "terminal" if is_tty else "plain"
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.echo = (mode == "terminal") if echo is None else echo
        self.show_stats = (mode == "terminal" or verbose) if stats is None else stats
        self.verbose = verbose
        self.console = console or _out.stdout_console(out_stream)
        self.err_console = err_console or _out.stderr_console(err)
        self.writer = WrappingWriter(self.console)
        self.delta_spans = delta_spans
        self.token_text = token_text
        self.interrupted = False

    # -- messages on stderr ----------------------------------------------------------------
    def warn(self, message: str) -> None:
        _out.warn(message, self.err_console)

    def info(self, message: str) -> None:
        _out.info(message, self.err_console)

    # -- one generation --------------------------------------------------------------------
    def render(
        self, events: Iterable[Event], *, prompt: str = "", model: str = ""
    ) -> list[Completion]:
        """Show a generation as it happens; return its completions in sample order."""
        self.interrupted = False
        if self.delta_spans is not None:
            self.delta_spans.reset()
        run = _Run(prompt, model)
        try:
            for event in events:
                if isinstance(event, Delta):
                    run.add(event)
                    if self.verbose and not run.announced and run.first_step_done():
                        run.announced = True  # also tells scripts that decoding has begun
                        wait = (run.t_first or run.t_start) - run.t_start
                        self.info(
                            f"prompt {run.prompt_tokens} tokens · first token after {wait:.2f} s"
                        )
                    if event.sample == run.current:
                        self._delta(event)
                elif isinstance(event, Finish):
                    run.finished[event.sample] = event.completion
                    for done in run.advance():
                        self._end(run, done)
                        if run.current < run.samples:
                            self._begin(run)
                elif isinstance(event, Start):
                    run.start(event)
                    if event.dropped_tokens:
                        self.warn(
                            f"the prompt does not fit in the context window with room for the "
                            f"continuation: its first {event.dropped_tokens} tokens were dropped"
                        )
                    self._begin(run)
        except KeyboardInterrupt:
            self.interrupted = True
            with contextlib.suppress(Exception):
                events.close()  # type: ignore[attr-defined]
            if not run.started and self.mode == "terminal":
                self.writer.end_line()
            # Every sample is still shown: finished ones as they ended, the rest as far as
            # they got (so --json always writes one line per sample).
            while run.started and run.current < run.samples:
                i = run.current
                self._end(run, run.finished.pop(i, None) or run.partial(i))
                run.current += 1
                if run.current < run.samples:
                    self._begin(run)
        except Exception:
            if self.mode == "terminal":  # the error message goes on a line of its own
                with contextlib.suppress(Exception):
                    self.writer.end_line()
            raise
        return run.shown

    def _begin(self, run: _Run) -> None:
        i = run.current
        if self.mode == "terminal":
            if run.samples > 1:
                self.console.rule(Text(f"sample {i + 1}/{run.samples}"), style="dim")
            if self.echo and run.prompt:
                self.writer.write(run.prompt, "dim")
        elif self.mode == "plain":
            if i > 0:
                self.out.write("\n")
            if self.echo and run.prompt:
                self.out.write(run.prompt)
            self.out.flush()
        for delta in run.pending.pop(i, []):
            self._delta(delta)

    def _delta(self, delta: Delta) -> None:
        if self.mode == "terminal" and self.delta_spans is not None:
            for text, style in self.delta_spans.spans(delta):  # sees every delta, even ""
                self.writer.write(text, style)
            return
        if not delta.text:
            return
        if self.mode == "terminal":
            self.writer.write(delta.text)
        elif self.mode == "plain":
            self.out.write(delta.text)
            self.out.flush()

    def _end(self, run: _Run, completion: Completion) -> None:
        run.shown.append(completion)
        if self.mode == "terminal":
            self.writer.end_line()
        elif self.mode == "plain":
            self.out.write("\n")
            self.out.flush()
        else:
            tokens = None
            if self.token_text is not None:
                tokens = token_records(run.deltas.get(len(run.shown) - 1, []), self.token_text)
            self.out.write(json_line(completion_json(completion, tokens), self.out))
            self.out.flush()
        if self.show_stats:
            label = f"sample {len(run.shown)}/{run.samples}: " if run.samples > 1 else ""
            self.info(stats_line(completion, label))


class _Run:
    """Book-keeping for one generation: which sample is shown, what is buffered."""

    def __init__(self, prompt: str, model: str) -> None:
        self.prompt, self.model = prompt, model
        self.started = False
        self.samples, self.prompt_tokens, self.seed = 1, 0, 0
        self.current = 0
        self.pending: dict[int, list[Delta]] = {}
        self.finished: dict[int, Completion] = {}
        self.shown: list[Completion] = []
        self.texts: dict[int, list[str]] = {}
        self.deltas: dict[int, list[Delta]] = {}  # every delta, per sample (for JSON tokens)
        self.tokens: dict[int, int] = {}
        self.shifts: dict[int, int] = {}  # context shifts per sample, as far as deltas tell
        self.t_start = time.perf_counter()
        self.t_first: float | None = None
        self.announced = False  # the first step was reported (--verbose)

    def start(self, event: Start) -> None:
        self.started = True
        self.samples, self.prompt_tokens, self.seed = event.samples, event.prompt_tokens, event.seed

    def add(self, delta: Delta) -> None:
        self.texts.setdefault(delta.sample, []).append(delta.text)
        self.deltas.setdefault(delta.sample, []).append(delta)
        if delta.token_id is not None:
            self.tokens[delta.sample] = self.tokens.get(delta.sample, 0) + 1
            self.shifts[delta.sample] = delta.shifts
            if self.t_first is None:
                self.t_first = time.perf_counter()
        if delta.sample != self.current:
            self.pending.setdefault(delta.sample, []).append(delta)

    def first_step_done(self) -> bool:
        """Every sample has its first token (or has already finished)."""
        return len(self.tokens.keys() | self.finished.keys()) + self.current >= self.samples

    def advance(self) -> Iterator[Completion]:
        """Completions ready to be shown, in order; moves `current` past each."""
        while self.current in self.finished:
            done = self.finished.pop(self.current)
            self.current += 1
            yield done

    def partial(self, sample: int) -> Completion:
        """What there is of an unfinished sample, as an "interrupted" Completion."""
        now = time.perf_counter()
        first = self.t_first if self.t_first is not None else now
        n = self.tokens.get(sample, 0)
        return Completion(
            text="".join(self.texts.get(sample, [])),
            finish_reason="interrupted",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=n,
            seed=self.seed,
            model=self.model,
            time_to_first_token_s=first - self.t_start,
            tokens_per_s=decode_rate(n, self.t_first, now),
            shifts=self.shifts.get(sample, 0),
        )


_isatty = _out.isatty
