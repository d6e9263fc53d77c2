"""GPT-2 in plain PyTorch: the modules and a key/value cache preallocated for the window.

No files, no tokens-as-text, no terminal: `checkpoint.py` fills the weights, `runtime/` drives
decoding, and `linear.py` decides how weight matrices are stored and multiplied.

Every forward pass writes its tokens' keys and values into the cache and attends over the cached
prefix. Where the tokens sit is a `Span`, built once per pass:
- `Span.chunk(start, T)`: every row's T tokens at positions start..start+T-1 (a prompt, or one
  token per sample of a batch that advances together);
- `Span.rows(positions, end)`: one token per row, each row at its own position (sequences of
  different lengths decoding together), attending over keys [0, end) through a per-row mask. With
  end = the window, every shape is fixed, so the step can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gpt2cli.model import native
from gpt2cli.model.config import GPT2Config
from gpt2cli.model.linear import BlockedHead, Layout, Linear, QuantizedMatrix, tied_head
from gpt2cli.model.native import NativeDenseMatrix


@dataclass(frozen=True)
class Span:
    """Where a forward pass's tokens go in the cache, and what each may attend to."""

    start: int | None  # chunk: first position, the same for every row
    positions: torch.Tensor | None  # rows: (batch,) int64 position of each row's one token
    end: int  # keys [0, end) are read
    mask: torch.Tensor | None  # True where attending is allowed; None: all (or causal)
    causal: bool  # a chunk from position 0: plain causal attention

    @classmethod
    def chunk(cls, start: int, length: int, device: torch.device) -> Span:
        end = start + length
        if length == 1:  # one new token attends to everything before it
            return cls(start, None, end, None, False)
        if start == 0:
            return cls(start, None, end, None, True)
        # A chunk after earlier context: causal within the chunk, full over the past.
        mask = torch.ones(length, end, dtype=torch.bool, device=device).tril(diagonal=start)
        return cls(start, None, end, mask, False)

    @classmethod
    def rows(cls, positions: torch.Tensor, end: int) -> Span:
        keys = torch.arange(end, device=positions.device)
        mask = (keys.view(1, -1) <= positions.view(-1, 1)).view(-1, 1, 1, end)
        return cls(None, positions, end, mask, False)


