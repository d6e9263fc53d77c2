"""gpt2cli's own matrix products for decoding: the C extension `_kernels` (built from
`_kernels.c` at `pip install` where a C compiler is found). Absent where it was not built, the
CPU lacks AVX2, or `GPT2CLI_NATIVE=0` is set: `linear.py` then uses torch's kernels.

Why by hand: one-token decoding streams every weight once per token, and torch's int8 kernel
(fbgemm) read GPT-2 small's int8 weights at 12-13 GB/s on 2 cores of a Zen 3 EPYC, 7 GB/s on one
(its 8-bit arithmetic, not memory, is the limit), where llama.cpp's Q8_0 decoded ~1.3x faster.
These kernels read them at up to 18.6 GB/s there (benchmarks/README.md, section 1-2).
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from types import ModuleType

import torch


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


def available() -> bool:
    """Whether the native kernels run here."""
    return kernels() is not None


class NativeInt8Matrix:
    """x (..., in) float32 -> x W^T (..., out) float32 for W = q * scale[:, None] (q int8
    (out, in), symmetric in [-127, 127]): each row of x is quantized to int8 by its largest
    magnitude, multiplied in integers (exact int32 sums) and rescaled. `q` is held, not copied,
    so an int8 token embedding is also the output head."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        lib = kernels()
        if lib is None:
            raise RuntimeError("the native kernels are not available here")
        self.linear = lib.linear_int8
        self.q = q.contiguous()
        self.scale = scale.float().contiguous()
        self.n_out, self.n_in = q.shape
        self.pointers = (self.q.data_ptr(), self.scale.data_ptr())

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # each step here is measured: ~10 us a call in all, on 49 calls a token
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        rows = x.numel() // self.n_in
        y = torch.empty(*x.shape[:-1], self.n_out)
        self.linear(
            *self.pointers, x.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(),
            rows, self.n_out, self.n_in, torch.get_num_threads(),
        )  # fmt: skip
        return y
