"""Build small random-weight GPT-2 checkpoints in the Hugging Face Hub's file layout.

Used by the tests (tiny: 2 layers, 64 wide) and the benchmarks (GPT-2 small's real shape).
The tokenizer is a genuine byte-level BPE (GPT-2's pre-tokenizer and decoder) trained on a small
built-in text, then padded with synthetic merges up to the requested vocabulary size, with
`<|endoftext|>` as the last id, exactly as in GPT-2's own vocabulary.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

EOT = "<|endoftext|>"

CORPUS = (
    """\
The quick brown fox jumps over the lazy dog. GPT-2 is a decoder-only transformer trained to
predict the next token. It compares the output with the whole vocabulary, turns the scores into
probabilities, keeps the top k and samples one. Once upon a time, in a land far away, there lived
a curious student who wanted to learn how language models work. She read the paper, she wrote the
code, and she ran it on her laptop. Numbers like 1234567890 and symbols like [bold] {x} <tag> $5.
Café, naïve, façade, jalapeño; 東京タワー, 北京, 서울; emoji 🎉🚀😀👍🏽 and ñ ü ß ø å.
"""
    * 3
)


def build_tokenizer_files(
    folder: Path, vocab_size: int, seed: int = 0, special_tokens: Sequence[str] = ()
) -> tuple[Path, Path, Path]:
    """Write tokenizer.json, vocab.json and merges.txt for a byte-level BPE of `vocab_size` ids
    (the last one `<|endoftext|>`). Returns the three paths. With `special_tokens` (say `<s>`,
    `</s>`, `<pad>`) those take the first ids instead, and there is no `<|endoftext|>` at all."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = list(special_tokens)
    n_regular = vocab_size - (0 if specials else 1)
    if n_regular < 256:
        raise ValueError("vocab_size must be at least 257")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=specials,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Pad with synthetic merges (deterministic) until the vocabulary has n_regular entries.
    rng = random.Random(seed)
    tokens = [t for t in sorted(vocab, key=vocab.get) if t not in specials]
    while len(vocab) < n_regular:
        a, b = rng.choice(tokens), rng.choice(tokens[:256])
        if len(a) + len(b) > 12 or (a + b) in vocab:
            continue
        vocab[a + b] = len(vocab)
        tokens.append(a + b)
        merges.append((a, b))
    if not specials:
        vocab[EOT] = n_regular

    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    full = Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path)))
    full.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    full.decoder = decoders.ByteLevel()
    full.post_processor = processors.ByteLevel(trim_offsets=False)
    full.add_special_tokens(specials or [EOT])
    json_path = folder / "tokenizer.json"
    full.save(str(json_path))
    return json_path, vocab_path, merges_path


def _config(n_layer: int, n_embd: int, n_head: int, n_positions: int, vocab_size: int) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "activation_function": "gelu_new",
        "n_layer": n_layer,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_positions": n_positions,
        "n_ctx": n_positions,
        "n_inner": None,
        "vocab_size": vocab_size,
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": vocab_size - 1,
        "eos_token_id": vocab_size - 1,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
    }


