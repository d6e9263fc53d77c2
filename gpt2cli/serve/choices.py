"""The scheduler's events as OpenAI's completion `choices`: text, legacy logprobs
(`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) and `finish_reason`.

One `Choice` per (prompt, sample), indexed prompt-major as OpenAI does (`index = prompt * n +
sample`). The same object builds the whole choice of a plain response and the pieces of a
streamed one, so both carry the same text and the same logprobs.
"""

from __future__ import annotations

import math
from typing import Any

from gpt2cli.text.tokenizer import StreamDecoder, Tokenizer
from gpt2cli.types import Completion, Delta

# Ours -> OpenAI's. "context" (the 1024-token window is full) is a length limit too; the API
# refuses requests that could reach it, so it only shows up with token-id prompts near the edge.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}

TopLogprobs = tuple[tuple[int, float], ...]


def token_string(tokenizer: Tokenizer, token_id: int) -> str:
    """A token as OpenAI's logprobs name it: its text, or `bytes:\\xe6\\x9d` when its bytes are
    not whole UTF-8 characters (a piece of an emoji or of a CJK character)."""
    raw = tokenizer.token_bytes[token_id]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _finite(logprob: float) -> float:
    # JSON has no -Infinity; a token the model rules out entirely gets OpenAI's -9999 floor.
    return logprob if math.isfinite(logprob) else -9999.0


class LegacyLogprobs:
    """Logprobs in the completions API's legacy format. `text_offset` counts characters from the
    start of the prompt, echoed or not, so a completion token has the same offset either way."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.decoder = StreamDecoder(tokenizer)
        self.offset = 0
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []
        self.sent = 0  # entries already streamed

    def skip(self, token_ids: list[int]) -> None:
        """Tokens that are not shown (the prompt, not echoed): only the offset moves."""
        for token_id in token_ids:
            self.offset += len(self.decoder.push(token_id))

    def add(self, token_id: int, logprob: float | None, top: TopLogprobs | None) -> None:
        self.text_offset.append(self.offset)
        self.offset += len(self.decoder.push(token_id))
        name = token_string(self.tokenizer, token_id)
        self.tokens.append(name)
        if logprob is None:  # the prompt's first token: nothing before it predicts it
            self.token_logprobs.append(None)
            self.top_logprobs.append(None)
            return
        alternatives = {token_string(self.tokenizer, t): _finite(lp) for t, lp in top or ()}
        alternatives.setdefault(name, _finite(logprob))  # the sampled token is always there
        self.token_logprobs.append(_finite(logprob))
        self.top_logprobs.append(alternatives)

    def as_dict(self, start: int = 0) -> dict[str, Any]:
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }

    def take(self) -> dict[str, Any] | None:
        """The entries added since the last take (None if there are none)."""
        if self.sent == len(self.tokens):
            return None
        out = self.as_dict(self.sent)
        self.sent = len(self.tokens)
        return out


class Choice:
    """One choice as its events arrive. `prompt_ids` are the user's prompt tokens (none for the
    `<|endoftext|>` an empty prompt starts from); `prompt_scores` their (logprob, top) pairs,
    given when the prompt is echoed with logprobs."""

    def __init__(
        self,
        index: int,
        tokenizer: Tokenizer,
        prompt_text: str,
        prompt_ids: list[int],
        *,
        echo: bool,
        logprobs: bool,
        prompt_scores: list[tuple[float | None, TopLogprobs | None]] | None = None,
    ) -> None:
        self.index = index
        self.echo_text = prompt_text if echo else ""
        self.text = ""  # the completion's text so far
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.logprobs = LegacyLogprobs(tokenizer) if logprobs else None
        if self.logprobs is not None:
            if echo:
                scores = prompt_scores or [(None, None)] * len(prompt_ids)
                for token_id, (lp, top) in zip(prompt_ids, scores):
                    self.logprobs.add(token_id, lp, top)
            else:
                self.logprobs.skip(prompt_ids)

    def delta(self, event: Delta) -> None:
        self.text += event.text
        if event.token_id is not None and self.logprobs is not None:
            self.logprobs.add(event.token_id, event.logprob, event.top)

    def finish(self, completion: Completion) -> None:
        self.text = completion.text  # the same, with any held stop-string prefix settled
        self.completion_tokens = completion.completion_tokens
        self.finish_reason = FINISH_REASONS.get(completion.finish_reason, "stop")

    def finish_empty(self) -> None:
        """max_tokens 0: nothing generated."""
        self.finish_reason = "length"

    def as_dict(self) -> dict[str, Any]:
        """The whole choice, for a plain response."""
        return {
            "text": self.echo_text + self.text,
            "index": self.index,
            "logprobs": self.logprobs.as_dict() if self.logprobs is not None else None,
            "finish_reason": self.finish_reason,
        }

    def chunk(self, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        """A streamed piece: `text` and the logprobs added since the last piece."""
        logprobs = self.logprobs.take() if self.logprobs is not None else None
        return {
            "text": text,
            "index": self.index,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
