"""Speed anchor: gpt2cli vs llama.cpp (llama-cpp-python) on the same random-weight GPT-2.

    python benchmarks/bench_vs_llama.py                       # small + medium, 3 rounds
    python benchmarks/bench_vs_llama.py --shapes small --threads 1,2
    python benchmarks/bench_vs_llama.py --load --json vs_llama.json

Rows pair our dtype with llama.cpp's nearest GGUF type: float32/F32, bfloat16/F16, int8/Q8_0,
int4/Q4_0. Decode: batch 1, top-k 40, temperature 1, exactly --tokens tokens after a 5-token
prompt; tokens/s counts the tokens after the first over their wall time on both sides. Prefill:
time to the first token of a --prefill-tokens prompt (same token ids on both sides). Each round
runs ours then llama.cpp (in a fresh worker process, after a warm-up); medians over rounds.
The ratio is ours / llama.cpp speed: above 1, gpt2cli is faster; it is the median of the rounds'
own ratios (each round's two runs are seconds apart, where rounds are minutes apart and this
VM's memory speed moves by a third within minutes: ratios of the medians mixed rounds, e.g.
float32 at 2 threads, rounds 101 / 87, 100 / 127 and 147 / 124 tok/s, gave 0.81 for rounds of
1.16, 0.79 and 1.19); the ratio of the medians is in the JSON as "ratio_of_medians".

Threads: "default" is each side's own choice (gpt2cli: the idle cores when the model loads,
runtime/threads.py; llama-cpp-python: cores // 2 for decode, all cores for prompt batches).
--threads N,M also measures both sides at N and M threads each and reports each side's best.
--load starts (cores - 1) `yes > /dev/null` busy processes for the whole run and sweeps
1..cores threads.

The first run builds llama-cpp-python (15-30 minutes) and converts the checkpoints to GGUF; see
llama_anchor.py. Without llama.cpp the rows still show our side.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_anchor  # noqa: E402
from common import median  # noqa: E402

PAIRS = [("float32", "f32"), ("bfloat16", "f16"), ("int8", "q8_0"), ("int4", "q4_0")]
PROMPT = "The meaning of life is"
FILLER = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex bold".split()


def cpu_model() -> str:
    """The CPU's model name, as lscpu prints it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def loadavg() -> str:
    """The 1/5/15-minute load averages, as `uptime` shows them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def prompt_ids(folder: Path, n: int | None) -> tuple[str, list[int]]:
    """PROMPT (n None) or a filler prompt of exactly n tokens, with its token ids
    (the checkpoint's own tokenizer.json; gpt2cli's prompt_tokens is checked against it)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if n is None:
        return PROMPT, tok.encode(PROMPT).ids
    words, count = [], 0
    for word in itertools.cycle(FILLER):
        size = len(tok.encode(" " + word).ids)
        if count + size > n:
            break
        words, count = words + [word], count + size
    words += ["a"] * (n - count)  # " a" is one token
    text = " " + " ".join(words)
    ids = tok.encode(text).ids
    if len(ids) != n:
        raise RuntimeError(f"could not build a {n}-token prompt (got {len(ids)})")
    return text, ids


def load_ours(folder: Path, dtype: str, threads: int):
    """gpt2cli's model in `dtype` with `threads` threads, or the reason it is not supported."""
    from gpt2cli import load_model

    try:
        return load_model(folder, device="cpu", dtype=dtype, threads=threads), None
    except ValueError as e:  # ParamError: a dtype this gpt2cli does not have
        return None, f"not supported by this gpt2cli ({e})"


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def ours_complete(lm, text: str, tokens: int):
    """One gpt2cli completion of `text`: top-k 40, temperature 1, exactly `tokens` tokens."""
    from gpt2cli import SamplingParams, complete

    params = SamplingParams(top_k=40, temperature=1.0, seed=0)
    done = complete(lm, text, params, max_tokens=tokens, ignore_eos=True)[0]
    assert done.completion_tokens == tokens, done.completion_tokens
    return done


def ours_decode(lm, tokens: int) -> float:
    """gpt2cli's decode rate for exactly `tokens` tokens after PROMPT."""
    return ours_complete(lm, PROMPT, tokens).tokens_per_s


def ours_prefill(lm, text: str, ids: list[int]) -> float:
    """gpt2cli's time to first token of `text` (tokenized as `ids`), in seconds."""
    done = ours_complete(lm, text, 1)
    assert done.prompt_tokens == len(ids), (done.prompt_tokens, len(ids))
    return done.time_to_first_token_s


