"""Decoding steps on gpt2cli's own kernels. `native.attend`: against float64 softmax attention
over the same cached (rounded) keys and values, for float32, float16 and int8 caches, one position
for every row or one per row, head sizes GPT-2 has and others, on 1-3 threads. In the model,
`native.decode_layers` (every block of a step in one call): against the modules run one by one
with torch's SDPA from the same cache, step by step, for each precision; rows at their own
positions (continuous batching) likewise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gpt2cli.model import native
from gpt2cli.model.checkpoint import load_checkpoint
from gpt2cli.model.gpt2 import KVCache

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels not built here")


def _reference(
    qkv: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: list[int],
    scale: float,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """What `attend` must do, in float64: the cache with each row's new key and value written
    (rounded to the cache's dtype; int8 with its scales, as `native.quantize_kv` rounds), and
    each row's output over positions [0, its position]. Returns (output, keys, values, and an
    int8 cache's scales)."""
    batch, heads, _, hd = keys.shape
    keys, values = keys.clone(), values.clone()
    ks, vs = (s.clone() for s in scales) if scales is not None else (None, None)
    q, k, v = qkv.view(batch, 3, heads, hd).unbind(1)
    out = torch.empty(batch, heads, hd, dtype=torch.float64)
    for b, p in enumerate(positions):
        if ks is not None and vs is not None:
            (keys[b, :, p], ks[b, :, p]), (values[b, :, p], vs[b, :, p]) = (
                native.quantize_kv(k[b]), native.quantize_kv(v[b]),
            )  # fmt: skip
            kf = keys[b].double() * ks[b, :, :, None].double()
            vf = values[b].double() * vs[b, :, :, None].double()
        else:
            keys[b, :, p], values[b, :, p] = k[b], v[b]
            kf, vf = keys[b].double(), values[b].double()
        scores = torch.einsum("hd,htd->ht", q[b].double(), kf[:, : p + 1])
        weights = torch.softmax(scores * scale, dim=-1)
        out[b] = torch.einsum("ht,htd->hd", weights, vf[:, : p + 1])
    written = (keys, values) if ks is None or vs is None else (keys, values, ks, vs)
    return out.view(batch, heads * hd).float(), *written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8])
@pytest.mark.parametrize(
    ("batch", "heads", "hd", "window", "positions"),
    [
        (1, 12, 64, 1024, [900]),  # GPT-2's head size, late in its window
        (1, 2, 64, 64, [0]),  # the first token attends to itself only
        (3, 2, 32, 64, [5, 17, 63]),  # rows at their own positions, up to the window's end
        (2, 4, 24, 40, [7, 8]),  # a head size that is not GPT-2's; 8 and 9 keys
        (4, 3, 128, 50, [15, 16, 31, 32]),
    ],
)
def test_attend_is_softmax_attention_over_the_cache(
    dtype: torch.dtype,
    batch: int,
    heads: int,
    hd: int,
    window: int,
    positions: list[int],
    threads: int,
) -> None:
    torch.manual_seed(batch * 100 + hd)
    keys = torch.randn(batch, heads, window, hd)
    values = torch.randn(batch, heads, window, hd)
    scales = None
    if dtype == torch.int8:  # as the cache holds them: int8 and a scale per vector
        (keys, ks), (values, vs) = native.quantize_kv(keys), native.quantize_kv(values)
        scales = (ks, vs)
    keys, values = keys.to(dtype), values.to(dtype)
    qkv = torch.randn(batch, 3 * heads * hd)
    qkv[0, : heads * hd] *= 8  # a sharply peaked softmax (e^-x underflows for most keys)
    qkv[-1, heads * hd : heads * hd + hd] = 0  # a key of zeros: scale 0 in an int8 cache
    scale = 1 / math.sqrt(hd)
    want, *written = _reference(qkv, keys, values, positions, scale, scales)
    same = len(set(positions)) == 1
    at: torch.Tensor | int = positions[0] if same else torch.tensor(positions)
    lib = native.kernels()
    assert lib is not None
    # an int8 cache: on 512-bit vectors where the CPU has AVX-512 (head sizes of 16s), and not
    for wide in (1, 0) if dtype == torch.int8 else (1,):
        cache = (keys, values) if scales is None else (keys, values, *scales)
        cache = tuple(t.clone() for t in cache)
        lib.set_avx512(wide)
        try:
            got = native.attend(qkv, cache[0], cache[1], at, scale, scales and (cache[2], cache[3]))
        finally:
            lib.set_avx512(1)
        for have, expected in zip(cache, written, strict=True):  # written, nothing else
            assert torch.equal(have, expected)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


