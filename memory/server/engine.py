"""``pmem engine``: a minimal generation engine over the local base model that speaks the subset of vLLM's
OpenAI-compatible API the remote backend (:mod:`memory.models.remote`) uses.

- ``GET /v1/models``: the base model (with its ``pmem_fingerprint``) and the loaded adapters (``parent`` set);
- ``POST /v1/completions``: ``prompt`` as text, token ids or a list of either; ``max_tokens``, ``temperature``,
  ``top_p``, ``seed``, ``stop``, ``ignore_eos``, ``stream``, ``logprobs`` (the sampled token's),
  ``return_tokens_as_token_ids`` and ``return_token_ids``; ``model`` is the base model or a loaded adapter's name;
- ``POST /v1/load_lora_adapter`` (``{"lora_name", "lora_path"}``, a PEFT directory) and
  ``POST /v1/unload_lora_adapter`` (``{"lora_name"}``), as vLLM with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.

It exists so a memory server configured with ``PMEM_GENERATION_URL`` can be tested end to end without vLLM,
and so one CPU or GPU machine can generate for several memory servers. With ``max_batch`` > 1, concurrent
completions are decoded together by the continuous-batching scheduler
(:class:`memory.models.batching.BatchScheduler`), each row with its own adapter, as vLLM batches LoRA requests.
Loaded adapters live in memory until unloaded, until ``max_loras`` others were used more recently (loading one
more unloads the least recently used), or until the process ends (a restart forgets them, as vLLM's does). A
request for an adapter no longer loaded answers 404, and the memory server loads it again. A streamed completion
sends text pieces as they are generated and the token ids and log-probabilities in its last chunk; a client that
leaves mid-stream, or before the answer of a completion that is not streamed, takes its rows out of the batch
(with ``max_batch`` > 1).

>>> app = create_engine_app(load_base_model())  # doctest: +SKIP
"""

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as BodyError

from memory.batch_route import Batching, batched
from memory.errors import PMemError, ValidationError
from memory.models.batching import GenerationCancelled

log = logging.getLogger(__name__)


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM's and OpenAI's other options: accepted, not used
    model: str
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: int | None = Field(default=None, ge=0)
    n: int = 1
    echo: bool = False
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False


class LoadAdapter(BaseModel):
    model_config = ConfigDict(extra="allow")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="allow")
    lora_name: str = Field(min_length=1)


class _Refused(Exception):
    def __init__(self, status: int, message: str, type: str = "BadRequestError") -> None:  # noqa: A002
        super().__init__(message)
        self.status, self.message, self.type = status, message, type


