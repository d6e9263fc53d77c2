"""Fine-tuned GPT-2 checkpoints against transformers, issue 12 (continued): variants refused
although transformers runs them (case 9); a review of every GPT2Config key, so that no key is
silently ignored again; generation_config.json's sampling defaults; special tokens from the
tokenizer files. Helpers and cases 1-8 are in test_compat.py.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gpt2cli import SamplingParams, complete
from tests.support.checkpoints import build_checkpoint, derive_checkpoint, reference_model
from tests.support.cli import gpt2
from tests.test_compat import EOT_999, GREEDY, PROMPT, cli_json, hf_logits, logits_of, ours

IDS = list(range(3, 43))  # 40 token ids, for the logits comparisons


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("compat") / "config-base", seed=9)


@pytest.fixture(scope="session")
def base_logits(base: Path) -> torch.Tensor:
    return hf_logits(reference_model(base), IDS)


def load_noting(folder: Path):
    """Load with gpt2cli: (the model, or None when refused; what the loader said: its refusal
    message or its warnings). A crash that is not a user-facing error propagates."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            lm = ours(folder)
        except Exception as exc:
            if not any(c.__name__ == "Gpt2Error" for c in type(exc).__mro__):
                raise
            return None, str(exc)
    return lm, " ".join(str(w.message) for w in caught)


def max_diff(lm, ref) -> float:
    return (logits_of(lm, IDS) - hf_logits(ref, IDS)).abs().max().item()


# -- 9. what transformers runs, we run ------------------------------------------------------

ACTIVATIONS = ("gelu", "relu", "silu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")
RUNS_IN_TRANSFORMERS = {
    "scale_attn_by_inverse_layer_idx": {"scale_attn_by_inverse_layer_idx": True},
    "reorder_and_upcast_attn": {"reorder_and_upcast_attn": True},
    "both (Mistral-style GPT-2)": {
        "scale_attn_by_inverse_layer_idx": True,
        "reorder_and_upcast_attn": True,
    },
    **{f"activation {name}": {"activation_function": name} for name in ACTIVATIONS},
}


@pytest.mark.parametrize("variant", list(RUNS_IN_TRANSFORMERS))
def test_variant_transformers_runs_loads_and_matches(base: Path, tmp_path: Path, variant: str):
    folder = derive_checkpoint(base, tmp_path / "ckpt", config=RUNS_IN_TRANSFORMERS[variant])
    # eager attention: the only path where transformers applies reorder_and_upcast_attn
    ref = reference_model(folder, attn_implementation="eager")
    lm, said = load_noting(folder)
    assert lm is not None, f"refused what transformers runs: {said}"
    assert max_diff(lm, ref) <= 1e-4


@pytest.fixture(scope="session")
def saved_with_cross_attention(base: Path, tmp_path_factory) -> Path:
    """add_cross_attention: true, saved by transformers itself: the file holds crossattention
    and ln_cross_attn weights, which a decoder-only forward never uses."""
    root = tmp_path_factory.mktemp("compat")
    src = derive_checkpoint(base, root / "src", config={"add_cross_attention": True})
    dest = root / "saved"
    reference_model(src).save_pretrained(str(dest))
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (dest / name).write_bytes((src / name).read_bytes())
    return dest


def test_cross_attention_checkpoint_loads_and_matches(saved_with_cross_attention: Path) -> None:
    folder = saved_with_cross_attention
    ref = reference_model(folder)
    assert any("crossattention" in name for name, _ in ref.named_parameters())
    lm, said = load_noting(folder)
    assert lm is not None, f"refused what transformers runs: {said}"
    assert max_diff(lm, ref) <= 1e-4


def test_unknown_activation_is_refused_by_name(base: Path, tmp_path: Path) -> None:
    folder = derive_checkpoint(base, tmp_path / "ckpt", config={"activation_function": "swiglu"})
    with pytest.raises(KeyError):  # transformers does not run it either
        reference_model(folder)
    lm, said = load_noting(folder)
    assert lm is None and "activation_function" in said and "swiglu" in said


