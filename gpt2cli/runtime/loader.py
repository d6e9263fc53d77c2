"""A model name -> a `LoadedModel` on a device: the device and dtype chosen, the checkpoint
resolved through the Hub cache, the weights and the tokenizer loaded."""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2cli.errors import CheckpointError, CheckpointWarning, ParamError
from gpt2cli.hub.progress import ProgressFactory
from gpt2cli.model import native
from gpt2cli.model.checkpoint import load_checkpoint
from gpt2cli.model.config import GPT2Config, load_config_json
from gpt2cli.model.generation_config import read_generation_defaults
from gpt2cli.model.gpt2 import GPT2
from gpt2cli.model.linear import choose_layout, fbgemm_available
from gpt2cli.runtime.threads import default_threads
from gpt2cli.text.tokenizer import Tokenizer
from gpt2cli.types import DTYPES, GenerationDefaults, LoadOptions

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZED = ("int8", "int4")  # weights in fewer bits, float32 activations
assert set(TORCH_DTYPES) == set(DTYPES) - {"auto", *QUANTIZED}


@dataclass
class LoadedModel:
    """A model ready to generate: weights on a device, its tokenizer, and where it came from."""

    model: GPT2
    tokenizer: Tokenizer
    name: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    cuda_graphs: bool | None = None  # None: on for CUDA devices
    precision: str = ""  # the --dtype it runs in (int8, int4: such weights, float32 activations)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)

    @property
    def config(self) -> GPT2Config:
        return self.model.config

    @property
    def context_length(self) -> int:
        return self.model.config.n_positions

    @property
    def eos_ids(self) -> frozenset[int]:
        """Token ids that end a sample: the checkpoint's eos_token_id (an int or a list, from
        generation_config.json, else config.json). A checkpoint that declares none ends at
        <|endoftext|> when its vocabulary has one (transformers would not stop at all)."""
        if self.generation.eos_token_ids is not None:
            return frozenset(self.generation.eos_token_ids)
        eot = self.tokenizer.eot_id
        return frozenset() if eot is None else frozenset({eot})

    @property
    def bos_id(self) -> int | None:
        """The token an empty prompt (and scoring) starts from: the checkpoint's bos_token_id,
        else <|endoftext|>; None when there is neither."""
        if self.generation.bos_token_id is not None:
            return self.generation.bos_token_id
        return self.tokenizer.eot_id

    @property
    def precision_name(self) -> str:
        """The --dtype it runs in: the weights' precision (activations may be float32)."""
        return self.precision or str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        """The --verbose line about the loaded model."""
        return (
            f"model {self.name} ({self.path}) on {self.device}, {self.precision_name} "
            f"({self.model.layout.describe()}; {self.model.describe_attention()}), "
            f"window {self.context_length} tokens"
            + (_threads_note() if self.device.type == "cpu" else "")
        )


def _threads_note() -> str:
    """`, 2 CPU threads` for --verbose, saying when idle threads sleep rather than spin."""
    n = torch.get_num_threads()
    passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    return f", {n} CPU thread{'s' * (n != 1)}" + (" (passive wait)" if passive else "")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu. Raises ParamError for an unavailable device."""
    name = name.lower()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParamError("device", "cuda is not available here (no GPU, or a CPU-only torch)")
        return torch.device(name)
    if name == "mps":
        if not has_mps:
            raise ParamError("device", "mps is not available here (Apple silicon only)")
        return torch.device("mps")
    raise ParamError("device", f"must be auto, cpu, cuda or mps, got {name!r}")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU that supports it, float32 elsewhere. `int8` (int8 weights,
    float32 activations) is float32 here, on an x86 CPU only; `int4` too, where gpt2cli's own
    kernels run."""
    name = name.lower()
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name in QUANTIZED:
        if device.type != "cpu":
            raise ParamError(
                "dtype", f"{name} runs on the CPU only (use --device cpu), not {device}"
            )
        if name == "int8" and not (native.available() or fbgemm_available()):
            raise ParamError(
                "dtype", "int8 needs an x86 CPU (gpt2cli's AVX2 kernels or torch's fbgemm)"
            )
        if name == "int4" and not native.available():
            raise ParamError(
                "dtype",
                "int4 needs gpt2cli's own kernels, which do not run here (an x86-64 CPU with "
                "AVX2, a C compiler at install, GPT2CLI_NATIVE unset); int8 runs without them",
            )
        return torch.float32
    if name not in TORCH_DTYPES:
        raise ParamError("dtype", f"must be one of {', '.join(DTYPES)}, got {name!r}")
    return TORCH_DTYPES[name]


