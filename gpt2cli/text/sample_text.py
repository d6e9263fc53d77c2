"""The text of one sample as it is generated: UTF-8-safe decoding (StreamDecoder) and holding back
any tail that could be the start of a stop string, so no stop string is ever printed."""

from __future__ import annotations

from collections.abc import Sequence

from gpt2cli.text.tokenizer import StreamDecoder, Tokenizer


class SampleText:
    """Text bookkeeping for one sample: UTF-8-safe decoding and holding back any tail that could
    be the start of a stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.longest = max(map(len, self.stop), default=0)
        self.text = ""  # decoded so far (released + held)
        self.released = 0  # characters of `text` already emitted

    def add(self, piece: str) -> tuple[str, bool]:
        """Append decoded text; return (text to emit now, whether a stop string was hit)."""
        self.text += piece
        if self.stop:
            start = max(0, self.released - self.longest + 1)
            hits = [i for s in self.stop if (i := self.text.find(s, start)) != -1]
            if hits:
                self.text = self.text[: min(hits)]
                return self._release(len(self.text)), True
            held = max(
                (n for s in self.stop for n in range(1, len(s)) if self.text.endswith(s[:n])),
                default=0,
            )
            return self._release(len(self.text) - held), False
        return self._release(len(self.text)), False

    def finish(self) -> tuple[str, bool]:
        out, stopped = self.add(self.decoder.flush())
        return (out if stopped else out + self._release(len(self.text))), stopped

    def _release(self, upto: int) -> str:
        upto = max(upto, self.released)
        out = self.text[self.released : upto]
        self.released = upto
        return out
