"""gpt2cli's own products (gpt2cli/model/_kernels.c through native.py). int8: exact against the
same integer arithmetic done by torch, on every code path of the kernel (rows of x taken two at
a time and alone, weight rows four at a time and alone, lengths that are not a multiple of 32,
x rows in several L2-sized groups), on torch's OpenMP threads and on the kernel's own pool.
float32, float16 and bfloat16 weights: against float64 arithmetic, few rows by the kernel and
many by oneDNN; the layouts that use them hold the checkpoint's values and share the tied
head's storage with the embedding."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
import torch

from gpt2cli.model import native
from gpt2cli.model.checkpoint import load_checkpoint
from gpt2cli.model.linear import Layout, choose_layout, quantize_rows

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built here")


def _cpu_has_avx2() -> bool:
    try:
        return "avx2" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64" and _cpu_has_avx2()),
    reason="the kernels are built for x86-64 Linux with AVX2 here",
)
def test_the_kernels_are_built_and_chosen_for_int8() -> None:
    """On this kind of machine the install must have compiled them (an install that silently
    skipped the optional extension would fall back to fbgemm and every test below would skip)."""
    assert native.available()
    layout = choose_layout(torch.device("cpu"), torch.float32, int8=True)
    assert layout == Layout("int8", native=True)
    assert "gpt2cli's own AVX2 kernels" in layout.describe()


def _reference(
    q: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The kernel's arithmetic in torch: x quantized per row to [-127, 127] by its largest
    magnitude, integer products summed exactly (float64 holds these int32 sums exactly)."""
    amax = x.abs().amax(dim=-1, keepdim=True)
    xscale = amax / 127
    xq = torch.where(amax > 0, torch.round(x * (127 / amax)), 0.0).clamp(-127, 127)
    sums = xq.double() @ q.double().t()
    y = (sums.float() * scale) * xscale
    return y if bias is None else y + bias


@needs_native
@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("n_in", [1000, 768, 200])  # int4: 4 units, 3 (a pair and one), 1
def test_integer_products_are_the_same_numbers_on_every_instruction_set(
    kind: str, rows: int, n_in: int
) -> None:
    """AVX-512 VNNI, AVX-VNNI and AVX2 sum the same integers and scale them in the same order,
    so a model decodes alike wherever it runs (the kernels say so; this holds them to it)."""
    lib = native.kernels()
    assert lib is not None
    torch.manual_seed(rows)
    w = torch.randn(70, n_in) * 0.05
    if kind == "int8":
        matrix = native.NativeInt8Matrix(*quantize_rows(w, 127))
    else:
        matrix = native.NativeInt4Matrix(*native.quantize_int4(w), n_in)
    x = torch.randn(rows, n_in)
    results = []
    try:
        for vnni, avx512 in ((1, 1), (0, 1), (1, 0), (0, 0)):
            lib.set_vnni(vnni)
            lib.set_avx512(avx512)
            results.append(matrix(x))
    finally:
        lib.set_vnni(1)
        lib.set_avx512(1)
    for other in results[1:]:
        assert torch.equal(other, results[0])


@needs_native
@pytest.mark.parametrize(
    ("rows", "n_out", "n_in"),
    [(1, 64, 64), (2, 1000, 64), (3, 37, 96), (5, 17, 50), (70, 130, 3072), (1, 5, 3)],
)
def test_int8_product_is_the_integer_arithmetic(
    rows: int, n_out: int, n_in: int, threads: int, int_dot: str
) -> None:
    torch.manual_seed(rows * 1000 + n_out)
    w = torch.randn(n_out, n_in)
    q, scale = quantize_rows(w.clone(), 127)
    x = torch.randn(rows, n_in)
    x[0] *= 10  # rows of very different size are each quantized on their own
    bias = torch.randn(n_out)
    matrix = native.NativeInt8Matrix(q, scale)
    for b in (None, bias):
        got = matrix(x, b)
        assert got.shape == (rows, n_out)
        torch.testing.assert_close(got, _reference(q, scale, x, b), rtol=1e-5, atol=1e-5)
    # the leading shape is kept, a non-contiguous input is read correctly
    wide = torch.randn(n_in, rows).t()
    torch.testing.assert_close(
        matrix(wide.unsqueeze(0)), _reference(q, scale, wide, None).unsqueeze(0), rtol=1e-5,
        atol=1e-5,
    )  # fmt: skip


