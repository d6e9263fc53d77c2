"""The settings a REPL session generates with, `/set NAME VALUE` parsing, and the modes.

Values are checked by the same code as the command-line flags (SamplingParams and
`validate_param`), so a bad value gets the same message. A value that does not even parse as a
number is handed to the check as text, whose message then names the type it expects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from gpt2cli.errors import ParamError, UsageError
from gpt2cli.sampling import SamplingParams, validate_param

SETTINGS = (
    "temperature",
    "top_k",
    "top_p",
    "max_tokens",
    "repetition_penalty",
    "seed",
    "ignore_eos",
    "stop",
)
MODES = ("fresh", "continue")
_FLOATS = ("temperature", "top_p", "repetition_penalty")
_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


@dataclass(frozen=True)
class Settings:
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 100
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


def check_mode(mode: str) -> str:
    """`fresh` or `continue` (any case); ParamError otherwise. No torch: the flag uses it too."""
    if mode.lower() not in MODES:
        raise ParamError("mode", f"must be fresh or continue, got {mode!r}")
    return mode.lower()


def _number(raw: str, kind: type) -> object:
    try:
        return kind(raw)
    except ValueError:
        return raw


def updated(
    settings: Settings,
    name: str,
    raw: str,
    parse_stop: Callable[[list[str]], list[str]] = list,
) -> Settings:
    """`settings` with `name` set to the text `raw`; ParamError for a bad name or value.
    `parse_stop` reads a stop string as --stop does (escapes such as \\n)."""
    name = name.lower().replace("-", "_")
    value = raw.strip()
    if name in _FLOATS or name in ("top_k", "seed"):
        if name == "seed" and value.lower() in ("none", "random"):
            number = None
        else:
            number = _number(value, float if name in _FLOATS else int)
        params = dataclasses.replace(settings.params, **{name: number})  # validates
        return dataclasses.replace(settings, params=params)
    if name == "max_tokens":
        number = _number(value, int)
        validate_param(name, number)
        return dataclasses.replace(settings, max_tokens=number)
    if name == "ignore_eos":
        if value.lower() not in _ON + _OFF:
            raise ParamError(name, f"must be on or off, got {value!r}")
        return dataclasses.replace(settings, ignore_eos=value.lower() in _ON)
    if name == "stop":  # the value as typed: spaces in a stop string count
        if value.lower() in ("", "none"):
            return dataclasses.replace(settings, stop=[])
        return dataclasses.replace(settings, stop=parse_stop([raw]))
    raise UsageError(f"unknown setting {name!r}: one of {', '.join(SETTINGS)}")


def setting_text(settings: Settings, name: str) -> str:
    """A setting's value as /show and /set print it."""
    value = getattr(settings.params if hasattr(settings.params, name) else settings, name)
    if name == "seed" and value is None:
        return "random"
    if name == "ignore_eos":
        return "on" if value else "off"
    if name == "stop":
        return " ".join(repr(s) for s in value) or "none"
    return str(value)
