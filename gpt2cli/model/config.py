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


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_hf(cls, d: object) -> GPT2Config:
        """Read a Hugging Face GPT-2 config.json (`n_ctx` is an older name for `n_positions`).
        Raises ValueError on a config that is not a usable GPT-2 one."""
        if not isinstance(d, dict):
            raise ValueError("config.json is not a JSON object")
        if not is_gpt2_config(d):
            raise ValueError(f"model_type is {d.get('model_type')!r}, not 'gpt2'")
        try:
            cfg = cls(
                vocab_size=int(d["vocab_size"]),
                n_positions=int(d.get("n_positions") or d["n_ctx"]),
                n_embd=int(d["n_embd"]),
                n_layer=int(d["n_layer"]),
                n_head=int(d["n_head"]),
                n_inner=int(d["n_inner"]) if d.get("n_inner") else None,
                layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            )
        except KeyError as exc:
            raise ValueError(f"config.json lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config.json has a value of the wrong type ({exc})") from None
        sizes = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if any(getattr(cfg, name) < 1 for name in sizes) or (cfg.n_inner or 1) < 1:
            raise ValueError("sizes in config.json must be positive integers")
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ValueError(f"activation_function {act!r} is not supported (gelu_new expected)")
        if d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn"):
            raise ValueError(
                "GPT-2 variants with layer-scaled or reordered attention are not supported"
            )
        return cfg


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
