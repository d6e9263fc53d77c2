"""llama.cpp (through the PyPI package llama-cpp-python) as a speed anchor for gpt2cli.

Imported by the benchmark scripts (run with gpt2cli's Python, which has no llama_cpp): every
llama.cpp call happens in a worker subprocess run with the llama venv's Python,

    benchmarks/.cache/llama/venv/bin/python benchmarks/llama_anchor.py worker '<job JSON>'

which prints one JSON object. Everything built or downloaded lives in benchmarks/.cache/llama:
  venv/           llama-cpp-python, compiled by pip from its sdist (GGML_NATIVE, 15-30 minutes)
  sdist/          that sdist; src/ holds its convert_hf_to_gguf.py, conversion/ and gguf-py/
  convert-venv/   CPU torch + transformers for the converter
  gguf/           <shape>-<type>.gguf, converted from the benchmark checkpoints

Decode is measured as gpt2cli measures it: tokens after the first over their wall time, top-k 40,
temperature 1, exactly N tokens (a low-level decode/sample loop; EOS gets a -inf logit bias).
Prefill is the time to the first token of a prompt: decode the prompt in one batch + sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LLAMA = HERE / ".cache" / "llama"
VENV, CONVERT_VENV, SRC, SDIST, GGUF_DIR = (
    LLAMA / n for n in ("venv", "convert-venv", "src", "sdist", "gguf")
)
VERSION = "0.3.36"
CMAKE_ARGS = "-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"
TORCH = ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]
CONVERT_DEPS = ["transformers", "numpy", "sentencepiece", "safetensors", "protobuf", "tqdm"]
CONVERT_DEPS += ["pyyaml", "requests"]  # gguf-py's own dependencies
CONVERTER_TYPES = {"f32", "f16", "bf16", "q8_0"}  # convert_hf_to_gguf.py's --outtype (0.3.36)
QUANTIZED_TYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9}  # llama_ftype, via quantize
N_CTX = 1024


def _skip(why: str) -> None:
    """The one line saying why the llama.cpp side is left out."""
    print(f"llama.cpp skipped: {why}", file=sys.stderr)


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run_logged(cmd: list, log: Path, env: dict | None = None) -> None:
    """Run `cmd`, appending its output to `log`; CalledProcessError if it fails."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, env=env)


def _sdist(log: Path) -> Path:
    """The llama-cpp-python sdist (downloaded from PyPI once)."""
    found = sorted(SDIST.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    if not found:
        SDIST.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        _run_logged(pip + ["-d", str(SDIST), f"llama-cpp-python=={VERSION}"], log)
        found = sorted(SDIST.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    return found[0]


def _build_llama_venv() -> None:
    """python -m venv + pip install of the sdist, compiled for this CPU."""
    log = LLAMA / "build.log"
    print(f"building llama-cpp-python {VERSION} into {VENV} (15-30 minutes; log {log}) ...")
    sdist = _sdist(log)
    _run_logged([sys.executable, "-m", "venv", str(VENV)], log)
    env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count()))
    _run_logged([_python(VENV), "-m", "pip", "install", "-v", str(sdist)], log, env)


def llama_python() -> Path | None:
    """The llama venv's Python (building it if missing), or None after printing why not."""
    python = _python(VENV)
    check = [str(python), "-c", "import llama_cpp"]
    try:
        if not python.exists() or subprocess.run(check, capture_output=True).returncode:
            LLAMA.mkdir(parents=True, exist_ok=True)
            _build_llama_venv()
        subprocess.run(check, capture_output=True, check=True)
        return python
    except (OSError, subprocess.CalledProcessError) as e:
        _skip(f"could not build or import llama-cpp-python {VERSION} ({e}); see {LLAMA}/build.log")
        return None


def _extract_converter(log: Path) -> None:
    """convert_hf_to_gguf.py, conversion/ and gguf-py/ from the sdist into src/."""
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(_sdist(log)) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        for m in members:
            m.name = m.name[len(prefix) :]
        members = [m for m in members if m.name.startswith(wanted)]
        tar.extractall(SRC, members=members, filter="data")


