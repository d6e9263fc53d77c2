"""Torch-free data shared by every layer: what to load (`LoadOptions`), how to sample
(`SamplingParams`), what to generate (`GenerationConfig`), what a checkpoint says about
generation (`GenerationDefaults`) and what generation reports (the events `Start`, `Delta`,
`Finish`, and `Completion`). Each default and each range check is defined here once; the CLI
flags, the REPL's /set, the Python API and the batch and HTTP inputs all validate through these
classes, and `resolve_defaults` is where a flag meets the checkpoint's default and the built-in
one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from gpt2cli.errors import ParamError

DEVICES = ("auto", "cpu", "cuda", "mps")  # plus cuda:N
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8", "int4")
MAX_CANDIDATES = 20  # rows of a candidate table (--top-candidates)
MAX_SAMPLES = 64


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_param(name: str, value: object) -> None:
    """Raise ParamError naming `name` and its allowed range when `value` is out of range."""
    if name == "temperature":
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ParamError(name, f"must be a number >= 0 (0 means greedy), got {value!r}")
    elif name == "top_k":
        if not _is_int(value) or value < 0:
            raise ParamError(name, f"must be an integer >= 0 (0 turns it off), got {value!r}")
    elif name == "top_p":
        if not _is_number(value) or not (0 < value <= 1):
            raise ParamError(name, f"must be in (0, 1], got {value!r}")
    elif name == "repetition_penalty":
        # A bounded range: the logits are float32, and 1e-300 or 1e300 would make them inf.
        if not _is_number(value) or not (0.01 <= value <= 100):
            raise ParamError(
                name, f"must be a number in [0.01, 100] (1 turns it off), got {value!r}"
            )
    elif name == "seed":
        if not _is_int(value) or not (0 <= value < 2**63):
            raise ParamError(name, f"must be an integer in [0, 2**63), got {value!r}")
    elif name == "max_tokens":
        if not _is_int(value) or value < 1:
            raise ParamError(name, f"must be an integer >= 1, got {value!r}")
    elif name == "samples":
        if not _is_int(value) or not (1 <= value <= MAX_SAMPLES):
            raise ParamError(name, f"must be an integer in [1, {MAX_SAMPLES}], got {value!r}")
    elif name == "top_logprobs":
        if not _is_int(value) or not (0 <= value <= 100):
            raise ParamError(name, f"must be an integer in [0, 100], got {value!r}")
    elif name == "stop":
        if not all(isinstance(s, str) for s in value):  # type: ignore[union-attr]
            raise ParamError(name, f"must be strings, got {value!r}")
        if any(not s for s in value):  # type: ignore[union-attr]
            raise ParamError(name, "must not be empty")
    else:  # pragma: no cover - programming error
        raise KeyError(name)


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is picked. `temperature=0` or `top_k=1` is greedy decoding.

    `seed=None` means "pick one": the engine draws a random seed and reports it, so every run can
    be repeated with `seed=<that value>`.
    """

    temperature: float = 1.0
    top_k: int = 40
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        validate_param("temperature", self.temperature)
        validate_param("top_k", self.top_k)
        validate_param("top_p", self.top_p)
        validate_param("repetition_penalty", self.repetition_penalty)
        if self.seed is not None:
            validate_param("seed", self.seed)

    @property
    def greedy(self) -> bool:
        # Below 1e-5 a temperature picks the top token anyway (unless logits tie to within
        # 1e-5), and dividing by it would overflow float32.
        return self.temperature < 1e-5 or self.top_k == 1


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate, beyond how each token is sampled.

    max_tokens: most tokens per sample. samples: continuations decoded as one batch. stop:
    strings that end a sample (not included in its text). ignore_eos: go on past the end-of-text
    token. logprobs: report each token's log-probability. top_logprobs: also the N most likely
    alternatives at every step. context_shift: when the window is full, keep its last half and
    go on instead of finishing with "context"."""

    max_tokens: int = 100
    samples: int = 1
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    context_shift: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        validate_param("max_tokens", self.max_tokens)
        validate_param("samples", self.samples)
        validate_param("stop", self.stop)
        validate_param("top_logprobs", self.top_logprobs)

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0


# -- the checkpoint's own defaults, under the user's flags --------------------------------------

# The values a checkpoint's generation_config.json may set and a flag overrides (field names of
# SamplingParams and GenerationConfig).
DEFAULTABLE = ("temperature", "top_k", "top_p", "repetition_penalty", "max_tokens")
FLAG = "flag"  # the source of a value the user gave
BUILT_IN = "default"  # the source of a built-in default


@dataclass(frozen=True)
class GenerationDefaults:
    """What a checkpoint says about generation: its generation_config.json or, without one, its
    config.json, read as transformers reads them (model/generation_config.py).

    bos_token_id: where an empty prompt and scoring start (None: not declared). eos_token_ids:
    the ids that end a sample (None: not declared; () declares none). values: defaults for
    DEFAULTABLE names, checked. greedy: `do_sample: false`. ignored: keys set that change what
    transformers generates and that gpt2cli does not apply. unknown: keys neither knows."""

    source: str = "generation_config.json"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] | None = None
    values: dict[str, object] = field(default_factory=dict)
    greedy: bool = False
    ignored: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


def check_given(given: dict[str, object | None]) -> None:
    """Raise ParamError for a value the user gave (not None) that is out of range: flags are
    checked before any model is loaded, their defaults resolved after (`resolve_defaults`)."""
    for name, value in given.items():
        if value is not None:
            validate_param(name, value)


def builtin_default(name: str) -> object:
    """gpt2cli's own default for a DEFAULTABLE name (the dataclass field's default)."""
    owner = SamplingParams if name in SamplingParams.__dataclass_fields__ else GenerationConfig
    return owner.__dataclass_fields__[name].default


def resolve_defaults(
    given: dict[str, object | None], checkpoint: GenerationDefaults | None = None
) -> tuple[dict[str, object], dict[str, str]]:
    """The value of each DEFAULTABLE name, and where it came from: the user's value (`given`,
    None when not given: source FLAG), else the checkpoint's (source: its file name), else the
    built-in default (BUILT_IN). The checkpoint's `do_sample: false` means greedy (temperature 0)
    unless the user gave a temperature, top-k or top-p. The one place flags meet defaults."""
    checkpoint = checkpoint or GenerationDefaults()
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name in DEFAULTABLE:
        if given.get(name) is not None:
            values[name], sources[name] = given[name], FLAG
        elif name in checkpoint.values:
            values[name], sources[name] = checkpoint.values[name], checkpoint.source
        else:
            values[name], sources[name] = builtin_default(name), BUILT_IN
    sampling_flags = any(sources[n] == FLAG for n in ("temperature", "top_k", "top_p"))
    if checkpoint.greedy and not sampling_flags:
        values["temperature"] = 0.0
        sources["temperature"] = f"{checkpoint.source} do_sample: false"
    return values, sources


@dataclass(frozen=True)
class LoadOptions:
    """Which model to load and what it runs on; checked before torch is imported.

    model: a size (small, medium, large, xl), a Hub repo id, or a local folder. offline: never
    touch the network (None: follow HF_HUB_OFFLINE). threads: CPU threads (None: torch's).
    batch: how many sequences the caller decodes together (`--samples`, `gpt2 batch`, `gpt2
    serve`): CPU float32 weights are packed for products of that many rows."""

    model: str = "small"
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    offline: bool | None = None
    threads: int | None = None
    batch: int = 1

    def __post_init__(self) -> None:
        device = self.device.lower()
        if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
            raise ParamError(
                "device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )
        if self.dtype.lower() not in DTYPES:
            raise ParamError(
                "dtype", f"must be {', '.join(DTYPES[:-1])} or {DTYPES[-1]}, got {self.dtype!r}"
            )
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ParamError("threads", f"must be an integer >= 1, got {self.threads!r}")
        if not _is_int(self.batch) or self.batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {self.batch!r}")
        if not str(self.model).strip():
            raise ParamError("model", "must not be empty")


# -- what generation reports -------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    prompt_tokens: int  # tokens actually fed to the model (after any truncation)
    dropped_tokens: int  # tokens cut from the start of a prompt longer than the window allows
    seed: int
    samples: int


@dataclass(frozen=True)
class Delta:
    sample: int
    text: str  # newly printable text ("" while a character or a possible stop string is held)
    token_id: int | None  # None for the text released when a sample finishes
    logprob: float | None = None  # log-probability of token_id under the model (raw logits)
    top: tuple[tuple[int, float], ...] | None = None  # most likely (id, logprob), best first
    shifts: int = 0  # context shifts of this sample before this token (see GenerationConfig)


def decode_rate(tokens: int, first: float | None, now: float) -> float:
    """Tokens per second after the first one: the first token's time includes the prompt."""
    if first is None or tokens < 2 or now <= first:
        return 0.0
    return (tokens - 1) / (now - first)


@dataclass
class Completion:
    """One finished sample."""

    text: str
    finish_reason: str  # eos | length | stop | context | interrupted
    prompt_tokens: int
    completion_tokens: int
    seed: int
    model: str
    time_to_first_token_s: float
    tokens_per_s: float
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    prompt_ids: list[int] = field(default_factory=list)  # as fed to the model
    shifts: int = 0  # context shifts (the window was full and its last half kept)
    end_token: int | None = None  # the end token sampled (finish_reason "eos"), not in the text


@dataclass(frozen=True)
class Finish:
    sample: int
    completion: Completion


Event = Start | Delta | Finish
