"""Our GPT-2 against transformers' GPT2LMHeadModel (the oracle) on the same random checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gpt2cli.errors import CheckpointError
from gpt2cli.model import native
from gpt2cli.model.checkpoint import load_checkpoint
from gpt2cli.model.linear import Layout, choose_layout, fbgemm_available, onednn_available
from gpt2cli.runtime.generate import complete
from gpt2cli.runtime.loader import load_model
from gpt2cli.types import LoadOptions, SamplingParams
from tests.support.checkpoints import build_checkpoint, derive_checkpoint


def reference(folder: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()


@pytest.fixture(params=["hub", "transformers"])
def checkpoint(request, tiny_checkpoint, tiny_checkpoint_transformers) -> Path:
    return tiny_checkpoint if request.param == "hub" else tiny_checkpoint_transformers


LAYOUTS = [Layout("out_in", False), Layout("in_out", True), Layout("out_in", True)]
if onednn_available():
    LAYOUTS += [Layout("onednn", True), Layout("onednn", False)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: f"{x.linear}-head_in_out={x.head_in_out}")
def test_logits_match_transformers(checkpoint: Path, layout: Layout) -> None:
    ours = load_checkpoint(checkpoint, layout=layout)
    assert ours.layout == layout
    ref = reference(checkpoint)
    ids = torch.randint(
        0, ours.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0)
    )
    logits = ours(ids, ours.new_cache(3), all_logits=True)
    with torch.no_grad():
        expected = ref(ids).logits
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= 1e-4
    assert expected.std() > 0.5  # the checkpoint is not near-uniform: the check has teeth


@pytest.fixture(scope="session")
def untied_checkpoint(tmp_path_factory) -> Path:
    """tie_word_embeddings: false: the output head is lm_head.weight, not wte."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-untied"
    return build_checkpoint(folder, layout="transformers", untied_head=True, seed=2)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: f"{x.linear}-head_in_out={x.head_in_out}")
def test_untied_head_matches_transformers_in_every_layout(untied_checkpoint, layout) -> None:
    ours = load_checkpoint(untied_checkpoint, layout=layout)
    ids = torch.randint(
        0, ours.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected = reference(untied_checkpoint)(ids).logits
    assert (ours(ids, ours.new_cache(2), all_logits=True) - expected).abs().max().item() <= 1e-4


def test_untied_head_without_lm_head_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = derive_checkpoint(
        tiny_checkpoint, tmp_path / "c", config={"tie_word_embeddings": False}
    )
    with pytest.raises(CheckpointError, match="tie_word_embeddings: false.*lm_head.weight"):
        load_checkpoint(folder)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reorder_and_upcast_attn_in_half_precision(tiny_checkpoint, tmp_path, dtype) -> None:
    """reorder_and_upcast_attn: attention in float32 under a half dtype, as transformers' eager
    path computes it; close to the float32 model (which it leaves unchanged)."""
    config = {"reorder_and_upcast_attn": True, "scale_attn_by_inverse_layer_idx": True}
    folder = derive_checkpoint(tiny_checkpoint, tmp_path / "c", config=config)
    full, half = load_checkpoint(folder), load_checkpoint(folder, dtype=dtype)
    assert half.h[0].attn.upcast
    ids = torch.arange(20).view(1, 20)
    a = full(ids, full.new_cache(1), all_logits=True)
    b = half(ids, half.new_cache(1), all_logits=True)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_greedy_50_tokens_match_transformers_generate(checkpoint: Path) -> None:
    lm = load_model(checkpoint, device="cpu")
    prompt = "Once upon a time"
    ids = lm.tokenizer.encode(prompt)
    ref = reference(checkpoint)
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([ids]),
            max_new_tokens=50,
            min_new_tokens=50,
            do_sample=False,
            pad_token_id=lm.tokenizer.eot_id,
        )
    expected = out[0, len(ids) :].tolist()
    assert len(set(expected)) > 5, "reference output degenerate: weights too small"
    (ours,) = complete(lm, prompt, SamplingParams(temperature=0), max_tokens=50, ignore_eos=True)
    assert ours.token_ids == expected


