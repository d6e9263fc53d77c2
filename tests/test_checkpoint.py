"""Checkpoint loading: both key layouts, shards, and a specific error for each broken folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2cli.errors import CheckpointError
from gpt2cli.model.checkpoint import load_checkpoint


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def logits(folder: Path) -> torch.Tensor:
    model = load_checkpoint(folder)
    return model(torch.arange(8).view(1, 8), model.new_cache(1))


def test_sharded_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = copy(tiny_checkpoint, tmp_path / "sharded")
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, folder / shard, metadata={"format": "pt"})
        weight_map |= {k: shard for k in part}
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.allclose(logits(folder), logits(tiny_checkpoint), atol=1e-5)


def test_mask_buffers_of_any_dtype_are_ignored(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = copy(tiny_checkpoint, tmp_path / "f16mask")
    tensors = load_file(folder / "model.safetensors")
    for k in [k for k in tensors if k.endswith(".attn.bias")]:
        tensors[k] = tensors[k].to(torch.float16)
    save_file(tensors, folder / "model.safetensors")
    assert torch.allclose(logits(folder), logits(tiny_checkpoint), atol=1e-5)


def test_float16_checkpoint_loads_as_float32(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = copy(tiny_checkpoint, tmp_path / "f16")
    tensors = load_file(folder / "model.safetensors")
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
        folder / "model.safetensors",
    )
    model = load_checkpoint(folder)
    assert model.wpe.dtype == torch.float32


def broken(tiny_checkpoint: Path, tmp_path: Path, how: str) -> Path:
    folder = copy(tiny_checkpoint, tmp_path / how)
    weights = folder / "model.safetensors"
    if how == "no-config":
        (folder / "config.json").unlink()
    elif how == "no-weights":
        weights.unlink()
    elif how == "only-bin":
        weights.rename(folder / "pytorch_model.bin")
    elif how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "wrong-shape":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["n_embd"] = 32
        (folder / "config.json").write_text(json.dumps(cfg))
    elif how == "not-gpt2":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"] = "llama"
        (folder / "config.json").write_text(json.dumps(cfg))
    elif how == "missing-tensor":
        tensors = load_file(weights)
        del tensors["h.1.mlp.c_fc.weight"]
        save_file(tensors, weights)
    elif how == "zero-heads":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["n_head"] = 0
        (folder / "config.json").write_text(json.dumps(cfg))
    elif how == "bad-json":
        (folder / "config.json").write_text("{not json")
    elif how == "absurd-depth":  # listing its 1.2e9 tensor names alone took minutes
        cfg = json.loads((folder / "config.json").read_text())
        cfg["n_layer"] = 100_000_000
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no-config", "no config.json"),
        ("no-weights", "no model.safetensors"),
        ("only-bin", "pytorch_model.bin (a pickle"),
        ("truncated", "truncated"),
        ("wrong-shape", "has shape"),
        ("not-gpt2", "'llama' model, not GPT-2"),
        ("missing-tensor", "lacks tensor 'h.1.mlp.c_fc.weight'"),
        ("bad-json", "not valid JSON"),
        ("zero-heads", "must be positive"),
        ("absurd-depth", "config.json says n_layer 100000000, but the weights hold 2 layers"),
    ],
)
def test_broken_checkpoints_give_specific_errors(
    tiny_checkpoint: Path, tmp_path: Path, how: str, message: str
) -> None:
    folder = broken(tiny_checkpoint, tmp_path, how)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("layout", ["onednn", "int8"])
def test_packing_on_several_threads_matches_one(tiny_checkpoint: Path, layout: str) -> None:
    """The block matrices are transposed and packed by as many threads as torch may use: the
    model is the same as one packed on a single thread, and torch's thread count is left as
    it was."""
    from gpt2cli.model.linear import Layout, choose_layout, onednn_available

    if layout == "onednn" and not onednn_available():
        pytest.skip("this torch has no oneDNN packing")
    spec = (
        Layout("onednn")
        if layout == "onednn"
        else choose_layout(torch.device("cpu"), torch.float32, int8=True)
    )
    ids = torch.arange(24).view(1, 24)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            model = load_checkpoint(tiny_checkpoint, layout=spec)
            assert torch.get_num_threads() == threads
            outs.append(model(ids, model.new_cache(1), all_logits=True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_mapped_tensors_match_reads(tmp_path: Path) -> None:
    """`TensorFile.mapped` gives a tensor's bytes as `read` does, also for a tensor whose
    offset is not a multiple of its element size (read instead of mapped) and an empty one,
    and unmaps them afterwards."""
    from gpt2cli.model.tensorfile import TensorFile

    # written by hand: safetensors' writer orders tensors so that none is misaligned
    tensors = {
        "a": torch.arange(3, dtype=torch.int8),  # 3 bytes: the offsets after it are odd
        "b": torch.randn(40, 7),
        "c": torch.empty(0, 5),
        "d": torch.randn(600, 33).half(),
    }
    codes = {torch.int8: "I8", torch.float32: "F32", torch.float16: "F16"}
    header, data = {}, b""
    for name, t in tensors.items():
        raw = bytes(t.contiguous().view(torch.uint8).flatten().tolist())
        offsets = [len(data), len(data) + len(raw)]
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": offsets}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    tf = TensorFile(path)
    for name, expected in tensors.items():
        with tf.mapped(name) as got:
            assert got.dtype == expected.dtype and torch.equal(got, expected), name
            assert torch.equal(tf.read(name), expected)
    maps = Path("/proc/self/maps")
    if maps.is_file():
        assert str(path) not in maps.read_text()
