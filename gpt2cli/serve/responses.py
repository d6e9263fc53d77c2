"""What goes back to the client: a plain response's choices, or the server-sent events of a
streamed one, both built from the engine's events for one HTTP request.

Events of every prompt of a request arrive on one asyncio.Queue as (prompt, event); the choice
of sample s of prompt p is `choices[p * n + s]`. A `Failed` (the server stopping, a failed step)
ends a plain response as an error and a stream with an error event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gpt2cli.serve.choices import Choice
from gpt2cli.serve.engine import Failed
from gpt2cli.serve.protocol import ApiError, CompletionParams
from gpt2cli.types import Delta, Finish


class EventStream(StreamingResponse):
    """A server-sent-event response that runs `on_close` however it ends: finished, failed, or
    cut short by the client (Starlette cancels the body when the client disconnects)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def put(events: asyncio.Queue, prompt: int, event: Any) -> None:
    events.put_nowait((prompt, event))


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion_tokens = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def collect(job: CompletionParams, choices: list[Choice], events: asyncio.Queue) -> None:
    """Feed the events of every prompt into their choices until all have finished."""
    remaining = sum(c.finish_reason is None for c in choices)
    while remaining:
        prompt, event = await events.get()
        if isinstance(event, Failed):
            raise ApiError(event.status, event.message, type="server_error")
        if isinstance(event, Delta):
            choices[prompt * job.n + event.sample].delta(event)
        elif isinstance(event, Finish):
            choices[prompt * job.n + event.sample].finish(event.completion)
            remaining -= 1


async def stream(
    head: dict[str, Any],
    job: CompletionParams,
    choices: list[Choice],
    events: asyncio.Queue,
    usage: Callable[[], dict[str, int]],
) -> AsyncIterator[str]:
    """Server-sent events: the echoed prompts, then each token's text as it becomes whole
    (a UTF-8 character is never split), a last piece per choice with its finish_reason, the
    usage if asked for, and `data: [DONE]`."""
    extra = {"usage": None} if job.include_usage else {}

    def frame(piece: dict[str, Any]) -> str:
        return sse(head | {"choices": [piece]} | extra)

    if job.echo:
        for choice in choices:
            piece = choice.chunk(choice.echo_text)
            if piece["text"] or piece["logprobs"]:
                yield frame(piece)
    remaining = 0
    for choice in choices:
        if choice.finish_reason is not None:  # max_tokens 0
            yield frame(choice.chunk("", choice.finish_reason))
        else:
            remaining += 1
    while remaining:
        prompt, event = await events.get()
        if isinstance(event, Failed):
            yield sse(ApiError(event.status, event.message, type="server_error").body())
            return
        if isinstance(event, Delta):
            choice = choices[prompt * job.n + event.sample]
            choice.delta(event)
            if event.text or (choice.logprobs is not None and event.token_id is not None):
                yield frame(choice.chunk(event.text))
        elif isinstance(event, Finish):
            choice = choices[prompt * job.n + event.sample]
            choice.finish(event.completion)
            yield frame(choice.chunk("", choice.finish_reason))
            remaining -= 1
    if job.include_usage:
        yield sse(head | {"choices": [], "usage": usage()})
    yield "data: [DONE]\n\n"
