"""`gpt2 serve`: OpenAI's completions API over the continuous-batching scheduler, started as a
user starts it (on 127.0.0.1, a free port) and driven with the official `openai` client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from gpt2cli.commands.serve import exposure_warning
from gpt2cli.runtime.loader import LoadedModel, load_model
from gpt2cli.runtime.scoring import score_ids
from gpt2cli.serve.choices import token_string
from gpt2cli.serve.protocol import ApiError, parse_completion_request
from tests.support.cli import assert_one_line_error, gpt2
from tests.support.server import ServerProcess, request

KEY = "test-key"
LONG = {"ignore_eos": True}  # through extra_body: the random model may end early otherwise


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("serve-home")
    return {
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "OMP_NUM_THREADS": "1",
        "GPT2_API_KEY": "",
    }


@pytest.fixture(scope="module")
def server(long_checkpoint: Path, server_env: dict[str, str]):
    """The long-window checkpoint, so that a request of thousands of tokens runs for seconds
    (time to look at it while it decodes); the key from GPT2_API_KEY."""
    args = ("-m", str(long_checkpoint), "--max-batch", "8")
    with ServerProcess(*args, env=server_env | {"GPT2_API_KEY": KEY}) as running:
        yield running


def make_client(url: str, key: str = KEY) -> openai.OpenAI:
    with pytest.MonkeyPatch.context() as env:  # loopback only, never through a proxy
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    with make_client(server.url) as c:
        yield c


@pytest.fixture(scope="module")
def model(long_checkpoint: Path) -> str:
    return str(long_checkpoint)


@pytest.fixture(scope="module")
def lm(long_checkpoint: Path) -> LoadedModel:
    return load_model(long_checkpoint, device="cpu")


def test_models_lists_the_served_model(client: openai.OpenAI, model: str) -> None:
    assert [m.id for m in client.models.list().data] == [model]


def test_greedy_completion_equals_generate(client: openai.OpenAI, model: str) -> None:
    prompt = "The quick brown fox"
    got = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    proc = gpt2("generate", "-m", model, "-t", "0", "-n", "12", "--json", prompt)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    choice = got.choices[0]
    assert choice.text == record["text"] and choice.text
    assert got.object == "text_completion" and got.id.startswith("cmpl-") and got.model == model
    assert got.usage.prompt_tokens == record["prompt_tokens"]
    assert got.usage.completion_tokens == record["completion_tokens"]
    assert got.usage.total_tokens == record["prompt_tokens"] + record["completion_tokens"]
    assert choice.finish_reason == {"length": "length", "eos": "stop"}[record["finish_reason"]]


def collect_stream(stream) -> dict[int, dict]:
    """index -> text, logprob tokens and finish_reason, from a streamed completion."""
    out: dict[int, dict] = {}
    for chunk in stream:
        for piece in chunk.choices:
            seen = out.setdefault(piece.index, {"text": "", "tokens": [], "finish": None})
            seen["text"] += piece.text
            if piece.logprobs is not None:
                seen["tokens"] += piece.logprobs.tokens
                assert len(piece.logprobs.text_offset) == len(piece.logprobs.tokens)
            if piece.finish_reason is not None:
                assert seen["finish"] is None
                seen["finish"] = piece.finish_reason
    return out


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_text_equals_plain(client: openai.OpenAI, model: str, echo: bool) -> None:
    """Several samples of a prompt with multi-byte characters, a stop string the text really
    contains: the concatenated deltas are the plain response's text, token for token."""
    args = dict(model=model, prompt="東京タワー 🎉 Once", max_tokens=40, seed=11, n=2, logprobs=2)
    unstopped = client.completions.create(**args, extra_body=LONG).choices[0].text
    stop = next(unstopped[i : i + 2] for i in range(8, 40) if unstopped[i : i + 2].strip())
    args |= {"stop": [stop, "never there"], "echo": echo}
    plain = client.completions.create(**args)
    streamed = collect_stream(client.completions.create(**args, stream=True))
    assert sorted(streamed) == [0, 1]
    for choice in plain.choices:
        got = streamed[choice.index]
        assert got["text"] == choice.text
        assert got["tokens"] == choice.logprobs.tokens
        assert got["finish"] == choice.finish_reason
    first = plain.choices[0]
    assert first.finish_reason == "stop"
    start = len(args["prompt"]) if echo else 0
    assert first.text[start:] == unstopped[: unstopped.index(stop)]


