"""GPT-2's byte-level BPE, and a StreamDecoder that turns token ids into text deltas without ever
splitting a UTF-8 character (emoji, CJK and accents span several byte-level tokens).

Decoding works on bytes: every token maps to the bytes it stands for, and text is those bytes
decoded as UTF-8 with invalid sequences replaced by U+FFFD. The StreamDecoder runs the same
decoding incrementally, so the concatenated deltas always equal `decode(all ids)`.
"""

from __future__ import annotations

import codecs
import re
from array import array
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from gpt2cli.errors import CheckpointError
from gpt2cli.text.special_tokens import EOT, TokenSpec, read_tokenizer_files

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
    up front costs ~0.15 s of start-up for 50257 tokens, while a run touches a few hundred.
    Special tokens stand for their text; an id the tokenizer does not have, for nothing."""

    def __init__(self, backend: object) -> None:
        self._backend = backend
        self._special = {
            t.content for t in backend.get_added_tokens_decoder().values() if t.special
        }
        self._size = backend.get_vocab_size(with_added_tokens=True)
        self._cache: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        return (self[i] for i in range(self._size))

    def __getitem__(self, token_id: int) -> bytes:
        found = self._cache.get(token_id)
        if found is None:
            if token_id < 0:
                raise IndexError(f"token id {token_id} is negative")
            token = self._backend.id_to_token(token_id)
            if token is None:  # an id past the tokenizer (a padded vocabulary): text '', as
                found = b""  # transformers decodes it
                self._cache[token_id] = found
                return found
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
        # None: a vocabulary without <|endoftext|> (the model's config then names its own
        # start and end tokens: runtime/loader.py)
        self.eot_id: int | None = backend.token_to_id(EOT)

    @classmethod
    def from_folder(cls, folder: Path | str) -> Tokenizer:
        """tokenizer.json when present, else vocab.json + merges.txt; then the tokens that
        tokenizer_config.json, special_tokens_map.json and added_tokens.json add (see
        special_tokens.py) and tokenizer_config.json's add_prefix_space."""
        from tokenizers import Tokenizer as _Backend
        from tokenizers import decoders, models, pre_tokenizers

        folder = Path(folder)
        json_path = folder / "tokenizer.json"
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        try:
            if json_path.is_file():
                backend = _Backend.from_file(str(json_path))
            elif vocab.is_file() and merges.is_file():
                backend = _Backend(models.BPE.from_file(str(vocab), str(merges)))
                backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                backend.decoder = decoders.ByteLevel()
            else:
                raise CheckpointError(
                    f"{folder} has no tokenizer.json (nor vocab.json + merges.txt): cannot tokenize"
                )
            files = read_tokenizer_files(folder, has_eot=backend.token_to_id(EOT) is not None)
            _add_tokens(backend, files.tokens)
            if files.add_prefix_space is not None:
                _set_prefix_space(backend, files.add_prefix_space)
        except CheckpointError:
            raise
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise CheckpointError(f"cannot read the tokenizer in {folder}: {exc}") from None
        return cls(backend)

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


def _add_tokens(backend: object, tokens: list[TokenSpec]) -> None:
    """Add `tokens` in order (a token already in the vocabulary keeps its id, a new one takes
    the next free id), then check that each declared id is the one it got."""
    from tokenizers import AddedToken

    for spec in tokens:
        flags = {"normalized": spec.normalized} if spec.normalized is not None else {}
        token = AddedToken(
            spec.content, single_word=spec.single_word, lstrip=spec.lstrip, rstrip=spec.rstrip,
            special=spec.special, **flags,
        )  # fmt: skip
        if spec.special:
            backend.add_special_tokens([token])  # type: ignore[attr-defined]
        else:
            backend.add_tokens([token])  # type: ignore[attr-defined]
    for spec in tokens:
        got = backend.token_to_id(spec.content)  # type: ignore[attr-defined]
        if spec.id is not None and got != spec.id:
            raise CheckpointError(
                f"{spec.source} gives {spec.content!r} the id {spec.id}, but the tokenizer's "
                f"vocabulary makes it {got}: the tokenizer files disagree"
            )


def _set_prefix_space(backend: object, add_prefix_space: bool) -> None:
    """tokenizer_config.json's add_prefix_space, as GPT-2's tokenizer class sets it: on a
    byte-level pre-tokenizer."""
    from tokenizers import pre_tokenizers

    current = backend.pre_tokenizer  # type: ignore[attr-defined]
    if isinstance(current, pre_tokenizers.ByteLevel):
        current.add_prefix_space = add_prefix_space
    else:
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        backend.pre_tokenizer = byte_level  # type: ignore[attr-defined]


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
