"""Reading safetensors files: the header is parsed and validated by the `safetensors` library
(its parser is fuzzed: offsets in bounds, contiguous, no overlap, the file exactly as long as the
header says), then each tensor is copied straight from the file into its final buffer with
`readinto`, or, where its bytes are only needed for a moment (a matrix about to be transposed
and packed), mapped for that moment (`mapped`).

Why not read the data with `safetensors.safe_open` too: it memory-maps the whole file, and every
page it touches counts in the process's resident memory until the map closes, so loading GPT-2
small that way peaked at ~1.9x the file above `import torch` against ~1.1x with plain reads
(VmHWM, measured with benchmarks/bench_decode.py). Plain reads leave those pages in the OS page
cache, outside our RSS; `mapped` maps one tensor's bytes and unmaps them when done, which keeps
that. Why map at all: the 48 block matrices of GPT-2 small (340 MB) took 0.25 s to `readinto` a
buffer from the page cache here (2 cores, Zen 3) and their transposing copy read straight from a
map costs ~0.05 s more than from memory, so a map saves ~0.2 s of a 4 s cold start. Buffers are
filled through a ctypes view of the tensor's memory, so no numpy is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorFileError(ValueError):
    """The file is not a valid (or is a truncated) safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def _validated_header(path: Path) -> tuple[int, dict]:
    """(length of the header, the header) once the safetensors library accepted the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass  # opening parses and checks the header against the file's size
    except SafetensorError as exc:
        raise TensorFileError(str(exc)) from None
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


class TensorFile:
    """Index of a safetensors file; read tensors one at a time."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        n, header = _validated_header(self.path)
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = DTYPES.get(meta["dtype"])
            if dtype is None:
                raise TensorFileError(f"tensor {name!r} has unsupported dtype {meta['dtype']}")
            shape = tuple(int(s) for s in meta["shape"])
            begin, end = (int(o) for o in meta["data_offsets"])
            nbytes = math.prod(shape) * dtype.itemsize
            self.tensors[name] = TensorInfo(name, dtype, shape, base + begin, nbytes)
            assert end - begin == nbytes  # checked by safetensors

    def read(self, name: str, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """A CPU tensor with the data of `name`: new, or a view of the start of `scratch` (a
        uint8 buffer at least as large) when the data is only needed for a moment."""
        info = self.tensors[name]
        if scratch is not None:
            out = scratch[: info.nbytes]
        else:
            out = torch.empty(info.nbytes, dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(info.start)
            _read_into(f, out, self.path)
        return out.view(info.dtype).view(info.shape)

    @contextlib.contextmanager
    def mapped(self, name: str) -> Iterator[torch.Tensor]:
        """The data of `name` for the duration of the block, as a tensor over a private map of
        its bytes (unmapped at the end, so they leave this process's resident memory; the
        tensor must not be kept). Read into a new buffer instead where the bytes cannot be
        mapped: an empty tensor, an offset not a multiple of the element size, a file system
        without maps."""
        info = self.tensors[name]
        region = None
        if info.start % info.dtype.itemsize == 0:
            with open(self.path, "rb", buffering=0) as f:
                region = _map(f, info.start, info.nbytes)
        if region is None:
            yield self.read(name)
            return
        bytes_, lead = region
        count = info.nbytes // info.dtype.itemsize
        tensor = torch.frombuffer(bytes_, dtype=info.dtype, count=count, offset=lead)
        try:
            yield tensor.view(info.shape)
        finally:
            del tensor
            with contextlib.suppress(BufferError):  # a view was kept: unmapped when it goes
                bytes_.close()

    def read_rows(self, name: str, r0: int, r1: int) -> torch.Tensor:
        """Rows r0..r1-1 of 2-D tensor `name`, as a new tensor (a large matrix converted a block
        at a time never needs a whole temporary copy)."""
        info = self.tensors[name]
        rows, cols = info.shape
        row_bytes = info.nbytes // rows
        out = torch.empty((r1 - r0) * row_bytes, dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(info.start + r0 * row_bytes)
            _read_into(f, out, self.path)
        return out.view(info.dtype).view(r1 - r0, cols)

    def read_rows_transposed(self, name: str, out: torch.Tensor, chunk: int = 4096) -> None:
        """Copy 2-D tensor `name` (rows, cols) into `out` (cols, rows) a block of rows at a time,
        so a transposed copy never needs the whole untransposed tensor in memory."""
        info = self.tensors[name]
        rows, cols = info.shape
        row_bytes = info.nbytes // rows
        with open(self.path, "rb", buffering=0) as f:
            for r0 in range(0, rows, chunk):
                r1 = min(rows, r0 + chunk)
                buf = torch.empty((r1 - r0) * row_bytes, dtype=torch.uint8)
                f.seek(info.start + r0 * row_bytes)
                _read_into(f, buf, self.path)
                out[:, r0:r1].copy_(buf.view(info.dtype).view(r1 - r0, cols).t())

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())


def _map(f: BinaryIO, start: int, nbytes: int) -> tuple[mmap.mmap, int] | None:
    """A private map of bytes [start, start + nbytes) of `f` and the offset of `start` in it,
    or None where the file cannot be mapped (or nbytes is 0). Private and writable, never
    written (`torch.frombuffer` warns about read-only buffers). A file must not shrink while
    it is mapped (reading a map past the end of a file faults): the loader maps only files
    it has just validated, one tensor's bytes at a time."""
    lead = start % mmap.ALLOCATIONGRANULARITY
    if nbytes <= 0:
        return None
    try:
        region = mmap.mmap(f.fileno(), lead + nbytes, access=mmap.ACCESS_COPY, offset=start - lead)
    except (OSError, ValueError):
        return None
    return region, lead


def _read_into(f: BinaryIO, out: torch.Tensor, path: Path) -> None:
    """Fill the contiguous CPU uint8 tensor `out` from `f`'s current position."""
    if not len(out):
        return
    view = memoryview((ctypes.c_char * len(out)).from_address(out.data_ptr())).cast("B")
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise TensorFileError(f"{path} ended early: it is truncated")
        done += n
