"""gpt2cli's own int8 products (gpt2cli/model/_kernels.c through native.py): exact against the
same integer arithmetic done by torch, on every code path of the kernel (rows of x taken two at
a time and alone, weight rows four at a time and alone, lengths that are not a multiple of 32,
x rows in several L2-sized groups), on torch's OpenMP threads and on the kernel's own pool."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator
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


@pytest.fixture(params=[1, 2, 3], ids=["1-thread", "2-threads", "3-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@needs_native
@pytest.mark.parametrize(
    ("rows", "n_out", "n_in"),
    [(1, 64, 64), (2, 1000, 64), (3, 37, 96), (5, 17, 50), (70, 130, 3072), (1, 5, 3)],
)
def test_int8_product_is_the_integer_arithmetic(
    rows: int, n_out: int, n_in: int, threads: int
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


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2CLI_NATIVE", "0")
    native.kernels.cache_clear()
    try:
        assert not native.available()
        layout = choose_layout(torch.device("cpu"), torch.float32, int8=True)
        assert not layout.native and "fbgemm" in layout.describe()
    finally:
        native.kernels.cache_clear()