def test_stream_reports_usage_when_asked(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.completions.create(
            model=model,
            prompt="Hello",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=LONG,
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_n_with_a_seed_repeats(client: openai.OpenAI, model: str) -> None:
    def texts(seed: int, n: int) -> list[str]:
        got = client.completions.create(
            model=model, prompt="Hello", n=n, seed=seed, max_tokens=10, extra_body=LONG
        )
        assert [c.index for c in got.choices] == list(range(n))
        return [c.text for c in got.choices]

    first = texts(42, 3)
    assert texts(42, 3) == first
    assert len(set(first)) > 1  # the samples differ from each other
    assert texts(43, 3) != first
    assert texts(42, 1) == first[:1]  # sample 0 of seed S draws from S itself


def test_logprobs_in_the_legacy_format(client: openai.OpenAI, model: str) -> None:
    prompt = "The quick brown fox"
    got = client.completions.create(
        model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=3, extra_body=LONG
    )
    lp = got.choices[0].logprobs
    n = got.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n == 8
    assert lp.text_offset[0] == len(prompt)  # offsets count from the prompt's start
    assert lp.text_offset == sorted(lp.text_offset)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert token in top and 3 <= len(top) <= 4
        assert logprob == pytest.approx(max(top.values()))  # greedy: the likeliest token
        assert logprob <= 0


def test_echo_with_logprobs_scores_the_prompt(
    client: openai.OpenAI, model: str, lm: LoadedModel
) -> None:
    prompt = "Once upon a time, in a land far away"
    got = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = got.choices[0]
    ids = lm.tokenizer.encode(prompt)
    expected, _ = score_ids(lm, ids)
    assert choice.text == prompt and choice.finish_reason == "length"
    assert choice.logprobs.tokens == [token_string(lm.tokenizer, i) for i in ids]
    assert "".join(choice.logprobs.tokens) == prompt
    assert choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected[1:], abs=1e-4)
    assert got.usage.prompt_tokens == len(ids) and got.usage.completion_tokens == 0


def test_token_id_prompts(client: openai.OpenAI, model: str, lm: LoadedModel) -> None:
    """A list of token ids is the same prompt as its text; a list of prompts gives n choices
    each, prompt-major."""
    ids = lm.tokenizer.encode("The quick brown fox")
    as_text = client.completions.create(
        model=model, prompt="The quick brown fox", max_tokens=6, temperature=0
    )
    as_ids = client.completions.create(
        model=model, prompt=[ids, ids[:2]], max_tokens=6, temperature=0, n=2, echo=True
    )
    assert [c.index for c in as_ids.choices] == [0, 1, 2, 3]
    echoed = lm.tokenizer.decode(ids)
    assert as_ids.choices[0].text == echoed + as_text.choices[0].text
    assert as_ids.choices[1].text == as_ids.choices[0].text  # greedy: both samples agree
    assert as_ids.usage.prompt_tokens == len(ids) + 2


def test_concurrent_requests_decode_as_they_would_alone(client: openai.OpenAI, model: str):
    """8 requests at once (different prompts, lengths, seeds and sampling settings) give what
    each gives alone. On this checkpoint batched and alone agree exactly (float32, CPU); at
    GPT-2 small's shape batched products round differently enough to flip some sampled tokens
    of a random-weight model (benchmarks/bench_serve.py counts how often)."""
    prompts = [f"Request {i}: once upon a time" + " there" * i for i in range(8)]
    start = threading.Barrier(8)

    def run(i: int, together: bool) -> str:
        if together:
            start.wait()
        extra = LONG | {"top_k": [0, 5][i % 2], "repetition_penalty": [1.0, 1.3, 0.8][i % 3]}
        got = client.completions.create(
            model=model,
            prompt=prompts[i],
            max_tokens=10 + 5 * i,
            seed=100 + i,
            temperature=[1.0, 0.7, 0.0, 1.0][i % 4],
            extra_body=extra,
        )
        return got.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: run(i, True), range(8)))
    alone = [run(i, False) for i in range(8)]
    assert together == alone