@contextlib.contextmanager
def busy_load(n: int):
    """Run `n` `yes > /dev/null` processes; always stopped on exit (also Ctrl-C / SIGTERM)."""
    procs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(n)]
    old = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        signal.signal(signal.SIGTERM, old)


def measure(args, shape: str, dtype: str, outtype: str, threads: int | None) -> list[dict]:
    """One (shape, dtype, threads) pair: ours and llama.cpp, decode (and prefill) rows."""
    folder = llama_anchor.checkpoint(shape)
    model = llama_anchor.gguf(shape, outtype)
    lm, why = load_ours(folder, dtype, threads)  # None: gpt2cli's own choice
    prefill = dtype in args.prefill_dtypes
    prompts = prompt_ids(folder, None), prompt_ids(folder, args.prefill_tokens)
    if lm is not None:  # warm-up: the first runs of a process are slower
        ours_decode(lm, 16)
        if prefill:
            ours_prefill(lm, *prompts[1])
    runs, info = alternate(args, lm, model, prompts, threads, prefill)
    base = {"shape": shape, "dtype": dtype, "gguf": outtype.upper(), "threads": threads}
    base |= {"ours_threads": threads or (lm and torch_threads()), "ours_note": why}
    base |= {"llama_threads": info and f"{info['n_threads']} (batch {info['n_threads_batch']})"}
    base |= {"llama_system_info": info and info["system_info"], "loadavg": runs.pop("load")}
    rows = [row(base, "decode", runs["ours_decode"], runs["llama_decode"], True)]
    if prefill:
        rows.append(row(base, "prefill", runs["ours_prefill"], runs["llama_prefill"], False))
    return rows


def alternate(args, lm, model, prompts, threads, prefill) -> tuple[dict, dict | None]:
    """args.rounds rounds of: ours decode, llama decode[, ours prefill, llama prefill].
    Returns the runs by kind (plus the load average after each round) and llama's info."""
    (_, short), (text, ids) = prompts
    runs = {k: [] for k in ("ours_decode", "llama_decode", "ours_prefill", "llama_prefill")}
    runs["load"], info = [], None
    for _ in range(args.rounds):
        runs["ours_decode"] += [ours_decode(lm, args.tokens)] if lm else []
        got = llama_anchor.decode(model, short, args.tokens, threads) if model else None
        runs["llama_decode"] += [got["tok_s"]] if got else []
        info = got or info
        if prefill:
            runs["ours_prefill"] += [ours_prefill(lm, text, ids)] if lm else []
            done = llama_anchor.prefill(model, ids, threads) if model else None
            runs["llama_prefill"] += [done["prefill_s"]] if done else []
        runs["load"].append(loadavg())
    return runs, info


def row(base: dict, task: str, ours: list[float], llama: list[float], is_rate: bool) -> dict:
    """A result row: medians and the speed ratio ours / llama.cpp, the median of the rounds'
    own ratios (None where a side is missing; see the module docstring)."""
    mo = median(ours) if ours else None
    ml = median(llama) if llama else None
    ratio = of_medians = None
    if mo and ml:
        of_medians = mo / ml if is_rate else ml / mo
        pairs = [o / m if is_rate else m / o for o, m in zip(ours, llama, strict=False)]
        ratio = median(pairs) if len(ours) == len(llama) else of_medians
    out = base | {"task": task, "unit": "tok/s" if is_rate else "s"}
    out |= {"ours": mo, "llama": ml, "ratio": ratio, "ratio_of_medians": of_medians}
    return out | {"ours_runs": ours, "llama_runs": llama}


def speed(value: float, unit: str) -> float:
    """A figure as a speed: tokens/s as is, seconds inverted."""
    return value if unit == "tok/s" else 1 / value


def best(rows: list[dict]) -> list[dict]:
    """Per (shape, dtype, task): each side's best thread count and the ratio of the bests."""
    out = {}
    for r in rows:
        key = (r["shape"], r["dtype"], r["task"])
        b = out.setdefault(key, {k: r[k] for k in ("shape", "dtype", "gguf", "task", "unit")})
        for side in ("ours", "llama"):
            v, old = r[side], b.get(side)
            if v is not None and (old is None or speed(v, r["unit"]) > speed(old, r["unit"])):
                b[side], b[f"{side}_threads"] = v, r["threads"] or "default"
    for b in out.values():
        o, ll = b.get("ours"), b.get("llama")
        b["ratio"] = (o / ll if b["unit"] == "tok/s" else ll / o) if o and ll else None
    return list(out.values())


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f} tok/s" if unit == "tok/s" else f"{v * 1000:.0f} ms"