@needs_native
def test_int8_product_on_the_kernels_own_threads(threads: int) -> None:
    """Where no OpenMP runtime is handed over, the kernel's own pool splits the work; it must
    give the same result, call after call (the workers sleep and wake between calls)."""
    lib = native.kernels()
    assert lib is not None
    runtime = native._openmp_runtime()
    torch.manual_seed(0)
    q, scale = quantize_rows(torch.randn(300, 256), 127)
    x = torch.randn(2, 256)
    matrix = native.NativeInt8Matrix(q, scale)
    want = _reference(q, scale, x, None)
    try:
        lib.use_openmp(0, 0, 0)
        for spin in (0, 2000):
            lib.set_spin_us(spin)
            for _ in range(50):
                torch.testing.assert_close(matrix(x), want, rtol=1e-5, atol=1e-5)
    finally:
        lib.set_spin_us(2000)
        if runtime is not None:
            lib.use_openmp(*runtime)


@needs_native
def test_the_int8_head_reads_the_embedding_rows(tiny_checkpoint: Path) -> None:
    """The tied int8 head is the embedding's own int8 rows, not a second copy of them."""
    model = load_checkpoint(tiny_checkpoint, layout=Layout("int8", native=True))
    head = model.head_matrix
    assert isinstance(head, native.NativeInt8Matrix)
    assert head.q.data_ptr() == model.wte.data_ptr()
    h = torch.randn(3, model.config.n_embd)
    want = _reference(model.wte.data, model.wte_scale, h, None)
    torch.testing.assert_close(model.head(h), want, rtol=1e-5, atol=1e-5)


@needs_native
def test_a_wrong_width_is_an_error_not_a_read_past_the_input() -> None:
    q, scale = quantize_rows(torch.randn(8, 64), 127)
    with pytest.raises(ValueError, match="expected 64 input features, got 32"):
        native.NativeInt8Matrix(q, scale)(torch.randn(1, 32))
    with pytest.raises(ValueError, match="expected 64 input features"):
        native.NativeDenseMatrix(torch.randn(8, 64).half())(torch.randn(1, 32))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16 weights expected"):
        native.NativeDenseMatrix(torch.randn(8, 64).double())


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2CLI_NATIVE", "0")
    native.kernels.cache_clear()
    try:
        assert not native.available()
        layout = choose_layout(torch.device("cpu"), torch.float32, int8=True)
        assert not layout.native and "fbgemm" in layout.describe()
    finally:
        native.kernels.cache_clear()