def create_engine_app(
    base: Any,
    *,
    served_model_name: str | None = None,
    api_key: str | None = None,
    max_concurrent: int = 1,
    max_loras: int | None = None,
    max_batch: int = 1,
) -> FastAPI:
    """The engine's ASGI app over ``base`` (a :class:`~memory.models.base.BaseModel`).

    Args:
        served_model_name: the base model's name in ``/v1/models`` and ``model`` (default: ``base.name``).
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        max_concurrent: completion requests generating at once (more wait their turn).
        max_loras: adapters kept loaded at most; loading one more unloads the least recently used (loaded or
            asked for in a completion). ``None``: no bound.
        max_batch: rows decoded together; above 1 the requests' generations go to one continuous-batching
            scheduler (keep ``max_concurrent`` at least this), at 1 each request generates alone.
    """
    if max_loras is not None and max_loras < 1:
        raise ValidationError(f"max_loras must be >= 1, got {max_loras!r}")
    if max_batch < 1 or max_concurrent < 1:
        raise ValidationError(f"need max_batch >= 1 and max_concurrent >= 1, got {max_batch!r}, {max_concurrent!r}")
    batching = Batching(max_batch=max_batch) if max_batch > 1 else None
    name = served_model_name or base.name
    # lora_name -> (lora_path, LoraAdapter), least recently used first
    adapters: OrderedDict[str, tuple[str, Any]] = OrderedDict()
    lock = threading.Lock()
    gate = asyncio.Semaphore(max_concurrent)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if batching is not None:
            await asyncio.to_thread(batching.close)  # rows in flight finish first

    app = FastAPI(title="pmem engine", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.batching = batching  # its schedulers' counters (max_rows, stats) for tests and benchmarks

    @app.exception_handler(_Refused)
    async def _refused(request: Request, e: _Refused) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": e.message, "type": e.type, "param": None, "code": e.status}}, status_code=e.status
        )

    @app.middleware("http")
    async def _key(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return JSONResponse(
                    {
                        "error": {
                            "message": "invalid API key",
                            "type": "AuthenticationError",
                            "param": None,
                            "code": 401,
                        }
                    },
                    status_code=401,
                )
        return await call_next(request)

    async def body_of(request: Request, model: type[BaseModel]) -> Any:
        try:
            return model.model_validate(json.loads(await request.body()))
        except (ValueError, BodyError) as e:
            raise _Refused(400, f"invalid request: {str(e)[:500]}") from None

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The base model, then the loaded adapters."""
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "pmem",
                "root": str(base.path or name),
                "parent": None,
                "pmem_fingerprint": base.fingerprint,
            }
        ]
        with lock:
            loaded = sorted((n, path) for n, (path, _) in adapters.items())
        data += [
            {"id": n, "object": "model", "created": 0, "owned_by": "pmem", "root": path, "parent": name}
            for n, path in loaded
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter")
    async def load_adapter(request: Request) -> PlainTextResponse:
        """Load a PEFT directory under ``lora_name`` (400 when the name is taken, as vLLM answers); beyond
        ``max_loras``, the least recently used adapter is unloaded."""
        b = await body_of(request, LoadAdapter)
        if b.lora_name in adapters or b.lora_name == name:
            raise _Refused(400, f"The lora adapter '{b.lora_name}' has already been loaded.")
        try:
            adapter = await asyncio.to_thread(_read_adapter, base, b.lora_path)
        except PMemError as e:
            raise _Refused(400, f"cannot load {b.lora_name!r}: {e}") from None
        with lock:
            adapters[b.lora_name] = (b.lora_path, adapter)
            adapters.move_to_end(b.lora_name)
            evicted = []
            while max_loras is not None and len(adapters) > max_loras:
                evicted.append(adapters.popitem(last=False)[0])
        for old in evicted:  # its requests in flight hold the adapter itself and finish
            log.info("unloaded adapter %s, the least recently used of %d (max_loras)", old, max_loras)
        return PlainTextResponse(f"Success: LoRA adapter '{b.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(request: Request) -> PlainTextResponse:
        b = await body_of(request, UnloadAdapter)
        with lock:
            if adapters.pop(b.lora_name, None) is None:
                raise _Refused(404, f"The lora adapter '{b.lora_name}' cannot be found.", "NotFoundError")
        return PlainTextResponse(f"Success: LoRA adapter '{b.lora_name}' removed successfully.")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Any:
        b: CompletionRequest = await body_of(request, CompletionRequest)
        with lock:
            entry = adapters.get(b.model)
            if entry is not None:
                adapters.move_to_end(b.model)  # used now: the last to be unloaded
        if b.model == name:
            adapter = None
        elif entry is not None:
            adapter = entry[1]
        else:
            raise _Refused(404, f"The model `{b.model}` does not exist.", "NotFoundError")
        if b.n != 1 or b.echo:
            raise _Refused(400, "this engine supports n=1 and echo=false only")
        prompts = _prompts(base, b.prompt)
        stop = [b.stop] if isinstance(b.stop, str) else list(b.stop or [])
        kwargs = {
            "max_new_tokens": b.max_tokens,
            "temperature": b.temperature,
            "top_p": b.top_p,
            "stop": stop,
            "adapters": adapter,
            "seed": b.seed,
            "ignore_eos": b.ignore_eos,
        }
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "object": "text_completion", "created": created, "model": b.model}
        if not b.stream:
            cancel = threading.Event()  # set when the client leaves before the answer: the rows leave the batch
            async with gate:
                watch = asyncio.ensure_future(_until_disconnected(request, cancel))
                try:
                    gens = await asyncio.to_thread(
                        _generate, base, batching, prompts, kwargs, b.logprobs is not None, cancel
                    )
                except GenerationCancelled:  # nobody reads this answer: the client has gone
                    return JSONResponse({"error": {"message": "the client closed the request", "code": 499}}, 499)
                finally:
                    watch.cancel()
            choices = [_choice(base, i, g, lps, b, final=True) for i, (g, lps) in enumerate(gens)]
            return {**head, "choices": choices, "usage": _usage(prompts, [g for g, _ in gens])}
        if len(prompts) != 1:
            raise _Refused(400, "a streamed completion takes one prompt")
        return StreamingResponse(
            _stream(base, batching, gate, head, prompts, kwargs, b), media_type="text/event-stream"
        )

    return app


# ---------------------------------------------------------------------------- generation (in threads)
def _read_adapter(base: Any, path: str) -> Any:
    from memory.lora.io import load_peft

    adapter = load_peft(path, base_model=base)
    adapter.validate_for(base)  # shapes: an adapter of another model fails here, not mid-generation
    return adapter.to(dtype=base.dtype, device=base.device)


def _prompts(base: Any, prompt: Any) -> list[list[int]]:
    """Token id lists of the request's prompt(s): text is tokenized as is (no chat template, as vLLM does)."""
    if isinstance(prompt, str) or (prompt and all(isinstance(x, int) for x in prompt)):
        prompt = [prompt]
    out = [list(base.tokenizer(p)["input_ids"]) if isinstance(p, str) else [int(i) for i in p] for p in prompt]
    if not out or any(not p for p in out):
        raise _Refused(400, "a prompt has no tokens")
    return out


def _generate(
    base: Any,
    batching: Batching | None,
    prompts: list[list[int]],
    kwargs: dict[str, Any],
    with_logprobs: bool,
    cancel: threading.Event | None = None,
) -> list[Any]:
    """``(generation, log-probabilities or None)`` per prompt, through ``batching``'s scheduler when there is one
    (a set ``cancel`` takes the rows out of the batch)."""
    with batched(batching, cancel) if batching is not None else nullcontext():
        gens = base.generate(prompts, **kwargs)
    if not with_logprobs:
        return [(g, None) for g in gens]
    return [(g, _logprobs(base, p, g, kwargs["adapters"])) for p, g in zip(prompts, gens, strict=True)]


def _logprobs(base: Any, prompt_ids: list[int], gen: Any, adapter: Any) -> list[float]:
    """The log-probability of each generated token under the (adapted) model: the generation's own when it
    carries them, else one forward pass over prompt and answer."""
    import torch

    own = getattr(gen, "token_logprobs", None)
    if own and len(own) == len(gen.token_ids):
        return [float(x) for x in own]
    if not gen.token_ids:
        return []
    ids = torch.tensor([list(prompt_ids) + list(gen.token_ids)], device=base.device)
    with torch.inference_mode():
        logits = base.forward(ids, adapters=adapter, logits_to_keep=len(gen.token_ids) + 1).logits[0, :-1].float()
    target = torch.tensor(gen.token_ids, device=logits.device)[:, None]
    return torch.log_softmax(logits, -1).gather(-1, target)[:, 0].tolist()


def _finish(gen: Any, stop: list[str]) -> tuple[str, str | None]:
    """OpenAI's finish_reason and vLLM's stop_reason (a stop string; None for the end-of-turn token)."""
    if gen.finish_reason == "length":
        return "length", None
    if gen.finish_reason == "stop":  # the text is trimmed before the stop string: name the first one asked for
        return "stop", stop[0] if stop else None
    return "stop", None


def _choice(base: Any, index: int, gen: Any, lps: list[float] | None, b: CompletionRequest, *, final: bool) -> dict:
    stop = [b.stop] if isinstance(b.stop, str) else list(b.stop or [])
    finish, stop_reason = _finish(gen, stop) if final else (None, None)
    choice: dict[str, Any] = {
        "index": index,
        "text": gen.text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": stop_reason,
    }
    if lps is not None:
        tokens = [
            f"token_id:{i}" if b.return_tokens_as_token_ids else base.decode([i], skip_special_tokens=False)
            for i in gen.token_ids
        ]
        choice["logprobs"] = {
            "tokens": tokens,
            "token_logprobs": lps,
            "top_logprobs": [{t: lp} for t, lp in zip(tokens, lps, strict=True)] if b.logprobs else None,
            "text_offset": [],
        }
    if b.return_token_ids:
        choice["token_ids"] = list(gen.token_ids)
    return choice


def _usage(prompts: list[list[int]], gens: list[Any]) -> dict[str, int]:
    p, c = sum(len(x) for x in prompts), sum(g.completion_tokens for g in gens)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _until_disconnected(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the client of a non-streamed completion leaves before its answer (as vLLM aborts such a
    request); cancelled when the answer is ready. The body has been read, so the next ASGI message is the
    disconnect (``Request.is_disconnected`` only peeks, and sees nothing through a middleware)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


async def _stream(
    base: Any,
    batching: Batching | None,
    gate: asyncio.Semaphore,
    head: dict[str, Any],
    prompts: list[list[int]],
    kwargs: dict,
    b: Any,
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()

    def on_text(piece: str) -> None:  # in the generating thread
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    def ended(t: asyncio.Future) -> None:
        pieces.put_nowait(None)
        if not t.cancelled():
            t.exception()  # retrieved here too: after a disconnect nobody else reads it

    cancel = threading.Event()  # set when the client leaves mid-stream: the row leaves the batch (as vLLM aborts)
    async with gate:
        task = asyncio.ensure_future(
            asyncio.to_thread(
                _generate, base, batching, prompts, {**kwargs, "on_text": on_text}, b.logprobs is not None, cancel
            )
        )
        task.add_done_callback(ended)
        try:
            while (piece := await pieces.get()) is not None:
                yield _event(
                    {**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
                )
        finally:
            if not task.done():
                cancel.set()
        try:
            gen, lps = task.result()[0]
        except Exception as e:  # noqa: BLE001 - the stream has started: report the failure in it
            yield _event({"error": {"message": f"generation failed ({type(e).__name__}: {e})", "code": 500}})
            yield "data: [DONE]\n\n"
            return
    last = _choice(base, 0, gen, lps, b, final=True)
    last["text"] = ""  # the text went out piece by piece; the ids and log-probabilities come now
    yield _event({**head, "choices": [last]})
    if (b.stream_options or {}).get("include_usage"):
        yield _event({**head, "choices": [], "usage": _usage(prompts, [gen])})
    yield "data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


__all__ = ["create_engine_app"]
