"""Showing token probabilities: a fixed colour scale (and its legend), generated text coloured
token by token, and tables of candidates and of scored tokens, as Rich tables on a terminal and
as plain aligned text on a pipe. Display only: the numbers come from gpt2cli/scoring.py and the
engine's deltas. No torch here."""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from gpt2cli.errors import ParamError
from gpt2cli.text.tokenizer import StreamDecoder, Tokenizer
from gpt2cli.types import MAX_CANDIDATES

if TYPE_CHECKING:
    from gpt2cli.runtime.scoring import Candidate, CandidateStep, TextScore
    from gpt2cli.types import Delta

# (lowest probability, label, colour), most likely first: a fixed scale, the same for every run.
LEVELS = (
    (0.8, "≥80%", "bright_green"),
    (0.5, "50–80%", "green"),
    (0.2, "20–50%", "yellow"),
    (0.05, "5–20%", "dark_orange"),
    (0.0, "<5%", "red"),
)
_STYLES = [Style(color=colour) for _, _, colour in LEVELS]
BAR_WIDTH = 20
_EIGHTHS = " ▏▎▍▌▋▊▉"
Span = tuple[str, Style | None]


def prob_style(prob: float | None) -> Style | None:
    """The colour for a token sampled with probability `prob` (None: no colour)."""
    if prob is None or math.isnan(prob):
        return None
    return next(style for (low, _, _), style in zip(LEVELS, _STYLES) if prob >= low)


def logprob_style(logprob: float | None) -> Style | None:
    return None if logprob is None else prob_style(math.exp(logprob))


def shows_colour(console: Console) -> bool:
    """Whether `console` shows colour at all (a colour terminal, and no NO_COLOR)."""
    return console.is_terminal and not console.no_color and console.color_system is not None


def legend() -> Text:
    """`token probability: <5% 5–20% …`, each range in its colour (for stderr)."""
    text = Text()
    text.append("token probability: ", "dim")
    for i, (_, label, _) in enumerate(reversed(LEVELS)):
        text.append(("  " if i else "") + f"■ {label}", _STYLES[len(LEVELS) - 1 - i])
    return text


def print_legend(console: Console) -> None:
    """The legend on `console` (stderr), unless it would show no colour (a log file, NO_COLOR)."""
    if shows_colour(console):
        console.print(legend())