@pytest.mark.parametrize(
    ("dtype", "kernel"),
    [
        ("int8", "fbgemm int8"),
        ("bfloat16", "oneDNN"),
        ("float16", "fbgemm float16"),
        ("float32", ""),
    ],
)
def test_every_precision_runs_without_the_kernels(
    tiny_checkpoint: Path, dtype: str, kernel: str
) -> None:
    """Where the extension is not built (no C compiler at install, another CPU), or switched
    off, each --dtype loads and decodes on torch's kernels, as a user runs it."""
    from tests.support.cli import gpt2

    args = ("generate", "-m", str(tiny_checkpoint), "--device", "cpu", "--dtype", dtype)
    proc = gpt2(*args, "-n", "8", "--seed", "1", "-v", "Hello", env={"GPT2CLI_NATIVE": "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "Traceback" not in proc.stderr
    assert "gpt2cli's" not in proc.stderr.split("window")[0]  # -v names torch's kernels
    assert kernel in proc.stderr


@needs_native
@pytest.mark.parametrize("wide", [True, False], ids=["avx512", "avx2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("rows", "n_out", "n_in"),
    [(1, 64, 64), (3, 37, 96), (8, 17, 50), (1, 5, 3), (9, 130, 64), (5, 9, 1000)],
)
def test_dense_product_sums_in_float32(
    wide: bool,
    dtype: torch.dtype,
    rows: int,
    n_out: int,
    n_in: int,
    threads: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to MAX_ROWS rows by the kernel (weight rows four at a time and alone, lengths that are
    not a multiple of 8; several rows of 16-bit weights on 512-bit vectors where the CPU has
    AVX-512, and not), more (here 9) by oneDNN; the same either way."""
    lib = native.kernels()
    assert lib is not None
    if wide and not lib.set_avx512(1):
        pytest.skip("this CPU has no AVX-512 VNNI")
    monkeypatch.setattr(native.NativeDenseMatrix, "MAX_ROWS", 8)
    torch.manual_seed(rows * 1000 + n_out)
    w = torch.randn(n_out, n_in).to(dtype)
    x, bias = torch.randn(rows, n_in), torch.randn(n_out)
    matrix = native.NativeDenseMatrix(w)
    lib.set_avx512(int(wide))
    try:
        for b in (None, bias):
            want = x.double() @ w.double().t() + (0 if b is None else b.double())
            torch.testing.assert_close(matrix(x, b), want.float(), rtol=1e-5, atol=2e-5)
    finally:
        lib.set_avx512(1)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_slice_of_the_head_shares_its_rows(dtype: torch.dtype) -> None:
    w = torch.randn(300, 64).to(dtype)
    head = native.NativeDenseMatrix(w)
    part = head.rows(100, 228)
    assert part.w.data_ptr() == w[100].data_ptr() and part.n_out == 128
    x = torch.randn(2, 64)
    torch.testing.assert_close(part(x), head(x)[:, 100:228], rtol=1e-6, atol=1e-6)


@needs_native
def test_float16_many_rows_in_blocks_of_the_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many rows against a large 16-bit matrix (an output head) go through float32 copies of a
    block of W's rows at a time, never of all of W."""
    torch.manual_seed(0)
    w = torch.randn(3000, 64).half()
    x = torch.randn(20, 64)
    copied: list[int] = []
    real = torch.Tensor.float

    def counting(t: torch.Tensor) -> torch.Tensor:
        copied.append(t.numel())
        return real(t)

    matrix = native.NativeDenseMatrix(w)
    monkeypatch.setattr(native, "BLOCK_ELEMENTS", 64 * 1000)
    monkeypatch.setattr(native.NativeDenseMatrix, "MAX_ROWS", 8)
    monkeypatch.setattr(torch.Tensor, "float", counting)
    y = matrix(x)
    monkeypatch.undo()
    torch.testing.assert_close(y, (x.double() @ w.double().t()).float(), rtol=1e-5, atol=1e-5)
    assert copied == [64_000, 64_000, 64_000]  # 3 blocks of 1000 rows


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_sequence_on_the_kernels_holds_the_checkpoint_weights(
    tiny_checkpoint: Path, dtype: torch.dtype
) -> None:
    """Decoding one sequence on the CPU: the block weights and the tied head are held in
    `dtype` (bfloat16 as bfloat16, on any CPU), exactly the checkpoint's values rounded to it;
    the head reads the embedding's own rows; its logits are float64 arithmetic's."""
    model = load_checkpoint(tiny_checkpoint, dtype=dtype)
    held = "f32" if dtype == torch.float32 else "fp16"
    assert model.layout.native and model.layout.linear == held
    ref = load_checkpoint(tiny_checkpoint, layout=Layout("out_in"))
    assert model.wte.dtype == dtype and model.wpe.dtype == torch.float32
    assert torch.equal(model.wte, ref.wte.detach().to(dtype))
    head = model.head_matrix
    assert isinstance(head, native.NativeDenseMatrix) and head.w.data_ptr() == model.wte.data_ptr()
    fc = model.h[0].mlp.c_fc.matrix
    assert isinstance(fc, native.NativeDenseMatrix)
    assert torch.equal(fc.w, ref.h[0].mlp.c_fc.weight.detach().to(dtype))
    h = torch.randn(2, model.config.n_embd)
    want = h.double() @ model.wte.double().t()
    torch.testing.assert_close(model.head(h), want.float(), rtol=1e-5, atol=2e-5)
    assert model.head_sliceable
    sliced = torch.cat([logits for _, logits in model.head_slices(h, 96)], dim=-1)
    torch.testing.assert_close(sliced, model.head(h), rtol=1e-6, atol=1e-6)


@needs_native
def test_several_sequences_keep_onednn_where_it_packs_them(tiny_checkpoint: Path) -> None:
    """Up to 8 sequences (`--samples 8`) on gpt2cli's kernels, more (`gpt2 batch`, `serve`: 16)
    on oneDNN's packed for them."""
    from gpt2cli.model.linear import onednn_available

    if not onednn_available():
        pytest.skip("no oneDNN here")
    cpu = torch.device("cpu")
    assert choose_layout(cpu, torch.float32, rows=16) == Layout("onednn", rows=16)
    for rows in (1, 4, 8):
        assert choose_layout(cpu, torch.float32, rows=rows) == Layout("f32", native=True)


def test_arena_hands_out_aligned_views_then_plain_tensors() -> None:
    arena = native.Arena(1000)
    a = arena.take((10, 3), torch.float32)
    b = arena.take((5,), torch.int8)
    assert a.shape == (10, 3) and b.dtype == torch.int8
    base = arena.buffer.data_ptr()
    assert a.data_ptr() % native.Arena.HUGE == 0  # the first view starts on a 2 MiB boundary
    assert base <= a.data_ptr() < b.data_ptr() < base + arena.buffer.numel()
    assert b.data_ptr() - a.data_ptr() == 128  # 120 bytes, rounded up to 64
    a.fill_(1.5), b.fill_(-3)
    assert a.sum().item() == 45.0 and b.sum().item() == -15
    past = arena.take((1 << 20,), torch.float32)  # more than is left: a tensor of its own
    assert not (base <= past.data_ptr() < base + arena.buffer.numel())


@needs_native
def test_kernel_weights_share_one_arena(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint, dtype=torch.float32)
    assert model.layout.linear == "f32"
    fc, head = model.h[1].mlp.c_fc.matrix, model.head_matrix
    assert isinstance(fc, native.NativeDenseMatrix) and isinstance(head, native.NativeDenseMatrix)
    assert fc.w.untyped_storage().data_ptr() == head.w.untyped_storage().data_ptr()


@needs_native
@pytest.mark.parametrize("rows,n,k", [(1, 50257, 40), (4, 50257, 40), (3, 1000, 1), (2, 37, 37)])
def test_top_k_is_torch_topk(rows: int, n: int, k: int) -> None:
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(rows * n + k)) * 3
    values, ids = native.topk(x, k)  # type: ignore[misc]
    want = torch.topk(x, k, dim=-1)
    assert torch.equal(values, want.values) and torch.equal(ids, want.indices)


@needs_native
def test_top_k_ties_go_to_the_lower_id_and_rows_may_be_strided() -> None:
    x = torch.zeros(3, 2000)
    x[1, [5, 900, 1999, 3]] = 2.0  # four tied maxima
    x[2] = float("-inf")
    values, ids = native.topk(x, 6)  # type: ignore[misc]
    assert ids[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert ids[1].tolist() == [3, 5, 900, 1999, 0, 1]
    assert values[1].tolist() == [2.0] * 4 + [0.0] * 2
    assert ids[2].tolist() == [0, 1, 2, 3, 4, 5] and values[2].isneginf().all()
    wide = torch.randn(4, 3000)
    view = wide[1:3, :2500]  # rows 3000 floats apart
    values, ids = native.topk(view, 10)  # type: ignore[misc]
    want = torch.topk(view, 10, dim=-1)
    assert torch.equal(values, want.values) and torch.equal(ids, want.indices)
    values, ids = native.topk(wide[0].expand(3, -1), 10)  # type: ignore[misc]  # rows 0 apart
    assert torch.equal(ids, torch.topk(wide[0], 10).indices.expand(3, -1))


@needs_native
def test_top_k_leaves_nan_and_what_it_does_not_take_to_torch() -> None:
    x = torch.randn(2, 300)
    x[1, 299] = float("nan")  # past the last full block of 8
    assert native.topk(x, 5) is None
    x[1, 299] = 0.0
    x[0, 3] = float("nan")  # among the first k
    assert native.topk(x, 5) is None
    assert native.topk(torch.randn(2, 300).double(), 5) is None
    assert native.topk(torch.randn(2, 300), native.TOPK_MAX + 1) is None
    assert native.topk(torch.randn(2, 300), 0) is None


@needs_native
def test_a_decoding_step_is_the_same_numbers_on_16_lanes_and_on_8(tiny_checkpoint: Path) -> None:
    """float32 weights and cache: AVX-512 changes only GELU's width, which must not change a
    bit of the step."""
    from gpt2cli import load_model

    lib = native.kernels()
    assert lib is not None
    model = load_model(str(tiny_checkpoint), device="cpu", dtype="float32").model
    plan = model.step_plan()
    assert plan is not None
    outputs = []
    try:
        for wide in (1, 0):
            lib.set_avx512(wide)
            cache = model.new_cache(2, zeroed=True)
            x = torch.randn(2, model.config.n_embd, generator=torch.Generator().manual_seed(0))
            native.decode_layers(plan, x, cache.k, cache.v, 3, cache.scales())
            outputs.append(x)
    finally:
        lib.set_avx512(1)
    assert torch.equal(outputs[0], outputs[1])