def _convert_python() -> Path | None:
    """The converter venv's Python (building it and extracting the converter if missing)."""
    python, log = _python(CONVERT_VENV), LLAMA / "convert-venv.log"
    check = [str(python), "-c", "import torch, transformers, safetensors, sentencepiece, yaml"]
    try:
        LLAMA.mkdir(parents=True, exist_ok=True)
        if not (SRC / "convert_hf_to_gguf.py").is_file() or not (SRC / "conversion").is_dir():
            _extract_converter(log)
        if not python.exists() or subprocess.run(check, capture_output=True).returncode:
            print(f"building the GGUF converter venv {CONVERT_VENV} (log {log}) ...")
            _run_logged([sys.executable, "-m", "venv", str(CONVERT_VENV)], log)
            _run_logged([python, "-m", "pip", "install", *TORCH], log)  # CPU torch FIRST
            _run_logged([python, "-m", "pip", "install", *CONVERT_DEPS], log)
        return python
    except (OSError, subprocess.CalledProcessError, tarfile.TarError) as e:
        _skip(f"could not set up the GGUF converter ({e}); see {log}")
        return None


def checkpoint(shape: str) -> Path:
    """common.checkpoint(shape), also when tests/checkpoints.py has moved to tests/support/."""
    support = str(HERE.parent / "tests" / "support")
    sys.path[:0] = [] if str(HERE) in sys.path else [str(HERE)]
    if support not in sys.path:
        sys.path.append(support)  # after common's tests/, so the old location still wins
    from common import checkpoint as build

    return build(shape)


def gguf(shape: str, outtype: str, folder: Path | None = None) -> Path | None:
    """The GGUF of benchmark checkpoint `shape` in `outtype` (f32, f16, bf16, q8_0, q4_0, ...),
    converted (or quantized from the F32 file) on first use; None after printing why not.
    `folder`: another checkpoint, cached under the name `shape`."""
    out = GGUF_DIR / f"{shape}-{outtype}.gguf"
    if out.is_file():
        return out
    GGUF_DIR.mkdir(parents=True, exist_ok=True)
    if outtype in QUANTIZED_TYPES:
        return _quantize(shape, outtype, out, folder)
    python, folder = _convert_python(), folder or checkpoint(shape)
    if python is None:
        return None
    print(f"converting {folder} to {out.name} ...", file=sys.stderr)
    job = {"src": str(SRC), "checkpoint": str(folder), "outtype": outtype, "out": str(_part(out))}
    return _finish(out, [python, __file__, "convert", json.dumps(job)], f"convert to {outtype}")


def _quantize(shape: str, outtype: str, out: Path, folder: Path | None) -> Path | None:
    """`out` quantized from the F32 GGUF with llama.cpp's llama_model_quantize."""
    source, python = gguf(shape, "f32", folder), llama_python()
    if source is None or python is None:
        return None
    print(f"quantizing {source.name} to {out.name} ...", file=sys.stderr)
    job = {"task": "quantize", "src": str(source), "out": str(_part(out))}
    job["ftype"] = QUANTIZED_TYPES[outtype]
    return _finish(out, [python, __file__, "worker", json.dumps(job)], f"quantize to {outtype}")


def _part(out: Path) -> Path:
    """Where a GGUF is written before it is complete."""
    return out.with_suffix(".part")


def _finish(out: Path, cmd: list, what: str) -> Path | None:
    """Run a command that writes _part(out), then rename it to `out`; `out` or None."""
    part = _part(out)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode or not part.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        _skip(f"{out.name}: {what} failed: {tail[0]}")
        part.unlink(missing_ok=True)
        return None
    part.rename(out)
    return out