def test_attend_reads_a_view_of_some_rows_of_the_cache() -> None:
    """The scheduler decodes rows [0, n) of a bigger cache: a view whose rows are strided."""
    torch.manual_seed(1)
    cache = torch.randn(2, 5, 3, 32, 16)  # layers, rows, heads, window, head size
    keys, values = cache[0, :2], cache[1, :2]
    qkv = torch.randn(2, 3 * 3 * 16)
    want, want_k, _ = _reference(qkv, keys, values, [4, 9], 0.3)
    untouched = cache[:, 2:].clone()
    got = native.attend(qkv, keys, values, torch.tensor([4, 9]), 0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    assert torch.equal(keys, want_k) and torch.equal(cache[:, 2:], untouched)


def test_attend_refuses_what_it_would_read_or_write_out_of_bounds() -> None:
    keys = torch.zeros(2, 2, 16, 8)
    qkv = torch.zeros(2, 3 * 2 * 8)
    with pytest.raises(ValueError, match="window"):
        native.attend(qkv, keys, keys.clone(), 16, 1.0)
    with pytest.raises(ValueError, match="window"):
        native.attend(qkv, keys, keys.clone(), torch.tensor([3, -1]), 1.0)
    with pytest.raises(ValueError, match="qkv"):
        native.attend(qkv[:1], keys, keys.clone(), 3, 1.0)
    with pytest.raises(ValueError, match="float32, float16 or int8"):
        native.attend(qkv, keys.bfloat16(), keys.bfloat16(), 3, 1.0)
    as_int8, scales = keys.to(torch.int8), (torch.zeros(2, 2, 16), torch.zeros(2, 2, 16))
    with pytest.raises(ValueError, match="scales"):
        native.attend(qkv, as_int8, as_int8.clone(), 3, 1.0)  # int8 without its scales
    with pytest.raises(ValueError, match="scales"):
        native.attend(qkv, keys, keys.clone(), 3, 1.0, scales)  # float32 with scales
    with pytest.raises(ValueError, match="scales"):
        native.attend(qkv, as_int8, as_int8.clone(), 3, 1.0, (scales[0][:, :, :8], scales[1]))
    odd = torch.zeros(2, 2, 16, 12)  # head size not a multiple of 8
    with pytest.raises(ValueError, match="multiple of 8"):
        native.attend(torch.zeros(2, 3 * 2 * 12), odd, odd.clone(), 3, 1.0)


# tolerances: the logits; the keys and values written (over float16, one rounding step apart)
@pytest.mark.parametrize(
    ("dtype", "kv", "tol", "kv_tol"),
    [
        ("float32", torch.float32, 1e-5, 1e-5),
        ("bfloat16", torch.float16, 1e-4, 1e-3),
        # int8 / int4: keys and values cached as int8 (one rounding step of a vector: 1/127 of
        # its largest magnitude); an activation rounded the other way (LayerNorm in C and in
        # torch differ in the last bit) moved one step's int4 logits by 0.064 here (step 24)
        ("int8", torch.int8, 1e-3, 0.02),
        ("int4", torch.int8, 0.1, 0.05),
    ],
)
def test_decoding_steps_on_the_kernels_are_the_modules(
    tiny_checkpoint: Path, dtype: str, kv: torch.dtype, tol: float, kv_tol: float
) -> None:
    """Float32 weights keep a float32 cache (decoding stays as exact as transformers'); 16-bit
    weights keep a float16 one, int8 and int4 weights an int8 one. Each step through
    `native.decode_layers` (every block in one call) gives the logits of the modules run one by
    one with SDPA from the same cache, and writes the same keys and values. (Steps are compared
    one at a time: int8 activations are rounded per token, so a last-bit difference may move one
    of them by a step of 1/127.)"""
    from gpt2cli.runtime.loader import load_model

    lm = load_model(tiny_checkpoint, device="cpu", dtype=dtype)
    model = lm.model
    assert model.kv_dtype == kv and model.step_plan() is not None
    name = str(kv).removeprefix("torch.")  # --verbose says so
    if kv == torch.int8:
        name = "int8 (a scale per head and position)"
    assert f"{name} key/value cache, decoding attends by gpt2cli's kernel" in lm.describe()
    cache = model.new_cache(2)
    assert isinstance(cache, KVCache) and cache.native and cache.k.dtype == kv
    torch.manual_seed(0)
    model(torch.randint(0, model.config.vocab_size, (2, 7)), cache)
    for _ in range(30):
        token = torch.randint(0, model.config.vocab_size, (2, 1))
        before = _state(cache)
        on_kernels = model(token, cache)
        modules, attend = model.new_cache(2), model.new_cache(2)
        _restore(modules, before)
        _restore(attend, before)
        modules.native = False
        model.__dict__["_step_plan"] = None  # the modules, one by one
        try:
            torch.testing.assert_close(on_kernels, model(token, modules), rtol=tol, atol=tol)
            # the modules attending by native.attend (where there is no plan: another GELU)
            torch.testing.assert_close(on_kernels, model(token, attend), rtol=tol, atol=tol)
        finally:
            del model.__dict__["_step_plan"]
        written = slice(modules.length - 1, modules.length)
        for got, want in zip(_values(cache), _values(modules), strict=True):
            torch.testing.assert_close(
                got[:, :, :, written], want[:, :, :, written], rtol=kv_tol, atol=kv_tol
            )
            assert torch.equal(got[:, :, :, : written.start], want[:, :, :, : written.start])


def _state(cache: KVCache) -> tuple[list[torch.Tensor | None], int]:
    return [t.clone() if t is not None else None for t in _tensors(cache)], cache.length


def _restore(cache: KVCache, state: tuple[list[torch.Tensor | None], int]) -> None:
    tensors, cache.length = state
    cache.k, cache.v, cache.k_scale, cache.v_scale = (
        t.clone() if t is not None else None for t in tensors
    )


def _tensors(cache: KVCache) -> list[torch.Tensor | None]:
    return [cache.k, cache.v, cache.k_scale, cache.v_scale]


def _values(cache: KVCache) -> list[torch.Tensor]:
    """The cached keys and values as float32 (an int8 cache's times their scales)."""
    scales = cache.scales()
    if scales is None:
        return [cache.k.float(), cache.v.float()]
    return [cache.k.float() * scales[0][..., None], cache.v.float() * scales[1][..., None]]


def test_rows_at_their_own_positions_on_the_kernel_are_sdpas(tiny_checkpoint: Path) -> None:
    """`forward_rows` (continuous batching): each row attends over its own prefix only."""
    model = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(1)
    lengths = [3, 9, 14]
    outputs = []
    for kernel in (True, False):
        cache = model.new_cache(3, zeroed=True)
        cache.native = kernel
        for r, n in enumerate(lengths):
            view = cache.rows(r, r + 1)
            view.native = kernel
            model(torch.arange(n).view(1, -1) + r, view)
        tokens = torch.tensor([5, 6, 7])
        steps = []
        for step in range(4):
            at = torch.tensor(lengths) + step
            steps.append(model.forward_rows(tokens, at, cache, end=int(at.max()) + 1))
            tokens = steps[-1].argmax(-1)
        outputs.append(torch.stack(steps))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_a_head_size_the_kernel_does_not_take_attends_through_sdpa(tmp_path: Path) -> None:
    """A fine-tuned shape with 12-wide heads (48 wide, 4 heads): decoding works, through SDPA,
    and -v says so."""
    from gpt2cli.runtime.loader import load_model
    from tests.support.checkpoints import build_checkpoint

    folder = build_checkpoint(tmp_path / "narrow-heads", n_embd=48, n_head=4)
    for dtype in ("float32", "int8", "int4"):
        lm = load_model(folder, device="cpu", dtype=dtype)
        cache = lm.model.new_cache(1)
        assert not cache.native and "decoding attends by torch's SDPA" in lm.describe()
        logits = lm.model(torch.tensor([[1, 2, 3]]), cache)
        for _ in range(3):
            logits = lm.model(logits.argmax(-1, keepdim=True), cache)
        assert torch.isfinite(logits).all()
