"""gpt2cli's own matrix products for decoding: the C extension `_kernels` (built from
`_kernels.c` at `pip install` where a C compiler is found), for int8 and int4 weights (`--dtype
int8`, `--dtype int4`, which only these kernels run) and float32, bfloat16 and float16 weights
when one sequence is decoded on the CPU. Absent where it was not built, the CPU lacks
AVX2/FMA/F16C, or `GPT2CLI_NATIVE=0` is set: `linear.py` then uses torch's kernels (oneDNN,
fbgemm), and `--dtype int4` is refused.

Why by hand: one-token decoding streams every weight once per token, and torch's kernels read
them slower than the machine can. On a 2-core Zen 3 EPYC, fbgemm's int8 product read GPT-2
small's int8 weights at 12-13 GB/s on 2 cores, 7 GB/s on one (its 8-bit arithmetic is the limit)
where these kernels read 18.6; on a 2-core Zen 5 EPYC, oneDNN's prepacked float32 product read
the block weights at 25 GB/s on one core (these kernels 37) and its bfloat16 output head took
3.5 ms a token (unpacked, it is converted on every call) where these read it at memory speed
(benchmarks/README.md, sections 1-2). Prompts and scoring (many rows) stay on oneDNN.

Decoding steps also attend here (`attend`), and, where every block's weights are held by these
kernels, run through all the blocks in one call (`decode_layers`); see those functions for the
measured reasons.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections.abc import Callable
from functools import cache
from types import ModuleType

import torch
import torch.nn.functional as F


@cache
def kernels() -> ModuleType | None:
    """The extension, set up to run on torch's OpenMP threads, or None where it cannot run
    here (see the module docstring)."""
    if os.environ.get("GPT2CLI_NATIVE", "1").strip() == "0":
        return None
    try:
        from gpt2cli.model import _kernels  # type: ignore[attr-defined]
    except ImportError:
        return None
    if not _kernels.available():
        return None
    runtime = _openmp_runtime()
    if runtime is not None:
        _kernels.use_openmp(*runtime)
    elif os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        _kernels.set_spin_us(0)  # our own pool's workers then sleep at once too
    return _kernels


def _openmp_runtime() -> tuple[int, int, int] | None:
    """The addresses of GOMP_parallel, omp_get_thread_num and omp_get_num_threads in the OpenMP
    runtime torch has loaded (libgomp in Linux wheels; LLVM's and Intel's runtimes export the
    same GOMP entry points), found among the process's mapped libraries. Measured on the 2-core
    EPYC: with a thread pool of our own beside torch's spinning OpenMP threads, an int8 decode
    step took 87-89 ms instead of 13; on torch's threads the two never compete."""
    torch.get_num_threads()  # the runtime is loaded with torch; this makes sure it started
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return None
    torch_dir = os.path.dirname(torch.__file__)
    names = ("libgomp", "libomp", "libiomp")
    runtimes = [p for p in paths if os.path.basename(p).startswith(names)]
    # torch's own first, should another library have brought a second runtime (llama.cpp's)
    for path in sorted(runtimes, key=lambda p: (not p.startswith(torch_dir), p)):
        try:
            runtime = ctypes.CDLL(path)
            fns = (runtime.GOMP_parallel, runtime.omp_get_thread_num, runtime.omp_get_num_threads)
        except (OSError, AttributeError):
            continue
        addresses = tuple(ctypes.cast(f, ctypes.c_void_p).value or 0 for f in fns)
        return addresses if all(addresses) else None  # type: ignore[return-value]
    return None