def random_state_dict(cfg: dict, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Unprefixed GPT-2 weights (Conv1D layout) with values large enough that greedy decoding
    wanders instead of repeating one token."""
    g = torch.Generator().manual_seed(seed)
    d, n_pos, vocab = cfg["n_embd"], cfg["n_positions"], cfg["vocab_size"]
    inner = cfg.get("n_inner") or 4 * d

    def rnd(*shape: int, scale: float = std) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {"wte.weight": rnd(vocab, d), "wpe.weight": rnd(n_pos, d, scale=1.0)}
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        sd[p + "ln_1.weight"] = 1 + rnd(d, scale=0.1)
        sd[p + "ln_1.bias"] = rnd(d, scale=0.1)
        sd[p + "attn.c_attn.weight"] = rnd(d, 3 * d)
        sd[p + "attn.c_attn.bias"] = rnd(3 * d, scale=0.1)
        sd[p + "attn.c_proj.weight"] = rnd(d, d)
        sd[p + "attn.c_proj.bias"] = rnd(d, scale=0.1)
        sd[p + "ln_2.weight"] = 1 + rnd(d, scale=0.1)
        sd[p + "ln_2.bias"] = rnd(d, scale=0.1)
        sd[p + "mlp.c_fc.weight"] = rnd(d, inner)
        sd[p + "mlp.c_fc.bias"] = rnd(inner, scale=0.1)
        sd[p + "mlp.c_proj.weight"] = rnd(inner, d, scale=std / 2)
        sd[p + "mlp.c_proj.bias"] = rnd(d, scale=0.1)
    sd["ln_f.weight"] = 1 + rnd(d, scale=0.1)
    sd["ln_f.bias"] = rnd(d, scale=0.1)
    return sd


def build_checkpoint(
    folder: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 128,
    vocab_size: int = 1000,
    layout: str = "hub",
    seed: int = 0,
    tokenizer: str = "json",
    config: dict | None = None,
    generation_config: dict | None = None,
    untied_head: bool = False,
    tokenizer_vocab_size: int | None = None,
    special_tokens: Sequence[str] = (),
) -> Path:
    """Write a random GPT-2 checkpoint to `folder`.

    layout: "hub" (unprefixed keys plus `h.N.attn.bias`/`masked_bias` buffers, no lm_head, like
    openai-community/gpt2) or "transformers" (`transformer.`-prefixed keys with `lm_head.weight`,
    like a recent `save_pretrained`). tokenizer: "json" (tokenizer.json + vocab/merges),
    "vocab_merges" (no tokenizer.json) or "none".

    config: keys merged into config.json before the weights are made (n_inner shapes them).
    generation_config: the whole generation_config.json (default: bos/eos the last id).
    untied_head: `tie_word_embeddings: false` with an lm_head.weight of its own ("transformers"
    layout only). tokenizer_vocab_size: a tokenizer smaller than the model's vocabulary (ids
    past it are unknown to the tokenizer, like a vocabulary padded to 50304). special_tokens:
    see build_tokenizer_files.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = _config(n_layer, n_embd, n_head, n_positions, vocab_size) | (config or {})
    sd = random_state_dict(cfg, seed=seed)
    if untied_head and layout != "transformers":
        raise ValueError("an untied head needs the transformers layout")
    if layout == "hub":
        mask = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.bool))
        for i in range(n_layer):
            sd[f"h.{i}.attn.bias"] = mask.view(1, 1, n_positions, n_positions).clone()
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    elif layout == "transformers":
        sd = {f"transformer.{k}": v for k, v in sd.items()}
        sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
        if untied_head:
            cfg["tie_word_embeddings"] = False
            g = torch.Generator().manual_seed(seed + 1000)
            sd["lm_head.weight"] = torch.randn(vocab_size, n_embd, generator=g) * 0.2
    else:
        raise ValueError(f"unknown layout {layout!r}")
    save_file(
        {k: v.contiguous() for k, v in sd.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if generation_config is None:
        generation_config = {"bos_token_id": vocab_size - 1, "eos_token_id": vocab_size - 1}
    (folder / "generation_config.json").write_text(json.dumps(generation_config))
    if tokenizer != "none":
        json_path, _, _ = build_tokenizer_files(
            folder, tokenizer_vocab_size or vocab_size, seed=seed, special_tokens=special_tokens
        )
        if tokenizer == "vocab_merges":
            json_path.unlink()
    return folder


def edited_checkpoint(
    source: Path,
    folder: Path,
    *,
    config: dict | None = None,
    tensors: dict | None = None,
) -> Path:
    """A copy of checkpoint `source` in `folder`, with `config` merged into config.json and
    `tensors` changed in model.safetensors: each value is a tensor to store under that name, or
    a function of the stored tensor returning the new one."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    shutil.copytree(source, folder)
    if config:
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}, indent=2))
    if tensors:
        path = folder / "model.safetensors"
        sd = load_file(str(path))
        for name, change in tensors.items():
            sd[name] = change(sd[name]) if callable(change) else change
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})
    return folder


def derive_checkpoint(
    src: Path,
    dest: Path,
    *,
    config: dict | None = None,
    files: dict[str, object] | None = None,
    remove: Sequence[str] = (),
) -> Path:
    """Copy the checkpoint folder `src` to `dest`, then merge `config` into config.json, write
    `files` (name -> JSON value, or str for raw text) and delete `remove`."""
    dest = Path(dest)
    shutil.copytree(src, dest)
    if config:
        cfg = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps(cfg | config, indent=2))
    for name, value in (files or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        (dest / name).write_text(text, encoding="utf-8")
    for name in remove:
        (dest / name).unlink()
    return dest


def edit_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Rewrite model.safetensors after `edit` changed its tensors (a dict, edited in place)."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "model.safetensors"
    sd = load_file(str(path))
    edit(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})


def add_tokenizer_tokens(folder: Path, tokens: Sequence[str], special: bool = True) -> list[int]:
    """Add tokens to the folder's tokenizer.json (next free ids, as a fine-tune's
    `tokenizer.add_tokens` does); returns their ids."""
    from tokenizers import AddedToken, Tokenizer

    path = Path(folder) / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    added = [AddedToken(t, special=special, normalized=not special) for t in tokens]
    tok.add_special_tokens(added) if special else tok.add_tokens(added)
    tok.save(str(path))
    return [tok.token_to_id(t) for t in tokens]


def reference_model(folder: Path, **kwargs):
    """transformers' GPT2LMHeadModel for `folder`, in eval mode: the oracle."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers.GPT2LMHeadModel.from_pretrained(str(folder), **kwargs).eval()
