"""The OpenAI-compatible server: GET /v1/models, POST /v1/chat/completions (streamed as server-sent events or
whole), and the chat page at /. Every answer comes from a ChatSession, the code path of `xtune chat`: the same
template, prompt, stop words and tool loop, so a greedy answer here is the one `xtune chat --greedy` gives."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.exceptions import HTTPException

from xtune.chat.generate import Generation, GenerationSettings
from xtune.chat.session import ChatSession, tool_line
from xtune.errors import XtuneError
from xtune.serve.schema import ChatRequest, RequestError, conversation, parse_request
from xtune.serve.worker import GenerationQueue, Job

MAX_BODY_BYTES = 16 * 1024 * 1024  # a few images as data: URLs


@dataclass
class ServedModel:
    name: str  # the id clients pass as `model`
    new_session: Callable[..., ChatSession]  # (settings, tool_schemas=) -> a new conversation, as `xtune chat` opens
    settings: GenerationSettings  # the operator's defaults: max_new_tokens when a request names none, stop words
    context_length: int
    takes_images: bool


def create_app(
    served: ServedModel, api_key: str | None = None, slots: int = 16, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    app = FastAPI(title="xtune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.generation = generation = GenerationQueue(slots)
    created = int(time.time())

    @app.exception_handler(RequestError)
    async def request_error(_: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:  # unknown paths and methods
        return JSONResponse(RequestError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            what = "a wrong API key" if given else "no API key"
            raise RequestError(401, f"{what}: send the server's --api-key as 'Authorization: Bearer KEY'")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        config = {"model": served.name, "images": served.takes_images, "key": api_key is not None}
        html = resources.files("xtune.serve").joinpath("page.html").read_text(encoding="utf-8")
        return html.replace("/*XTUNE_CONFIG*/null", json.dumps(config).replace("</", "<\\/"))

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict:
        check_key(request)
        check_model(name, "model")
        return model_card()

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": created, "owned_by": "xtune"}

    def check_model(name: str, param: str) -> None:
        if name != served.name:
            raise RequestError(404, f"{param}: no model {name!r} here; this server serves {served.name!r}", param)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_key(request)
        body = parse_request(await read_body(request, max_body_bytes))
        check_model(body.model, "model")
        talk = conversation(body, served.takes_images)  # the messages' mistakes, before the request takes a slot
        job = Job(_work(served, body, talk))
        if not generation.submit(job):
            raise RequestError(429, "the server is busy: every generation slot is taken; retry later", None, "busy")
        # The session opens on the generation thread (the tokenizer is not to be shared between threads): wait for
        # it, so that a prompt over the context length still gets its 400.
        event = await _next_event(job, request)
        if event is None:
            return Response(status_code=499)  # the client went away while waiting
        kind, value = event
        if kind == "error":
            e = _failure(value)
            return JSONResponse(e.body(), status_code=e.status)
        session, offered = value
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            events = _stream(job, session, head, offered, usage)
            return StreamingResponse(events, media_type="text/event-stream")
        return await _whole(job, session, head, offered, request)

    return app


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    too_big = RequestError(413, f"the body is over {limit} bytes, this server's limit")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


Conversation = tuple[str | None, list[dict], list[Image.Image]]  # schema.conversation's (system, messages, images)


def open_session(served: ServedModel, body: ChatRequest, talk: Conversation) -> tuple[ChatSession, bool]:
    """The request's conversation in a new session with its settings, and whether it offers tools of its own (whose
    calls go back to the client). On the generation thread: it tokenizes."""
    system, messages, images = talk
    offered = [t.model_dump() for t in body.tools] if body.tools and body.tool_choice != "none" else None
    settings = dataclasses.replace(
        served.settings,
        temperature=body.temperature,
        top_p=body.top_p,
        stop_words=[*served.settings.stop_words, *body.stop_words()],
    )
    try:
        session = served.new_session(settings, tool_schemas=offered)
    except XtuneError as e:
        raise RequestError(400, f"tools: {e}", "tools") from None
    if body.tool_choice == "none":  # no calls at all: neither the request's tools nor the operator's
        session.tools = session.offered = None
    if system is not None:
        session.system = system
    if images:
        session.set_images(images)
    session.history = messages
    prompt = len(session.prompt_ids(messages))
    room = served.context_length - prompt
    if room < 1:
        message = f"messages: the prompt has {prompt} tokens; the model's context is {served.context_length}"
        raise RequestError(400, message, "messages")
    wanted = body.max_completion_tokens or body.max_tokens or served.settings.max_new_tokens
    session.settings = dataclasses.replace(session.settings, max_new_tokens=min(wanted, room))
    return session, offered is not None


def _work(served: ServedModel, body: ChatRequest, talk: Conversation) -> Callable[[Job], Generation]:
    def work(job: Job) -> Generation:
        session, offered = open_session(served, body, talk)
        job.emit("ready", (session, offered))
        if body.seed is not None:  # one generation at a time: the global generator is this request's
            torch.manual_seed(body.seed)

        def on_text(text: str) -> None:
            job.emit("text", text)

        # A request with tools of its own gets the text before the calls as content, the calls as tool_calls:
        # nothing streams before the reply is known not to be a call.
        return session.respond(
            None if offered else on_text,
            lambda call, result: on_text(tool_line(call, result)),
            should_stop=job.cancelled.is_set,
        )

    return work


async def _next_event(job: Job, request: Request) -> tuple[str, Any] | None:
    """The job's next event; None when the client disconnected first (the job is then cancelled)."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                return None


