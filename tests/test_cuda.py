"""On a CUDA GPU (skipped where torch sees none): generation, CUDA graphs, context shift,
continuous batching and scoring give what the CPU path and transformers give. CI has no GPU;
these run on a machine that has one (`pytest tests/test_cuda.py`)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from gpt2cli.runtime.generate import complete
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.runtime.scoring import score_ids
from gpt2cli.runtime.steppers import EagerStepper, GraphStepper, make_stepper
from gpt2cli.types import GenerationConfig, SamplingParams
from tests.support.batching import decode_together
from tests.support.checkpoints import build_checkpoint
from tests.support.cli import gpt2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")

PROMPT = "Once upon a time, in a land far away,"
GREEDY = SamplingParams(temperature=0, seed=1)
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def oracle(tiny_checkpoint: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint)).eval()


@pytest.fixture(scope="module")
def gpu_lm(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(str(tiny_checkpoint), device="cuda", dtype="float32")


def assert_greedy(oracle, prompt_ids: list[int], tokens: list[int]) -> None:
    """Every token is transformers' argmax (float32, CPU) given all before it, or within float
    rounding of a tie with it (cuBLAS sums in another order)."""
    with torch.no_grad():
        logits = oracle(torch.tensor([prompt_ids + tokens[:-1]])).logits[0, len(prompt_ids) - 1 :]
    for j, token in enumerate(tokens):
        best = int(logits[j].argmax())
        assert token == best or logits[j, best] - logits[j, token] < 1e-3, (j, best, token)


def test_cli_generates_on_cuda_as_transformers_argmax(tiny_checkpoint: Path, oracle) -> None:
    """As a user types it: `gpt2 generate --device cuda`, greedy, JSON out; -v names the GPU."""
    args = ["-m", str(tiny_checkpoint), "--device", "cuda", "--dtype", "float32", "-t", "0"]
    proc = gpt2(
        "generate", *args, "-n", "40", "--ignore-eos", "--json", "--show-probs", "-v", PROMPT
    )
    assert proc.returncode == 0, proc.stderr
    assert "cuda" in proc.stderr
    record = json.loads(proc.stdout)
    assert record["completion_tokens"] == 40 and record["finish_reason"] == "length"
    ids = [t["id"] for t in record["tokens"]]
    prompt_ids = load_model(str(tiny_checkpoint), device="cpu").tokenizer.encode(PROMPT)
    assert_greedy(oracle, prompt_ids, ids)


@pytest.mark.parametrize("batch", [1, 3])
def test_captured_cuda_graphs_give_the_eager_logits(gpu_lm: LoadedModel, batch: int) -> None:
    """Replayed CUDA graphs (one per batch size) against the eager step, through the window."""
    model = gpu_lm.model
    prompt = torch.tensor([5, 17, 42, 7], device=CUDA)
    eager, graphs = EagerStepper(model, batch), GraphStepper(model, batch)
    assert graphs.capture
    for stepper in (eager, graphs):
        for row in range(batch):
            stepper.prefill(row, prompt)
    with torch.no_grad():
        a = model(prompt.view(1, -1), model.new_cache(1)).repeat(batch, 1)
    b, length = a, len(prompt)
    for _ in range(model.config.n_positions - len(prompt)):
        assert (a - b).abs().max().item() <= 1e-3
        nxt = a.argmax(-1)
        a = eager.decode(nxt, [length] * batch).clone()
        b = graphs.decode(nxt, [length] * batch).clone()
        length += 1
    assert set(graphs.graphs) == {batch}
    assert isinstance(make_stepper(model, 2), GraphStepper)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_sampled_tokens_on_cuda_batched_as_alone(gpu_lm: LoadedModel, graphs: bool) -> None:
    """Continuous batching on the GPU: each of three prompts gives, in one batch, the tokens it
    gives alone with its seed."""
    lm = dataclasses.replace(gpu_lm, cuda_graphs=graphs)
    prompts = ["Hi", PROMPT, "The quick brown fox jumps over the lazy dog and then it"]
    config = GenerationConfig(max_tokens=50, ignore_eos=True)
    batched = decode_together(lm, prompts, config)
    for i, prompt in enumerate(prompts):
        alone = complete(lm, prompt, SamplingParams(seed=10 + i), config)[0]
        assert batched[i].token_ids == alone.token_ids
        assert batched[i].completion_tokens == 50


def test_context_shift_on_cuda_with_graphs(tmp_path: Path) -> None:
    """Past a 64-token window on the GPU: the greedy tokens and shifts equal the CPU's."""
    folder = build_checkpoint(tmp_path / "window64", n_positions=64)
    config = GenerationConfig(max_tokens=130, samples=2, ignore_eos=True, context_shift=True)
    cpu = complete(load_model(str(folder), device="cpu"), PROMPT, GREEDY, config)
    gpu = complete(load_model(str(folder), device="cuda", dtype="float32"), PROMPT, GREEDY, config)
    for a, b in zip(cpu, gpu, strict=True):
        assert b.shifts == a.shifts >= 3
        same = sum(x == y for x, y in zip(a.token_ids, b.token_ids, strict=True))
        assert same >= 0.95 * len(a.token_ids)  # a near-tie may round the other way on a GPU


def test_bfloat16_on_cuda_tracks_float32(tiny_checkpoint: Path, gpu_lm: LoadedModel) -> None:
    """`--dtype` auto on CUDA picks bfloat16 where the GPU has it; its logits follow float32's."""
    half = load_model(str(tiny_checkpoint), device="cuda")
    assert half.model.wpe.dtype == torch.bfloat16
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 250]], device=CUDA)
    with torch.no_grad():
        a = gpu_lm.model(ids, gpu_lm.model.new_cache(1), all_logits=True).float()
        b = half.model(ids, half.model.new_cache(1), all_logits=True).float()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_score_on_cuda_equals_cpu(tiny_checkpoint: Path) -> None:
    """`gpt2 score --device cuda` with a sliding window: the CPU's perplexity (float32)."""
    text = "Once upon a time, in a land far away, there lived a curious student. " * 20
    common = ["score", "-m", str(tiny_checkpoint), "--json", "--stride", "48", "-"]
    cpu = gpt2(*common, "--device", "cpu", input=text, timeout=180)
    gpu = gpt2(*common, "--device", "cuda", "--dtype", "float32", input=text, timeout=180)
    assert cpu.returncode == 0 and gpu.returncode == 0, (cpu.stderr, gpu.stderr)
    a, b = json.loads(cpu.stdout), json.loads(gpu.stdout)
    assert a["tokens_scored"] == b["tokens_scored"] and a["windows"] == b["windows"] > 2
    assert b["nll"] == pytest.approx(a["nll"], abs=1e-4)
    lm = load_model(str(tiny_checkpoint), device="cuda", dtype="float32")
    logprobs, _ = score_ids(lm, lm.tokenizer.encode(text)[:100])
    assert all(math.isfinite(p) for p in logprobs[1:])