def test_every_transformers_activation_runs_or_is_refused_by_name(base: Path, tmp_path: Path):
    from transformers.activations import ACT2CLS

    wrong = []
    for name in sorted(ACT2CLS):
        folder = derive_checkpoint(base, tmp_path / name, config={"activation_function": name})
        lm, said = load_noting(folder)
        if lm is None:
            if "activation_function" not in said or name not in said:
                wrong.append(f"{name}: refused without naming key and value: {said}")
        elif (diff := max_diff(lm, reference_model(folder))) > 1e-4:
            wrong.append(f"{name}: loaded, logits off by {diff:.3g}")
    assert not wrong, "\n".join(wrong)


# -- every GPT2Config key: does it change the logits, and do we follow? ---------------------

SHAPE = "sizes the weights"  # checkpoint built to it; ours must match transformers
LOGITS = "changes the logits"  # ours must match transformers, or refuse/warn naming the key
SAME = "leaves the logits alone"  # checked against transformers; ours must load and match
PRECISION = "load dtype"  # transformers 5 loads the weights in it; ours: --dtype
IDENTITY = "another architecture"  # ours must refuse, naming the key


@dataclass(frozen=True)
class Review:
    verdict: str
    value: object  # a non-default value to try
    why: str
    build: dict | None = None  # build_checkpoint arguments, when the weights must follow
    oracle: dict | None = None  # from_pretrained arguments transformers needs to run at all


KEYS: dict[str, Review] = {
    # sizes
    "vocab_size": Review(SHAPE, 1100, "rows of wte/lm_head", {"vocab_size": 1100}),
    "n_positions": Review(SHAPE, 64, "rows of wpe: the window", {"n_positions": 64}),
    "n_embd": Review(SHAPE, 32, "the width", {"n_embd": 32}),
    "n_layer": Review(SHAPE, 3, "the blocks", {"n_layer": 3}),
    "n_inner": Review(SHAPE, 96, "the MLP width", {"config": {"n_inner": 96}}),
    # the forward pass
    "n_head": Review(LOGITS, 2, "same weights split into other heads"),
    "activation_function": Review(LOGITS, "relu", "the MLP's ACT2FN (see the activation tests)"),
    "layer_norm_epsilon": Review(LOGITS, 0.5, "eps of every LayerNorm"),
    "scale_attn_weights": Review(LOGITS, False, "scores scaled by 1/sqrt(head_dim) or not"),
    "scale_attn_by_inverse_layer_idx": Review(LOGITS, True, "scores also / (layer index + 1)"),
    "reorder_and_upcast_attn": Review(SAME, True, "float32 scores (eager only): numerics only"),
    "tie_word_embeddings": Review(
        LOGITS,
        False,
        "lm_head.weight from the file, not wte",
        {"layout": "transformers", "untied_head": True},
    ),  # fmt: skip
    "add_cross_attention": Review(SAME, True, "cross-attention runs only on encoder states"),
    # training and initialisation only
    "resid_pdrop": Review(SAME, 0.5, "dropout: off in eval"),
    "embd_pdrop": Review(SAME, 0.5, "dropout: off in eval"),
    "attn_pdrop": Review(SAME, 0.5, "dropout: off in eval"),
    "initializer_range": Review(SAME, 1.0, "init of weights the file lacks"),
    "summary_type": Review(SAME, "mean", "GPT2DoubleHeadsModel's choice head only"),
    "summary_use_proj": Review(SAME, False, "GPT2DoubleHeadsModel's choice head only"),
    "summary_activation": Review(SAME, "tanh", "GPT2DoubleHeadsModel's choice head only"),
    "summary_proj_to_labels": Review(SAME, False, "GPT2DoubleHeadsModel's choice head only"),
    "summary_first_dropout": Review(SAME, 0.5, "GPT2DoubleHeadsModel's choice head only"),
    "id2label": Review(SAME, {"0": "NEG", "1": "POS", "2": "MID"}, "classification heads only"),
    "label2id": Review(SAME, {"NEG": 0, "POS": 1, "MID": 2}, "classification heads only"),
    "problem_type": Review(SAME, "single_label_classification", "classification heads only"),
    # generation: the forward pass ignores them; test_compat.py checks decoding uses them
    "bos_token_id": Review(SAME, 5, "start of unconditional samples and of score"),
    "eos_token_id": Review(SAME, 5, "end tokens"),
    "pad_token_id": Review(SAME, 5, "padding of batched prompts: ours share one prompt"),
    "use_cache": Review(SAME, False, "KV cache or recompute: same logits"),
    # plumbing and metadata
    "dtype": Review(PRECISION, "bfloat16", "precision, not the model"),
    "output_hidden_states": Review(SAME, True, "extra outputs"),
    "output_attentions": Review(SAME, True, "extra outputs"),
    "return_dict": Review(
        SAME,
        False,
        "output container; GPT2LMHeadModel itself then fails (tuple inside)",
        oracle={"return_dict": True},
    ),  # fmt: skip
    "chunk_size_feed_forward": Review(SAME, 4, "not used by GPT-2"),
    "is_encoder_decoder": Review(SAME, True, "not read by GPT2LMHeadModel's forward"),
    "architectures": Review(SAME, ["GPT2Model"], "metadata"),
    "_name_or_path": Review(SAME, "somewhere/else", "metadata"),
    "transformers_version": Review(SAME, "4.0.0", "metadata"),
    "model_type": Review(IDENTITY, "gpt_neo", "not GPT-2"),
    # not in GPT2Config().to_dict(), found in older config.json files
    "n_ctx": Review(SAME, 64, "older name of n_positions; transformers 5 ignores it"),
    "task_specific_params": Review(
        SAME, {"text-generation": {"do_sample": True, "max_length": 50}}, "no longer read"
    ),
}