class TokenColourer:
    """Splits each Delta's text into spans coloured by the probability of the token that made
    them. Deltas can release text later than the token that made it (a character split over
    tokens, a possible stop string held back), so each sample decodes its tokens alongside and
    hands out the colours in order. `reset()` before each generation."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.reset()

    def reset(self) -> None:
        self._decoders: dict[int, StreamDecoder] = {}
        self._pending: dict[int, deque[list]] = {}  # sample -> [text, style] not shown yet

    def spans(self, delta: Delta) -> list[Span]:
        decoder = self._decoders.setdefault(delta.sample, StreamDecoder(self.tokenizer))
        pending = self._pending.setdefault(delta.sample, deque())
        if delta.token_id is not None:
            piece, style = decoder.push(delta.token_id), logprob_style(delta.logprob)
        else:
            piece, style = decoder.flush(), None
        if piece:
            pending.append([piece, style])
        out: list[Span] = []
        rest = delta.text
        while rest:
            if not pending:  # should not happen; never lose text over a colour
                out.append((rest, None))
                break
            piece, style = pending[0]
            n = min(len(piece), len(rest))  # delta texts are a prefix of the decoded text
            out.append((rest[:n], style))
            rest = rest[n:]
            if n >= len(piece):
                pending.popleft()
            else:
                pending[0][0] = piece[n:]
        return out


def candidates_to_show(top_candidates: int | None, explain_steps: int | None) -> int:
    """The number of candidates to show per token (0: no tables), from --top-candidates and
    --explain-steps (which alone means 5)."""
    if top_candidates is not None and not 1 <= top_candidates <= MAX_CANDIDATES:
        raise ParamError(
            "top_candidates", f"must be an integer in [1, {MAX_CANDIDATES}], got {top_candidates}"
        )
    if explain_steps is not None and explain_steps < 1:
        raise ParamError("explain_steps", f"must be an integer >= 1, got {explain_steps}")
    if top_candidates is None:
        return 5 if explain_steps is not None else 0
    return top_candidates


def token_label(text: str) -> str:
    """A token as a quoted string, so spaces and newlines show: `" the"`, `"\\n"`."""
    return json.dumps(text, ensure_ascii=False)


def bar(prob: float, plain: bool = False) -> str:
    """A bar BAR_WIDTH cells long at probability 1 (eighths of a cell on a terminal)."""
    cells = max(0.0, min(prob, 1.0)) * BAR_WIDTH
    if plain:
        return "#" * round(cells)
    full = int(cells)
    part = _EIGHTHS[int((cells - full) * 8)] if full < BAR_WIDTH else ""
    return ("█" * full + part).rstrip()


def percent(prob: float) -> str:
    return f"{prob * 100:.2f}%"


def _cut_after(step: CandidateStep) -> int | None:
    """How many of the shown rows lie above the sampling cut, when the cut falls among them."""
    kept = [c.sample_prob > 0 for c in step.candidates]
    n = sum(kept)
    if 0 < n < len(kept) and all(kept[:n]):
        return n
    return None


def _title(step: CandidateStep) -> str:
    if step.chosen is None:
        return f"next token after step {step.step}" if step.step else "next token"
    return (
        f"step {step.step + 1}: sampled {token_label(step.chosen.text)} "
        f"(rank {step.chosen_rank}, p {percent(step.chosen.prob)})"
    )


def _caption(step: CandidateStep) -> str:
    if step.cut == "greedy":
        return "greedy: the most likely token is always picked"
    if step.cut:
        return f"{step.cut} kept {step.kept} tokens for sampling"
    return f"sampling from all {step.kept} tokens"


def _rows(step: CandidateStep) -> list[tuple[int, Candidate, bool]]:
    """(rank, candidate, is the sampled one) for the table; the sampled token is added at the
    end when it is not among the most likely."""
    chosen = step.chosen.id if step.chosen else None
    rows = [(i + 1, c, c.id == chosen) for i, c in enumerate(step.candidates)]
    if step.chosen is not None and step.chosen_rank and step.chosen_rank > len(rows):
        rows.append((step.chosen_rank, step.chosen, True))
    return rows


def candidate_table(step: CandidateStep) -> Table:
    """The step's candidates as a Rich table: rank, token, id, probability with a bar, the
    probability sampling gave it ("cut" when top-k/top-p removed it), and the sampled one."""
    table = Table(
        title=Text(_title(step), style="bold"),
        title_justify="left",
        caption=Text(_caption(step), style="dim"),
        caption_justify="left",
        box=box.HORIZONTALS,  # a rule under the header and where the sampling cut falls
        pad_edge=False,
    )
    for name, justify in (("#", "right"), ("token", "left"), ("id", "right"), ("p", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("", no_wrap=True, min_width=BAR_WIDTH)
    table.add_column("p sampling", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    cut, rows = _cut_after(step), _rows(step)
    for i, (rank, c, sampled) in enumerate(rows):
        style = prob_style(c.prob)
        if i == len(step.candidates):  # the sampled token, further down the ranking
            table.add_row(Text("…"))
        table.add_row(
            Text(str(rank)),
            Text(token_label(c.text), style=style or ""),
            Text(str(c.id), style="dim"),
            Text(percent(c.prob), style=style or ""),
            Text(bar(c.prob), style=style or ""),
            Text(percent(c.sample_prob)) if c.sample_prob > 0 else Text("cut", style="dim"),
            Text("◀ sampled", style="bold") if sampled else Text(""),
            end_section=cut is not None and i == cut - 1,
        )
    return table


def candidate_lines(step: CandidateStep) -> list[str]:
    """The same table as plain aligned text, for a pipe."""
    cells = [("rank", "token", "id", "p", "bar", "p sampling", "")]
    cut, rows = _cut_after(step), _rows(step)
    for i, (rank, c, sampled) in enumerate(rows):
        if i == len(step.candidates) and len(rows) > len(step.candidates):
            cells.append(("...",) + ("",) * 6)
        cells.append(
            (
                str(rank),
                token_label(c.text),
                str(c.id),
                percent(c.prob),
                bar(c.prob, plain=True),
                percent(c.sample_prob) if c.sample_prob > 0 else "cut",
                "<- sampled" if sampled else "",
            )
        )
        if cut is not None and i == cut - 1:
            cells.append((f"-- {step.cut} cut --",) + ("",) * 6)
    return [_title(step), *_align(cells, right={0, 2, 3, 5}), _caption(step)]


def _align(rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; a row whose first cell starts with - or . spans."""
    grid = [r for r in rows if not r[0].startswith(("--", "..."))]
    widths = [max(cell_len(r[i]) for r in grid) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        if r[0].startswith(("--", "...")):
            out.append("  " + r[0])
            continue
        pads = [" " * (w - cell_len(c)) for c, w in zip(r, widths)]  # wide CJK characters
        cells = [p + c if i in right else c + p for i, (c, p) in enumerate(zip(r, pads))]
        out.append(("  " + "  ".join(cells)).rstrip())
    return out


def print_candidates(console: Console, steps: Sequence[CandidateStep], plain: bool) -> None:
    """Each step's table, one after another, separated by blank lines."""
    for step in steps:
        if plain:
            console.file.write("\n" + "\n".join(candidate_lines(step)) + "\n")
        else:
            console.print()
            console.print(candidate_table(step))
    console.file.flush()


def score_summary(score: TextScore) -> str:
    perplexity = score.perplexity  # inf beyond the float range: printed as inf
    shown = f"{perplexity:.4f}" if perplexity < 1e6 else f"{perplexity:.4e}"
    tokens = "token" if score.scored == 1 else "tokens"
    line = (
        f"perplexity {shown} · mean NLL {score.nll:.4f} nats/token · {score.scored} {tokens} scored"
    )
    if score.windows > 1:
        line += f" · {score.windows} windows of {score.window}, stride {score.stride}"
    return line


def print_score_tokens(console: Console, score: TextScore, plain: bool) -> None:
    """A row per token: position, token, id, logprob and probability, coloured on a terminal.
    (`score` must have been made with every token kept.)"""
    assert score.tokens is not None
    rows = []
    for i, t in enumerate(score.tokens):
        lp = t.logprob
        rows.append(
            (
                str(i),
                token_label(t.text),
                str(t.id),
                "-" if lp is None else f"{lp:.4f}",
                "-" if lp is None else percent(math.exp(lp)),
                "" if lp is None else bar(math.exp(lp), plain),
                logprob_style(lp),
            )
        )
    if plain:
        cells = [("#", "token", "id", "logprob", "p", "bar"), *(r[:6] for r in rows)]
        console.file.write("\n".join(_align(cells, right={0, 2, 3, 4})) + "\n")
        console.file.flush()
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("#", "token", "id", "logprob", "p", ""):
        table.add_column(name, justify="left" if name in ("token", "") else "right", no_wrap=True)
    for *cells, style in rows:
        table.add_row(
            *(Text(c, style=(style or "") if k in (1, 4, 5) else "") for k, c in enumerate(cells))
        )
    console.print(table)