def check_device(options: LoadOptions) -> None:
    """Raise ParamError when the device or dtype cannot be used here (before any download)."""
    pick_dtype(options.dtype, pick_device(options.device))


def load_model(
    model: str | Path | LoadOptions = "small",
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    offline: bool | None = None,
    threads: int | None = None,
    batch: int = 1,
    progress: ProgressFactory | None = None,
) -> LoadedModel:
    """Load a GPT-2 checkpoint: a size name (small, medium, large, xl), a Hub repo id, or a
    local folder (or a `LoadOptions`). Downloads into the Hugging Face cache when needed;
    `progress(repo_id)` makes the download's display (default: a plain line per file on
    stderr). `batch`: how many sequences will usually decode together (`samples`, batches):
    on CPU, float32 weights are packed for that (see `Layout.onednn_pack_rows`)."""
    from gpt2cli.hub.fetch import resolve_model

    if isinstance(model, LoadOptions):
        options = model
    else:
        options = LoadOptions(str(model), device, dtype, revision, offline, threads, batch)
    check_device(options)  # before a download that would be wasted
    folder = resolve_model(
        options.model, revision=options.revision, offline=options.offline, progress=progress
    )
    return load_folder(folder, options)


def load_folder(folder: Path, options: LoadOptions) -> LoadedModel:
    """Load the checkpoint in `folder` (already resolved from `options.model`, whose name the
    LoadedModel keeps) on the device and in the dtype `options` ask for."""
    threads = options.threads if options.threads is not None else default_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(options.device)
    dt = pick_dtype(options.dtype, dev)
    quantized = options.dtype.lower() if options.dtype.lower() in QUANTIZED else ""
    layout = choose_layout(
        dev, dt, int8=quantized == "int8", rows=options.batch, int4=quantized == "int4"
    )
    with _malloc_tuned():  # first: it says best what is wrong
        net = load_checkpoint(folder, device=dev, dtype=dt, layout=layout)
    tokenizer = Tokenizer.from_folder(folder)
    if tokenizer.vocab_size > net.config.vocab_size:  # fewer is fine: padded embeddings
        raise CheckpointError(
            f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens, but config.json's "
            f"vocab_size (and the embedding) only {net.config.vocab_size}: they do not belong "
            "together"
        )
    generation, problems = read_generation_defaults(
        Path(folder), load_config_json(Path(folder)), net.config.vocab_size
    )
    for problem in problems:  # shown by the CLI as `gpt2: warning: ...`
        warnings.warn(problem, CheckpointWarning, stacklevel=2)
    precision = quantized or str(dt).removeprefix("torch.")
    act = net.wpe.dtype  # a quantized layout computes in float32 whatever its weights
    return LoadedModel(
        net, tokenizer, options.model, Path(folder), dev, act, generation=generation,
        precision=precision,
    )  # fmt: skip


@contextlib.contextmanager
def _malloc_tuned() -> Iterator[None]:
    """glibc's malloc, set for loading and then for running. Not glibc (macOS, musl): nothing
    changes.

    While loading, every block over 128 KiB goes back to the system when it is freed. By
    default the threshold rises each time such a block is freed, after which the loader's
    temporaries (one weight matrix at a time) come from the heap and stay resident: measured at
    small's shape with --dtype int8, peak RSS varied from 471 to 685 MB between identical runs,
    and was 468 MB every time with the threshold fixed.

    Afterwards blocks up to 32 MiB (the dynamic threshold's ceiling) come from the heap, and
    free memory at the heap's top is kept up to 256 MiB instead of 128 KiB; all threads share
    one arena. A forward pass over many rows (scoring, prefill) frees and allocates buffers of
    several MB per op: returned at the top of the heap or in a thread's own 64 MiB heap, they
    came back as fresh pages, zeroed by the kernel on first touch. Measured scoring 4 windows of
    1024 tokens at small's shape on 2 cores (two passes side by side), the previous code and
    this alternating, 5 rounds: 172-339k page faults, 0.6-1.0 s system time, a median 10.86 s
    before; 11-28k faults, under 0.1 s, 10.60 s so (on a head-bound 2-layer model with GPT-2's
    vocabulary, 35 s against 22). Peak RSS is no higher (memory kept is memory a pass used);
    decoding faults little either way."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        yield
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    mallopt(m_arena_max, 1)  # before any thread of ours allocates
    mallopt(m_mmap_threshold, 128 << 10)
    try:
        yield
    finally:
        mallopt(m_mmap_threshold, 32 << 20)
        mallopt(m_trim_threshold, 256 << 20)
