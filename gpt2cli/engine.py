"""Prompt text -> a stream of events. The decode loop, on top of model, tokenizer and sampling.

    lm = load_model("small")
    for event in generate(lm, "Hello", SamplingParams(seed=1), max_tokens=20):
        if isinstance(event, Delta):
            print(event.text, end="")

Events, in order: one `Start`; then `Delta`s (interleaved across samples, each carrying the text
that became printable with that token, possibly ""); then one `Finish` per sample.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2cli.decoder import make_decoder
from gpt2cli.errors import ParamError
from gpt2cli.model import GPT2, GPT2Config
from gpt2cli.sampling import SamplingParams, sample_next, validate_param
from gpt2cli.tokenizer import StreamDecoder, Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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

    @property
    def config(self) -> GPT2Config:
        return self.model.config

    @property
    def context_length(self) -> int:
        return self.model.config.n_positions


@dataclass(frozen=True)
class Start:
    prompt_tokens: int  # tokens actually fed to the model (after any truncation)
    dropped_tokens: int  # tokens cut from the start of a prompt longer than the window allows
    seed: int
    samples: int


@dataclass(frozen=True)
class Delta:
    sample: int
    text: str  # newly printable text ("" while a character or a possible stop string is held)
    token_id: int | None  # None for the text released when a sample finishes
    logprob: float | None = None  # log-probability of token_id under the model (raw logits)
    top: tuple[tuple[int, float], ...] | None = None  # most likely (id, logprob), best first


@dataclass
class Completion:
    """One finished sample."""

    text: str
    finish_reason: str  # eos | length | stop | context
    prompt_tokens: int
    completion_tokens: int
    seed: int
    model: str
    time_to_first_token_s: float
    tokens_per_s: float
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None


@dataclass(frozen=True)
class Finish:
    sample: int
    completion: Completion


Event = Start | Delta | Finish


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
    """`auto` is bfloat16 on a GPU that supports it, float32 elsewhere."""
    name = name.lower()
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ParamError("dtype", f"must be auto, float32, bfloat16 or float16, got {name!r}")
    return DTYPES[name]


def load_model(
    model: str | Path = "small",
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    offline: bool | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """Load a GPT-2 checkpoint: a size name (small, medium, large, xl), a Hub repo id, or a
    local folder. Downloads into the Hugging Face cache when needed."""
    from gpt2cli.checkpoint import load_checkpoint
    from gpt2cli.hub import resolve_model

    if threads is not None:
        if threads < 1:
            raise ParamError("threads", f"must be an integer >= 1, got {threads!r}")
        torch.set_num_threads(threads)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    folder = resolve_model(str(model), revision=revision, offline=offline)
    net = load_checkpoint(folder, device=dev, dtype=dt)  # first: it says best what is wrong
    tokenizer = Tokenizer.from_folder(folder)
    return LoadedModel(net, tokenizer, str(model), Path(folder), dev, dt)


def fit_prompt(ids: list[int], window: int, max_tokens: int) -> tuple[list[int], int]:
    """Keep the last tokens of a prompt, leaving room in the window to generate `max_tokens`
    (at most half the window). The last token sampled needs no slot of its own, so a prompt
    of `window - max_tokens + 1` tokens still fits. Returns (kept ids, number dropped)."""
    keep = window - min(max_tokens, window // 2) + 1
    if len(ids) <= keep:
        return ids, 0
    return ids[-keep:], len(ids) - keep


class _SampleText:
    """Text bookkeeping for one sample: UTF-8-safe decoding and holding back any tail that could
    be the start of a stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.longest = max(map(len, self.stop), default=0)
        self.text = ""  # decoded so far (released + held)
        self.released = 0  # characters of `text` already emitted

    def add(self, piece: str) -> tuple[str, bool]:
        """Append decoded text; return (text to emit now, whether a stop string was hit)."""
        self.text += piece
        if self.stop:
            start = max(0, self.released - self.longest + 1)
            hits = [i for s in self.stop if (i := self.text.find(s, start)) != -1]
            if hits:
                self.text = self.text[: min(hits)]
                return self._release(len(self.text)), True
            held = max(
                (n for s in self.stop for n in range(1, len(s)) if self.text.endswith(s[:n])),
                default=0,
            )
            return self._release(len(self.text) - held), False
        return self._release(len(self.text)), False

    def finish(self) -> tuple[str, bool]:
        out, stopped = self.add(self.decoder.flush())
        return (out if stopped else out + self._release(len(self.text))), stopped

    def _release(self, upto: int) -> str:
        upto = max(upto, self.released)
        out = self.text[self.released : upto]
        self.released = upto
        return out