def test_every_gpt2config_key_is_reviewed() -> None:
    import transformers

    missing = sorted(set(transformers.GPT2Config().to_dict()) - set(KEYS))
    assert not missing, f"decide what these GPT2Config keys do and add them to KEYS: {missing}"


@pytest.mark.parametrize("key", list(KEYS))
def test_config_key(key: str, base: Path, base_logits: torch.Tensor, tmp_path: Path) -> None:
    review = KEYS[key]
    if review.build is not None:
        folder = build_checkpoint(tmp_path / "ckpt", seed=9, **review.build)
    else:
        folder = derive_checkpoint(base, tmp_path / "ckpt", config={key: review.value})
    lm, said = load_noting(folder)
    if review.verdict == IDENTITY:
        assert lm is None and key in said, said
        return
    ref = reference_model(folder, dtype=torch.float32, **(review.oracle or {}))
    if review.build is None:  # the table's verdict, checked against transformers itself
        changed = (hf_logits(ref, IDS) - base_logits).abs().max().item() > 1e-5
        assert changed == (review.verdict == LOGITS), f"transformers disagrees about {key}"
    if review.verdict == LOGITS and key in said:
        return  # refused, or loaded with a warning naming the key
    assert lm is not None, f"{key}={review.value!r} refused, but transformers runs it: {said}"
    diff = max_diff(lm, ref)
    assert diff <= 1e-4, f"{key}={review.value!r} silently ignored: logits off by {diff:.3g}"


# -- generation_config.json: the defaults where no flag is given ----------------------------


def with_generation_config(base: Path, dest: Path, **values) -> Path:
    config = {**EOT_999, **values}
    return derive_checkpoint(base, dest, files={"generation_config.json": config})


@pytest.mark.parametrize(("flags", "n"), [((), 7), (("-n", "3"), 3)])
def test_generation_config_greedy_and_max_new_tokens(base: Path, tmp_path: Path, flags, n):
    folder = with_generation_config(base, tmp_path / "c", do_sample=False, max_new_tokens=7)
    expected = complete(ours(base), PROMPT, GREEDY, max_tokens=n)[0]
    assert expected.finish_reason == "length"
    record = cli_json("generate", folder, *flags, PROMPT)
    assert (record["completion_tokens"], record["text"]) == (n, expected.text)


SAMPLING = {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "repetition_penalty": 1.3}


def test_generation_config_sampling_values(base: Path, tmp_path: Path) -> None:
    folder = with_generation_config(base, tmp_path / "c", do_sample=True, **SAMPLING)
    lm = ours(base)
    expected = complete(lm, PROMPT, SamplingParams(seed=3, **SAMPLING), max_tokens=20)[0]
    assert expected.text != complete(lm, PROMPT, SamplingParams(seed=3), max_tokens=20)[0].text
    record = cli_json("generate", folder, "-s", "3", "-n", "20", PROMPT)
    assert record["text"] == expected.text