def test_streams_decode_together_and_a_disconnect_cancels(
    client: openai.OpenAI, server: ServerProcess, model: str
) -> None:
    """8 long streams are all decoding at once; closing them mid-stream cancels their
    sequences (the engine counts them), and the server goes on serving."""
    before = server.get("/health")[1]
    streams = [
        client.completions.create(
            model=model, prompt=f"Story {i}", max_tokens=6000, stream=True, extra_body=LONG
        )
        for i in range(8)
    ]
    for stream in streams:
        assert next(iter(stream)).choices[0].finish_reason is None
    health = server.get("/health")[1]
    assert health["running"] == 8 and health["waiting"] == 0 and health["peak_running"] == 8
    for stream in streams:
        stream.close()
    health = server.wait_until(lambda h: h["running"] == 0)
    assert health["cancelled"] == before["cancelled"] + 8
    assert health["served"] == before["served"]  # none ran to its 6000 tokens
    again = client.completions.create(model=model, prompt="Still there?", max_tokens=3)
    assert again.choices[0].finish_reason in ("length", "stop")


def test_a_client_gone_before_its_plain_response_is_cancelled(server: ServerProcess) -> None:
    before = server.get("/health")[1]
    body = json.dumps({"prompt": "Wait for it", "max_tokens": 6000, "ignore_eos": True})
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall((head + body).encode())
        server.wait_until(lambda h: h["running"] == before["running"] + 1)
    health = server.wait_until(lambda h: h["running"] == before["running"])
    assert health["cancelled"] == before["cancelled"] + 1
    assert health["served"] == before["served"]


BAD_REQUESTS = [
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"top_k": "5"}, 400, "top_k"),
    ({"repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"seed": -1}, 400, "seed"),
    ({"n": 0}, 400, "n"),
    ({"n": 9}, 400, "n"),  # more than --max-batch 8
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"max_tokens": 9000}, 400, "prompt"),  # past the window
    ({"logprobs": 6}, 400, "logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": [""]}, 400, "stop"),
    ({"echo": "yes"}, 400, "echo"),
    ({"suffix": "The end."}, 400, "suffix"),
    ({"best_of": 2}, 400, "best_of"),
    ({"frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ({"presence_penalty": 1}, 400, "presence_penalty"),
    ({"logit_bias": {"50": 10}}, 400, "logit_bias"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"temprature": 0.5}, 400, "temprature"),  # a typo is not a default
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [1, 2, 10**6]}, 400, "prompt"),
    ({"prompt": ["a", 1]}, 400, "prompt"),
    ({"prompt": ["a"] * 65}, 400, "prompt"),  # more prompts than --max-queue 64
    ({"model": "gpt-3.5-turbo-instruct"}, 404, "model"),
]


@pytest.mark.parametrize(("fields", "status", "param"), BAD_REQUESTS)
def test_bad_input_is_an_openai_error_naming_the_field(
    server: ServerProcess, fields: dict, status: int, param: str
) -> None:
    body = {"prompt": "Hello", "max_tokens": 2} | fields
    got_status, got = request(server.url + "/v1/completions", body, key=KEY)
    assert got_status == status
    assert set(got) == {"error"} and set(got["error"]) == {"message", "type", "param", "code"}
    assert got["error"]["param"] == param and got["error"]["message"]
    assert got["error"]["type"] == "invalid_request_error"


def test_malformed_requests(server: ServerProcess, client: openai.OpenAI, model: str) -> None:
    url = server.url
    status, got = request(url + "/v1/completions", raw=b"{not json", key=KEY)
    assert status == 400 and "JSON" in got["error"]["message"]
    status, got = request(url + "/v1/completions", raw=b'{"prompt": "\\ud800"}', key=KEY)
    assert status == 400 and got["error"]["param"] == "prompt"
    status, got = request(url + "/v1/chat/completions", {"messages": []}, key=KEY)
    assert status == 404 and "completion model" in got["error"]["message"]
    status, got = request(url + "/v1/embeddings", {"input": "x"}, key=KEY)
    assert status == 404 and got["error"]["message"] == "Invalid URL (POST /v1/embeddings)"
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=model, prompt="Hi", temperature=-1)
    assert raised.value.status_code == 400 and raised.value.param == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    assert server.get("/health")[1]["status"] == "ok"  # still serving
    assert "Traceback" not in server.stderr


