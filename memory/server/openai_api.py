"""The memory as an OpenAI-compatible model: ``POST /v1/chat/completions`` (streamed too) and ``GET /v1/models``.

Any OpenAI client or agent framework can ask the memory: ``model`` names the memory to answer from,
``pmem/<namespace>`` with an optional routing mode, ``pmem/<namespace>:hybrid`` (``auto`` by default; or
``"pmem": {"mode": ...}`` in the body). The same API keys (``Authorization: Bearer``) and namespaces apply as
on the rest of the server: a key answers from the namespaces it covers with the ``read`` role.

What is asked: the last user message is the question. It alone is searched, routed and put in the prompt, in the
prompt format the adapters were trained with (a small model's window and the adapters' training prompt leave no
room for a transcript), so an answer here equals ``POST /v1/namespaces/{ns}/query``'s. Earlier turns become
memory instead: with ``"pmem": {"session": "<id>"}`` the turns the session's transcript does not yet end with are
appended to it, and the facts the user stated are kept (:mod:`memory.services.conversations`, rules), where later
questions find them; this needs the ``write`` role. System messages are recorded like any turn but do not change
the prompt. Answers are greedy whatever ``temperature`` says.

The response carries OpenAI's fields (``id``, ``object``, ``created``, ``model``, ``choices`` with
``message``/``finish_reason``, ``usage``) and the memory's own in ``pmem``: the mode that answered and why, the
adapters and the passages (``sources``), the query id for feedback. Streamed, it is ``chat.completion.chunk``
events ending with ``data: [DONE]``; ``pmem`` comes in the last chunk. Errors are OpenAI's
``{"error": {"message", "type", "param", "code"}}``, ``code`` one of the server's stable codes with its status
(``unauthorized`` 401, ``forbidden`` 403, ``not_found`` 404 for a model that is not a memory,
``invalid_request`` or ``malformed_json`` 400 for bad input, ``busy`` 503 with ``Retry-After``, ``timeout`` 504).

>>> parse_model("pmem/support:hybrid")
('support', 'hybrid')
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as BodyError

from memory.errors import PMemError, ValidationError
from memory.server.app import ERROR_CODES, ApiError, _pmem_error_code
from memory.server.auth import Principal

MODEL_PREFIX = "pmem/"
MODES = ("auto", "parametric", "retrieval", "hybrid")
DEFAULT_MAX_TOKENS = 64

#: OpenAI's error ``type`` for the server's error codes (the rest are ``invalid_request_error``).
ERROR_TYPES = {
    "unauthorized": "authentication_error",
    "forbidden": "permission_error",
    "not_found": "not_found_error",
    "busy": "server_overloaded",
    "not_ready": "server_error",
    "timeout": "timeout",
    "internal": "server_error",
}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape. ``code`` is one of the server's codes (``ERROR_CODES``), whose status
    it is answered with; ``type`` is OpenAI's."""

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        # bad input is OpenAI's 400 invalid_request_error, where the rest of the server says 422 invalid_input
        self.code = "invalid_request" if code in ("invalid_input", "unknown_field") else code
        self.status = ERROR_CODES[self.code]
        self.message, self.param = message, param
        self.type = ERROR_TYPES.get(self.code, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_response(e: OpenAIError) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with the error's status."""
    headers = {"Retry-After": "2"} if e.status == 503 else None
    if e.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def parse_model(model: str) -> tuple[str, str | None]:
    """``pmem/<namespace>[:<mode>]`` -> ``(namespace, mode or None)``; an :class:`OpenAIError` 404 otherwise.

    >>> parse_model("pmem/default")
    ('default', None)
    """
    if not model.startswith(MODEL_PREFIX) or len(model) == len(MODEL_PREFIX):
        raise OpenAIError(
            "not_found",
            f"the model {model!r} is not a memory: name one as 'pmem/<namespace>' (or 'pmem/<namespace>:<mode>', "
            f"mode one of {', '.join(MODES)}); GET /v1/models lists them",
            param="model",
        )
    ns, _, mode = model[len(MODEL_PREFIX) :].partition(":")
    if mode and mode not in MODES:
        raise OpenAIError(
            "invalid_request",
            f"unknown routing mode {mode!r} in the model name; use one of {', '.join(MODES)}",
            param="model",
        )
    return ns, mode or None


# ---------------------------------------------------------------------------- request bodies
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: accepted, not used
    role: str
    content: str | list[dict[str, Any]] | None = None


class MemoryOptions(BaseModel):
    """The memory's own options: ``"pmem": {...}`` in the body (``extra_body`` in the OpenAI client)."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["auto", "parametric", "retrieval", "hybrid"] | None = None
    k: int | None = Field(default=None, ge=1)
    document_ids: list[str] | None = None
    skill: int | None = Field(default=None, ge=1)
    log: bool = True
    session: str | None = Field(default=None, min_length=1, description="Append the turns to this conversation.")


class ChatRequest(BaseModel):
    # OpenAI clients send many optional fields (user, metadata, seed, ...): accepted and not used, unless they
    # ask for something this endpoint cannot do (below).
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = 1
    temperature: float | None = None  # answers are greedy whatever it says
    top_p: float | None = None
    tools: list[Any] | None = None
    pmem: MemoryOptions | None = None


def _parse(raw: bytes) -> ChatRequest:
    try:
        data = json.loads(raw)
    except ValueError:
        raise OpenAIError("malformed_json", "the request body is not valid JSON") from None
    try:
        body = ChatRequest.model_validate(data)
    except BodyError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise OpenAIError("invalid_request", f"{where}: {first.get('msg', 'invalid')}", param=where) from None
    if body.n != 1:
        raise OpenAIError("invalid_request", "n must be 1: the memory gives one answer", param="n")
    if body.tools:
        raise OpenAIError("invalid_request", "tools are not supported: the memory answers in text", param="tools")
    return body


def split_turns(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """``(question, turns)``: the last user message's text and every turn normalised (roles checked)."""
    from memory.services.conversations import normalise_turns

    try:
        turns = normalise_turns([m.model_dump(include={"role", "content"}) for m in messages])
    except ValidationError as e:
        raise OpenAIError("invalid_request", str(e), param="messages") from None
    questions = [text for role, text in turns if role == "user" and text.strip()]
    if not questions:
        raise OpenAIError("invalid_request", "messages hold no user message to answer", param="messages")
    if turns[-1][0] != "user":
        raise OpenAIError("invalid_request", "the last message must be the user's question", param="messages")
    return questions[-1], turns


def new_turns(stored: list[tuple[str, str]], sent: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The turns of ``sent`` that the transcript ``stored`` does not already end with (an OpenAI client sends
    the whole conversation every time, or a window of its end).

    >>> a, b, c = ("user", "hi"), ("assistant", "hello"), ("user", "bye")
    >>> new_turns([a, b], [a, b, c]), new_turns([a, b], [b, c]), new_turns([], [a])
    ([('user', 'bye')], [('user', 'bye')], [('user', 'hi')])
    """
    for k in range(min(len(stored), len(sent)), 0, -1):
        if stored[-k:] == sent[:k]:
            return sent[k:]
    return sent


# ---------------------------------------------------------------------------- the routes
def openai_router(app: FastAPI, caller: Callable[[Request], Awaitable[Principal]]) -> APIRouter:
    """The routes over the server's memory (``app.state``); ``caller`` is the server's key check."""
    router = APIRouter(tags=["openai"])
    amem, lim, metrics = app.state.amem, app.state.limits, app.state.metrics
    memory = amem.memory

    async def who(request: Request) -> Principal:
        try:
            return await caller(request)
        except ApiError as e:
            raise OpenAIError(e.code, e.message) from None

    async def bounded(coro: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(coro, lim.query_timeout_s)
        except TimeoutError:
            raise OpenAIError(
                "timeout", f"no answer within {lim.query_timeout_s:g} s; the model is overloaded"
            ) from None

    def entry(ns: str) -> dict[str, Any]:
        return {"id": f"{MODEL_PREFIX}{ns}", "object": "model", "created": 0, "owned_by": "pmem"}

    @router.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        """The memories the key may ask: ``pmem/<namespace>`` for each namespace it sees."""
        try:
            principal = await who(request)
            names = await amem.namespaces()
        except OpenAIError as e:
            return error_response(e)
        return JSONResponse({"object": "list", "data": [entry(n) for n in names if principal.sees(n)]})

    @router.get("/v1/models/{model:path}")
    async def model(request: Request, model: str) -> JSONResponse:
        """One memory, if the key sees its namespace."""
        try:
            principal = await who(request)
            ns, _ = parse_model(model)
            if not principal.sees(ns) or ns not in await amem.namespaces():
                raise OpenAIError("not_found", f"no memory {model!r} for this key", param="model")
        except OpenAIError as e:
            return error_response(e)
        return JSONResponse(entry(ns))

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        """Answer the last user message from the memory ``model`` names (see the module docstring)."""
        try:
            principal = await who(request)
            body = _parse(await request.body())
            ns, mode = parse_model(body.model)
            opts = body.pmem or MemoryOptions()
            if not principal.can(ns, "read") or (opts.session and not principal.can(ns, "write")):
                raise OpenAIError("forbidden", "this API key may not do that in this namespace")
            from memory.api import validate_namespace

            validate_namespace(ns)
            question, turns = split_turns(body.messages)
            max_new_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
            if max_new_tokens > lim.max_new_tokens:
                raise OpenAIError(
                    "invalid_request",
                    f"max_tokens is over this server's limit of {lim.max_new_tokens}",
                    param="max_tokens",
                )
            if opts.k is not None and opts.k > lim.max_k:
                raise OpenAIError("invalid_request", f"pmem.k is over the limit of {lim.max_k}", param="pmem.k")
            if opts.session:
                await amem.run_io(remember_turns, memory, opts.session, ns, turns)
            kwargs = {
                "namespace": ns,
                "mode": opts.mode or mode or "auto",
                "k": opts.k or 4,
                "document_ids": opts.document_ids,
                "max_new_tokens": max_new_tokens,
                "skill": opts.skill,
                "log": opts.log,
            }
            reply = Reply(body.model, max_new_tokens)
            if body.stream:
                include_usage = bool((body.stream_options or {}).get("include_usage"))
                return await stream(reply, amem.stream_query(question, **kwargs), include_usage)
            r = await bounded(amem.query(question, **kwargs))
        except OpenAIError as e:
            return error_response(e)
        except PMemError as e:
            return error_response(OpenAIError(_pmem_error_code(e), str(e)))
        metrics.queries.labels(r.mode).inc()
        return JSONResponse(reply.completion(r))

    async def stream(reply: "Reply", items: AsyncIterator[Any], include_usage: bool) -> StreamingResponse:
        deadline = time.monotonic() + lim.query_timeout_s
        first = await bounded(items.__anext__())  # errors before the first piece are plain JSON errors

        async def events() -> AsyncIterator[str]:
            yield _data(reply.chunk({"role": "assistant", "content": ""}))
            item = first
            while isinstance(item, str):
                yield _data(reply.chunk({"content": item}))
                try:
                    item = await asyncio.wait_for(items.__anext__(), max(deadline - time.monotonic(), 0.0))
                except TimeoutError:
                    yield _data(OpenAIError("timeout", f"no answer within {lim.query_timeout_s:g} s").body())
                    return
                except PMemError as e:
                    yield _data(OpenAIError(_pmem_error_code(e), str(e)).body())
                    return
                except Exception as e:  # noqa: BLE001 - the stream has started: report the failure in it
                    yield _data(OpenAIError("internal", f"internal error ({type(e).__name__})").body())
                    return
            metrics.queries.labels(item.mode).inc()
            yield _data(reply.chunk({}, reply.finish_reason(item), pmem=reply.extra(item)))
            if include_usage:
                yield _data({**reply.chunk({}), "choices": [], "usage": reply.usage(item)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    return router


def remember_turns(memory: Any, session: str, ns: str, turns: list[tuple[str, str]]) -> None:
    """Append to the session's transcript the turns it does not end with, keeping the facts they state."""
    fresh = new_turns(memory.conversations.transcript(session, namespace=ns), turns)
    if fresh:
        memory.add_conversation(fresh, session=session, namespace=ns, extract="rules")


class Reply:
    """The OpenAI objects of one answer (a completion, or the chunks of a streamed one)."""

    def __init__(self, model: str, max_new_tokens: int) -> None:
        self.model, self.max_new_tokens = model, max_new_tokens
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def finish_reason(self, r: Any) -> str:
        return "length" if r.completion_tokens >= self.max_new_tokens else "stop"

    def usage(self, r: Any) -> dict[str, int]:
        return {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        }

    @staticmethod
    def extra(r: Any) -> dict[str, Any]:
        """The memory's side of the answer: everything ``POST /query`` returns but the answer."""
        d = r.to_dict()
        d.pop("answer", None)
        d["sources"] = d.pop("chunks", [])
        return d

    def completion(self, r: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": r.answer},
                    "finish_reason": self.finish_reason(r),
                    "logprobs": None,
                }
            ],
            "usage": self.usage(r),
            "pmem": self.extra(r),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            **extra,
        }


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, default=str)}\n\n"


__all__ = ["MODEL_PREFIX", "OpenAIError", "openai_router", "parse_model"]
