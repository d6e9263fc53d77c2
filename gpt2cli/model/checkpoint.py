"""A checkpoint folder (config.json + safetensors) -> a ready GPT2 module.

Accepts the Hub's unprefixed keys (with `h.N.attn.bias`/`masked_bias` mask buffers, no lm_head)
and the `transformer.`-prefixed keys recent transformers writes (with or without lm_head.weight,
which is the output head only when config.json sets `tie_word_embeddings: false`), single-file or
sharded. Never unpickles `.bin` files. Tensors are read one at a time with
plain reads (see tensorfile.py) straight into the model, so two full copies never coexist;
block matrices that are packed (oneDNN, fbgemm) are transposed and packed by several threads at
once, each through a reused buffer (`_pack_linear`).
"""

from __future__ import annotations

import math
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from gpt2cli.errors import CheckpointError
from gpt2cli.model.config import GPT2Config, read_config, weight_files
from gpt2cli.model.gpt2 import GPT2
from gpt2cli.model.linear import (
    BlockedHead,
    Fp16Matrix,
    Int8Matrix,
    Layout,
    Linear,
    QuantizedMatrix,
    choose_layout,
    quantize_rows,
)
from gpt2cli.model.native import Arena, NativeDenseMatrix, NativeInt8Matrix, empty, int4_sizes
from gpt2cli.model.tensorfile import TensorFile, TensorFileError, TensorInfo

_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
MAX_LOAD_THREADS = 4  # packing is bound by memory bandwidth well before that


