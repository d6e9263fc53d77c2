"""GPT-2's byte-level BPE, and a StreamDecoder that turns token ids into text deltas without ever
splitting a UTF-8 character (emoji, CJK and accents span several byte-level tokens).

Decoding works on bytes: every token maps to the bytes it stands for, and text is those bytes
decoded as UTF-8 with invalid sequences replaced by U+FFFD. The StreamDecoder runs the same
decoding incrementally, so the concatenated deltas always equal `decode(all ids)`.
"""

from __future__ import annotations

import codecs
import json
import re
from array import array
from functools import lru_cache
from pathlib import Path

from gpt2cli.errors import CheckpointError

EOT = "<|endoftext|>"
# Where a long text may be cut for encoding in pieces: after a printable non-space ASCII
# character that is followed by a space or a newline (see Tokenizer.encode_long).
_CUT = re.compile(r"[!-~](?=[ \n])")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-unicode map, inverted (char -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenBytes:
    """id -> the bytes that token stands for, computed on first use: building the whole table
    up front costs ~0.15 s of start-up for 50257 tokens, while a run touches a few hundred."""

    def __init__(self, backend: object) -> None:
        self._backend = backend
        self._special = {
            t.content for t in backend.get_added_tokens_decoder().values() if t.special
        }
        self._size = backend.get_vocab_size(with_added_tokens=True)
        self._cache: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, token_id: int) -> bytes:
        found = self._cache.get(token_id)
        if found is None:
            token = self._backend.id_to_token(token_id)
            if token is None:
                raise IndexError(f"token id {token_id} is not in the vocabulary")
            byte_of = _byte_decoder()
            if token in self._special or any(ch not in byte_of for ch in token):
                found = token.encode("utf-8")
            else:
                found = bytes(byte_of[ch] for ch in token)
            self._cache[token_id] = found
        return found


class Tokenizer:
    """Encode text to ids and decode ids to text, GPT-2 style."""

    def __init__(self, backend: object) -> None:
        from tokenizers import Tokenizer as _Backend

        assert isinstance(backend, _Backend)
        self._tok = backend
        self.token_bytes = TokenBytes(backend)
        eot = backend.token_to_id(EOT)
        self.eot_id: int = eot if eot is not None else len(self.token_bytes) - 1

    @classmethod
    def from_folder(cls, folder: Path | str) -> Tokenizer:
        """tokenizer.json when present, else vocab.json + merges.txt."""
        from tokenizers import Tokenizer as _Backend
        from tokenizers import decoders, models, pre_tokenizers

        folder = Path(folder)
        json_path = folder / "tokenizer.json"
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        try:
            if json_path.is_file():
                return cls(_Backend.from_file(str(json_path)))
            if vocab.is_file() and merges.is_file():
                backend = _Backend(models.BPE.from_file(str(vocab), str(merges)))
                backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                backend.decoder = decoders.ByteLevel()
                if EOT in json.loads(vocab.read_text(encoding="utf-8")):
                    backend.add_special_tokens([EOT])
                return cls(backend)
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise CheckpointError(f"cannot read the tokenizer in {folder}: {exc}") from None
        raise CheckpointError(
            f"{folder} has no tokenizer.json (nor vocab.json + merges.txt): cannot tokenize"
        )

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; `<|endoftext|>` in the text is the special token, as in GPT-2."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_long(self, text: str, piece_chars: int = 1 << 16) -> array:
        """Token ids of a text of any length, as a compact array of int32, equal to
        `encode(text)`. Encoding a whole text at once makes `tokenizers` hold several hundred
        bytes per token while it works (measured: 4 MB of text, 950k tokens, 600 MB peak),
        so the text is encoded a piece of about `piece_chars` characters at a time. A piece
        ends after a printable non-space ASCII character followed by a space or a newline:
        GPT-2's pre-tokenizer always splits there (no pre-token runs from a non-space into
        whitespace) and reads the rest the same way from that point. A tokenizer for which
        that does not hold (a normalizer, another pre-tokenizer, added tokens that hold
        whitespace or strip it) encodes the whole text at once."""
        ids = array("i")
        if not self._splits_at_spaces():
            ids.extend(self.encode(text))
            return ids
        start = 0
        while start < len(text):
            cut = _CUT.search(text, start + piece_chars)
            end = cut.end() if cut else len(text)
            ids.extend(self.encode(text[start:end]))
            start = end
        return ids

    def _splits_at_spaces(self) -> bool:
        """Whether pre-tokenization always splits before whitespace that follows a non-space
        (GPT-2's byte-level pre-tokenizer with its regex, no normalizer, plain added tokens)."""
        from tokenizers import pre_tokenizers

        tok = self._tok
        pre = tok.pre_tokenizer
        if tok.normalizer is not None or not isinstance(pre, pre_tokenizers.ByteLevel):
            return False
        if not pre.use_regex or pre.add_prefix_space:
            return False
        added = tok.get_added_tokens_decoder().values()
        return not any(t.rstrip or t.lstrip or re.search(r"\s", t.content) for t in added)

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """One token on its own, for display (partial UTF-8 bytes show as U+FFFD)."""
        return self.token_bytes[token_id].decode("utf-8", errors="replace")


class StreamDecoder:
    """Feed token ids one at a time; get back the text that is complete so far.

    Bytes of a character split over several tokens are held until the character is whole.
    `flush()` at the end returns whatever is left (an unfinished character becomes U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._bytes = tokenizer.token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._bytes[token_id], final=False)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
