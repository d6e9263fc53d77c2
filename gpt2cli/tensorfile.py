"""A minimal safetensors reader that copies each tensor straight from the file into its final
buffer with `readinto`.

Why not `safetensors.safe_open`: it memory-maps the file, and every page it touches counts in
the process's resident memory until the map closes, so loading a checkpoint that way peaks near
twice its size. Plain reads leave those pages in the OS page cache, outside our RSS.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


class TensorFile:
    """Index of a safetensors file; read tensors one at a time."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TensorFileError("file is shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise TensorFileError(f"header length {n} does not fit in a {size}-byte file")
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError) as exc:
                raise TensorFileError(f"header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise TensorFileError("header is not a JSON object")
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = DTYPES[meta["dtype"]]
                shape = tuple(int(s) for s in meta["shape"])
                begin, end = (int(o) for o in meta["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise TensorFileError(f"bad header entry for {name!r}") from None
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if end - begin != nbytes or begin < 0:
                raise TensorFileError(f"tensor {name!r}: offsets do not match its shape")
            if base + end > size:
                raise TensorFileError(
                    f"tensor {name!r} ends at byte {base + end} but the file has {size} bytes"
                )
            self.tensors[name] = TensorInfo(name, dtype, shape, base + begin, nbytes)

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
            _read_exact(f, memoryview(out.numpy()), self.path)
        return out.view(info.dtype).view(info.shape)

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
                _read_exact(f, memoryview(buf.numpy()), self.path)
                out[:, r0:r1].copy_(buf.view(info.dtype).view(r1 - r0, cols).t())

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())


def _read_exact(f, view: memoryview, path: Path) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise TensorFileError(f"{path} ended early: it is truncated")
        done += n