def generate(
    lm: LoadedModel,
    prompt: str,
    params: SamplingParams | None = None,
    *,
    max_tokens: int = 100,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    samples: int = 1,
    logprobs: bool = False,
    top_logprobs: int = 0,
) -> Iterator[Event]:
    """Continue `prompt`, yielding events as tokens are decoded (see the module docstring).

    An empty prompt starts from `<|endoftext|>`. `samples` continuations decode as one batch.
    `logprobs` adds each token's log-probability under the model; `top_logprobs=N` adds the N
    most likely alternatives at every step."""
    params = params or SamplingParams()
    validate_param("max_tokens", max_tokens)
    validate_param("samples", samples)
    if not 0 <= top_logprobs <= 100:
        raise ParamError("top_logprobs", f"must be in [0, 100], got {top_logprobs!r}")
    seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**31)
    tok, net = lm.tokenizer, lm.model
    window = lm.context_length

    t_start = time.perf_counter()
    ids = tok.encode(prompt) or [tok.eot_id]
    ids, dropped = fit_prompt(ids, window, max_tokens)
    yield Start(prompt_tokens=len(ids), dropped_tokens=dropped, seed=seed, samples=samples)

    generator = torch.Generator(device=lm.device).manual_seed(seed)
    decoder = make_decoder(net, samples, cuda_graphs=lm.cuda_graphs)
    prompt_ids = torch.tensor([ids] * samples, device=lm.device)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(samples, net.config.vocab_size, dtype=torch.bool, device=lm.device)
        seen[:, prompt_ids[0]] = True
        rows = torch.arange(samples, device=lm.device)
    want_logprobs = logprobs or top_logprobs > 0

    texts = [_SampleText(tok, stop) for _ in range(samples)]
    token_ids: list[list[int]] = [[] for _ in range(samples)]
    token_logprobs: list[list[float]] = [[] for _ in range(samples)]
    active = list(range(samples))
    t_first: float | None = None

    def finish(b: int, reason: str, final_text: str) -> Iterator[Event]:
        if final_text:
            yield Delta(b, final_text, None)
        now = time.perf_counter()
        n = len(token_ids[b])
        first = t_first if t_first is not None else now
        rate = (n - 1) / (now - first) if n > 1 and now > first else 0.0
        yield Finish(
            b,
            Completion(
                text=texts[b].text,
                finish_reason=reason,
                prompt_tokens=len(ids),
                completion_tokens=n,
                seed=seed,
                model=lm.name,
                time_to_first_token_s=first - t_start,
                tokens_per_s=rate,
                token_ids=token_ids[b],
                logprobs=token_logprobs[b] if logprobs else None,
            ),
        )

    logits = decoder.prefill(prompt_ids)
    for step in range(max_tokens):
        next_ids = sample_next(logits, params, generator, seen)
        if seen is not None:
            seen[rows, next_ids] = True
        chosen = next_ids.tolist()
        lp_rows: list[float] | None = None
        top_rows = None
        if want_logprobs:
            logp = torch.log_softmax(logits.float(), dim=-1)
            lp_rows = logp.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1).tolist()
            if top_logprobs:
                values, indices = torch.topk(logp, top_logprobs, dim=-1)
                top_rows = [tuple(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        if t_first is None:
            t_first = time.perf_counter()
        for b in list(active):
            token = chosen[b]
            if token == tok.eot_id and not ignore_eos:
                active.remove(b)
                yield from finish(b, "eos", texts[b].finish()[0])
                continue
            token_ids[b].append(token)
            if lp_rows is not None:
                token_logprobs[b].append(lp_rows[b])
            out, stopped = texts[b].add(texts[b].decoder.push(token))
            yield Delta(
                b,
                out,
                token,
                lp_rows[b] if lp_rows is not None else None,
                top_rows[b] if top_rows is not None else None,
            )
            if stopped:
                active.remove(b)
                yield from finish(b, "stop", "")
        if not active:
            return
        if step == max_tokens - 1:
            break
        if decoder.length >= window:
            for b in list(active):
                active.remove(b)
                yield from finish(b, "context", texts[b].finish()[0])
            return
        logits = decoder.step(next_ids)
    for b in list(active):
        out, stopped = texts[b].finish()
        yield from finish(b, "stop" if stopped else "length", out)


def complete(
    lm: LoadedModel, prompt: str, params: SamplingParams | None = None, **kwargs
) -> list[Completion]:
    """Run `generate` to the end and return one Completion per sample."""
    done: dict[int, Completion] = {}
    for event in generate(lm, prompt, params, **kwargs):
        if isinstance(event, Finish):
            done[event.sample] = event.completion
    return [done[i] for i in sorted(done)]
