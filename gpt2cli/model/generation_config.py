"""What a checkpoint folder says about generation, read as transformers reads it (no torch).

transformers' `from_pretrained` (`GenerationMixin.adjust_generation_fn`) takes
generation_config.json when the folder has one, and then that file alone decides (an
`eos_token_id` only in config.json does not count); without it, the generation keys of
config.json. `eos_token_id` may be an int
or a list; `do_sample` is false unless set. gpt2cli applies bos_token_id, eos_token_id and the
sampling values (temperature, top_k, top_p, repetition_penalty, max_new_tokens, do_sample: false
as greedy); every other key that would change what transformers generates is reported as
ignored, never dropped in silence.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpt2cli.errors import ParamError
from gpt2cli.types import GenerationDefaults, validate_param

GENERATION_CONFIG = "generation_config.json"

# generation_config.json key -> the SamplingParams / GenerationConfig field it sets
APPLIED = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}
# Keys that change what transformers generates, with the value that leaves it unchanged
# (transformers' `GenerationConfig._get_default_generation_params`; None: unset).
CHANGES_OUTPUT: dict[str, object] = {
    "min_length": 0,
    "min_new_tokens": None,
    "num_beams": 1,
    "num_return_sequences": 1,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "encoder_repetition_penalty": 1.0,
    "typical_p": 1.0,
    "min_p": None,
    "top_h": None,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "penalty_alpha": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "stop_strings": None,
    "max_time": None,
    "dola_layers": None,
    "token_healing": False,
}
# Keys that leave a decoder-only model's output alone: bookkeeping, caching, extra outputs,
# speculative decoding (same tokens), encoder-decoder models only, and beam-search settings
# (num_beams itself is in CHANGES_OUTPUT).
NO_EFFECT = frozenset(
    {
        "_from_model_config",
        "transformers_version",
        "pad_token_id",
        "decoder_start_token_id",
        "encoder_no_repeat_ngram_size",
        "use_cache",
        "cache_implementation",
        "cache_config",
        "max_cache_len",
        "compile_config",
        "disable_compile",
        "prefill_chunk_size",
        "continuous_batching_config",
        "low_memory",
        "output_attentions",
        "output_hidden_states",
        "output_scores",
        "output_logits",
        "return_dict_in_generate",
        "renormalize_logits",
        "remove_invalid_values",
        "is_assistant",
        "assistant_confidence_threshold",
        "assistant_early_exit",
        "assistant_lookbehind",
        "target_lookbehind",
        "num_assistant_tokens",
        "num_assistant_tokens_schedule",
        "prompt_lookup_num_tokens",
        "max_matching_ngram_size",
        "speculation_type",
        "use_mtp",
        "early_stopping",
        "length_penalty",
        "num_beam_groups",
        "diversity_penalty",
        "constraints",
        "force_words_ids",
    }
)
_IDS = ("bos_token_id", "eos_token_id")
GENERATION_KEYS = frozenset(
    {*APPLIED, *CHANGES_OUTPUT, *NO_EFFECT, *_IDS, "do_sample", "max_length"}
)


def read_generation_defaults(
    folder: Path, config: dict, vocab_size: int
) -> tuple[GenerationDefaults, list[str]]:
    """The GenerationDefaults of checkpoint `folder` (`config`: its config.json, parsed), and
    warnings about values that cannot be used (dropped: the built-in default applies)."""
    warnings: list[str] = []
    raw, source = _generation_file(folder, warnings)
    if raw is None:  # transformers then reads the generation keys of config.json
        raw, source = {k: v for k, v in config.items() if k in GENERATION_KEYS}, "config.json"
    raw = {k: v for k, v in raw.items() if v is not None}

    def token_id(value: object, key: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size:
            return value
        warnings.append(
            f"{source}: {key} {value!r} is not a token id of this model (0 to "
            f"{vocab_size - 1}): ignored"
        )
        return None

    bos = token_id(raw["bos_token_id"], "bos_token_id") if "bos_token_id" in raw else None
    eos = None
    if "eos_token_id" in raw:
        listed = raw["eos_token_id"]
        listed = listed if isinstance(listed, list) else [listed]
        eos = tuple(i for i in (token_id(v, "eos_token_id") for v in listed) if i is not None)

    values: dict[str, object] = {}
    for key, name in APPLIED.items():
        if key not in raw:
            continue
        try:
            validate_param(name, raw[key])
        except ParamError as exc:
            warnings.append(f"{source}: {key} {exc.detail}; the default applies")
            continue
        values[name] = raw[key]
    greedy = raw.get("do_sample") is False
    if "do_sample" in raw and not isinstance(raw["do_sample"], bool):
        warnings.append(f"{source}: do_sample must be true or false, got {raw['do_sample']!r}")

    ignored = [k for k, unchanged in CHANGES_OUTPUT.items() if k in raw and raw[k] != unchanged]
    if "max_length" in raw and "max_new_tokens" not in raw:  # transformers counts the prompt
        ignored.insert(0, "max_length")
    unknown = sorted(k for k in raw if k not in GENERATION_KEYS)
    defaults = GenerationDefaults(source, bos, eos, values, greedy, tuple(ignored), tuple(unknown))
    return defaults, warnings


def _generation_file(folder: Path, warnings: list[str]) -> tuple[dict | None, str]:
    path = folder / GENERATION_CONFIG
    if not path.is_file():
        return None, GENERATION_CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raw, why = None, f"is not valid JSON ({exc})"
    else:
        why = "is not a JSON object"
    if not isinstance(raw, dict):  # transformers then falls back to config.json too
        warnings.append(f"{GENERATION_CONFIG} {why}: read config.json instead")
        return None, GENERATION_CONFIG
    return raw, GENERATION_CONFIG
