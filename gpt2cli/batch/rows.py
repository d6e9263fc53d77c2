"""The INPUT of `gpt2 batch`: JSON Lines (one object per prompt) or plain text (one prompt per
line), read into rows ready to decode. No torch.

A JSON Lines row is `{"prompt": ..., "id": ..., "max_tokens": ..., "temperature": ..., "top_k":
..., "top_p": ..., "repetition_penalty": ..., "seed": ..., "stop": ..., "samples": ...,
"context_shift": ...}`: only
`prompt` is required; the command's flags give the other values' defaults, and every value is
checked by gpt2cli/types.py as the flags are. A row that fails a check becomes a `BadRow` (its
error is written to OUTPUT and the run goes on); a line that is not JSON makes the whole file bad
(`BadInput`, exit 2), found before any model loads.

The file is read twice: `scan_input` once, before the model loads (bad lines, row count for the
progress display, unique ids for resuming), then `InputFile.rows` lazily while decoding, so
millions of prompts are never all in memory. Standard input is spooled to a temporary file first
so that it too can be read twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gpt2cli.errors import ParamError, UsageError
from gpt2cli.types import GenerationConfig, SamplingParams

FORMATS = ("auto", "jsonl", "text")
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "repetition_penalty")
CONFIG_FIELDS = ("max_tokens", "stop", "samples", "context_shift")
ROW_FIELDS = ("prompt", "id", "seed", *SAMPLING_FIELDS, *CONFIG_FIELDS)
SEED_SPACE = 2**53  # derived seeds stay exact in every JSON reader (jq's numbers are doubles)


class BadInput(UsageError):
    """INPUT cannot be used at all: unreadable, or not JSON Lines (exit 2)."""


@dataclass(frozen=True)
class Row:
    """A prompt to decode. `index`: its place among INPUT's rows (0-based, for --ordered);
    `line`: its line number; `params.seed` is always set (the row's own, or derived)."""

    index: int
    line: int
    id: str | int
    prompt: str
    params: SamplingParams
    config: GenerationConfig


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be decoded; OUTPUT gets `{"id": ..., "error": ...}` for it."""

    index: int
    line: int
    id: str | int
    error: str


def id_key(row_id: str | int) -> str:
    """The identity of a row id, as resuming compares them: 7 and "7" are different ids."""
    return json.dumps(row_id, ensure_ascii=False)


def row_seed(base: int, row_id: str | int) -> int:
    """The seed of a row without its own: a hash of the run's `--seed` and the row's id, so it
    does not depend on the row's position, the batch size, the workers or resuming."""
    digest = hashlib.blake2b(f"{base}\x00{id_key(row_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SEED_SPACE


@dataclass(frozen=True)
class RowDefaults:
    """What the command's flags say, for the values a row does not give. `params.seed` is the
    base that row seeds are derived from."""

    params: SamplingParams
    config: GenerationConfig

    def row(self, index: int, line: int, value: Any) -> Row | BadRow:
        """A parsed JSON value (or a text line, as a str) -> a Row, or a BadRow saying why."""
        if isinstance(value, str):  # --format text
            value = {"prompt": value}
        if not isinstance(value, dict):
            kind = _JSON_KINDS.get(type(value), "null")
            return BadRow(index, line, line, f"line {line}: a row must be an object, not {kind}")
        row_id = value.get("id", line)
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
            return BadRow(index, line, line, f"line {line}: id must be a string or an integer")
        try:
            return self._checked(index, line, row_id, value)
        except ParamError as exc:
            return BadRow(index, line, row_id, f"line {line}: {exc.param}: {exc.detail}")

    def _checked(self, index: int, line: int, row_id: str | int, value: dict) -> Row:
        if "prompt" not in value:
            raise ParamError("prompt", "missing (every row needs one)")
        prompt = value["prompt"]
        if not isinstance(prompt, str):
            raise ParamError("prompt", f"must be a string, got {json.dumps(prompt)[:40]}")
        stop = value.get("stop", self.config.stop)
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)):
            raise ParamError("stop", f"must be a string or a list of strings, got {stop!r}")
        given = {k: value[k] for k in SAMPLING_FIELDS if k in value}
        seed = value["seed"] if "seed" in value else row_seed(self.params.seed or 0, row_id)
        params = dataclasses.replace(self.params, **given, seed=seed)
        changes = {k: value[k] for k in ("max_tokens", "samples") if k in value}
        if "context_shift" in value:
            if not isinstance(value["context_shift"], bool):
                shift = json.dumps(value["context_shift"])[:40]
                raise ParamError("context_shift", f"must be true or false, got {shift}")
            changes["context_shift"] = value["context_shift"]
        config = dataclasses.replace(self.config, **changes, stop=tuple(stop))
        return Row(index, line, row_id, prompt, params, config)


