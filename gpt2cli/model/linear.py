"""How weight matrices are stored and multiplied: the layer where a kernel is chosen for the CPU
or GPU at hand. `gpt2.py` only ever calls `Linear(x)` and `head(x)`.

One-token decoding is a matrix-vector product per weight matrix and bound by memory bandwidth.
Measured on a 2-core AVX-512 machine, streaming GPT-2 small's block weights: `F.linear` on
(out, in) ~18 GB/s, `addmm` on GPT-2's own Conv1D (in, out) ~21 GB/s, oneDNN with weights
prepacked once at load ~32-36 GB/s, in float32 and bfloat16 alike, and it holds up at batch 4
where `F.linear` drops to ~11 GB/s. The tied embedding is also the output head and must stay
indexable for the lookup, so it keeps its dense (vocab, d) layout, which oneDNN also streams
fastest (3.7 ms a token for small's head in float32, against 5.5 ms for `addmm` on (d, vocab)
and 9 ms for `F.linear`). Without oneDNN, float32 on CPU stores it (d, vocab) for `addmm`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from gpt2cli.model import native
from gpt2cli.model.native import Arena, NativeDenseMatrix, NativeInt4Matrix, NativeInt8Matrix

LINEAR_LAYOUTS = ("out_in", "in_out", "onednn", "f32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class Layout:
    """How weights are stored. linear: block weights as (out, in) for `F.linear`, (in, out) for
    `addmm`, prepacked for oneDNN, held as float32 (out, in) for gpt2cli's own kernels (`f32`),
    or in 16 bits (`fp16`) or int8 (`int8`) for gpt2cli's kernels or fbgemm's, or int4 in
    groups of 32 (`int4`, gpt2cli's kernels only). head_in_out: the tied embedding stored
    (d, vocab). The last four (`in_matrices`) hold the output head and the token embedding in
    the same precision as the blocks (int8 for `int4`: llama.cpp's Q4_0 files also keep the
    output head in more bits) and compute in float32.
    `round_bf16`: the 16-bit weights are bfloat16 (held as bfloat16 by gpt2cli's kernels; for
    fbgemm rounded to bfloat16 and held as float16, exact over float16's normal range: bfloat16
    has 8 significant bits, float16 11), so `--dtype bfloat16` gives bfloat16 weights on a CPU
    without bfloat16 arithmetic. `int8_max` is the largest int8 magnitude used. `rows`: how
    many rows the products will have (sequences decoded together), which oneDNN's packing is
    tuned for (`onednn_pack_rows`). `native`: the products by gpt2cli's own kernels
    (`native.py`) instead of fbgemm's."""

    linear: str = "out_in"
    head_in_out: bool = False
    round_bf16: bool = False
    int8_max: int = 127
    rows: int = 1
    native: bool = False

    def __post_init__(self) -> None:
        if self.linear not in LINEAR_LAYOUTS:
            raise ValueError(f"linear layout must be one of {LINEAR_LAYOUTS}")

    @property
    def in_matrices(self) -> bool:
        """Weights held by matrix objects (gpt2cli's kernels or fbgemm's), everything else
        float32."""
        return self.linear in ("f32", "fp16", "int8", "int4")

    @property
    def held_dtype(self) -> torch.dtype:
        """The dtype an `in_matrices` layout holds its weights and token embedding in (`int4`:
        its embedding; the blocks' weights two a byte)."""
        if self.linear in ("int8", "int4"):
            return torch.int8
        if self.linear == "f32":
            return torch.float32
        return torch.bfloat16 if self.round_bf16 else torch.float16

    @property
    def onednn_pack_rows(self) -> int:
        """The batch size oneDNN packs the weights for: 1 to decode one sequence, else 8.
        Measured on GPT-2 small's 48 block matrices (2 threads, Zen 3, weights streamed from
        memory, ms per pass at 1 / 4 / 8 rows): packed for 1 row 26-29 / 41-54 / 47-63, for 8
        rows 28-32 / 35-38 / 38-51, for 4 rows 37 / 38 / 39. Packed for one row, a product of
        2 to 8 rows takes oneDNN's general kernel at about half the bandwidth."""
        return 1 if self.rows == 1 else 8

    def describe(self) -> str:
        """For --verbose: which kernel multiplies the weights."""
        lib = native.kernels()
        vnni = lib is not None and lib.vnni()
        dot = " (AVX-VNNI products)" if vnni else ""
        if lib is not None and lib.avx512():
            wide = "AVX-512 VNNI for several rows" if vnni else "AVX-512 VNNI products"
            dot = f" ({'AVX-VNNI products, ' if vnni else ''}{wide})"
        if self.linear == "int4":
            return (
                "int4 weights (4-bit, a float16 scale per group of 32, as llama.cpp's Q4_0), "
                "the token embedding and output head int8 (a scale per row), activations int8 "
                f"(a scale per token), gpt2cli's own AVX2 kernels{dot}; float32 elsewhere"
            )
        if self.linear == "int8" and self.native:
            return (
                "int8 weights (8-bit, a scale per output channel) and activations (a scale per "
                f"token), gpt2cli's own AVX2 kernels{dot}; float32 elsewhere"
            )
        if self.linear == "int8":
            bits = "8-bit" if self.int8_max == 127 else "7-bit (no VNNI: 8-bit products saturate)"
            return (
                f"fbgemm int8 weights, {bits}, a scale per output channel; activations "
                "quantized per token; float32 elsewhere"
            )
        if self.linear == "f32" or (self.linear == "fp16" and self.native):
            held = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
            wide = ""
            if self.held_dtype != torch.float32 and lib is not None and lib.avx512():
                wide = " (AVX-512 for several rows)"
            return (
                f"{held.get(self.held_dtype, 'float16')} weights, gpt2cli's own AVX2 kernels{wide} "
                "for decoding, oneDNN for prompts; float32 activations"
            )
        if self.linear == "fp16":
            held16 = "bfloat16 weights held as float16" if self.round_bf16 else "float16 weights"
            return f"fbgemm {held16}, float32 activations"
        if self.linear == "onednn":
            return f"oneDNN prepacked for {self.onednn_pack_rows} row(s)"
        kernel = {"in_out": "addmm", "out_in": "F.linear"}
        return kernel[self.linear]


@cache
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


@cache
def fbgemm_available() -> bool:
    """Whether this torch has fbgemm's packed float16 and int8 kernels (x86 builds)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


@cache
def cpu_has_vnni() -> bool:
    """Whether fbgemm's int8 kernels can use VNNI (AVX-512 VNNI), which accumulate u8 x s8
    products in int32. Without it they use vpmaddubsw, whose int16 sums of two products
    saturate when weights use the full int8 range (255 x 127 x 2 > 32767): measured here on an
    AVX2 EPYC, full-range weights gave outputs off by up to 40%; weights kept within +-63 never
    saturate."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_vnni" in line.split()
    except OSError:
        pass
    return False


# Sequences decoded together up to which gpt2cli's kernels beat oneDNN's packed ones on float32
# and bfloat16 weights. Measured on the 2-core Zen 5 EPYC (GPT-2 small, `--samples N`, tok/s,
# ours / oneDNN packed for 8 rows): bfloat16 N=4 436 / 309, N=8 508 / 457, N=16 522 / 612;
# float32 N=4 303 / 238, N=8 402 / 388, N=16 498 / 556.
OWN_KERNEL_ROWS = 8


def choose_layout(
    device: torch.device, dtype: torch.dtype, int8: bool = False, rows: int = 1, int4: bool = False
) -> Layout:
    """The fastest layout for decoding `rows` sequences together on `device` in `dtype` (see
    the module docstring); with `int8`, int8 weights (CPU only), multiplied by gpt2cli's own
    kernels where they run here, else by fbgemm's; with `int4`, int4 weights (gpt2cli's kernels
    only: the caller checks that they run). Up to OWN_KERNEL_ROWS sequences on a CPU
    where gpt2cli's kernels run: float32 and 16-bit weights by them too (measured in native.py);
    more: oneDNN's kernels packed for them, where this torch and CPU have them."""
    cpu = device.type == "cpu"
    own = cpu and native.available()
    if int4:
        return Layout("int4", native=True)
    if int8 and own:
        return Layout("int8", native=True)
    if int8:
        return Layout("int8", int8_max=127 if cpu_has_vnni() else 63)
    few = rows <= OWN_KERNEL_ROWS
    if own and dtype == torch.float32 and few:
        return Layout("f32", native=True)
    sixteen = cpu and dtype in (torch.bfloat16, torch.float16)
    packed_bf16 = dtype == torch.bfloat16 and onednn_available(dtype)
    if own and sixteen and (few or not packed_bf16):
        return Layout("fp16", round_bf16=dtype == torch.bfloat16, native=True)
    if cpu and dtype in (torch.float32, torch.bfloat16) and onednn_available(dtype):
        return Layout("onednn", head_in_out=False, rows=rows)
    if sixteen and fbgemm_available():
        return Layout("fp16", round_bf16=dtype == torch.bfloat16)
    cpu_fp32 = cpu and dtype == torch.float32
    return Layout("in_out" if cpu_fp32 else "out_in", head_in_out=cpu_fp32)


def quantize_rows(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of `w` (out, in): (q int8 in [-qmax, qmax], scale float32 (out,)),
    w ~ q * scale[:, None]. A float32 `w` is overwritten (it is a scratch buffer at load: no
    float temporaries of its size are made, which measured ~140 MB of resident memory at
    small's shape)."""
    w = w.float()
    lo, hi = torch.aminmax(w, dim=1)
    scale = (torch.maximum(-lo, hi) / qmax).clamp_min_(1e-12)
    w.div_(scale[:, None]).round_().clamp_(-qmax, qmax)
    return w.to(torch.int8), scale


class Int8Matrix:
    """x (..., in) float32 -> x W^T (..., out) float32 for W = q * scale[:, None] (q int8
    (out, in)), through fbgemm's dynamic int8 linear: the input is quantized to uint8 by its min
    and max, multiplied in integers, and rescaled. The op takes one range for its whole input;
    for several rows each row is first mapped to [0, 1] by its own min and max
    (x = lo + (hi - lo) u, so x W^T = lo * rowsum(W) + (hi - lo) * (u W^T)), which makes the
    quantization per token, as llama.cpp's Q8_0 activations are per block.

    Two entry points to the same fbgemm kernel. `torch.fbgemm_linear_int8_weight_fp32_activation`
    keeps only the packed matrix (the int8 rows stay ours: the token embedding is looked up in
    them) and costs least per call; `quantized.linear_dynamic` also keeps a copy of the weight
    for unpacking. The aten op is used where this torch still has it."""

    legacy = hasattr(torch, "fbgemm_linear_int8_weight_fp32_activation")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        n_out, n_in = q.shape
        self.scale = scale
        # by blocks of rows: summing as int32 converts its input first (a 150 MB transient for
        # small's head)
        col_offsets = torch.cat([b.sum(dim=1, dtype=torch.int32) for b in q.split(4096)])
        self.row_sums = scale * col_offsets.float()  # sum_j W[i, j]
        if self.legacy:
            # the op reads only the weight's shape: a zero-stride view, not a copy
            self.shape_only = torch.zeros(1, 1, dtype=torch.int8).expand(n_out, n_in)
            self.zeros = torch.zeros(n_out)
            self.col_offsets = col_offsets
            with warnings.catch_warnings():  # torch marks these deprecated, warning once
                warnings.filterwarnings("ignore", r"fbgemm_\w+ is deprecated", UserWarning)
                self.packed = torch.fbgemm_pack_quantized_matrix(q)
                self._matmul(torch.zeros(1, n_in))  # the op's one warning, spent here
            return
        with warnings.catch_warnings():  # "quantized tensor creation ... deprecated" (2.13)
            warnings.simplefilter("ignore", UserWarning)
            qw = torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros(n_out, dtype=torch.long), 0
            )
        self.packed = torch.ops.quantized.linear_prepack(qw, None)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T with one activation range for all of x."""
        if self.legacy:
            y = torch.fbgemm_linear_int8_weight_fp32_activation(
                x, self.shape_only, self.packed, self.col_offsets, 1.0, 0, self.zeros
            )  # x q^T
            return y.mul_(self.scale)
        return torch.ops.quantized.linear_dynamic(x, self.packed, False)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.numel() == x.shape[-1]:  # one token: the op's range is already per token
            y = self._matmul(x)
        else:
            lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
            d = (hi - lo).clamp_min_(1e-12)
            y = self._matmul((x - lo) / d).mul_(d).addcmul_(lo, self.row_sums)
        return y if bias is None else y.add_(bias)


class BlockedHead:
    """A 16-bit output head packed as blocks of rows (packing the whole (vocab, d) matrix at once
    needs a float32 copy of it): the logits are the blocks' outputs side by side."""

    def __init__(self, blocks: list[Fp16Matrix]) -> None:
        self.blocks = blocks

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([block(x) for block in self.blocks], dim=-1)


class Fp16Matrix:
    """x (..., in) float32 -> x W^T (..., out) float32 with W held as float16 by fbgemm
    (`quantized.linear_dynamic_fp16`: float32 accumulation, work split over torch's threads)."""

    def __init__(self, w: torch.Tensor, round_bf16: bool) -> None:
        if round_bf16:
            w = w.to(torch.bfloat16)
        self.packed = torch.ops.quantized.linear_prepack_fp16(w.float().contiguous(), None)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return y if bias is None else y.add_(bias)


QuantizedMatrix = Int8Matrix | NativeInt8Matrix | NativeInt4Matrix | Fp16Matrix | NativeDenseMatrix


def pack_matrix(w: torch.Tensor, layout: Layout, arena: Arena | None = None) -> QuantizedMatrix:
    """W (out, in) float32 held for an `in_matrices` layout (W may be a scratch buffer: it is
    not kept); gpt2cli's kernels get their copy of it from `arena` when one is given."""
    if layout.native:
        if layout.linear == "int4":
            q, scales = native.quantize_int4(w)
            held = native.empty(q.shape, torch.uint8, arena).copy_(q)
            prompts = torch.bfloat16 if onednn_available(torch.bfloat16) else torch.float32
            return NativeInt4Matrix(held, scales, w.shape[1], prompts)
        if layout.linear == "int8":
            q, scale = quantize_rows(w, layout.int8_max)
            return NativeInt8Matrix(native.empty(q.shape, torch.int8, arena).copy_(q), scale)
        return NativeDenseMatrix(native.empty(w.shape, layout.held_dtype, arena).copy_(w))
    if layout.linear == "int8":
        return Int8Matrix(*quantize_rows(w, layout.int8_max))
    return Fp16Matrix(w, layout.round_bf16)


class Linear(nn.Module):
    """y = x W + b, W stored as `layout` says; `set_weight` takes GPT-2's Conv1D (in, out)."""

    def __init__(self, n_in: int, n_out: int, layout: Layout) -> None:
        super().__init__()
        self.layout = layout.linear
        self.spec = layout
        self.matrix: QuantizedMatrix | None = None  # the quantized layouts
        shape = (n_in, n_out) if self.layout == "in_out" else (n_out, n_in)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(n_out))

    def set_weight(
        self, conv1d: torch.Tensor, scratch: torch.Tensor | None = None, arena: Arena | None = None
    ) -> None:
        """Store `conv1d` (in, out). For the prepacked layout, `scratch` (a 1-D buffer of the
        model's dtype, at least as large) takes the (out, in) copy packing needs, so no
        temporary is allocated per weight; gpt2cli's kernels hold theirs in `arena`."""
        if self.layout == "in_out":
            self.weight = nn.Parameter(conv1d.contiguous(), requires_grad=False)
        elif self.layout == "out_in":
            self.weight = nn.Parameter(conv1d.t().contiguous(), requires_grad=False)
        elif self.spec.in_matrices:  # held by a matrix object, not a parameter
            n_in, n_out = conv1d.shape
            dense = conv1d.t()
            if scratch is not None:  # a float32 buffer: the quantizer works in it
                dense = scratch[: n_in * n_out].view(n_out, n_in).copy_(dense)
            del self.weight
            self.weight = None
            self.matrix = pack_matrix(dense, self.spec, arena)
        else:  # an opaque oneDNN tensor, so a buffer rather than a parameter
            n_in, n_out = conv1d.shape
            if scratch is None:
                dense = conv1d.t().contiguous()
            else:
                dense = scratch[: n_in * n_out].view(n_out, n_in)
                dense.copy_(conv1d.t())  # transpose and convert the dtype in one pass
            del self.weight
            packed = torch.ops.mkldnn._reorder_linear_weight(dense, self.spec.onednn_pack_rows)
            self.register_buffer("weight", packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x W + b."""
        if self.layout == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        if self.matrix is not None:
            return self.matrix(x, self.bias)
        if self.layout == "out_in":
            return F.linear(x, self.weight, self.bias)
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return y.view(*x.shape[:-1], y.shape[-1])


def tied_head(x: torch.Tensor, embedding: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Logits from the tied token embedding: `embedding` is (vocab, d), or (d, vocab) when
    `layout.head_in_out`. Returns float32."""
    if layout.head_in_out:
        flat = x.reshape(-1, x.shape[-1]) @ embedding
        return flat.view(*x.shape[:-1], -1).float()
    if layout.linear == "onednn":  # oneDNN streams even the dense (vocab, d) fastest
        return torch.ops.mkldnn._linear_pointwise(x, embedding, None, "none", [], "").float()
    return F.linear(x, embedding).float()
