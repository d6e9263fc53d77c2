"""What tokenizer_config.json, special_tokens_map.json and added_tokens.json add to a tokenizer,
read as transformers 5 reads them (`PreTrainedTokenizerBase._from_pretrained`, then
`TokenizersBackend.__init__`), so that a fine-tune's own tokens (`<|user|>`, `<|end|>`, ...) are
one token each, with the ids the files give them:

1. the tokens of tokenizer_config.json's `added_tokens_decoder`, by id; without it (legacy files)
   the special tokens named in special_tokens_map.json (over tokenizer_config.json's) and the
   tokens of added_tokens.json (special when a special token names them);
2. then every named special token (`bos_token`, `eos_token`, any other `*_token`,
   `additional_special_tokens`) that is not an added token yet: it keeps its vocabulary id, or
   takes the next free one.

GPT-2's tokenizer class also names `<|endoftext|>` as bos, eos and unk token when the files do
not: that one is added only when the vocabulary has it (transformers would append it to a
vocabulary without it, an id the model's embedding does not have). Which ids end generation is
not the tokenizer's business: that is generation_config.json's `eos_token_id`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gpt2cli.errors import CheckpointError

EOT = "<|endoftext|>"
CONFIG, SPECIAL_MAP, ADDED = "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"
FILES = (CONFIG, SPECIAL_MAP, ADDED)
_EXTRA = ("additional_special_tokens", "extra_special_tokens")
_GPT2_DEFAULTS = ("bos_token", "eos_token", "unk_token")  # GPT2Tokenizer's <|endoftext|>


@dataclass(frozen=True)
class TokenSpec:
    """One token to add, with `tokenizers.AddedToken`'s flags; `id` when a file declares it."""

    content: str
    special: bool
    id: int | None = None
    source: str = ""
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool | None = None  # None: tokenizers' default (not special)
    single_word: bool = False


@dataclass(frozen=True)
class TokenizerFiles:
    tokens: list[TokenSpec]
    add_prefix_space: bool | None  # tokenizer_config.json's, when it sets one


def _read(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _spec(value: object, source: str, special: bool, id: int | None = None) -> TokenSpec | None:
    """A token named as a string or as an AddedToken dict; None for anything else (null)."""
    if isinstance(value, str):
        return TokenSpec(value, special, id, source)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: bool(value[k]) for k in ("lstrip", "rstrip", "single_word") if k in value}
        normalized = value.get("normalized")
        return TokenSpec(
            value["content"],
            bool(value.get("special", special)) or special,
            id,
            source,
            normalized=None if normalized is None else bool(normalized),
            **flags,
        )
    return None


def _named(settings: dict, source: str) -> dict[str, TokenSpec]:
    """The special tokens a config names: every `*_token` key, then the extra list."""
    named: dict[str, TokenSpec] = {}
    for key, value in settings.items():
        if key.endswith("_token") and (spec := _spec(value, source, special=True)):
            named[key] = spec
    extra = next((settings[k] for k in _EXTRA if settings.get(k)), None)
    if isinstance(extra, dict):  # {name: token}
        extra = list(extra.values())
    for i, value in enumerate(extra if isinstance(extra, list) else []):
        if spec := _spec(value, source, special=True):
            named[f"extra {i}"] = spec
    return named


def read_tokenizer_files(folder: Path, has_eot: bool) -> TokenizerFiles:
    """The tokens the files of `folder` add, in the order transformers adds them. `has_eot`:
    whether the vocabulary has <|endoftext|> (GPT-2's implicit special token)."""
    config = _read(folder, CONFIG)
    declared: list[TokenSpec] = []
    if isinstance(config.get("added_tokens_decoder"), dict):
        where = f"{CONFIG} added_tokens_decoder"
        for key, value in config["added_tokens_decoder"].items():
            spec = _spec(value, where, special=False, id=_id(key, where))
            if spec is None:
                raise CheckpointError(
                    f"{folder / CONFIG}: added_tokens_decoder[{key!r}] is not a token"
                )
            declared.append(spec)
        named = _named(config, CONFIG)
    else:  # legacy files: special_tokens_map.json wins over tokenizer_config.json
        named = _named(config, CONFIG) | _named(_read(folder, SPECIAL_MAP), SPECIAL_MAP)
        special = {spec.content for spec in named.values()}
        for content, value in _read(folder, ADDED).items():
            is_special = content in special
            spec = TokenSpec(
                content, is_special, _id(value, ADDED), ADDED, normalized=not is_special
            )
            declared.append(spec)
    for key in _GPT2_DEFAULTS:
        if key not in config and key not in named and has_eot:
            named[key] = TokenSpec(EOT, True, source="GPT-2's tokenizer defaults")
    tokens = sorted(declared, key=lambda spec: spec.id or 0)
    contents = {spec.content for spec in tokens}
    for spec in named.values():
        if spec.content not in contents:
            tokens.append(spec)
            contents.add(spec.content)
    prefix = config.get("add_prefix_space")
    return TokenizerFiles(tokens, None if prefix is None else bool(prefix))


def _id(value: object, where: str) -> int:
    try:
        token_id = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        token_id = -1
    if token_id < 0 or isinstance(value, bool):
        raise CheckpointError(
            f"{where} has a token id that is not a non-negative integer: {value!r}"
        )
    return token_id