def _reply(
    session: ChatSession, result: Generation, offered: bool, streamed: str
) -> tuple[str | None, list[dict] | None]:
    """(content, tool_calls) of the finished reply, read from the session's history."""
    last = session.history[-1]
    if result.finish_reason == "tool_calls":
        calls = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": _arguments(c["function"]["arguments"]),
                },
            }
            for c in last["tool_calls"]
        ]
        return last["content"] or None, calls
    return (result.text if offered else streamed), None


def _arguments(arguments: dict | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _usage(result: Generation) -> dict:
    total = result.prompt_tokens + result.completion_tokens
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens, "total_tokens": total}


def _failure(e: Exception) -> RequestError:
    if isinstance(e, RequestError):
        return e
    if isinstance(e, XtuneError):
        return RequestError(400, str(e))
    return RequestError(500, f"generation failed: {type(e).__name__}: {e}", None, "server_error")


async def _whole(job: Job, session: ChatSession, head: dict, offered: bool, request: Request) -> Response:
    streamed = []
    while True:
        event = await _next_event(job, request)
        if event is None:
            return Response(status_code=499)
        kind, value = event
        if kind == "text":
            streamed.append(value)
        elif kind == "error":
            e = _failure(value)
            return JSONResponse(e.body(), status_code=e.status)
        else:
            content, calls = _reply(session, value, offered, "".join(streamed))
            message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
            choice = {"index": 0, "message": message, "finish_reason": value.finish_reason, "logprobs": None}
            return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": _usage(value)})


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(job: Job, session: ChatSession, head: dict, offered: bool, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI writes them: a role delta, content deltas, tool-call deltas with their index,
    a last chunk with the finish_reason, the usage chunk when asked for, and a raw `data: [DONE]`. A client that
    disconnects ends this generator, which cancels the job."""
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        pending = None
        while True:
            kind, value = pending or await job.events.get()
            pending = None
            if kind == "text":
                text = [value]
                while not job.events.empty():  # the text that came while the last chunk was sent: one chunk
                    pending = job.events.get_nowait()
                    if pending[0] != "text":
                        break
                    text.append(pending[1])
                    pending = None
                yield chunk({"content": "".join(text)})
                continue
            if kind == "error":
                yield _event(_failure(value).body())
            else:
                content, calls = _reply(session, value, offered, "")
                if offered and content:
                    yield chunk({"content": content})
                for index, call in enumerate(calls or []):
                    yield chunk({"tool_calls": [{"index": index, **call}]})
                yield chunk({}, value.finish_reason)
                if include_usage:
                    yield _event({**head, "choices": [], "usage": _usage(value)})
            yield "data: [DONE]\n\n"
            return
    finally:
        job.cancelled.set()  # a no-op once the job is done; otherwise the client went away
