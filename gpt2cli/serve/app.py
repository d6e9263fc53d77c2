"""The Starlette app: OpenAI's completions API over the engine.

    GET  /health                 liveness, and what the engine is doing (no key needed)
    GET  /v1/models              the one model served (also /v1/models/{id})
    POST /v1/completions         OpenAI's completions, plain or streamed (server-sent events)
    POST /v1/chat/completions    404: GPT-2 is a completion model

Every error is OpenAI's error object with the matching status (400 bad input, 401 key, 404
route or model, 503 queue full or shutting down, 500 a bug), never a traceback, and the server
goes on serving. A client that goes away (mid-stream, or while waiting for a plain response)
has its sequences cancelled at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gpt2cli.runtime.scheduler import Request
from gpt2cli.runtime.scoring import prompt_logprobs
from gpt2cli.serve.choices import Choice
from gpt2cli.serve.engine import Engine
from gpt2cli.serve.protocol import ApiError, CompletionParams, Prompt, bad, parse_completion_request
from gpt2cli.serve.responses import EventStream, collect, put, stream, usage, wait_for_disconnect

log = logging.getLogger("gpt2cli.serve")

CHAT_MESSAGE = (
    "GPT-2 is a completion model, not a chat model: /v1/chat/completions is not supported. "
    "Use /v1/completions with a text prompt."
)


@dataclass(frozen=True)
class Prepared:
    """A prompt ready for the scheduler: `ids` as fed (an empty prompt is `<|endoftext|>`),
    `echo_ids` the user's own tokens, `text` the prompt as echoed."""

    ids: list[int]
    echo_ids: list[int]
    text: str


