"""A checkpoint folder (config.json + safetensors) -> a ready GPT2 module.

Accepts the Hub's unprefixed keys (with `h.N.attn.bias`/`masked_bias` mask buffers, no lm_head)
and the `transformer.`-prefixed keys recent transformers writes (with or without lm_head.weight),
single-file or sharded. Never unpickles `.bin` files. Tensors are read one at a time from the
memory-mapped file and moved straight into the model, so two full copies never coexist.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from gpt2cli.errors import CheckpointError
from gpt2cli.model import GPT2, GPT2Config

_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_FIX = "convert it with transformers (`model.save_pretrained(folder)` writes model.safetensors)"


def read_config(folder: Path) -> GPT2Config:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a GPT-2 checkpoint folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    if raw.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(
            f"{folder} holds a {raw.get('model_type')!r} model, not GPT-2 "
            "(config.json's model_type must be 'gpt2')"
        )
    try:
        return GPT2Config.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding the weights: one file, or the shards an index names."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{folder} is missing weight shard(s): {', '.join(missing)}")
        return [folder / n for n in names]
    pickles = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles:
        raise CheckpointError(
            f"{folder} has only {pickles[0]} (a pickle, which gpt2cli never loads for safety); "
            + _FIX
        )
    raise CheckpointError(f"{folder} has no model.safetensors: no weights to load")


def _expected_shapes(cfg: GPT2Config) -> dict[str, tuple[int, ...]]:
    d, inner = cfg.n_embd, cfg.inner_dim
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (cfg.vocab_size, d),
        "wpe.weight": (cfg.n_positions, d),
        "ln_f.weight": (d,),
        "ln_f.bias": (d,),
    }
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (d,),
            p + "ln_1.bias": (d,),
            p + "ln_2.weight": (d,),
            p + "ln_2.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d),  # Conv1D layout: (in, out)
            p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d),
            p + "attn.c_proj.bias": (d,),
            p + "mlp.c_fc.weight": (d, inner),
            p + "mlp.c_fc.bias": (inner,),
            p + "mlp.c_proj.weight": (inner, d),
            p + "mlp.c_proj.bias": (d,),
        }
    return shapes


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, object]]:
    """Yield (normalised key, lazy slice getter) for every tensor worth loading."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{file} is not a readable safetensors file ({exc}); it may be truncated: "
                "delete it and download again"
            ) from None
        with handle as f:
            for key in f.keys():
                name = key.removeprefix("transformer.")
                if name == "lm_head.weight" or name.endswith(_IGNORED_SUFFIXES):
                    continue  # tied head / causal-mask buffers: derived, not loaded
                try:
                    yield name, f.get_tensor(key)
                except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
                    raise CheckpointError(f"{file}: cannot read tensor {key!r} ({exc})") from None


def load_checkpoint(
    folder: Path | str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> GPT2:
    """Build the GPT2 module of `folder` on `device` in `dtype`, in eval mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    cfg = read_config(folder)
    files = weight_files(folder)
    expected = _expected_shapes(cfg)
    with torch.device("meta"):
        model = GPT2(cfg)
    loaded: set[str] = set()
    for name, tensor in _iter_tensors(files):
        shape = expected.get(name)
        if shape is None:
            raise CheckpointError(f"unexpected tensor {name!r} in checkpoint: not a GPT-2 layout")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, but config.json implies {shape}"
            )
        if tensor.dim() == 2 and not name.endswith(("wte.weight", "wpe.weight")):
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        _assign(model, name, tensor.to(device=device, dtype=dtype).contiguous())
        loaded.add(name)
    missing = sorted(set(expected) - loaded)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint lacks tensor {missing[0]!r}{more}")
    return model.eval().requires_grad_(False)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, nn.Parameter(tensor, requires_grad=False))