def test_kv_cache_equals_full_recompute(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint)
    ids = torch.randint(
        0, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1)
    )
    cache = model.new_cache(2)
    stepped = [model(ids[:, :10], cache)]
    for t in range(10, 30):
        stepped.append(model(ids[:, t : t + 1], cache))
    for t, logits in enumerate(stepped[1:], start=10):
        full = model(ids[:, : t + 1], model.new_cache(2))
        assert (logits - full).abs().max().item() <= 1e-4
    # a multi-token chunk after cached context (causal mask offset by the past)
    cache = model.new_cache(2)
    model(ids[:, :12], cache)
    chunk = model(ids[:, 12:], cache, all_logits=True)
    full = model(ids, model.new_cache(2), all_logits=True)
    assert (chunk - full[:, 12:]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(tiny_checkpoint: Path, dtype: torch.dtype) -> None:
    full = load_checkpoint(tiny_checkpoint)
    half = load_checkpoint(tiny_checkpoint, dtype=dtype)
    # 16-bit weights held by matrix objects compute in float32 (tests/test_quantized.py)
    assert half.wpe.dtype == (torch.float32 if half.layout.in_matrices else dtype)
    ids = torch.arange(20).view(1, 20)
    a = full(ids, full.new_cache(1), all_logits=True)
    b = half(ids, half.new_cache(1), all_logits=True)
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_window_overflow_is_refused(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint)
    n = model.config.n_positions
    with pytest.raises(ValueError, match="window"):
        model(torch.zeros(1, n + 1, dtype=torch.long), model.new_cache(1))


def test_static_step_for_cuda_graphs_equals_eager(tiny_checkpoint: Path) -> None:
    """The CUDA-graph path's logic (fixed shapes, masked full-window attention, device-side
    positions) runs on CPU too: it must give the eager path's logits and greedy tokens."""
    from gpt2cli.runtime.steppers import EagerStepper, GraphStepper

    model = load_checkpoint(tiny_checkpoint)
    prompt = torch.tensor([5, 17, 42, 7])
    eager, static = EagerStepper(model, 2), GraphStepper(model, 2, capture=False)
    for stepper in (eager, static):
        stepper.prefill(0, prompt), stepper.prefill(1, prompt)
    a = b = model(prompt.view(1, -1), model.new_cache(1)).repeat(2, 1)
    length = len(prompt)
    for _ in range(model.config.n_positions - len(prompt)):
        assert (a - b).abs().max().item() <= 1e-4
        nxt = a.argmax(-1)
        a, b = eager.decode(nxt, [length] * 2), static.decode(nxt, [length] * 2)
        length += 1
    assert length == model.config.n_positions
    with pytest.raises(ValueError, match="full"):
        static.decode(nxt, [length] * 2)


def test_engine_uses_static_decoder_when_asked(tiny_checkpoint: Path) -> None:
    lm = load_model(tiny_checkpoint, device="cpu")
    eager = complete(lm, "Hi there", SamplingParams(seed=4), max_tokens=30, ignore_eos=True)
    lm.cuda_graphs = True  # on CPU: the static-shape step without capture
    static = complete(lm, "Hi there", SamplingParams(seed=4), max_tokens=30, ignore_eos=True)
    assert static[0].token_ids == eager[0].token_ids


def test_default_layout_per_device_and_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    packed = Layout("onednn") if onednn_available() else Layout("in_out", head_in_out=True)
    if native.available():  # one sequence: gpt2cli's kernels for every precision
        assert choose_layout(cpu, torch.float32) == Layout("f32", native=True)
        assert choose_layout(cpu, torch.bfloat16) == Layout("fp16", round_bf16=True, native=True)
        sixteen = Layout("fp16", native=True)
    else:
        assert choose_layout(cpu, torch.float32) == packed
        sixteen = Layout("fp16") if fbgemm_available() else Layout("out_in", False)
    assert choose_layout(cpu, torch.float32, rows=16) == dataclasses.replace(packed, rows=16)
    assert choose_layout(cpu, torch.bfloat16).head_in_out is False
    assert choose_layout(cpu, torch.float16) == sixteen
    assert choose_layout(cuda, torch.bfloat16) == Layout("out_in", False)


@pytest.mark.skipif(not onednn_available(), reason="no oneDNN prepacking in this torch")
def test_onednn_packed_for_several_rows(tiny_checkpoint: Path) -> None:
    """Weights packed for batched products compute what those packed for one row do, at one
    row and at four; the loader packs for the batch its caller will decode."""
    assert Layout("onednn", rows=4).onednn_pack_rows == 8
    assert Layout("onednn").onednn_pack_rows == 1
    ids = torch.arange(24).view(1, 24)
    for batch in (1, 4):
        outs = []
        for rows in (1, 4):
            m = load_checkpoint(tiny_checkpoint, layout=Layout("onednn", rows=rows))
            prompt = ids.repeat(batch, 1)
            cache = m.new_cache(batch)
            m(prompt, cache)
            outs.append(m(torch.full((batch, 1), 7), cache))
        assert torch.allclose(outs[0], outs[1], atol=1e-4)
    lm = load_model(LoadOptions(str(tiny_checkpoint), device="cpu", dtype="float32", batch=16))
    assert lm.model.layout.onednn_pack_rows == 8
    assert "prepacked for 8 row(s)" in lm.describe()


@pytest.mark.parametrize("batch", [1, 4])
def test_bfloat16_layouts_agree(tiny_checkpoint: Path, batch: int) -> None:
    """Every bf16 layout computes the same thing (up to bf16 rounding) at batch 1 and 4."""
    ids = torch.arange(24).view(1, 24).repeat(batch, 1)
    outs = []
    for layout in [Layout("out_in", False)] + (
        [Layout("onednn", False)] if onednn_available(torch.bfloat16) else []
    ):
        m = load_checkpoint(tiny_checkpoint, dtype=torch.bfloat16, layout=layout)
        outs.append(m(ids, m.new_cache(batch), all_logits=True))
    for other in outs[1:]:
        cos = torch.nn.functional.cosine_similarity(outs[0].flatten(), other.flatten(), dim=0)
        assert cos > 0.999
