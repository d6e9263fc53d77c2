"""OpenAI's completions request, checked field by field before anything runs, and OpenAI's
error object. Torch-free and web-framework-free: the app hands it the parsed JSON body.

Ranges come from gpt2cli/types.py (SamplingParams, GenerationConfig) wherever OpenAI's and ours
agree, so the CLI flags and the API accept the same values; a bad value is a 400 whose `param`
names the field. Fields GPT-2 cannot honour (`suffix`, `best_of` other than `n`, penalties other
than 0, `logit_bias`) are refused by name rather than silently ignored, and so is any field this
server does not know (a typo must not pass for a default).

Defaults follow OpenAI, not `gpt2 generate`: `max_tokens` 16, `temperature` 1, `top_p` 1 and no
top-k (`top_k` 0). An absent prompt is `<|endoftext|>`, as in OpenAI's API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpt2cli.errors import ParamError
from gpt2cli.types import GenerationConfig, SamplingParams, validate_param

MAX_LOGPROBS = 5  # OpenAI's limit for the completions API
MAX_STOP = 4
DEFAULT_MAX_TOKENS = 16

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "seed")
KNOWN_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "max_tokens",
        "n",
        "stream",
        "stream_options",
        "stop",
        "logprobs",
        "echo",
        "user",
        "suffix",
        "best_of",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "ignore_eos",
        *SAMPLING_FIELDS,
    }
)


class ApiError(Exception):
    """A request the server refuses, as OpenAI's error object and an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str | None, message: str, code: str | None = None) -> ApiError:
    """A 400 about one field."""
    return ApiError(400, message, param=param, code=code)


Prompt = str | list[int]


@dataclass(frozen=True)
class CompletionParams:
    """A checked completions request. `prompts` are strings or token-id lists (ids are checked
    against the vocabulary here; the window by the app, which tokenizes)."""

    prompts: list[Prompt]
    max_tokens: int  # 0: nothing generated (with echo: the prompt scored)
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None
    params: SamplingParams  # seed None: the server draws one
    stop: tuple[str, ...]
    ignore_eos: bool

    def config(self) -> GenerationConfig:
        """What the scheduler generates for each prompt (max_tokens >= 1)."""
        return GenerationConfig(
            max_tokens=self.max_tokens,
            samples=self.n,
            stop=self.stop,
            ignore_eos=self.ignore_eos,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(name, f"'{name}' must be true or false, got {value!r}")
    return value


def parse_prompts(value: object, vocab_size: int) -> list[Prompt]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if value is None:
        return [""]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise bad("prompt", "'prompt' must be a string, a list of strings or a list of token ids")
    if all(isinstance(p, str) for p in value):
        return list(value)
    if all(_is_int(t) for t in value):
        return [_token_ids(value, vocab_size)]
    if all(isinstance(p, list) for p in value):
        return [_token_ids(p, vocab_size) for p in value]
    raise bad("prompt", "'prompt' must be a string, a list of strings or a list of token ids")


def _token_ids(ids: list[Any], vocab_size: int) -> list[int]:
    if not ids:
        raise bad("prompt", "a token-id prompt must not be empty")
    for token in ids:
        if not _is_int(token) or not 0 <= token < vocab_size:
            raise bad("prompt", f"token ids must be integers in [0, {vocab_size}), got {token!r}")
    return list(ids)


def _unsupported(body: dict[str, Any], n: int) -> None:
    suffix = body.get("suffix")
    if suffix not in (None, ""):
        raise bad("suffix", "'suffix' is not supported: GPT-2 only continues text")
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise bad("best_of", "'best_of' is not supported (it may only equal n)")
    for name in ("frequency_penalty", "presence_penalty"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or value != 0):
            raise bad(name, f"'{name}' is not supported (only 0); use 'repetition_penalty' instead")
    if body.get("logit_bias") not in (None, {}):
        raise bad("logit_bias", "'logit_bias' is not supported")


def _sampling(body: dict[str, Any]) -> SamplingParams:
    given = {name: body[name] for name in SAMPLING_FIELDS if body.get(name) is not None}
    given.setdefault("top_k", 0)  # OpenAI has no top-k: off unless asked for
    try:
        return SamplingParams(**given)
    except ParamError as exc:
        raise bad(exc.param, f"Invalid value for '{exc.param}': {exc.detail}") from None


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stop = [value] if isinstance(value, str) else value
    if not isinstance(stop, list) or len(stop) > MAX_STOP:
        raise bad("stop", f"'stop' must be a string or a list of up to {MAX_STOP} strings")
    try:
        validate_param("stop", stop)
    except ParamError as exc:
        raise bad("stop", f"Invalid value for 'stop': {exc.detail}") from None
    return tuple(stop)


def parse_completion_request(body: object, *, vocab_size: int, max_batch: int) -> CompletionParams:
    """Check a `/v1/completions` body. Raises ApiError (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object")
    for name in body:
        if name not in KNOWN_FIELDS:
            raise bad(name, f"Unrecognized request argument supplied: {name}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "'model' must be a string")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user", "'user' must be a string")

    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    elif not _is_int(max_tokens) or max_tokens < 0:
        raise bad("max_tokens", f"'max_tokens' must be an integer >= 0, got {max_tokens!r}")
    n = body.get("n")
    if n is None:
        n = 1
    try:
        validate_param("samples", n)
    except ParamError as exc:
        raise bad("n", f"Invalid value for 'n': {exc.detail}") from None
    if n > max_batch:
        raise bad("n", f"'n' must be at most {max_batch} on this server (its --max-batch)")
    _unsupported(body, n)

    logprobs = body.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS):
        raise bad("logprobs", f"'logprobs' must be an integer in [0, {MAX_LOGPROBS}]")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("stream_options", "'stream_options' may only hold 'include_usage'")
        include_usage = _flag(options, "include_usage")

    return CompletionParams(
        prompts=parse_prompts(body.get("prompt"), vocab_size),
        max_tokens=max_tokens,
        n=n,
        stream=stream,
        include_usage=include_usage,
        echo=_flag(body, "echo"),
        logprobs=logprobs,
        params=_sampling(body),
        stop=_stop(body.get("stop")),
        ignore_eos=_flag(body, "ignore_eos"),
    )