def attends_natively(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether decoding steps over a cache of `dtype` on `device` attend on gpt2cli's kernel
    (it takes head sizes that are a multiple of 8, up to 256: GPT-2's are 64)."""
    if head_dim % 8 or head_dim > native.MAX_HEAD_DIM:
        return False
    return device.type == "cpu" and dtype in native.ATTENTION_KINDS and native.available()


class KVCache:
    """Keys and values for every layer, preallocated for the whole window: decoding writes in
    place and never allocates per token. `length` counts the positions filled by chunks (all
    rows alike); sequences decoding at their own positions are tracked by their caller.
    `native`: one-token steps attend on gpt2cli's own kernel (`native.attend`: a CPU cache of
    float32, float16 or int8 where the kernels run), else through torch's SDPA. The cache may
    hold fewer bits than the activations (`GPT2.kv_dtype`): what is attended over is always the
    stored, rounded keys and values, on either path, so every path sees the same numbers. An
    int8 cache keeps a float32 scale per head and position (`k_scale`, `v_scale`, (layers,
    batch, heads, window); `native.quantize_kv`)."""

    def __init__(
        self,
        config: GPT2Config,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
        zeroed: bool = False,
    ) -> None:
        # Untouched pages of an empty tensor cost no memory; attending over the whole window
        # (masked) needs zeros there, since 0 * NaN garbage would be NaN.
        shape = (config.n_layer, batch, config.n_head, config.n_positions, config.head_dim)
        alloc = torch.zeros if zeroed else torch.empty
        self.k = alloc(shape, device=device, dtype=dtype)
        self.v = alloc(shape, device=device, dtype=dtype)
        self.k_scale: torch.Tensor | None = None
        self.v_scale: torch.Tensor | None = None
        if dtype == torch.int8:
            self.k_scale = alloc(shape[:-1], device=device, dtype=torch.float32)
            self.v_scale = alloc(shape[:-1], device=device, dtype=torch.float32)
        self.length = 0
        self.native = attends_natively(device, dtype, config.head_dim)

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache for rows [start, stop) that shares this one's memory (no copy)."""
        view = object.__new__(KVCache)
        view.k, view.v = self.k[:, start:stop], self.v[:, start:stop]
        view.k_scale = view.v_scale = None
        if self.k_scale is not None and self.v_scale is not None:
            view.k_scale, view.v_scale = self.k_scale[:, start:stop], self.v_scale[:, start:stop]
        view.length, view.native = self.length, self.native
        return view

    def _tensors(self) -> list[torch.Tensor]:
        """Everything cached per (layer, row, head, position): keys, values, int8's scales."""
        return [self.k, self.v, *(self.scales() or ())]

    def copy_prefix(self, source: int, targets: list[int], length: int) -> None:
        """Copy row `source`'s first `length` positions into rows `targets` (a prompt prefilled
        once, shared by several samples)."""
        for t in targets:
            for cached in self._tensors():
                cached[:, t, :, :length] = cached[:, source, :, :length]

    def clear(self, row: int, start: int, end: int) -> None:
        """Zero row `row`'s positions [start, end) (read under a mask before they are written:
        0 * NaN would be NaN)."""
        for cached in self._tensors():
            cached[:, row, :, start:end] = 0

    def scales(self, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An int8 cache's scales of keys and values (of one layer, or all), else None."""
        if self.k_scale is None or self.v_scale is None:
            return None
        if layer is None:
            return self.k_scale, self.v_scale
        return self.k_scale[layer], self.v_scale[layer]

    @property
    def window(self) -> int:
        return self.k.shape[3]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, span: Span
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values (batch, heads, T, head_dim) where `span` says; return
        the cached keys and values to attend over (an int8 cache's as float32: the stored
        values times their scales)."""
        cached = [self.k[layer], self.v[layer]]
        new = [k, v]
        scales = self.scales(layer)
        if scales is not None:
            (k, k_scale), (v, v_scale) = native.quantize_kv(k), native.quantize_kv(v)
            cached += list(scales)
            new = [k, v, k_scale, v_scale]
        for into, what in zip(cached, new, strict=True):
            if span.positions is None:
                assert span.start is not None
                into[:, :, span.start : span.end] = what
            else:
                rows = torch.arange(what.shape[0], device=what.device)
                into[rows, :, span.positions] = what[:, :, 0]
        keys, values = cached[0][:, :, : span.end], cached[1][:, :, : span.end]
        if scales is not None:
            keys = keys.float() * cached[2][:, :, : span.end, None]
            values = values.float() * cached[3][:, :, : span.end, None]
        return keys, values


class NoCache:
    """Stands in for a KVCache in a pass that keeps nothing (scoring whole windows): keys and
    values are attended to as computed, never stored, so no window-sized cache is allocated."""

    length = 0
    native = False

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, span: Span
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


class Attention(nn.Module):
    def __init__(self, config: GPT2Config, layout: Layout, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.scale = config.attention_scale(layer)  # None: SDPA's 1/sqrt(head_dim)
        default = 1 / math.sqrt(self.head_dim)
        self.softmax_scale = default if self.scale is None else self.scale  # gpt2cli's kernels
        self.upcast = config.reorder_and_upcast_attn
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, layout)
        self.c_proj = Linear(config.n_embd, config.n_embd, layout)

    def forward(self, x: torch.Tensor, cache: KVCache, span: Span) -> torch.Tensor:
        B, T, C = x.shape
        if T == 1 and cache.native:  # a decoding step
            position = span.start if span.positions is None else span.positions
            assert position is not None
            qkv = self.c_attn(x).reshape(B, 3 * C)
            layer = (cache.k[self.layer], cache.v[self.layer])
            y = native.attend(qkv, *layer, position, self.softmax_scale, cache.scales(self.layer))
            return self.c_proj(y.view(B, 1, C))
        q, k, v = self._qkv(x)
        keys, values = cache.update(self.layer, k, v, span)
        return self.c_proj(self._attend(q, keys, values, span).transpose(1, 2).reshape(B, T, C))

    def tail(self, x: torch.Tensor, skip: int) -> torch.Tensor:
        """`forward` for rows skip.. of a chunk from position 0, with no cache: every row's keys
        and values are computed, only the later rows' queries and outputs."""
        B, T, C = x.shape
        q, k, v = self._qkv(x)
        y = self._attend(q[:, :, skip:], k, v, Span.chunk(skip, T - skip, x.device))
        return self.c_proj(y.transpose(1, 2).reshape(B, T - skip, C))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, C), each (B, H, T, hd)."""
        B, T, _ = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _attend(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, span: Span
    ) -> torch.Tensor:
        if keys.dtype != q.dtype:  # a cache of fewer bits (GPT2.kv_dtype)
            keys, values = keys.to(q.dtype), values.to(q.dtype)
        if self.upcast and q.dtype != torch.float32:  # reorder_and_upcast_attn: float32 scores
            return F.scaled_dot_product_attention(
                q.float(), keys.float(), values.float(),
                attn_mask=span.mask, is_causal=span.causal, scale=self.scale,
            ).to(q.dtype)  # fmt: skip
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=span.mask, is_causal=span.causal, scale=self.scale
        )


def _laplace(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0))))


# GPT2Config.activation -> the function. Each is transformers' ACT2CLS entry (activations.py)
# written with torch's own kernels.
ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "mish": F.mish,
    "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "laplace": _laplace,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
    "linear": lambda x: x,
}


class MLP(nn.Module):
    def __init__(self, config: GPT2Config, layout: Layout) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.inner_dim, layout)
        self.c_proj = Linear(config.inner_dim, config.n_embd, layout)
        # Not fused into c_fc, though oneDNN offers GELU as a post-op: measured on Zen 3 (1 and
        # 2 threads, prepacked 768 x 3072), the fused product took 10-60% longer than the
        # plain one followed by F.gelu at 16 to 1024 rows (1024 rows, 2 threads: 57 ms
        # against 40-48), and was no faster at 1 row; about 7% of a scoring window's time.
        self.act = ACTIVATION_FUNCTIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layout: Layout, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, layout, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config, layout)

    def forward(self, x: torch.Tensor, cache: KVCache, span: Span) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, span)
        return x + self.mlp(self.ln_2(x))

    def tail(self, x: torch.Tensor, skip: int) -> torch.Tensor:
        """`forward` for rows skip.. only (a chunk from position 0, no cache): the rows before
        them are attended to, but their own outputs are not computed."""
        x = x[:, skip:] + self.attn.tail(self.ln_1(x), skip)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """The decoder. `forward` runs tokens against a KVCache and returns logits. The output head
    is the token embedding (tied, as in GPT-2) or, with `tie_word_embeddings: false`, a matrix
    of its own (`lm_head`). It is stored (vocab, d), or (d, vocab) with `layout.head_in_out`
    (`wte_t`/`lm_head_t`); an untied embedding is only looked up, so it stays (vocab, d).
    Where matrix objects hold the weights (`layout.in_matrices`), the head is one of them
    (`head_matrix`) and the embedding is looked up from its rows (float32 or 16-bit), or its int8
    rows times their scales (`wte_scale`)."""

    def __init__(self, config: GPT2Config, layout: Layout | None = None) -> None:
        super().__init__()
        self.config = config
        self.layout = layout = layout or Layout()
        in_out = layout.head_in_out
        vocab, d = config.vocab_size, config.n_embd
        self.head_matrix: QuantizedMatrix | BlockedHead | None = None
        self.wte_scale: torch.Tensor | None = None
        if layout.in_matrices:
            self.head_name = ""
            self.wte = nn.Parameter(torch.empty(vocab, d))
        else:
            self.head_name = ("wte" if config.tie_word_embeddings else "lm_head") + "_t" * in_out
            head = torch.empty((d, vocab) if in_out else (vocab, d))
            self.register_parameter(self.head_name, nn.Parameter(head))
            if self.head_name != "wte":
                self.wte = nn.Parameter(torch.empty(vocab, d))
        # Plain parameters, not nn.Embedding: its initialiser on the meta device pulls in ~70 MB
        # of torch's Python meta kernels, for weights the checkpoint overwrites anyway.
        self.wpe = nn.Parameter(torch.empty(config.n_positions, config.n_embd))
        self.h = nn.ModuleList(Block(config, layout, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def set_quantized_embedding(
        self,
        rows: torch.Tensor,
        scale: torch.Tensor | None,
        head: QuantizedMatrix | BlockedHead | None,
    ) -> None:
        """A quantized layout's embedding: its rows (int8 with per-row `scale`, or 16-bit), and
        the packed output head made from them when the head is tied (None: untied)."""
        self.wte = nn.Parameter(rows, requires_grad=False)
        self.wte_scale = scale
        if head is not None:
            self.head_matrix = head

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The token embeddings of `idx`, in the model's activation dtype."""
        if self.head_name == "wte_t":
            return self.wte_t.t()[idx]
        rows = self.wte[idx]
        if self.wte_scale is not None:
            return rows.float() * self.wte_scale[idx].unsqueeze(-1)
        return rows.to(self.wpe.dtype)

    @property
    def kv_dtype(self) -> torch.dtype:
        """What the key/value cache holds where gpt2cli's kernels decode on the CPU: int8 (a
        scale per head and position, `native.quantize_kv`) beside int8 or int4 weights, float16
        beside 16-bit ones; else the activations' dtype (float32 decoding stays exact, as
        transformers computes it). Fewer bytes to read late in the window: attending over 925
        positions of GPT-2 small (12 layers, 2-core Zen 5, caches cold) took 1.07 ms a token
        over float32, 0.70 over float16, 0.51 over int8; int4 weights decoded there at 0.82x
        their rate at the start of the window with it, 0.71x over float16 (int8 0.90x, 0.82x).
        Their rounding: float16's ~5e-4 of each value, int8's up to 1/254 of each vector's
        largest, which moved int8's divergence from float32 by 4% and int4's by 1%
        (benchmarks/bench_quality.py --kv-float16)."""
        p = self.wpe
        layout = self.layout
        fewer_bits = layout.native and layout.in_matrices and layout.linear != "f32"
        if p.device.type == "cpu" and fewer_bits and native.available():
            return torch.int8 if layout.linear in ("int8", "int4") else torch.float16
        return p.dtype

    def describe_attention(self) -> str:
        """For --verbose: what the cache holds and what attends over it when decoding."""
        kv = self.kv_dtype
        own = attends_natively(self.wpe.device, kv, self.config.head_dim)
        how = "gpt2cli's kernel" if own else "torch's SDPA"
        what = "int8 (a scale per head and position)" if kv == torch.int8 else str(kv)
        return f"{what.removeprefix('torch.')} key/value cache, decoding attends by {how}"

    def new_cache(self, batch: int = 1, zeroed: bool = False) -> KVCache:
        return KVCache(self.config, batch, self.wpe.device, self.kv_dtype, zeroed)

    @torch.inference_mode()
    def forward(self, idx: torch.Tensor, cache: KVCache, all_logits: bool = False) -> torch.Tensor:
        """idx: (batch, T) token ids placed after the `cache.length` positions already cached.
        Returns float32 logits, (batch, vocab) for the last position or (batch, T, vocab)."""
        B, T = idx.shape
        start = cache.length
        if start + T > self.config.n_positions:
            raise ValueError(f"{start + T} positions exceed the {self.config.n_positions} window")
        if B != cache.batch:
            raise ValueError(f"batch {B} does not match the cache's batch {cache.batch}")
        x = self.embed(idx) + self.wpe[start : start + T]
        x = self._blocks(x, cache, Span.chunk(start, T, idx.device))
        cache.length = start + T
        return self._head(x if all_logits else x[:, -1])

    @torch.inference_mode()
    def forward_rows(
        self, idx: torch.Tensor, positions: torch.Tensor, cache: KVCache, end: int | None = None
    ) -> torch.Tensor:
        """One token per row, row b at position `positions[b]` (int64 on the model's device),
        attending over keys [0, end) (default: the whole window, a fixed shape for CUDA graphs).
        Returns (batch, vocab) float32 logits. Leaves `cache.length` to the caller."""
        end = cache.window if end is None else end
        x = self.embed(idx.view(-1, 1)) + self.wpe[positions].unsqueeze(1)
        x = self._blocks(x, cache, Span.rows(positions, end))
        return self._head(x[:, -1])

    @torch.inference_mode()
    def hidden_states(self, idx: torch.Tensor, skip: int = 0) -> torch.Tensor:
        """idx: (batch, T) token ids at positions 0..T-1, each row its own text, with no cache.
        Returns the final hidden states of positions skip..T-1, (batch, T - skip, d), after
        ln_f: `head` turns the rows that are wanted into logits (scoring needs a few rows of a
        window, not all of them). The first `skip` positions are context only: the last block
        computes just their keys and values (scoring at stride 512 of 1024 saves ~2% of a
        window's arithmetic, at stride 64 ~7%)."""
        B, T = idx.shape
        if T > self.config.n_positions:
            raise ValueError(f"{T} positions exceed the {self.config.n_positions} window")
        if not 0 <= skip < T:
            raise ValueError(f"skip must be in [0, {T}), got {skip}")
        x = self.embed(idx) + self.wpe[:T]
        cache, span = NoCache(B), Span.chunk(0, T, idx.device)
        for block in self.h[:-1]:
            x = block(x, cache, span)  # type: ignore[arg-type]
        last = self.h[-1]
        x = last.tail(x, skip) if skip else last(x, cache, span)
        return self.ln_f(x)

    @torch.inference_mode()
    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits (..., vocab) of final hidden states (..., d)."""
        return self._head(x)

    @property
    def head_sliceable(self) -> bool:
        """Whether `head_slices` gives the vocabulary in slices (else in one piece)."""
        if isinstance(self.head_matrix, NativeDenseMatrix):
            return True
        return self.head_matrix is None and not self.layout.head_in_out

    @torch.inference_mode()
    def head_slices(self, x: torch.Tensor, columns: int) -> Iterator[tuple[int, torch.Tensor]]:
        """The float32 logits of `head(x)` a slice of the vocabulary at a time: (first token
        id, logits (..., <= columns)) in order. Slices where the head is a dense (vocab, d)
        matrix (rows of it are contiguous); one slice, the whole head, otherwise."""
        if not self.head_sliceable:
            yield 0, self._head(x)
            return
        if isinstance(self.head_matrix, NativeDenseMatrix):
            head = self.head_matrix
            for first in range(0, head.n_out, columns):
                yield first, head.rows(first, first + columns)(x)
            return
        weight = getattr(self, self.head_name)
        for first in range(0, weight.shape[0], columns):
            yield first, tied_head(x, weight[first : first + columns], self.layout)

    def _blocks(self, x: torch.Tensor, cache: KVCache, span: Span) -> torch.Tensor:
        B, T, C = x.shape
        if T == 1 and cache.native and (plan := self.step_plan()) is not None:
            position = span.start if span.positions is None else span.positions
            assert position is not None
            x = x.contiguous()
            native.decode_layers(plan, x.view(B, C), cache.k, cache.v, position, cache.scales())
            return self.ln_f(x)
        for block in self.h:
            x = block(x, cache, span)
        return self.ln_f(x)

    def step_plan(self) -> torch.Tensor | None:
        """Where one-token steps run through all the blocks in one call to gpt2cli's kernels
        (`native.decode_layers`): every layer's weights as that call reads them, built once;
        None where it cannot (weights not held by the kernels, an activation other than GPT-2's
        GELU); it runs only where the cache attends natively (`KVCache.native`)."""
        if "_step_plan" not in self.__dict__:
            self.__dict__["_step_plan"] = self._build_step_plan()
        return self.__dict__["_step_plan"]

    def _build_step_plan(self) -> torch.Tensor | None:
        cfg = self.config
        kernel_held = (native.NativeDenseMatrix, native.NativeInt8Matrix, native.NativeInt4Matrix)
        linears = [
            m for b in self.h for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
        ]
        if not (native.available() and all(isinstance(m.matrix, kernel_held) for m in linears)):
            return None
        if cfg.activation != "gelu_tanh":
            return None
        plans = []
        for block in self.h:
            attn, mlp = block.attn, block.mlp
            norms = [block.ln_1.weight, block.ln_1.bias, block.ln_2.weight, block.ln_2.bias]
            plan = [p.data_ptr() for p in norms]
            for linear in (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj):
                plan += native.matrix_spec(linear.matrix, linear.bias)
            plan += [native.float_bits(block.ln_1.eps), native.float_bits(attn.softmax_scale)]
            plans.append(plan)
        return torch.tensor(plans, dtype=torch.int64)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_matrix is not None:
            return self.head_matrix(x)
        return tied_head(x, getattr(self, self.head_name), self.layout)
