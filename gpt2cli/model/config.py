"""The checkpoint format, in one place and without torch: config.json (`GPT2Config.from_hf`, the
one check that a config describes a GPT-2 this code can run) and which safetensors files hold the
weights (one file, or the shards a `model.safetensors.index.json` names). The hub (what to
download), the cache listing (what is complete) and the loader all ask here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gpt2cli.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_FIX = "convert it with transformers (`model.save_pretrained(folder)` writes model.safetensors)"


def is_gpt2_config(raw: object) -> bool:
    """Whether a parsed config.json claims to be GPT-2 (its model_type)."""
    return isinstance(raw, dict) and raw.get("model_type", "gpt2") == "gpt2"


# transformers' activation names (`ACT2CLS`) -> the function the MLP applies. Every tanh-GELU
# spelling is one function ("gelu_tanh").
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu_accurate": "gelu_tanh",
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_10": "gelu_10",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "relu2": "relu2",
    "relu6": "relu6",
    "leaky_relu": "leaky_relu",
    "silu": "silu",
    "swish": "silu",
    "mish": "mish",
    "hardswish": "hardswish",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "laplace": "laplace",
    "sqrtsoftplus": "sqrtsoftplus",
    "linear": "linear",
}
# Activations with weights of their own, which no GPT-2 checkpoint carries (`mlp.act.*`).
_LEARNED_ACTIVATIONS = ("prelu", "xielu")
# Keys that go by another name in transformers' GPT2Config.attribute_map.
_ALIASES = {
    "n_embd": "hidden_size",
    "n_positions": "max_position_embeddings",
    "n_head": "num_attention_heads",
    "n_layer": "num_hidden_layers",
}


@dataclass(frozen=True)
class GPT2Config:
    """What a config.json says about the network. Every GPT2Config key that changes
    GPT2LMHeadModel's output is a field here (or refused by `from_hf`); the README lists the
    keys that do not (dropout, initialisation, other heads' settings, metadata)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_tanh"  # a value of ACTIVATIONS
    scale_attn_weights: bool = True  # scores / sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # scores also / (layer + 1)
    reorder_and_upcast_attn: bool = False  # attention in float32 under bfloat16/float16
    tie_word_embeddings: bool = True  # False: the output head is lm_head.weight, not wte
    add_cross_attention: bool = False  # the file holds cross-attention weights (never run)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def attention_scale(self, layer: int) -> float | None:
        """The factor attention scores are multiplied by in block `layer`, as transformers'
        GPT2Attention computes it; None for the usual 1/sqrt(head_dim) (SDPA's own default)."""
        if self.scale_attn_weights and not self.scale_attn_by_inverse_layer_idx:
            return None
        scale = self.head_dim**-0.5 if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= layer + 1
        return scale

    @classmethod
    def from_hf(cls, d: object) -> GPT2Config:
        """Read a Hugging Face GPT-2 config.json (`n_ctx` is an older name for `n_positions`).
        Raises ValueError on a config that is not a usable GPT-2 one, naming the key."""
        if not isinstance(d, dict):
            raise ValueError("config.json is not a JSON object")
        if not is_gpt2_config(d):
            raise ValueError(f"model_type is {d.get('model_type')!r}, not 'gpt2'")
        d = _resolve_aliases(d)
        act = d.get("activation_function", "gelu_new")
        if act not in ACTIVATIONS:
            why = (
                "an activation with learned weights, which gpt2cli does not run"
                if act in _LEARNED_ACTIVATIONS
                else f"supported: {', '.join(ACTIVATIONS)}"
            )
            raise ValueError(f"activation_function {act!r} is not supported ({why})")
        flags = {}
        for key in (
            "scale_attn_weights",
            "scale_attn_by_inverse_layer_idx",
            "reorder_and_upcast_attn",
            "tie_word_embeddings",
            "add_cross_attention",
        ):
            value = d.get(key, getattr(cls, key))
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
            flags[key] = value
        try:
            cfg = cls(
                vocab_size=int(d["vocab_size"]),
                n_positions=int(d.get("n_positions") or d["n_ctx"]),
                n_embd=int(d["n_embd"]),
                n_layer=int(d["n_layer"]),
                n_head=int(d["n_head"]),
                n_inner=int(d["n_inner"]) if d.get("n_inner") is not None else None,
                layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
                activation=ACTIVATIONS[act],
                **flags,
            )
        except KeyError as exc:
            raise ValueError(f"config.json lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config.json has a value of the wrong type ({exc})") from None
        sizes = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if any(getattr(cfg, name) < 1 for name in sizes) or (
            cfg.n_inner is not None and cfg.n_inner < 1
        ):
            raise ValueError("sizes in config.json must be positive integers")
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
        return cfg


def _resolve_aliases(d: dict) -> dict:
    """`hidden_size` and the other attribute_map names, read as transformers reads them."""
    out = dict(d)
    for key, alias in _ALIASES.items():
        if alias not in d:
            continue
        if key in d and d[key] != d[alias]:
            raise ValueError(f"config.json sets {key} {d[key]!r} but {alias} {d[alias]!r}")
        out[key] = d[alias]
    return out


def load_config_json(folder: Path) -> dict:
    """config.json of `folder` as a dict (CheckpointError when missing or not JSON)."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a GPT-2 checkpoint folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return raw


def read_config(folder: Path, label: str | None = None) -> GPT2Config:
    """The GPT2Config of checkpoint `folder` (CheckpointError naming `label` or the folder)."""
    raw = load_config_json(folder)
    where = label or str(folder)
    if not is_gpt2_config(raw):
        kind = raw.get("model_type")
        raise CheckpointError(
            f"{where} is not a GPT-2 checkpoint: its config.json has model_type {kind!r} "
            f"(a {kind!r} model, not GPT-2)"
        )
    try:
        return GPT2Config.from_hf(raw)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def shard_names(index: Path) -> list[str]:
    """The safetensors shard files a `model.safetensors.index.json` names, sorted."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from None
    bad = [n for n in names if not isinstance(n, str) or not n.endswith(".safetensors")]
    if bad:
        raise CheckpointError(f"{index} names a non-safetensors shard {bad[0]!r}")
    return names


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding the weights: one file, or the shards an index names."""
    single = folder / SINGLE_FILE
    if single.is_file():
        return [single]
    index = folder / SHARD_INDEX
    if index.is_file():
        names = shard_names(index)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{folder} is missing weight shard(s): {', '.join(missing)}")
        return [folder / n for n in names]
    pickles = [p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{folder} has only {pickles[0]} (a pickle, which gpt2cli never loads for safety); "
            + _FIX
        )
    raise CheckpointError(f"{folder} has no model.safetensors: no weights to load")


def is_complete(folder: Path) -> bool:
    """config.json and every safetensors file of the checkpoint are present."""
    if not (folder / "config.json").is_file():
        return False
    try:
        weight_files(folder)
    except CheckpointError:
        return False
    return True