def table(rows: list[dict]) -> str:
    """The markdown table of all rows."""
    lines = [
        "| shape | ours | llama.cpp | task | threads (ours / llama) | gpt2cli | llama.cpp "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = fmt(r["ours"], r["unit"]) if not r["ours_note"] else "not supported"
        threads = f"{r['ours_threads']} / {r['llama_threads'] or 'n/a'}"
        if r["threads"] is None:
            threads = f"default: {threads}"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "n/a"
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['gguf']} | {r['task']} | {threads} "
            f"| {ours} | {fmt(r['llama'], r['unit'])} | {ratio} |"
        )
    return "\n".join(lines)


def best_table(rows: list[dict]) -> str:
    """The markdown table of each side's best thread count."""
    lines = [
        "| shape | ours | llama.cpp | task | gpt2cli best (threads) | llama.cpp best (threads) "
        "| ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in best(rows):
        ours = f"{fmt(b.get('ours'), b['unit'])} ({b.get('ours_threads', '-')})"
        llama = f"{fmt(b.get('llama'), b['unit'])} ({b.get('llama_threads', '-')})"
        ratio = f"{b['ratio']:.2f}" if b["ratio"] else "n/a"
        lines.append(
            f"| {b['shape']} | {b['dtype']} | {b['gguf']} | {b['task']} | {ours} | {llama} "
            f"| {ratio} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="small,medium", help="comma-separated (small,medium)")
    ap.add_argument("--dtypes", default=",".join(d for d, _ in PAIRS), help="our dtypes to run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=256, help="decode tokens per run")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument(
        "--prefill-dtypes",
        default=",".join(d for d, _ in PAIRS),
        help="our dtypes that also get a prefill row ('' for none)",
    )
    ap.add_argument("--threads", default="", help="thread counts to sweep besides the defaults")
    ap.add_argument("--load", action="store_true", help="run beside (cores - 1) busy processes")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout)")
    args = ap.parse_args()
    args.shapes, args.dtypes = args.shapes.split(","), args.dtypes.split(",")
    args.prefill_dtypes = [d for d in args.prefill_dtypes.split(",") if d]
    args.sweep = [int(t) for t in args.threads.split(",") if t]
    if args.load and not args.sweep:
        args.sweep = list(range(1, (os.cpu_count() or 1) + 1))
    return args


def save(path: str | None, header: dict, rows: list[dict]) -> None:
    """Write the results as JSON to `path` ('-': stdout; None: nowhere)."""
    if not path:
        return
    text = json.dumps({"setup": header, "rows": rows, "best": best(rows)}, indent=1)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")


def run(args, header: dict) -> list[dict]:
    """Every (shape, dtype, threads) row, in order; each row is printed (stderr) when done and
    the JSON file rewritten, so a long run that is stopped still leaves its results."""
    rows = []
    for shape in args.shapes:
        for dtype, outtype in PAIRS:
            if dtype not in args.dtypes:
                continue
            for threads in [None, *args.sweep]:
                what = f"{shape} {dtype}/{outtype}, threads {threads or 'default'}"
                print(f"{what} (load {loadavg()}) ...", file=sys.stderr)
                new = measure(args, shape, dtype, outtype, threads)
                print(table(new).split("\n", 2)[2], file=sys.stderr)
                rows += new
                if args.json != "-":
                    save(args.json, header | {"partial": True}, rows)
    return rows


def main() -> None:
    args = parse_args()
    from gpt2cli.runtime.threads import configure_openmp

    header = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_start": loadavg()}
    header |= {"busy_processes": (os.cpu_count() or 1) - 1 if args.load else 0}
    header |= {k: getattr(args, k) for k in ("rounds", "tokens", "prefill_tokens")}
    t = time.perf_counter()
    with busy_load(header["busy_processes"]) if args.load else contextlib.nullcontext():
        # As the CLI does when it starts (on the machine as busy as it is now), before torch
        # is imported: the default thread count and wait policy.
        time.sleep(1 if args.load else 0)
        configure_openmp()
        rows = run(args, header)
    header |= {"load_end": loadavg(), "wall_s": round(time.perf_counter() - t, 1)}
    save(args.json, header, rows)
    print(
        f"\n{header['cpu']}, {header['cores']} cores, {header['busy_processes']} busy processes, "
        f"load {header['load_start']} -> {header['load_end']}, medians of {args.rounds} rounds, "
        f"decode {args.tokens} tokens, prefill {args.prefill_tokens} tokens; "
        "ratio = gpt2cli speed / llama.cpp speed\n"
    )
    print(table(rows))
    if args.sweep:
        print("\n" + best_table(rows))


if __name__ == "__main__":
    main()
