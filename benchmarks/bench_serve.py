"""`gpt2 serve` under 1, 4 and 16 concurrent streaming clients at GPT-2 small's shape, side by
side with llama.cpp's server (llama-cpp-python's `llama_cpp.server`) on the same checkpoint.

    python benchmarks/bench_serve.py [--checkpoint DIR] [--gguf FILE] [--clients 1 4 16]
                                     [--tokens 128] [--rounds 2] [--threads N]

Each client sends `--rounds` streamed requests one after the other (a ~25-token prompt, exactly
`--tokens` tokens: `ignore_eos` for ours, an <|endoftext|> logit bias of -100 for llama.cpp),
top-k 40, temperature 1, all clients starting together. Reported per run: total tokens/s (all
tokens / wall time from the start to the last token); time to first token under that load,
p50/p95: the latency of a short 1-token request sent every `--probe-every` seconds while the
clients decode; the first streamed text of the clients' own requests (p50); and the request
latency (p50). The two servers run one configuration after the other (ours, then llama.cpp,
for each client count), both with `--threads` threads, so drift in this shared machine's load
hits both alike.

Why a probe: llama-cpp-python streams a token's text only once the text so far decodes as
UTF-8, and a random-weight model emits invalid byte sequences all the time, so its streams
hold everything back to the end; a 1-token request's latency is the same measure on both
sides. (Ours replaces invalid bytes with U+FFFD, as `decode` does, and never holds text back.)

Then a consistency check on ours: 16 seeded requests decoded together, then each alone; how
many come out identical (batched products round differently from unbatched ones, and a sample
can flip where two tokens' probabilities are that close).

llama.cpp side: the llama-cpp-python build and GGUF files of benchmarks/llama_anchor.py (its
venv is only read: the server's pure-Python dependencies go into an overlay venv in
benchmarks/.cache/llama-server-venv that also sees the build). Nothing is compiled here; when
the build or the GGUF is missing the llama.cpp side is skipped with a line saying why.
llama_cpp.server decodes one request at a time (`--interrupt_requests false`, so that a new
request waits instead of cutting the running stream short).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository root on sys.path)
import llama_anchor

from tests.support.checkpoints import CORPUS
from tests.support.server import ServerProcess

EOT_ID = 50256
SERVER_DEPS = [  # llama-cpp-python 0.3.36's [server] extra
    "uvicorn>=0.22.0",
    "fastapi>=0.100.0",
    "pydantic-settings>=2.0.1",
    "sse-starlette>=1.6.1",
    "starlette-context>=0.3.6,<0.4",
    "PyYAML>=5.1",
]
OVERLAY = common.CACHE / "llama-server-venv"
SENTENCES = [s.strip() for s in CORPUS.replace("\n", " ").split(". ") if len(s.split()) > 6]


def prompt_for(client: int, round_: int) -> str:
    return f"Request {client}.{round_}: {SENTENCES[(client + round_) % len(SENTENCES)]}."


class Server:
    """An OpenAI-compatible server on 127.0.0.1: where it is and what its requests carry."""

    def __init__(self, name: str, port: int, extra: dict, stop) -> None:
        self.name, self.port, self.extra, self.stop = name, port, extra, stop

    def stream(self, prompt: str, tokens: int, seed: int) -> dict:
        """One streamed completion: {ttft, tokens, decode_s, end}."""
        body = {"prompt": prompt, "max_tokens": tokens, "stream": True, "seed": seed}
        body |= {"temperature": 1.0, "top_k": 40, "top_p": 1.0} | self.extra
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        sent = time.perf_counter()
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{self.name}: HTTP {response.status}: {response.read()[:300]!r}")
        first = None
        finish = None
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            if first is None and choice["text"]:
                first = time.perf_counter()
            finish = choice.get("finish_reason") or finish
        end = time.perf_counter()
        conn.close()
        if finish != "length":
            raise RuntimeError(f"{self.name}: a request ended with {finish!r}, not length")
        first = first or end
        return {"ttft": first - sent, "tokens": tokens, "decode_s": end - first, "end": end}

    def complete(self, prompt: str, tokens: int, seed: int) -> str:
        body = {"prompt": prompt, "max_tokens": tokens, "seed": seed, "temperature": 1.0}
        body |= {"top_k": 40} | self.extra
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        text = json.loads(conn.getresponse().read())["choices"][0]["text"]
        conn.close()
        return text


def run_clients(server: Server, clients: int, rounds: int, tokens: int, probe_every: float) -> dict:
    """`clients` threads, each streaming `rounds` requests back to back, started together; and
    every `probe_every` seconds while they run, a short 1-token request whose latency is the
    time to first token of a request that arrives under that load."""
    barrier = threading.Barrier(clients + 1)
    results: list[dict] = []
    probes: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        barrier.wait()
        try:
            for r in range(rounds):
                sent = time.perf_counter()
                got = server.stream(prompt_for(c, r), tokens, seed=1000 * c + r)
                with lock:
                    results.append(got | {"latency": got["end"] - sent})
        except BaseException as exc:  # report it from the main thread
            errors.append(exc)

    def probe(k: int) -> None:
        sent = time.perf_counter()
        server.complete(f"Probe {k}:", 1, seed=k)
        with lock:
            probes.append(time.perf_counter() - sent)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    probers: list[threading.Thread] = []
    while True:
        due = start + probe_every * (len(probers) + 1)
        for t in threads:
            t.join(max(0.0, due - time.perf_counter()))
        if not any(t.is_alive() for t in threads):
            break
        if time.perf_counter() >= due:
            probers.append(threading.Thread(target=probe, args=(len(probers),)))
            probers[-1].start()
    for t in probers:
        t.join()
    if errors:
        raise errors[0]
    wall = max(r["end"] for r in results) - start
    probes.sort()
    return {
        "clients": clients,
        "requests": len(results),
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": statistics.median(probes) if probes else float("nan"),
        "ttft_p95": probes[round(0.95 * (len(probes) - 1))] if probes else float("nan"),
        "probes": len(probes),
        "first_text_p50": statistics.median(r["ttft"] for r in results),
        "latency_p50": statistics.median(r["latency"] for r in results),
        "wall_s": wall,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ours(checkpoint: Path, threads: int, max_batch: int) -> Server:
    args = ["-m", str(checkpoint), "--threads", str(threads), "--max-batch", str(max_batch)]
    proc = ServerProcess(*args, "--no-access-log", env={"HF_HUB_OFFLINE": "1"})
    port = int(proc.url.rsplit(":", 1)[1])

    def stop() -> None:
        proc.stop()

    return Server("gpt2cli", port, {"ignore_eos": True}, stop)


def overlay_python(llama_venv: Path) -> Path | None:
    """A venv with llama_cpp.server's dependencies that also sees the llama venv's build."""
    python = OVERLAY / "bin" / "python"
    check = [str(python), "-c", "import llama_cpp.server.app"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    site = sorted((llama_venv / "lib").glob("python3*/site-packages"))
    if not site or not (site[0] / "llama_cpp").is_dir():
        print(f"llama.cpp skipped: no llama-cpp-python build in {llama_venv}", file=sys.stderr)
        return None
    print(f"making {OVERLAY} (llama_cpp.server's dependencies) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(OVERLAY)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "zz_llama_cpp.pth").write_text(f"{site[0]}\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", *SERVER_DEPS], check=True)
    if subprocess.run(check, capture_output=True).returncode:
        print("llama.cpp skipped: llama_cpp.server does not import", file=sys.stderr)
        return None
    return python


def start_llama(python: Path, gguf: Path, threads: int) -> Server | None:
    port = free_port()
    argv = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--n_ctx", "1024", "--n_threads", str(threads)]
    argv += ["--n_threads_batch", str(threads), "--interrupt_requests", "false"]
    argv += ["--verbose", "false"]
    log = open(common.CACHE / "llama-server.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/models")
            if conn.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        print(f"llama.cpp skipped: its server did not start (see {log.name})", file=sys.stderr)
        return None

    def stop() -> None:
        proc.terminate()
        proc.wait(30)
        log.close()

    # Same sampling as ours: no min-p, no repeat penalty (llama-cpp-python's defaults are
    # 0.05 and 1.1), and <|endoftext|> never sampled so that every request has its N tokens.
    extra = {"min_p": 0.0, "repeat_penalty": 1.0, "logit_bias": {str(EOT_ID): -100.0}}
    return Server("llama.cpp", port, extra, stop)


def consistency(server: Server, n: int, tokens: int) -> tuple[int, int]:
    """(identical, n): seeded requests decoded together, then each alone."""
    prompts = [prompt_for(i, 9) for i in range(n)]
    together: list[str | None] = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        together[i] = server.complete(prompts[i], tokens, seed=7000 + i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = [server.complete(prompts[i], tokens, seed=7000 + i) for i in range(n)]
    return sum(a == b for a, b in zip(together, alone)), n


def show(result: dict, name: str, base: float | None) -> None:
    ratio = f" ({result['tok_s'] / base:.2f}x its 1 client)" if base else ""
    print(
        f"{name:9s} {result['clients']:2d} clients: {result['tok_s']:6.1f} tok/s total{ratio}; "
        f"TTFT p50 {result['ttft_p50']:.2f} s, p95 {result['ttft_p95']:.2f} s "
        f"({result['probes']} probes); first text p50 {result['first_text_p50']:.2f} s; "
        f"request p50 {result['latency_p50']:.1f} s ({result['requests']} requests, "
        f"{result['wall_s']:.0f} s)",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: benchmarks/.cache/small")
    parser.add_argument("--gguf", type=Path, help="default: llama_anchor's small-f32.gguf")
    parser.add_argument("--llama-venv", type=Path, default=llama_anchor.VENV)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--probe-every", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--no-llama", action="store_true", help="ours only")
    args = parser.parse_args()
    checkpoint = args.checkpoint or common.checkpoint("small")
    gguf = args.gguf or llama_anchor.GGUF_DIR / "small-f32.gguf"

    ours = start_ours(checkpoint, args.threads, max(args.clients))
    llama = None
    if not args.no_llama:
        if not gguf.is_file():
            print(f"llama.cpp skipped: no {gguf} (llama_anchor.py makes it)", file=sys.stderr)
        elif (python := overlay_python(args.llama_venv)) is not None:
            llama = start_llama(python, gguf, args.threads)
    servers = [s for s in (ours, llama) if s is not None]
    print(
        f"{checkpoint} (GPT-2 small's shape, float32), {args.tokens} tokens per request, "
        f"{args.rounds} per client, top-k 40, {args.threads} threads; "
        f"python {sysconfig.get_python_version()}",
        flush=True,
    )
    try:
        for server in servers:  # warm-up
            server.stream(prompt_for(0, 0), 16, seed=1)
        base: dict[str, float] = {}
        for clients in args.clients:
            rates = []
            for server in servers:
                result = run_clients(server, clients, args.rounds, args.tokens, args.probe_every)
                show(result, server.name, base.get(server.name))
                base.setdefault(server.name, result["tok_s"])
                rates.append(result["tok_s"])
            if len(rates) == 2:
                ratio = rates[0] / rates[1]
                print(f"{'':10s} {clients:3d} clients: gpt2cli / llama.cpp = {ratio:.2f}x")
        same, n = consistency(ours, 16, 64)
        print(f"gpt2cli consistency: {same}/{n} seeded requests identical batched and alone")
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
