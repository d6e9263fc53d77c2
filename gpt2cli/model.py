"""GPT-2 in plain PyTorch: config, modules, and a key/value cache preallocated for the window.

No files, no tokens-as-text, no terminal: `checkpoint.py` fills the weights, `engine.py` drives
decoding.

Weight layout is chosen for the speed of one-token decoding, which is a matrix-vector product
per weight matrix and bound by memory bandwidth (see `Layout`). Measured on a 2-core AVX-512
machine, streaming GPT-2 small's block weights: `F.linear` on (out, in) ~18 GB/s, `addmm` on
GPT-2's own Conv1D (in, out) ~21 GB/s, oneDNN with weights prepacked once at load ~32-36 GB/s,
in float32 and bfloat16 alike, and it holds up at batch 4 where `F.linear` drops to ~11 GB/s.
The tied embedding is also the output head and must stay indexable for the lookup, so it keeps
its dense (vocab, d) layout, which oneDNN also streams fastest (3.7 ms a token for small's head
in float32, against 5.5 ms for `addmm` on (d, vocab) and 9 ms for `F.linear`). Without oneDNN,
float32 on CPU stores it (d, vocab) for `addmm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


LINEAR_LAYOUTS = ("out_in", "in_out", "onednn")


@dataclass(frozen=True)
class Layout:
    """How weights are stored. linear: block weights as (out, in) for `F.linear`, (in, out) for
    `addmm`, or prepacked for oneDNN. head_in_out: the tied embedding stored (d, vocab)."""

    linear: str = "out_in"
    head_in_out: bool = False

    def __post_init__(self) -> None:
        if self.linear not in LINEAR_LAYOUTS:
            raise ValueError(f"linear layout must be one of {LINEAR_LAYOUTS}")


@lru_cache(maxsize=None)
def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch can prepack weights for oneDNN in `dtype` on this CPU (x86 builds with
    mkldnn; bfloat16 also needs AVX-512 BF16/VNNI or AVX-NE-CONVERT, which is asked by running
    it: the packing refuses other CPUs)."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=dtype), 1)
        x = torch.ones(1, 8, dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(out.float(), torch.full((1, 8), 8.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def choose_layout(device: torch.device, dtype: torch.dtype) -> Layout:
    """The fastest layout for decoding on `device` in `dtype` (see the module docstring)."""
    cpu_fp32 = device.type == "cpu" and dtype == torch.float32
    if (
        device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and onednn_available(dtype)
    ):
        return Layout("onednn", head_in_out=False)
    return Layout("in_out" if cpu_fp32 else "out_in", head_in_out=cpu_fp32)


class Linear(nn.Module):
    """y = x W + b, W stored as `layout` says; `set_weight` takes GPT-2's Conv1D (in, out)."""

    def __init__(self, n_in: int, n_out: int, layout: str) -> None:
        super().__init__()
        self.layout = layout
        shape = (n_in, n_out) if layout == "in_out" else (n_out, n_in)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(n_out))

    def set_weight(self, conv1d: torch.Tensor, scratch: torch.Tensor | None = None) -> None:
        """Store `conv1d` (in, out). For the prepacked layout, `scratch` (a 1-D buffer of the
        model's dtype, at least as large) takes the (out, in) copy packing needs, so no
        temporary is allocated per weight."""
        if self.layout == "in_out":
            self.weight = nn.Parameter(conv1d.contiguous(), requires_grad=False)
        elif self.layout == "out_in":
            self.weight = nn.Parameter(conv1d.t().contiguous(), requires_grad=False)
        else:  # an opaque oneDNN tensor, so a buffer rather than a parameter
            n_in, n_out = conv1d.shape
            if scratch is None:
                dense = conv1d.t().contiguous()
            else:
                dense = scratch[: n_in * n_out].view(n_out, n_in)
                dense.copy_(conv1d.t())  # transpose and convert the dtype in one pass
            del self.weight
            self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(dense, 1))

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """x W + b, then GELU (tanh approximation) when `gelu`: fused into the matmul on oneDNN."""
        if self.layout == "onednn":
            op = "gelu" if gelu else "none"
            algorithm = "tanh" if gelu else ""
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, op, [], algorithm)
        if self.layout == "out_in":
            y = F.linear(x, self.weight, self.bias)
        else:
            y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
            y = y.view(*x.shape[:-1], y.shape[-1])
        return F.gelu(y, approximate="tanh") if gelu else y


class Attention(nn.Module):
    def __init__(self, config: GPT2Config, layout: str) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, layout)
        self.c_proj = Linear(config.n_embd, config.n_embd, layout)

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
    def __init__(self, config: GPT2Config, layout: str) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.inner_dim, layout)
        self.c_proj = Linear(config.inner_dim, config.n_embd, layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.c_fc(x, gelu=True))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layout: str) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, layout)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config, layout)

    def forward(
        self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, pos: int | torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache_k, cache_v, pos)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """The decoder. `forward` runs a chunk of tokens (the prompt, or one new token per sample)
    against a KVCache and returns logits. The token embedding doubles as the output head; it is
    stored as `wte` (vocab, d) or, with `layout.head_in_out`, as `wte_t` (d, vocab)."""

    def __init__(self, config: GPT2Config, layout: Layout | None = None) -> None:
        super().__init__()
        self.config = config
        self.layout = layout = layout or Layout()
        self.in_out = in_out = layout.head_in_out
        shape = (config.n_embd, config.vocab_size) if in_out else (config.vocab_size, config.n_embd)
        self.register_parameter("wte_t" if in_out else "wte", nn.Parameter(torch.empty(shape)))
        # Plain parameters, not nn.Embedding: its initialiser on the meta device pulls in ~70 MB
        # of torch's Python meta kernels, for weights the checkpoint overwrites anyway.
        self.wpe = nn.Parameter(torch.empty(config.n_positions, config.n_embd))
        self.h = nn.ModuleList(Block(config, layout.linear) for _ in range(config.n_layer))
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
        if self.layout.linear == "onednn":  # oneDNN streams even the dense (vocab, d) fastest
            return torch.ops.mkldnn._linear_pointwise(x, self.wte, None, "none", [], "").float()
        return F.linear(x, self.wte).float()