def _requests(n: int) -> str:
    """'1 request is' / 'N requests are', for the queue-full message."""
    return "1 request is" if n == 1 else f"{n} requests are"


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _api(handler: Callable[[HttpRequest], Awaitable[Response]]):
    """Turn ApiError into OpenAI's error object, and anything else into a 500 without a
    traceback (logged on the server's stderr)."""

    @functools.wraps(handler)
    async def wrapped(request: HttpRequest) -> Response:
        try:
            return await handler(request)
        except ApiError as error:
            return _error_response(error)
        except Exception as exc:
            log.error("unexpected %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(10))
            return _error_response(ApiError(500, "internal server error", type="server_error"))

    return wrapped


def create_app(
    engine: Engine, *, model_id: str, aliases: frozenset[str] = frozenset(), api_key: str | None
) -> Starlette:
    """The app serving `engine`'s model as `model_id` (also answering to `aliases`)."""
    lm = engine.lm
    tok = lm.tokenizer
    vocab_size = min(tok.vocab_size, lm.config.vocab_size)
    created = int(time.time())
    names = {model_id, *aliases}

    def authorize(request: HttpRequest) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401,
                "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.",
                code="missing_api_key",
            )
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def check_model(model: str | None) -> None:
        if model is not None and model not in names:
            raise ApiError(
                404,
                f"The model '{model}' does not exist: this server serves '{model_id}'.",
                param="model",
                code="model_not_found",
            )

    def prepare(prompt: Prompt, max_tokens: int) -> Prepared:
        if isinstance(prompt, str):
            try:
                echo_ids = tok.encode(prompt)
            except Exception:  # a lone surrogate (JSON allows "\ud800"): not text
                raise bad("prompt", "'prompt' is not valid Unicode text") from None
            prepared = Prepared(echo_ids or [lm.bos_id], echo_ids, prompt)
        else:
            prepared = Prepared(prompt, prompt, tok.decode(prompt))
        window, asked = lm.context_length, len(prepared.ids) + max_tokens
        if asked > window:
            raise bad(
                "prompt",
                f"This model's maximum context length is {window} tokens, however you "
                f"requested {asked} tokens ({len(prepared.ids)} in your prompt; {max_tokens} "
                "for the completion). Please reduce your prompt or completion length.",
                code="context_length_exceeded",
            )
        return prepared

    async def read_json(request: HttpRequest) -> Any:
        try:
            return json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise bad(None, "We could not parse the JSON body of your request.") from None

    @_api
    async def health(request: HttpRequest) -> Response:
        return JSONResponse(
            {
                "status": "closing" if engine.closed else "ok",
                "model": model_id,
                "running": engine.running,
                "waiting": engine.waiting,
                "peak_running": engine.peak_running,
                "served": engine.served,
                "cancelled": engine.cancelled,
                "max_batch": engine.max_batch,
                "max_queue": engine.max_queue,
            }
        )

    def model_card() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "gpt2cli"}

    @_api
    async def list_models(request: HttpRequest) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    @_api
    async def get_model(request: HttpRequest) -> Response:
        authorize(request)
        check_model(request.path_params["model_id"])
        return JSONResponse(model_card())

    @_api
    async def chat(request: HttpRequest) -> Response:
        authorize(request)
        raise ApiError(404, CHAT_MESSAGE, param="model", code="model_not_supported")

    @_api
    async def completions(request: HttpRequest) -> Response:
        authorize(request)
        body = await read_json(request)
        job = parse_completion_request(body, vocab_size=vocab_size, max_batch=engine.max_batch)
        check_model(body.get("model"))
        if len(job.prompts) > engine.max_queue:
            raise bad("prompt", f"at most {engine.max_queue} prompts per request (--max-queue)")
        prompts = [prepare(p, job.max_tokens) for p in job.prompts]
        scores: list[Any] = [None] * len(prompts)
        if job.echo and job.logprobs is not None:
            for i, p in enumerate(prompts):
                score = functools.partial(prompt_logprobs, lm, p.echo_ids, job.logprobs)
                scores[i] = await engine.run_job(score)
        choices = [
            Choice(
                i * job.n + s,
                tok,
                p.text,
                p.echo_ids,
                echo=job.echo,
                logprobs=job.logprobs is not None,
                prompt_scores=scores[i],
            )
            for i, p in enumerate(prompts)
            for s in range(job.n)
        ]
        # From here to the submits nothing awaits: the room checked is the room used.
        if engine.closed:
            raise ApiError(503, "the server is shutting down", type="server_error")
        if job.max_tokens and not engine.has_room(len(prompts)):
            raise ApiError(
                503,
                f"the server is busy: {_requests(engine.waiting)} already waiting "
                f"(--max-queue {engine.max_queue}); try again later",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        events: asyncio.Queue = asyncio.Queue()
        keys = submit(job, prompts, events) if job.max_tokens else []
        if not keys:
            for choice in choices:
                choice.finish_empty()
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_id,
        }
        usage_of = functools.partial(usage, sum(len(p.ids) for p in prompts), choices)
        if job.stream:
            events_out = stream(head, job, choices, events, usage_of)
            return EventStream(events_out, lambda: [engine.cancel(k) for k in keys])
        watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
        collector = asyncio.ensure_future(collect(job, choices, events))
        try:
            await asyncio.wait({watcher, collector}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not collector.done():  # the client went away: stop decoding for it
                collector.cancel()
                for key in keys:
                    engine.cancel(key)
        if not collector.done() or collector.cancelled():
            return Response(status_code=499)  # nobody is listening any more
        collector.result()  # raises the ApiError of a failed request
        return JSONResponse(head | {"choices": [c.as_dict() for c in choices], "usage": usage_of()})

    def submit(job: CompletionParams, prompts: list[Prepared], events: asyncio.Queue) -> list:
        keys = []
        config = job.config()
        for i, prompt in enumerate(prompts):
            params = job.params
            if params.seed is None:  # each prompt its own, as if sent alone
                params = replace(params, seed=random.SystemRandom().randrange(2**31))
            key = engine.new_key()
            engine.submit(
                Request(prompt.ids, params, config, key=key),
                functools.partial(put, events, i),
            )
            keys.append(key)
        return keys

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            engine.close()
            engine.stop()

    async def http_error(request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = f"{exc.detail} ({request.method} {request.url.path})"
        return _error_response(ApiError(exc.status_code, message, code=None))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