@dataclass
class InputFile:
    """A scanned INPUT: its rows can be read (again) with `rows()`."""

    name: str  # as the user gave it, for messages
    path: Path  # the file read (a temporary copy for stdin)
    format: str  # jsonl | text
    count: int = 0  # rows (blank lines are not rows)
    keys: dict[str, int] = field(default_factory=dict)  # id_key of each row -> its line
    bad_rows: int = 0
    unknown_fields: dict[str, int] = field(default_factory=dict)  # ignored field -> rows
    warnings: list[str] = field(default_factory=list)
    _spool: IO[bytes] | None = None

    def rows(self, defaults: RowDefaults) -> Iterator[Row | BadRow]:
        """Every row, in order, read lazily."""
        for index, line, value in self._values():
            yield defaults.row(index, line, value)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _values(self) -> Iterator[tuple[int, int, Any]]:
        """(row index, line number, parsed JSON value or text line) for every non-blank line."""
        index = 0
        try:
            with open(self.path, "rb") as f:
                for number, raw in enumerate(f, start=1):
                    value = self._parse(number, raw)
                    if value is _BLANK:
                        continue
                    yield index, number, value
                    index += 1
        except OSError as exc:
            raise BadInput(f"cannot read {self.name}: {exc.strerror or exc}") from None

    def _parse(self, number: int, raw: bytes) -> Any:
        if self.format == "text":
            text = raw.decode("utf-8", errors="replace").removesuffix("\n").removesuffix("\r")
            if number == 1:
                text = text.removeprefix("\ufeff")
            return text if text.strip() else _BLANK
        if not raw.strip():
            return _BLANK
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"{self.name} line {number} is not valid UTF-8") from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            hint = " (a .txt file or --format text reads one prompt per line)"
            raise BadInput(
                f"{self.name} line {number} is not JSON: {exc.msg} (column {exc.colno});"
                f" INPUT must be JSON Lines{hint if number == 1 else ''}"
            ) from None


_BLANK = object()
_JSON_KINDS = {list: "an array", int: "a number", float: "a number", bool: "a boolean"}


def pick_format(name: str, format: str) -> str:
    if format not in FORMATS:
        raise ParamError("format", f"must be auto, jsonl or text, got {format!r}")
    if format != "auto":
        return format
    return "text" if name.lower().endswith(".txt") else "jsonl"


def scan_input(name: str, format: str = "auto", defaults: RowDefaults | None = None) -> InputFile:
    """Read INPUT once (`-` is stdin): raise BadInput when it cannot be used; count its rows,
    collect their ids (which must be unique: resuming finds a row by its id) and what will be
    written as errors."""
    fmt = pick_format(name, format)
    spool = None
    if name == "-":
        spool = tempfile.NamedTemporaryFile(prefix="gpt2-batch-", suffix=".input")
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.flush()
        path = Path(spool.name)
    else:
        path = Path(name)
        if path.is_dir():
            raise BadInput(f"cannot read {name}: it is a directory")
        if not path.exists():
            raise BadInput(f"cannot read {name}: no such file")
    found = InputFile(name="stdin" if name == "-" else name, path=path, format=fmt, _spool=spool)
    defaults = defaults or RowDefaults(SamplingParams(seed=0), GenerationConfig())
    seen = found.keys
    for index, line, value in found._values():
        row = defaults.row(index, line, value)
        key = id_key(row.id)
        if key in seen:
            found.close()
            raise BadInput(
                f"{found.name} line {line}: id {key} is also on line {seen[key]};"
                " ids must be unique (a resumed run finds rows by id)"
            )
        seen[key] = line
        found.count += 1
        if isinstance(row, BadRow):
            found.bad_rows += 1
            if found.bad_rows <= 3:
                found.warnings.append(f"bad row, written as an error: {row.error}")
        if isinstance(value, dict):
            for name_ in value:
                if name_ not in ROW_FIELDS:
                    found.unknown_fields[name_] = found.unknown_fields.get(name_, 0) + 1
    if found.bad_rows > 3:
        found.warnings.append(f"{found.bad_rows - 3} more bad rows")
    for name_, rows in found.unknown_fields.items():
        found.warnings.append(f"field {name_!r} ignored ({rows} rows); rows may have {_fields()}")
    return found


def _fields() -> str:
    return ", ".join(ROW_FIELDS)