class Arena:
    """One allocation for all the weights the kernels stream, asked to be backed by transparent
    huge pages (madvise(MADV_HUGEPAGE), before anything is written to it): the kernels read it
    with fewer TLB misses. Measured on the 2-core Zen 5 EPYC, GPT-2 medium's block matrices in
    float32: 33-34 GB/s on one core and 44-45 on two from separate 4 KiB-paged tensors, 37-38
    and 47.5 from one huge-paged arena (each matrix's own madvise reached only a third of them in
    huge pages, and read no faster). `take` hands out views in turn (thread-safe); past its size,
    or where madvise is refused (THP off, not Linux), plain tensors and plain pages."""

    HUGE = 1 << 21
    MADV_HUGEPAGE = 14  # Linux

    def __init__(self, nbytes: int) -> None:
        self.buffer = torch.empty(nbytes + self.HUGE, dtype=torch.uint8)
        start = self.buffer.data_ptr()
        self.offset = -start % self.HUGE  # the first 2 MiB boundary
        self.lock = threading.Lock()
        _madvise_huge(start + self.offset, nbytes)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape` and `dtype` from the arena."""
        size = torch.Size(shape).numel() * dtype.itemsize
        with self.lock:
            start = self.offset
            if start + size > self.buffer.numel():
                return torch.empty(shape, dtype=dtype)
            self.offset = start + (size + 63) // 64 * 64
        return self.buffer[start : start + size].view(dtype).view(shape)


def empty(shape: tuple[int, ...], dtype: torch.dtype, arena: Arena | None) -> torch.Tensor:
    """An uninitialised tensor from `arena`, or a plain one where there is none."""
    return torch.empty(shape, dtype=dtype) if arena is None else arena.take(shape, dtype)


def _madvise_huge(address: int, nbytes: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.madvise(
            ctypes.c_void_p(address), ctypes.c_size_t(nbytes), ctypes.c_int(Arena.MADV_HUGEPAGE)
        )
    except (OSError, AttributeError):
        return False
    return done == 0


def _required() -> ModuleType:
    """The extension, or RuntimeError where it does not run here."""
    lib = kernels()
    if lib is None:
        raise RuntimeError("the native kernels are not available here")
    return lib


def available() -> bool:
    """Whether the native kernels run here."""
    return kernels() is not None


def _rows(x: torch.Tensor, n_in: int) -> tuple[torch.Tensor, int]:
    """x as the kernels read it (contiguous float32 rows of n_in values) and its row count. Each
    step of a call is kept cheap: ~10 us a call in all, 49 calls a token."""
    if x.shape[-1] != n_in:  # the kernel would read past x's end
        raise ValueError(f"expected {n_in} input features, got {x.shape[-1]}")
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.float().contiguous()
    return x, x.numel() // n_in


class NativeInt8Matrix:
    """x (..., in) float32 -> x W^T (..., out) float32 for W = q * scale[:, None] (q int8
    (out, in), symmetric in [-127, 127]): each row of x is quantized to int8 by its largest
    magnitude, multiplied in integers (exact int32 sums) and rescaled. `q` is held, not copied,
    so an int8 token embedding is also the output head."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        lib = _required()
        self.linear = lib.linear_int8
        self.q = q.contiguous()
        self.scale = scale.float().contiguous()
        self.n_out, self.n_in = q.shape
        # each row's sum over its first n_in & ~31 weights, for the AVX-VNNI products (by blocks
        # of rows: summing as int32 converts its input first, 154 MB for small's head)
        whole = self.q[:, : self.n_in & ~31]
        self.wsum = torch.cat([b.sum(dim=1, dtype=torch.int32) for b in whole.split(4096)])
        self.pointers = (self.q.data_ptr(), self.scale.data_ptr(), self.wsum.data_ptr())

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x, rows = _rows(x, self.n_in)
        y = torch.empty(*x.shape[:-1], self.n_out)
        self.linear(
            *self.pointers, x.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(),
            rows, self.n_out, self.n_in, torch.get_num_threads(),
        )  # fmt: skip
        return y


def _dense(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W^T for a float32 W (out, in) and many rows of x: oneDNN takes it unpacked, and ran 24%
    faster than `F.linear` on a prompt's products (below)."""
    if torch.backends.mkldnn.is_available():
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return F.linear(x, w)


BLOCK_ELEMENTS = 1 << 22  # of a W held in fewer bits, as float32 at a time for many rows: 16 MB


def _dense_by_blocks(
    x: torch.Tensor,
    n_out: int,
    n_in: int,
    rows_of_w: Callable[[int, int], torch.Tensor],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x W^T (by oneDNN) for many rows of x, W's rows [first, last) made float32 by
    `rows_of_w(first, last)` a block at a time (a float32 copy of a 16-bit head would be 154
    MB), multiplied in `dtype` (float32, or bfloat16: x and each block rounded to it); float32
    out."""
    x = x.to(dtype)
    step = max(1, BLOCK_ELEMENTS // n_in)
    parts = [_dense(x, rows_of_w(i, min(n_out, i + step)).to(dtype)) for i in range(0, n_out, step)]
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return y.to(torch.float32)


class NativeDenseMatrix:
    """x (..., in) float32 -> x W^T (..., out) float32 with W (out, in) held as float32, float16
    or bfloat16: up to MAX_ROWS rows (decoding) by the native kernel, float32 sums; more (a
    prompt, a scored window) by oneDNN, on W itself (float32) or on a float32 copy of a block of
    W made for the call (16 bits), since a product of many rows is bound by arithmetic, not by
    reading W (measured on the 2-core EPYC Zen 3, 512 rows of GPT-2 small's 48 block matrices,
    conversions included: oneDNN 727-760 ms, `F.linear` 963-1002, fbgemm's float16 GEMM
    573-724). `w` is held, not copied, so the token embedding is also the output head, and
    `rows(first, last)` is a slice of the head that shares its storage."""

    # the kernel re-reads W from cache for each row; measured on GPT-2 small's 48 block matrices
    # held as float16 (2 threads, Zen 3): 4 rows 19.8 ms against 62.7 converting for oneDNN, 16
    # rows 53 / 97, 32 rows 102 / 118, 64 rows 178 / 182
    MAX_ROWS = 64
    KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

    def __init__(self, w: torch.Tensor) -> None:
        lib = _required()
        if w.dtype not in self.KINDS:
            raise ValueError(f"float32, float16 or bfloat16 weights expected, got {w.dtype}")
        self.linear = lib.linear_dense
        self.w = w.contiguous()
        self.kind = self.KINDS[w.dtype]
        self.n_out, self.n_in = w.shape
        self.pointer = self.w.data_ptr()

    def _many_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T by oneDNN: on W itself (float32), or in blocks of W's rows converted to float32."""
        if self.kind == self.KINDS[torch.float32]:
            return _dense(x, self.w)
        return _dense_by_blocks(x, self.n_out, self.n_in, lambda a, b: self.w[a:b].float())

    def rows(self, first: int, last: int) -> NativeDenseMatrix:
        """The product with W's rows [first, last) only (a view, not a copy)."""
        return NativeDenseMatrix(self.w[first:last])

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x, rows = _rows(x, self.n_in)
        if rows > self.MAX_ROWS:
            y = self._many_rows(x)
            return y if bias is None else y.add_(bias)
        y = torch.empty(*x.shape[:-1], self.n_out)
        self.linear(
            self.kind, self.pointer, x.data_ptr(), 0 if bias is None else bias.data_ptr(),
            y.data_ptr(), rows, self.n_out, self.n_in, torch.get_num_threads(),
        )  # fmt: skip
        return y


def int4_sizes(n_in: int) -> tuple[int, int]:
    """How int4 rows of `n_in` weights are held: (n_pad, groups): n_in rounded up to 256 (a unit
    of 8 groups, see `quantize_int4`) and its groups of 32."""
    n_pad = (n_in + 255) // 256 * 256
    return n_pad, n_pad // 32


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in) as int4 in groups of 32 (the quantization of llama.cpp's Q4_0): (q uint8
    (out, n_pad / 2), two weights a byte, scales float16 (out, groups)), w ~ (q - 8) * scale. As
    Q4_0: each group's value of largest magnitude m gives scale m / -8 (m itself becomes -8,
    exactly), q = floor(w / scale + 8.5) clamped to [0, 15]. Bytes are laid out for the kernel
    (`_kernels.c`, i4_task): in each unit of 8 groups (256 weights, 128 bytes), byte 32L + 4g + t
    holds weight 32g + 4L + t of the unit in its low nibble and 32g + 16 + 4L + t in its high one
    (L < 4, g < 8, t < 4). Padding weights are 0 (q = 8)."""
    out, n_in = w.shape
    n_pad, groups = int4_sizes(n_in)
    g = F.pad(w.float(), (0, n_pad - n_in)).view(out, groups, 32)
    m = g.gather(-1, g.abs().argmax(dim=-1, keepdim=True))
    scale = (m / -8).half()
    d = scale.float()
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = g.mul(inv).add_(8.5).floor_().clamp_(0, 15).to(torch.uint8)
    q = q.view(out, n_pad // 256, 8, 2, 4, 4)  # unit, group, half, L, t
    packed = q[:, :, :, 0] | (q[:, :, :, 1] << 4)  # unit, group, L, t
    return packed.transpose(2, 3).reshape(out, n_pad // 2), scale.view(out, groups)


class NativeInt4Matrix:
    """x (..., in) float32 -> x W^T (..., out) float32 for int4 W (`quantize_int4`): up to
    MAX_ROWS rows of x by the kernel (each row quantized to int8, exact integer sums per group
    scaled in float32); more (a prompt) by oneDNN on blocks of W made float32 (`dequantize`),
    multiplied in `prompt_dtype`.

    Why int4 by hand: torch's 4-bit CPU kernel (`_weight_int4pack_mm_for_cpu`) was slower than
    fbgemm's int8 at batch 1 (benchmarks/README.md), so slower than our int8, while llama.cpp's
    Q4_0 decoded GPT-2 small as fast as our int8 (2-core Zen 5, 230 / 308 tok/s on 1 / 2
    threads against 230 / 312)."""

    # GPT-2 small's 48 block matrices, 2 threads, Zen 5 (kernel / dequantized blocks by oneDNN in
    # bfloat16, ms): 8 rows 3.1 / 15.8, 16 rows 5.9 / 16.3, 32 rows 11.7 / 17.6
    MAX_ROWS = 32

    def __init__(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        n_in: int,
        prompt_dtype: torch.dtype = torch.float32,
    ) -> None:
        """`prompt_dtype`: what products of many rows (prompts) multiply in: float32, or
        bfloat16 where oneDNN has bfloat16 arithmetic here. Measured on the 2-core Zen 5 (GPT-2
        small, a 512-token prompt, 2 / 1 threads): float32 279 / 527 ms, bfloat16 197 / 364
        (llama.cpp's Q4_0 258 / 470). Its rounding (2^-9 of each value) is far below the int4
        weights' own and below that of the int8 activations decoding uses."""
        lib = _required()
        n_pad, groups = int4_sizes(n_in)
        if q.dtype != torch.uint8 or q.shape[1:] != (n_pad // 2,):
            raise ValueError(f"int4 rows of {n_in} weights are {n_pad // 2} bytes")
        if scales.dtype != torch.float16 or scales.shape != (q.shape[0], groups):
            raise ValueError(f"expected float16 scales ({q.shape[0]}, {groups})")
        self.linear, self.dequantize_rows = lib.linear_int4, lib.dequantize_int4
        self.q, self.scales = q.contiguous(), scales.contiguous()
        self.n_out, self.n_in = q.shape[0], n_in
        self.prompt_dtype = prompt_dtype
        self.pointers = (self.q.data_ptr(), self.scales.data_ptr())

    def dequantize(self, first: int = 0, last: int | None = None) -> torch.Tensor:
        """W's rows [first, last) as float32 (last - first, n_in)."""
        last = self.n_out if last is None else last
        if not 0 <= first <= last <= self.n_out:
            raise ValueError(f"rows [{first}, {last}) are outside W's {self.n_out}")
        y = torch.empty(last - first, self.n_in)
        self.dequantize_rows(
            self.q[first].data_ptr() if last > first else 0,
            self.scales[first].data_ptr() if last > first else 0,
            y.data_ptr(), last - first, self.n_in, torch.get_num_threads(),
        )  # fmt: skip
        return y

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x, rows = _rows(x, self.n_in)
        if rows > self.MAX_ROWS:
            y = _dense_by_blocks(x, self.n_out, self.n_in, self.dequantize, self.prompt_dtype)
            return y if bias is None else y.add_(bias)
        y = torch.empty(*x.shape[:-1], self.n_out)
        self.linear(
            *self.pointers, x.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(),
            rows, self.n_out, self.n_in, torch.get_num_threads(),
        )  # fmt: skip
        return y


NativeMatrix = NativeDenseMatrix | NativeInt8Matrix | NativeInt4Matrix

ATTENTION_KINDS = {torch.float32: 0, torch.float16: 1, torch.int8: 2}
MAX_HEAD_DIM = 256  # the attention kernel takes head sizes up to this, multiples of 8


def attend(
    qkv: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor | int,
    scale: float,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One new token per row attends over its cached keys and values: `qkv` (batch, 3 * C)
    float32 holds each row's query, key and value (heads side by side, C = heads * head_dim);
    `keys` and `values` (batch, heads, window, head_dim), float32, float16 or int8, are one
    layer's cache; an int8 cache's `scales` (of keys, of values: (batch, heads, window) float32)
    hold each head's vector at each position as `quantize_kv` does. Row b's key and value are
    written at its position (`positions[b]`, int64, or the one int for all rows) and its query
    attends over positions [0, position]. Returns (batch, C) float32, each row's heads side by
    side (as the output projection reads them).

    By hand because torch's SDPA read the cache slower than the machine can and, over a float16
    cache, slower still: late in the window (860 cached positions, GPT-2 small, 2-core Zen 5)
    SDPA took 2.16 ms a token over float32 keys and values, 5.98 over bfloat16 and 9.15 over
    float16 (benchmarks/README.md, section 10)."""
    lib = _required()
    batch, heads, window, hd = keys.shape
    if qkv.shape != (batch, 3 * heads * hd):
        raise ValueError(f"qkv must be ({batch}, {3 * heads * hd}), got {tuple(qkv.shape)}")
    qkv = qkv.float().contiguous()
    kind, ks, vs = _cache_kind(keys, values, scales)
    pointer, position = _positions(positions, batch, window)
    y = torch.empty(batch, heads * hd)
    lib.attend(
        qkv.data_ptr(), qkv.stride(0), keys.data_ptr(), values.data_ptr(),
        kind, keys.stride(0), keys.stride(1), pointer, position,
        y.data_ptr(), batch, heads, hd, torch.get_num_threads(), ks, vs, float(scale),
    )  # fmt: skip
    return y


TOPK_MAX = 1024  # larger k: torch.topk (the kernel's heap is for a few dozen)


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The k largest of each row of `x` (rows, n), largest first, ties lower index first, as
    (values, int64 ids), both (rows, k); None where the kernel does not take it (not CPU
    float32 rows, k above TOPK_MAX, no kernels) or a row holds a NaN (torch.topk then says what
    a NaN does). By hand because torch.topk took 48 us a row of GPT-2's 50257 logits (k = 40,
    2-core Zen 5), 86 us for 4 rows on 2 threads, a tenth of a 4-sample int4 step's cost over
    one sample's: one pass compares 8 logits at a time with the k-th best so far, 12 us a row
    (the call included)."""
    lib = kernels()
    if lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2:
        return None
    rows, n = x.shape
    if not 0 < k <= min(n, TOPK_MAX) or x.stride(-1) != 1:
        return None
    values = torch.empty(rows, k)
    ids = torch.empty(rows, k, dtype=torch.int64)
    stride = x.stride(0) if rows > 1 else n
    ok = lib.topk(
        x.data_ptr(), rows, n, stride, k, values.data_ptr(), ids.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return (values, ids) if ok else None


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys or values (..., head_dim) float32 as an int8 cache holds them: (int8 (...,
    head_dim), float32 scales (...)), each vector's scale its largest magnitude / 127 and its
    values rounded to nearest (ties to even) after dividing by it; all-zero vectors are zeros
    with scale 0. The kernels round the keys and values they write the same way, to the bit."""
    scale = x.abs().amax(dim=-1) / 127
    live = scale > 0
    q = torch.where(live.unsqueeze(-1), torch.round(x / scale.unsqueeze(-1)), 0)
    return q.clamp(-127, 127).to(torch.int8), torch.where(live, scale, 0)


def matrix_spec(matrix: NativeMatrix, bias: torch.Tensor) -> list[int]:
    """How `decode_layers` reads one product y = x W^T + bias: kind (0-2 the dense kinds, 3
    int8, 4 int4), W's address, its scales' (int8, int4), the bias's, n_out, n_in, its rows'
    sums (int8)."""
    if bias.dtype != torch.float32 or not bias.is_contiguous() or bias.shape != (matrix.n_out,):
        raise ValueError("the bias must be contiguous float32, one per output")
    if isinstance(matrix, NativeInt8Matrix):
        q, scale, wsum = matrix.pointers
        return [3, q, scale, bias.data_ptr(), matrix.n_out, matrix.n_in, wsum]
    if isinstance(matrix, NativeInt4Matrix):
        q, scales = matrix.pointers
        return [4, q, scales, bias.data_ptr(), matrix.n_out, matrix.n_in, 0]
    return [matrix.kind, matrix.pointer, 0, bias.data_ptr(), matrix.n_out, matrix.n_in, 0]


def float_bits(value: float) -> int:
    """The bit pattern of `value` as a float32, for a plan of int64 values."""
    return int(struct.unpack("<I", struct.pack("<f", value))[0])


def decode_layers(
    plan: torch.Tensor,
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor | int,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """One new token per row through every block, in place: `x` (batch, C) contiguous float32,
    the rows' hidden states after the embedding, becomes their hidden states before the final
    LayerNorm. `plan` (layers, the extension's `plan_len()`) int64: each layer's LayerNorm
    weights, its four products (`matrix_spec`), then LayerNorm's eps and attention's scale
    (`float_bits`); the activation is GPT-2's GELU (tanh form). `keys` and `values` (layers,
    batch, heads, window, head_dim) are the cache (with `scales` (layers, batch, heads, window)
    where it holds int8), written and attended over as `attend` does.

    By hand because, with the products this fast, the rest of a step weighed a quarter of it:
    on the 2-core Zen 5, decoding GPT-2 small in int8 spent 1.0 ms of its 4.1 ms a token outside
    the products and attention (49 Python-level calls into the kernels, 25 LayerNorms, 12
    GELUs, 24 additions, each a torch op with its own dispatch), float32 1.2 of 12.8 ms."""
    lib = _required()
    layers, batch, heads, window, hd = keys.shape
    length = lib.plan_len()
    if plan.dtype != torch.int64 or plan.shape != (layers, length) or not plan.is_contiguous():
        raise ValueError(f"plan must be contiguous int64 ({layers}, {length})")
    if x.dtype != torch.float32 or not x.is_contiguous() or x.shape != (batch, heads * hd):
        raise ValueError(f"x must be contiguous float32 ({batch}, {heads * hd})")
    kind, ks, vs = _cache_kind(keys, values, scales)
    pointer, position = _positions(positions, batch, window)
    lib.decode_layers(
        plan.data_ptr(), layers, x.data_ptr(), batch, pointer, position, keys.data_ptr(),
        values.data_ptr(), keys.stride(0), keys.stride(1), keys.stride(2), heads, kind,
        torch.get_num_threads(), ks, vs,
    )  # fmt: skip


def _cache_kind(
    keys: torch.Tensor, values: torch.Tensor, scales: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[int, int, int]:
    """(the kernel's kind for a cache of `keys` and `values`: float32 0, float16 1, int8 2; the
    addresses of an int8 cache's scales, else 0), checked to hold each head's positions
    contiguously and the scales to sit as the keys do (their strides the keys' / head_dim)."""
    if keys.dtype not in ATTENTION_KINDS or values.dtype != keys.dtype:
        raise ValueError("the cache must hold float32, float16 or int8")
    if keys.stride()[-2:] != (keys.shape[-1], 1) or values.stride() != keys.stride():
        raise ValueError("each head's cached positions must be contiguous")
    if (keys.dtype == torch.int8) != (scales is not None):
        raise ValueError("an int8 cache, and only one, has scales")
    if scales is None:
        return ATTENTION_KINDS[keys.dtype], 0, 0
    ks, vs = scales
    hd = keys.shape[-1]
    strides = tuple(s // hd for s in keys.stride()[:-1])
    for t in (ks, vs):
        if t.dtype != torch.float32 or t.shape != keys.shape[:-1] or t.stride() != strides:
            raise ValueError("the scales must be float32, shaped and laid out as the keys")
    return 2, ks.data_ptr(), vs.data_ptr()


def _positions(positions: torch.Tensor | int, batch: int, window: int) -> tuple[int, int]:
    """(address of positions, 0) for an int64 tensor of one position per row, (0, position) for
    one for all rows; every position checked to lie in the window."""
    if isinstance(positions, int):
        if not 0 <= positions < window:
            raise ValueError(f"position {positions} is outside the window of {window}")
        return 0, positions
    if positions.dtype != torch.int64 or positions.shape != (batch,):
        raise ValueError(f"positions must be int64 ({batch},)")
    if not positions.is_contiguous():
        raise ValueError("positions must be contiguous")
    if batch and not 0 <= int(positions.min()) <= int(positions.max()) < window:
        raise ValueError(f"positions must lie in the window of {window}")
    return positions.data_ptr(), 0
