"""The settings a REPL session generates with, `/set NAME VALUE` parsing, and the modes.

A session's settings are the same two objects every caller of the engine uses: SamplingParams
(how each token is picked) and GenerationConfig (what to generate), so a value is checked by the
same code as the command-line flags and gets the same message. A value that does not even parse
as a number is handed to the check as text, whose message then names the type it expects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from gpt2cli.errors import ParamError, UsageError
from gpt2cli.types import GenerationConfig, SamplingParams

SETTINGS = (
    "temperature",
    "top_k",
    "top_p",
    "max_tokens",
    "repetition_penalty",
    "seed",
    "ignore_eos",
    "stop",
    "context_shift",
)
MODES = ("fresh", "continue")
_FLOATS = ("temperature", "top_p", "repetition_penalty")
_INTS = ("top_k", "seed", "max_tokens")
_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")
_SWITCHES = ("ignore_eos", "context_shift")


@dataclass(frozen=True)
class Settings:
    """How a session samples (`params`) and what it generates (`generation`)."""

    params: SamplingParams = field(default_factory=SamplingParams)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def with_value(self, name: str, value: object) -> Settings:
        """These settings with `name` set to `value`, validated by the class that owns it."""
        if name in {f.name for f in dataclasses.fields(SamplingParams)}:
            params = dataclasses.replace(self.params, **{name: value})
            return dataclasses.replace(self, params=params)
        generation = dataclasses.replace(self.generation, **{name: value})
        return dataclasses.replace(self, generation=generation)

    def value(self, name: str) -> object:
        owner = self.params if hasattr(self.params, name) else self.generation
        return getattr(owner, name)


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
    if name in _FLOATS or name in _INTS:
        if name == "seed" and value.lower() in ("none", "random"):
            return settings.with_value(name, None)
        return settings.with_value(name, _number(value, float if name in _FLOATS else int))
    if name in _SWITCHES:
        if value.lower() not in _ON + _OFF:
            raise ParamError(name, f"must be on or off, got {value!r}")
        return settings.with_value(name, value.lower() in _ON)
    if name == "stop":  # the value as typed: spaces in a stop string count
        if value.lower() in ("", "none"):
            return settings.with_value(name, ())
        return settings.with_value(name, tuple(parse_stop([raw])))
    raise UsageError(f"unknown setting {name!r}: one of {', '.join(SETTINGS)}")


def setting_text(settings: Settings, name: str) -> str:
    """A setting's value as /show and /set print it."""
    value = settings.value(name)
    if name == "seed" and value is None:
        return "random"
    if name in _SWITCHES:
        return "on" if value else "off"
    if name == "stop":
        return " ".join(repr(s) for s in value) or "none"  # type: ignore[union-attr]
    return str(value)