def test_api_key(server: ServerProcess, model: str) -> None:
    with make_client(server.url, key="wrong") as wrong, pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=model, prompt="Hi", max_tokens=1)
    status, got = request(server.url + "/v1/completions", {"prompt": "Hi"})
    assert status == 401 and got["error"]["code"] == "missing_api_key"
    status, got = request(server.url + "/v1/models", key="wrong")
    assert status == 401 and got["error"]["code"] == "invalid_api_key"
    assert server.get("/health")[0] == 200  # health needs no key


@pytest.fixture(scope="module")
def one_row_server(long_checkpoint: Path, server_env: dict[str, str]):
    """One row and room for one waiting request, no key; test_ctrl_c stops it."""
    args = ("-m", str(long_checkpoint), "--max-batch", "1", "--max-queue", "1")
    with ServerProcess(*args, env=server_env) as running:
        yield running


def test_a_full_queue_answers_503(one_row_server: ServerProcess, model: str) -> None:
    server = one_row_server
    with make_client(server.url, "unused") as client:
        running = client.completions.create(
            model=model, prompt="Busy", max_tokens=6000, stream=True, extra_body=LONG
        )
        next(iter(running))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                client.completions.create, model=model, prompt="Next", max_tokens=3
            )
            server.wait_until(lambda h: h["waiting"] == 1)
            status, got = request(server.url + "/v1/completions", {"prompt": "One more"})
            assert status == 503 and got["error"]["code"] == "queue_full"
            assert got["error"]["type"] == "server_error"
            assert "1 request is already waiting (--max-queue 1)" in got["error"]["message"]
            running.close()  # the row frees, the waiting request runs
            assert waiting.result(timeout=60).choices[0].finish_reason in ("length", "stop")


def test_ctrl_c_ends_streams_and_exits_130(one_row_server: ServerProcess, model: str) -> None:
    """The first Ctrl-C ends the requests in flight (a stream gets an error event) and the
    server exits 130, as a shell reports Ctrl-C, without a traceback."""
    server = one_row_server
    with make_client(server.url, "unused") as client:
        stream = client.completions.create(
            model=model, prompt="Go on", max_tokens=6000, stream=True, extra_body=LONG
        )
        next(iter(stream))
        server.proc.send_signal(signal.SIGINT)
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
    assert server.stop(None) == 130
    assert "Traceback" not in server.stderr, server.stderr


def test_without_the_extra_says_how_to_install(long_checkpoint: Path) -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; from gpt2cli.cli import main; "
        f"main(['serve', '-m', {str(long_checkpoint)!r}])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert_one_line_error(proc, 1, 'pip install "gpt2cli[serve]"', "uvicorn")


def test_a_port_in_use_is_a_one_line_error(long_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = gpt2("serve", "-m", str(long_checkpoint), "--port", str(port))
    assert_one_line_error(proc, 1, f"cannot listen on 127.0.0.1:{port}")


def test_bad_flags_fail_before_loading() -> None:
    assert_one_line_error(gpt2("serve", "--max-batch", "0"), 2, "--max-batch")
    assert_one_line_error(gpt2("serve", "--port", "70000"), 2, "--port")


def test_serve_help_and_flag_checks_stay_light() -> None:
    """`gpt2 serve --help` and the request checks import neither torch nor the web stack."""
    code = (
        "import sys, gpt2cli.cli, gpt2cli.commands.serve, gpt2cli.serve.protocol, "
        "gpt2cli.serve.network; "
        "sys.exit(bool({'torch', 'starlette', 'uvicorn'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    proc = gpt2("serve", "--help")
    assert (
        proc.returncode == 0 and "completions API" in proc.stdout and "--max-batch" in proc.stdout
    )


def test_exposed_without_a_key_warns() -> None:
    assert "--api-key" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "secret") is None
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert exposure_warning(host, None) is None


def test_openai_defaults_not_the_cli_ones() -> None:
    job = parse_completion_request({}, vocab_size=1000, max_batch=4)
    assert job.prompts == [""] and job.max_tokens == 16 and job.n == 1
    assert (job.params.temperature, job.params.top_k, job.params.top_p) == (1.0, 0, 1.0)
    assert job.params.seed is None and job.logprobs is None and not job.stream
    with pytest.raises(ApiError) as raised:
        parse_completion_request([], vocab_size=1000, max_batch=4)
    assert raised.value.status == 400