def _work(python: Path, job: dict, timeout: float = 1800) -> dict | None:
    """Run one worker job in the llama venv; its JSON result, or None after printing why."""
    cmd = [str(python), __file__, "worker", json.dumps(job)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        _skip(f"{job['task']} on {Path(job['gguf']).name} timed out after {timeout:.0f} s")
        return None
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        _skip(f"{job['task']} on {Path(job['gguf']).name} failed: {tail[0]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def decode(
    model: Path, prompt_ids: list[int], tokens: int, threads: int | None = None, seed: int = 0
) -> dict | None:
    """Decode exactly `tokens` tokens after `prompt_ids` (top-k 40, temperature 1).
    Returns {"tok_s", "ttft_s", "tokens", "n_threads", "n_threads_batch", "system_info"};
    tok_s counts the tokens after the first over their wall time. threads None: llama's default."""
    python = llama_python()
    if python is None:
        return None
    job = {"task": "decode", "gguf": str(model), "prompt_ids": prompt_ids, "tokens": tokens}
    return _work(python, job | {"threads": threads, "seed": seed})


def logits(model: Path, rows: list[list[int]], out: Path) -> Path | None:
    """llama.cpp's next-token logits at every position of `rows` (token ids) on GGUF `model`,
    saved as a float32 .npy at `out` (rows * length, vocab); None after printing why not."""
    python = llama_python()
    if python is None:
        return None
    done = _work(python, {"task": "logits", "gguf": str(model), "rows": rows, "out": str(out)})
    return None if done is None else out


def prefill(model: Path, prompt_ids: list[int], threads: int | None = None) -> dict | None:
    """Time to first token of `prompt_ids`: one batched decode of the prompt + one sample.
    Returns {"prefill_s", "prompt_tokens", "n_threads", "n_threads_batch", "system_info"}."""
    python = llama_python()
    if python is None:
        return None
    job = {"task": "prefill", "gguf": str(model), "prompt_ids": prompt_ids, "threads": threads}
    return _work(python, job | {"seed": 0})


# ---- worker side: runs with the llama venv's (or the converter venv's) Python ----


def _w_load(job: dict, **options):
    """A llama_cpp.Llama on the job's GGUF, n_ctx 1024, threads as asked (None: default)."""
    import llama_cpp

    n = job.get("threads")
    return llama_cpp.Llama(
        job["gguf"], n_ctx=N_CTX, n_threads=n, n_threads_batch=n, verbose=False, no_perf=True,
        **options,
    )  # fmt: skip


def _w_sampler(llm, seed: int):
    """A sampler chain: EOS at -inf, top-k 40, temperature 1, then a seeded draw."""
    import llama_cpp as lc

    vocab = lc.llama_model_get_vocab(llm.model)
    bias = (lc.llama_logit_bias * 1)(lc.llama_logit_bias(lc.llama_vocab_eos(vocab), -1e30))
    params = lc.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lc.llama_sampler_chain_init(params)
    for s in (
        lc.llama_sampler_init_logit_bias(lc.llama_vocab_n_tokens(vocab), 1, bias),
        lc.llama_sampler_init_top_k(40),
        lc.llama_sampler_init_temp(1.0),
        lc.llama_sampler_init_dist(seed),
    ):
        lc.llama_sampler_chain_add(chain, s)
    return chain


def _w_eval(llm, ids: list[int]) -> None:
    """llama_decode of `ids` as one batch (logits for the last one only)."""
    import llama_cpp as lc

    arr = (lc.llama_token * len(ids))(*ids)
    status = lc.llama_decode(llm.ctx, lc.llama_batch_get_one(arr, len(ids)))
    if status:
        raise RuntimeError(f"llama_decode returned {status}")


def _w_generate(llm, chain, prompt_ids: list[int], tokens: int) -> dict:
    """Prefill `prompt_ids` from an empty KV cache and sample exactly `tokens` tokens."""
    import llama_cpp as lc

    lc.llama_memory_clear(lc.llama_get_memory(llm.ctx), True)
    t = time.perf_counter()
    _w_eval(llm, prompt_ids)
    token = lc.llama_sampler_sample(chain, llm.ctx, -1)
    t0 = time.perf_counter()
    for _ in range(tokens - 1):
        _w_eval(llm, [token])
        token = lc.llama_sampler_sample(chain, llm.ctx, -1)
    t1 = time.perf_counter()
    rate = (tokens - 1) / (t1 - t0) if tokens > 1 else None
    return {"tok_s": rate, "ttft_s": t0 - t, "tokens": tokens}


def _w_info(llm) -> dict:
    import llama_cpp as lc

    return {
        "n_threads": lc.llama_n_threads(llm.ctx),
        "n_threads_batch": lc.llama_n_threads_batch(llm.ctx),
        "system_info": lc.llama_print_system_info().decode().strip(),
        "llama_cpp_python": lc.__version__,
    }


def _w_decode(job: dict) -> dict:
    """Warm up with 16 tokens, then one timed generation of job["tokens"] tokens."""
    llm = _w_load(job)
    chain = _w_sampler(llm, job["seed"])
    _w_generate(llm, chain, job["prompt_ids"], 16)
    return _w_generate(llm, chain, job["prompt_ids"], job["tokens"]) | _w_info(llm)


def _w_prefill(job: dict) -> dict:
    """Warm up with one untimed prefill, then time one prefill + first sample."""
    llm = _w_load(job)
    chain = _w_sampler(llm, job["seed"])
    _w_generate(llm, chain, job["prompt_ids"], 1)
    done = _w_generate(llm, chain, job["prompt_ids"], 1)
    return {"prefill_s": done["ttft_s"], "prompt_tokens": len(job["prompt_ids"])} | _w_info(llm)


def _w_quantize(job: dict) -> dict:
    """llama_model_quantize(src -> out, ftype) with llama.cpp's default recipe."""
    import llama_cpp as lc

    params = lc.llama_model_quantize_default_params()
    params.ftype = job["ftype"]
    params.nthread = os.cpu_count() or 1
    status = lc.llama_model_quantize(job["src"].encode(), job["out"].encode(), params)
    if status:
        raise RuntimeError(f"llama_model_quantize returned {status}")
    return {"out": job["out"]}


def _convert(job: dict) -> None:
    """Run convert_hf_to_gguf.py on a benchmark checkpoint, with two patches it needs:
    the checkpoint's tokenizer is GPT-2's byte-level BPE trained on other text, so its hash is
    unknown to get_vocab_base_pre (the pre-tokenizer is GPT-2's: say "gpt-2"); and this version's
    GPT2Model passes the h.N.attn.bias buffers on to the name map ("we don't need these"), which
    fails, so drop them."""
    import runpy

    src = Path(job["src"])
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    import conversion.base as base
    from conversion.gpt2 import GPT2Model

    modify = GPT2Model.modify_tensors

    def modify_tensors(self, data_torch, name, bid):
        if not name.endswith((".attn.bias", ".attn.masked_bias")):
            yield from modify(self, data_torch, name, bid)

    GPT2Model.modify_tensors = modify_tensors
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    sys.argv = [str(src / "convert_hf_to_gguf.py"), job["checkpoint"]]
    sys.argv += ["--outtype", job["outtype"], "--outfile", job["out"]]
    runpy.run_path(sys.argv[0], run_name="__main__")


def _w_logits(job: dict) -> dict:
    """The next-token logits at every position of each row of token ids (each row from an
    empty cache), saved as float32 .npy (rows * length, vocab) at job["out"]."""
    import numpy as np

    llm = _w_load(job, logits_all=True, n_batch=N_CTX, n_ubatch=N_CTX)
    rows = []
    for ids in job["rows"]:
        llm.reset()  # eval() drops the cache past the tokens kept: all of it
        llm.eval(ids)
        rows.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    np.save(job["out"], np.concatenate(rows))
    return {"out": job["out"]}


WORKERS = {
    "decode": _w_decode, "prefill": _w_prefill, "quantize": _w_quantize, "logits": _w_logits,
}  # fmt: skip


def main() -> None:
    """`worker JOB` (llama venv) or `convert JOB` (converter venv); JOB is JSON."""
    command, job = sys.argv[1], json.loads(sys.argv[2])
    if command == "convert":
        _convert(job)
        return
    print(json.dumps(WORKERS[job["task"]](job)))


if __name__ == "__main__":
    main()
