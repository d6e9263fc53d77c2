"""Tokenizer loading and the StreamDecoder's UTF-8 safety."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2cli.errors import CheckpointError
from gpt2cli.text.tokenizer import EOT, StreamDecoder, Tokenizer

TEXTS = ["Hello, world!", "Café naïve 東京タワー 🎉🚀👍🏽", "[bold]x[/bold] <|endoftext|> tail", ""]


@pytest.fixture(scope="module")
def tok(tiny_checkpoint: Path) -> Tokenizer:
    return Tokenizer.from_folder(tiny_checkpoint)


def stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    dec = StreamDecoder(tok)
    return [dec.push(i) for i in ids] + [dec.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_agreement_with_tokenizers(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok._tok.decode(ids, skip_special_tokens=False) == text


def test_endoftext_is_the_special_last_id(tok: Tokenizer) -> None:
    assert tok.encode(EOT) == [tok.eot_id]
    assert tok.eot_id == tok.vocab_size - 1


def test_emoji_split_over_byte_tokens_is_never_emitted_half(tok: Tokenizer) -> None:
    ids = tok.encode("a🎉b")
    assert len(ids) > 3  # the emoji spans several byte-level tokens
    deltas = stream(tok, ids)
    assert "".join(deltas) == "a🎉b"
    assert all("\ufffd" not in d for d in deltas)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_stream_decoder_deltas_equal_full_decode(tok: Tokenizer, data: st.DataObject) -> None:
    byte_ids = [i for i, b in enumerate(tok.token_bytes) if len(b) == 1 and b[0] >= 0x80]
    ids = data.draw(
        st.lists(
            st.one_of(
                st.integers(0, tok.vocab_size - 1),
                st.sampled_from(byte_ids),  # continuation/lead bytes: partial characters
            ),
            max_size=40,
        )
    )
    deltas = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=30))
def test_stream_decoder_on_real_text(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    deltas = stream(tok, ids)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas) or "\ufffd" in text


def test_vocab_and_merges_fallback(tiny_checkpoint: Path, tmp_path: Path, tok: Tokenizer) -> None:
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_checkpoint / name, tmp_path / name)
    fallback = Tokenizer.from_folder(tmp_path)
    for text in TEXTS:
        assert fallback.encode(text) == tok.encode(text)
        assert fallback.decode(fallback.encode(text)) == text
    assert fallback.eot_id == tok.eot_id


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer.from_folder(tmp_path)


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(
            [
                "fox",
                "Café",
                "東京",
                "🎉",
                "1234",
                "it's",
                "'",
                "...",
                " ",
                "  ",
                "\n",
                "\n\n",
                "\t",
                "<|endoftext|>",
                "[bold]",
                "x.",
                "\u00a0",
                "ñ",
            ]
        ),
        max_size=80,
    ),
    piece=st.integers(1, 40),
)
def test_long_text_encoded_in_pieces_equals_one_encode(
    tok: Tokenizer, words: list[str], piece: int
) -> None:
    """`encode_long` cuts the text where GPT-2's pre-tokenizer splits anyway: the same ids."""
    text = "".join(words)
    assert tok.encode_long(text, piece_chars=piece).tolist() == tok.encode(text)


def test_long_text_cut_into_many_pieces(tok: Tokenizer) -> None:
    text = " ".join(["The quick brown fox, it's 1234 東京 🎉!\n"] * 300)
    ids = tok.encode_long(text, piece_chars=50)
    assert ids.itemsize == 4 and ids.tolist() == tok.encode(text)


def test_tokenizer_with_a_normalizer_encodes_long_text_whole(tiny_checkpoint: Path) -> None:
    from tokenizers import normalizers

    tok = Tokenizer.from_folder(tiny_checkpoint)
    tok._tok.normalizer = normalizers.Lowercase()
    text = "The Quick Brown Fox " * 50
    assert not tok._splits_at_spaces()
    assert tok.encode_long(text, piece_chars=10).tolist() == tok.encode(text)
