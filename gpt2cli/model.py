"""GPT-2 in plain PyTorch: config, modules, and a key/value cache preallocated for the window.

No files, no tokens-as-text, no terminal: `checkpoint.py` fills the weights, `engine.py` drives
decoding.

Weight layout is chosen for the speed of one-token decoding, which is a matrix-vector product
per weight matrix and bound by memory bandwidth. On CPU in float32, `x @ W` with W stored
(in, out) -- GPT-2's own Conv1D layout -- streams ~25% faster than `F.linear` on (out, in), and
the output head twice as fast; in bfloat16/float16 and on GPUs, (out, in) with `F.linear` wins.
So `in_out=True` keeps checkpoint weights as they are (and stores the tied embedding as
(d, vocab)), `in_out=False` is the usual torch layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
    def from_dict(cls, d: dict) -> GPT2Config:
        """Read the fields of a Hugging Face GPT-2 config.json (`n_ctx` is an older name for
        `n_positions`). Raises ValueError on a config that is not a usable GPT-2 one."""
        if d.get("model_type", "gpt2") != "gpt2":
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


class KVCache:
    """Keys and values for every layer, preallocated for the whole window: decoding writes in
    place and never allocates per token."""

    def __init__(
        self,
        config: GPT2Config,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
        zeroed: bool = False,
    ) -> None:
        # Untouched pages of an empty tensor cost no memory; the static path attends over the
        # whole window (masked), and needs zeros there since 0 * NaN garbage would be NaN.
        shape = (config.n_layer, batch, config.n_head, config.n_positions, config.head_dim)
        alloc = torch.zeros if zeroed else torch.empty
        self.k = alloc(shape, device=device, dtype=dtype)
        self.v = alloc(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far

    @property
    def batch(self) -> int:
        return self.k.shape[1]


def prefer_in_out(device: torch.device, dtype: torch.dtype) -> bool:
    """The faster weight layout for decoding on `device` in `dtype` (see the module docstring)."""
    return device.type == "cpu" and dtype == torch.float32


class Linear(nn.Module):
    """y = x W + b, with W stored (in, out) when `in_out` else (out, in)."""

    def __init__(self, n_in: int, n_out: int, in_out: bool) -> None:
        super().__init__()
        self.in_out = in_out
        self.weight = nn.Parameter(torch.empty((n_in, n_out) if in_out else (n_out, n_in)))
        self.bias = nn.Parameter(torch.empty(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.in_out:
            return F.linear(x, self.weight, self.bias)
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return y.view(*x.shape[:-1], y.shape[-1])


class Attention(nn.Module):
    def __init__(self, config: GPT2Config, in_out: bool) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, in_out)
        self.c_proj = Linear(config.n_embd, config.n_embd, in_out)

    def forward(
        self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, pos: int | torch.Tensor
    ) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, hd)
        if isinstance(pos, torch.Tensor):  # static shapes for CUDA graphs: see forward_static
            cache_k.index_copy_(2, pos, k)
            cache_v.index_copy_(2, pos, v)
            visible = (torch.arange(cache_k.shape[2], device=x.device) <= pos).view(1, -1)
            y = F.scaled_dot_product_attention(q, cache_k, cache_v, attn_mask=visible)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        end = pos + T
        cache_k[:, :, pos:end] = k
        cache_v[:, :, pos:end] = v
        keys, values = cache_k[:, :, :end], cache_v[:, :, :end]
        if T == 1:  # one new token attends to everything before it: no mask needed
            y = F.scaled_dot_product_attention(q, keys, values)
        elif pos == 0:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:  # a chunk after earlier context: causal within the chunk, full over the past
            mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=pos)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config, in_out: bool) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.inner_dim, in_out)
        self.c_proj = Linear(config.inner_dim, config.n_embd, in_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, in_out: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, in_out)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config, in_out)

    def forward(
        self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, pos: int | torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache_k, cache_v, pos)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """The decoder. `forward` runs a chunk of tokens (the prompt, or one new token per sample)
    against a KVCache and returns logits. The token embedding doubles as the output head; it is
    stored as `wte` (vocab, d) or, with `in_out`, as `wte_t` (d, vocab)."""

    def __init__(self, config: GPT2Config, in_out: bool = False) -> None:
        super().__init__()
        self.config = config
        self.in_out = in_out
        shape = (config.n_embd, config.vocab_size) if in_out else (config.vocab_size, config.n_embd)
        self.register_parameter("wte_t" if in_out else "wte", nn.Parameter(torch.empty(shape)))
        # Plain parameters, not nn.Embedding: its initialiser on the meta device pulls in ~70 MB
        # of torch's Python meta kernels, for weights the checkpoint overwrites anyway.
        self.wpe = nn.Parameter(torch.empty(config.n_positions, config.n_embd))
        self.h = nn.ModuleList(Block(config, in_out) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    @property
    def token_embedding(self) -> torch.Tensor:
        """(vocab, d), a view whatever the storage layout."""
        return self.wte_t.t() if self.in_out else self.wte

    def new_cache(self, batch: int = 1, zeroed: bool = False) -> KVCache:
        p = self.wpe
        return KVCache(self.config, batch, p.device, p.dtype, zeroed)

    @torch.inference_mode()
    def forward(self, idx: torch.Tensor, cache: KVCache, all_logits: bool = False) -> torch.Tensor:
        """idx: (batch, T) token ids placed after the `cache.length` positions already cached.
        Returns float32 logits, (batch, vocab) for the last position or (batch, T, vocab)."""
        B, T = idx.shape
        pos = cache.length
        if pos + T > self.config.n_positions:
            raise ValueError(f"{pos + T} positions exceed the {self.config.n_positions} window")
        if B != cache.batch:
            raise ValueError(f"batch {B} does not match the cache's batch {cache.batch}")
        positions = torch.arange(pos, pos + T, device=idx.device)
        x = self.token_embedding[idx] + self.wpe[positions]
        for i, block in enumerate(self.h):
            x = block(x, cache.k[i], cache.v[i], pos)
        cache.length = pos + T
        if not all_logits:
            x = x[:, -1]
        return self._head(x)

    @torch.inference_mode()
    def forward_static(self, idx: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per sample at position `pos` (a 1-element int64 tensor on the device),
        attending over the whole window with a mask: every shape is fixed, so the step can be
        captured in a CUDA graph and replayed. Leaves `cache.length` to the caller."""
        x = self.token_embedding[idx] + self.wpe[pos]
        for i, block in enumerate(self.h):
            x = block(x, cache.k[i], cache.v[i], pos)
        return self._head(x[:, -1])

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_f(x)
        if self.in_out:
            return (x.reshape(-1, x.shape[-1]) @ self.wte_t).view(*x.shape[:-1], -1).float()
        return F.linear(x, self.wte).float()


def param_count(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
