"""How a finished generation is written down: the JSON record of a sample (`--json`, and the
rows of `gpt2 batch`), the per-token records of `--show-probs`, and the stats line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TextIO

from gpt2cli.types import Completion, Delta

JSON_FIELDS = (
    "text",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "seed",
    "model",
    "time_to_first_token_s",
    "tokens_per_s",
    "context_shifts",
)
_RENAMED = {"context_shifts": "shifts"}  # JSON name -> Completion attribute


def stats_line(c: Completion, label: str = "") -> str:
    line = (
        f"{c.completion_tokens} tokens · {c.tokens_per_s:.1f} tok/s · "
        f"first token {c.time_to_first_token_s:.2f} s · seed {c.seed} · finish: {c.finish_reason}"
    )
    if c.shifts:  # the window was full and its last half kept (--context-shift)
        line += f" · {c.shifts} context shift{'' if c.shifts == 1 else 's'}"
    return f"{label}{line}"


def completion_json(c: Completion, tokens: list[dict] | None = None) -> dict:
    """The `--json` record of a sample."""
    record = {name: getattr(c, _RENAMED.get(name, name)) for name in JSON_FIELDS}
    for name in ("time_to_first_token_s", "tokens_per_s"):
        record[name] = round(record[name], 4)
    if tokens is not None:
        record["tokens"] = tokens
    return record


def json_line(record: dict, stream: TextIO) -> str:
    """`record` as one line of JSON for `stream`: UTF-8 as is where the stream can encode it,
    `\\u` escapes where it cannot (PYTHONIOENCODING=ascii), so the JSON is always lossless."""
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("_", "-")
    return json.dumps(record, ensure_ascii=encoding not in ("utf-8", "utf8")) + "\n"


def token_records(deltas: Iterable[Delta], token_text: Callable[[int], str]) -> list[dict]:
    """`{text, id, logprob}` (and `top`: the likeliest alternatives, same shape) per token."""

    def record(token: int, logprob: float | None) -> dict:
        return {"text": token_text(token), "id": token, "logprob": logprob}

    out = []
    for d in deltas:
        if d.token_id is None:
            continue
        entry = record(d.token_id, d.logprob)
        if d.top is not None:
            entry["top"] = [record(i, lp) for i, lp in d.top]
        out.append(entry)
    return out