def test_flags_override_generation_config_and_verbose_says_so(base: Path, tmp_path: Path):
    folder = with_generation_config(base, tmp_path / "c", do_sample=True, **SAMPLING)
    # flags equal to the built-in defaults still win over generation_config.json
    params = SamplingParams(seed=3, **(SAMPLING | {"temperature": 1.0, "top_k": 40}))
    lm = ours(base)
    expected = complete(lm, PROMPT, params, max_tokens=20)[0]
    flags_ignored = complete(lm, PROMPT, SamplingParams(seed=3, **SAMPLING), max_tokens=20)[0]
    assert expected.text != flags_ignored.text
    args = ("-s", "3", "-n", "20", "-t", "1.0", "-k", "40", "--json", "--verbose", PROMPT)
    proc = gpt2("generate", "-m", str(folder), "--device", "cpu", *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["text"] == expected.text
    for word in ("generation_config.json", "0.9", "1.3", "--top-k", "--temperature"):
        assert word in proc.stderr, f"--verbose does not say where values came from: {word!r}"


# generation_config.json keys that change what transformers generates and that gpt2cli has no
# flag for: each must be applied or named on stderr (with --verbose), never dropped silently.
# (do_sample, temperature, top_k, top_p, repetition_penalty, max_new_tokens: the tests above;
# bos_token_id, eos_token_id: test_compat.py.)
UNSUPPORTED_GENERATION = {
    "max_length": 12,
    "min_new_tokens": 5,
    "num_beams": 4,
    "no_repeat_ngram_size": 2,
    "bad_words_ids": [[5]],
    "suppress_tokens": [5],
    "typical_p": 0.5,
    "min_p": 0.1,
    "epsilon_cutoff": 0.001,
    "eta_cutoff": 0.001,
    "forced_eos_token_id": 999,
    "stop_strings": ["the"],
    "num_return_sequences": 2,
}


def test_generation_config_keys_are_applied_or_named(base: Path, tmp_path: Path) -> None:
    folder = with_generation_config(base, tmp_path / "c", **UNSUPPORTED_GENERATION)
    args = ("-n", "3", "-s", "1", "--verbose", PROMPT)
    proc = gpt2("generate", "-m", str(folder), "--device", "cpu", *args)
    assert proc.returncode == 0, proc.stderr
    silent = [key for key in UNSUPPORTED_GENERATION if key not in proc.stderr]
    assert not silent, f"generation_config.json keys ignored without a word: {silent}"


# -- special tokens from tokenizer_config.json / special_tokens_map.json --------------------


def special(content: str) -> dict:
    return {"content": content, "special": True, "lstrip": False, "rstrip": False,
            "normalized": False, "single_word": False}  # fmt: skip


@pytest.fixture(scope="session", params=["json", "vocab_merges"])
def tokenizer_base(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compat") / f"tok-{request.param}"
    return build_checkpoint(
        folder, tokenizer=request.param, vocab_size=1002, tokenizer_vocab_size=1000, seed=11,
        config=EOT_999, generation_config=EOT_999,
    )  # fmt: skip


def vocab_with_end(folder: Path) -> str:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    return json.dumps(vocab | {"<|end|>": 1000}, ensure_ascii=False)


TOKENIZER_FILES = {
    "tokenizer_config.json added_tokens_decoder": lambda folder: {
        "tokenizer_config.json": {
            "added_tokens_decoder": {"1000": special("<|end|>"), "1001": special("<|user|>")},
            "eos_token": "<|end|>",
        }
    },
    "special_tokens_map.json naming a vocab.json entry": lambda folder: {
        "vocab.json": vocab_with_end(folder),
        "special_tokens_map.json": {"eos_token": "<|end|>"},
    },
    "tokenizer_config.json add_prefix_space": lambda folder: {
        "tokenizer_config.json": {"add_prefix_space": True}
    },
}
TEXTS = ["Hi<|user|> there<|end|>x", "<|endoftext|><|end|>\n<|user|>", "Hello world"]


@pytest.mark.parametrize("case", list(TOKENIZER_FILES))
def test_tokenizer_files_encode_like_transformers(tokenizer_base: Path, tmp_path: Path, case):
    import transformers

    files = TOKENIZER_FILES[case](tokenizer_base)
    folder = derive_checkpoint(tokenizer_base, tmp_path / "c", files=files)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    expected = [hf.encode(text, add_special_tokens=False) for text in TEXTS]
    assert expected != [ours(tokenizer_base).tokenizer.encode(t) for t in TEXTS]  # has teeth
    assert [ours(folder).tokenizer.encode(text) for text in TEXTS] == expected