def _top_shapes(cfg: GPT2Config) -> dict[str, tuple[int, ...]]:
    d = cfg.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (cfg.vocab_size, d),
        "wpe.weight": (cfg.n_positions, d),
        "ln_f.weight": (d,),
        "ln_f.bias": (d,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def _block_shapes(cfg: GPT2Config) -> dict[str, tuple[int, ...]]:
    """The tensors of one block, by their name under `h.N.`."""
    d, inner = cfg.n_embd, cfg.inner_dim
    return {
        "ln_1.weight": (d,),
        "ln_1.bias": (d,),
        "ln_2.weight": (d,),
        "ln_2.bias": (d,),
        "attn.c_attn.weight": (d, 3 * d),  # Conv1D layout: (in, out)
        "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d),
        "attn.c_proj.bias": (d,),
        "mlp.c_fc.weight": (d, inner),
        "mlp.c_fc.bias": (inner,),
        "mlp.c_proj.weight": (inner, d),
        "mlp.c_proj.bias": (d,),
    }


def _expected_shape(cfg: GPT2Config, name: str) -> tuple[int, ...] | None:
    """The shape config.json implies for tensor `name`; None for a tensor GPT-2 has not."""
    top = _top_shapes(cfg).get(name)
    if top is not None or not name.startswith("h."):
        return top
    layer, _, rest = name.removeprefix("h.").partition(".")
    if not layer.isdecimal() or int(layer) >= cfg.n_layer:
        return None
    return _block_shapes(cfg).get(rest)


def _expected_names(cfg: GPT2Config) -> list[str]:
    """Every tensor name config.json implies: 12 per layer, so call it once n_layer is known to
    match the files."""
    block = list(_block_shapes(cfg))
    return [*_top_shapes(cfg), *(f"h.{i}.{n}" for i in range(cfg.n_layer) for n in block)]


def _check_layers(cfg: GPT2Config, tensors: dict[str, tuple[TensorFile, TensorInfo]]) -> None:
    """Refuse a config.json with more layers than the files hold, before anything of its size
    is built: `n_layer: 100000000` would otherwise list 1.2e9 tensor names (the other sizes
    are checked by the shapes of the tensors present)."""
    layers = {name.split(".")[1] for name in tensors if name.startswith("h.")}
    if cfg.n_layer > len(layers):
        raise CheckpointError(
            f"config.json says n_layer {cfg.n_layer}, but the weights hold {len(layers)} "
            f"layer{'s' if len(layers) != 1 else ''}"
        )


def _skipped(name: str, cfg: GPT2Config) -> bool:
    """Tensors in the file that the forward pass never uses: the head tied to wte (derived),
    the causal-mask buffers, and cross-attention weights (run only on an encoder's states)."""
    if name == "lm_head.weight":
        return cfg.tie_word_embeddings
    if cfg.add_cross_attention and (".crossattention." in name or ".ln_cross_attn." in name):
        return True
    return name.endswith(_IGNORED_SUFFIXES)


def _index(files: list[Path], cfg: GPT2Config) -> dict[str, tuple[TensorFile, TensorInfo]]:
    """Normalised name -> where to read it, for every tensor worth loading."""
    found: dict[str, tuple[TensorFile, TensorInfo]] = {}
    for file in files:
        try:
            tf = TensorFile(file)
        except (TensorFileError, OSError) as exc:
            raise CheckpointError(
                # the Hub's files are checked before they get here (hub/integrity.py): this
                # is a local folder's, so no advice to download it again
                f"{file} is not a readable safetensors file ({exc}): it may be truncated "
                "(an interrupted copy or save) or not be a safetensors file"
            ) from None
        for info in tf:
            name = info.name.removeprefix("transformer.")
            if not _skipped(name, cfg):
                found[name] = (tf, info)
    return found


def load_checkpoint(
    folder: Path | str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    layout: Layout | None = None,
) -> GPT2:
    """Build the GPT2 module of `folder` on `device` in `dtype`, in eval mode. `layout` picks how
    weights are stored (default: the fastest for this device and dtype, see linear.py)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    device = torch.device(device)
    cfg = read_config(folder)
    tensors = _index(weight_files(folder), cfg)
    for name, (_, info) in tensors.items():
        shape = _expected_shape(cfg, name)
        if shape is None:
            raise CheckpointError(f"unexpected tensor {name!r} in checkpoint: not a GPT-2 layout")
        if info.shape != shape:
            raise CheckpointError(
                f"tensor {name!r} has shape {info.shape}, but config.json implies {shape}"
            )
    _check_layers(cfg, tensors)  # before listing the n_layer * 12 names it implies
    missing = [name for name in _expected_names(cfg) if name not in tensors]
    if "lm_head.weight" in missing:  # transformers would start it from random numbers
        raise CheckpointError(
            "config.json sets tie_word_embeddings: false, but the checkpoint has no "
            "lm_head.weight (the output head)"
        )
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint lacks tensor {missing[0]!r}{more}")

    layout = layout or choose_layout(device, dtype)
    if layout.in_matrices:  # matrix objects hold the weights; everything else is float32
        dtype = torch.float32
    with torch.device("meta"):
        model = GPT2(cfg, layout)
    packed = layout.linear == "onednn" or layout.in_matrices
    scratch_t = None
    if packed and layout.in_matrices:  # the embedding is converted a block of rows at a time
        scratch_t = torch.empty(_largest_matrix(tensors), dtype=torch.float32)
    arena = _arena(tensors, layout) if layout.native else None
    try:
        if packed:  # prepacked weights are copies, made from the file's bytes
            _pack_linear(model, tensors, dtype, arena)
        for name, (tf, info) in tensors.items():
            if layout.in_matrices and name in ("wte.weight", "lm_head.weight"):
                _load_quantized_embedding(model, name, tf, info, layout, scratch_t, arena)
                continue
            head = name.removesuffix(".weight") + "_t"
            if head == model.head_name:  # the output head, stored (d, vocab)
                out = torch.empty(info.shape[::-1], dtype=dtype)
                tf.read_rows_transposed(info.name, out)
                _assign(model, head, out.to(device))
                continue
            if _is_linear(name, info):  # a Conv1D (in, out) weight
                if not packed:
                    module = model.get_submodule(name.removesuffix(".weight"))
                    assert isinstance(module, Linear)
                    module.set_weight(tf.read(info.name).to(dtype=dtype, device=device))
                continue
            tensor = tf.read(info.name).to(dtype=dtype, device=device)
            if name in ("wte.weight", "wpe.weight", "lm_head.weight"):
                _assign(model, name.removesuffix(".weight"), tensor)
            else:
                _assign(model, name, tensor)
    except (TensorFileError, OSError) as exc:
        raise CheckpointError(f"cannot read the weights in {folder}: {exc}") from None
    return model.eval().requires_grad_(False)


def _is_linear(name: str, info: TensorInfo) -> bool:
    """Whether `name` is a block's Conv1D (in, out) weight matrix."""
    return name.startswith("h.") and len(info.shape) == 2


def _largest_matrix(tensors: dict[str, tuple[TensorFile, TensorInfo]]) -> int:
    return max(math.prod(i.shape) for n, (_, i) in tensors.items() if _is_linear(n, i))


def _arena(tensors: dict[str, tuple[TensorFile, TensorInfo]], layout: Layout) -> Arena:
    """One huge-paged allocation for every matrix gpt2cli's kernels will stream (native.Arena):
    the block matrices and the embedding (and an untied head) in the held dtype (int4 block
    matrices: two weights a byte, rows padded as `native.int4_sizes` says)."""
    size = layout.held_dtype.itemsize
    names = ("wte.weight", "lm_head.weight")
    nbytes = []
    for name, (_, info) in tensors.items():
        if _is_linear(name, info) and layout.linear == "int4":
            n_in, n_out = info.shape  # Conv1D (in, out)
            nbytes.append(n_out * int4_sizes(n_in)[0] // 2)
        elif _is_linear(name, info) or name in names:
            nbytes.append(math.prod(info.shape) * size)
    return Arena(sum((n + 63) // 64 * 64 for n in nbytes))


def _pack_linear(
    model: GPT2,
    tensors: dict[str, tuple[TensorFile, TensorInfo]],
    dtype: torch.dtype,
    arena: Arena | None = None,
) -> None:
    """Transpose and pack every block matrix, on as many threads as torch may use (at most
    MAX_LOAD_THREADS), each single-threaded inside: a matrix's bytes are mapped from the file
    (`TensorFile.mapped`), transposed into one of the threads' reused buffers (so freed
    temporaries do not pile up in the C heap and inflate resident memory) and packed from there.
    Both steps are torch ops that release the GIL. Why threads: the transposing copy runs on one
    core, and packing spends as long again; GPT-2 small's 48 matrices took 0.53 s in turn and
    0.29-0.34 s on 2 threads here (2-core Zen 3), of a 4 s cold start."""
    jobs = [
        (model.get_submodule(name.removesuffix(".weight")), tf, info)
        for name, (tf, info) in tensors.items()
        if _is_linear(name, info)
    ]
    threads = torch.get_num_threads()
    workers = max(1, min(threads, MAX_LOAD_THREADS, len(jobs)))
    largest = _largest_matrix(tensors)
    buffers: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
    for _ in range(workers):
        buffers.put(torch.empty(largest, dtype=dtype))

    def pack(job: tuple[nn.Module, TensorFile, TensorInfo]) -> None:
        module, tf, info = job
        assert isinstance(module, Linear)
        scratch = buffers.get()
        try:
            with tf.mapped(info.name) as conv1d:
                module.set_weight(conv1d, scratch, arena)
                del conv1d  # so that the map can be closed as the block ends
        finally:
            buffers.put(scratch)

    if workers == 1:
        for job in jobs:
            pack(job)
        return
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        for _ in pool.map(pack, jobs):
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, the rest is not started
        torch.set_num_threads(threads)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, attr, nn.Parameter(tensor, requires_grad=False))


def _load_quantized_embedding(
    model: GPT2,
    name: str,
    tf: TensorFile,
    info: TensorInfo,
    layout: Layout,
    scratch: torch.Tensor | None,
    arena: Arena | None = None,
) -> None:
    """The embedding (and tied head) or the untied head of a quantized layout, read a block of
    rows at a time through `scratch` (float32), so no float32 copy of the whole (vocab, d)
    matrix is ever held; a 16-bit head is packed a block at a time too."""
    vocab, d = info.shape
    int8 = layout.linear in ("int8", "int4")  # int4 keeps an int8 embedding and head
    keep = name == "wte.weight"  # looked up by token id; an untied lm_head only multiplies
    rows = empty((vocab, d), layout.held_dtype, arena)
    scale = torch.empty(vocab) if int8 else None
    blocks: list[Fp16Matrix] = []
    step = 4096 if scratch is None else max(1, scratch.numel() // d)
    for r0 in range(0, vocab, step):
        r1 = min(vocab, r0 + step)
        block = tf.read_rows(info.name, r0, r1)
        if scratch is not None:
            block = scratch[: (r1 - r0) * d].view(r1 - r0, d).copy_(block)
        if scale is not None:
            rows[r0:r1], scale[r0:r1] = quantize_rows(block, layout.int8_max)
        else:
            rows[r0:r1] = block  # converted to the held dtype
            if not layout.native:
                blocks.append(Fp16Matrix(rows[r0:r1], False))  # rounded as the rows are
    head: QuantizedMatrix | BlockedHead | None = None
    if name == "lm_head.weight" or model.config.tie_word_embeddings:
        if scale is None:  # the native kernels read the embedding's own rows, as for int8
            head = NativeDenseMatrix(rows) if layout.native else BlockedHead(blocks)
        else:
            head = NativeInt8Matrix(rows, scale) if layout.native else Int8Matrix(rows, scale)
    if keep:
        model.set_quantized_embedding(rows, scale, head)
    else:
        model.head_matrix = head
