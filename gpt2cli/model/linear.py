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

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

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

    def describe(self) -> str:
        """For --verbose: which kernel multiplies the weights."""
        kernel = {"onednn": "oneDNN prepacked", "in_out": "addmm", "out_in": "F.linear"}
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


def tied_head(x: torch.Tensor, embedding: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Logits from the tied token embedding: `embedding` is (vocab, d), or (d, vocab) when
    `layout.head_in_out`. Returns float32."""
    if layout.head_in_out:
        flat = x.reshape(-1, x.shape[-1]) @ embedding
        return flat.view(*x.shape[:-1], -1).float()
    if layout.linear == "onednn":  # oneDNN streams even the dense (vocab, d) fastest
        return torch.ops.mkldnn._linear_pointwise(x, embedding, None, "none", [], "").float()
    return F.linear(x, embedding).float()
