"""The memory server: a FastAPI app over :class:`~memory.api.ParametricMemory` (``pmem serve`` runs it).

Every resource lives under ``/v1/namespaces/{namespace}/...``: the namespace is checked against the
caller's key before anything is looked up, so a key outside a namespace gets the same 403 whether the
namespace, the document or the job exists or not. Errors are JSON ``{"error": {"code", "message"}}`` with
stable codes (:data:`ERROR_CODES`). Model work goes through a bounded generation queue
(:class:`~memory.aio.GenerationQueue`); internalization answers 202 with a job, run on Celery workers when
``PMEM_BROKER_URL`` is set and in this process otherwise.

>>> from memory.server.app import create_app
>>> app = create_app(home="/tmp/pmem-server-doc")  # doctest: +SKIP
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

import asyncio
import io
import logging
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from memory.aio import AsyncParametricMemory, BusyError
from memory.errors import (
    ConfigError,
    ConflictError,
    DatabaseNotInitialisedError,
    IngestError,
    IntegrityError,
    ModelError,
    NotFoundError,
    PMemError,
    ValidationError,
)
from memory.server.auth import ALL, LOCAL_ADMIN, KeyStore, Principal, under_roots
from memory.services.query import MAX_QUESTION_CHARS
from memory.services.records import MAX_INT

log = logging.getLogger(__name__)

#: Every ``error.code`` the server answers with, and its HTTP status.
ERROR_CODES: dict[str, int] = {
    "malformed_json": 400,
    "invalid_request": 400,  # bad input to the OpenAI-compatible routes (memory/server/openai_api.py), as OpenAI says
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_input": 422,
    "unknown_field": 422,
    "unreadable_file": 422,
    "internal": 500,
    "busy": 503,
    "not_ready": 503,
    "timeout": 504,
}
_FORBIDDEN = "this API key may not do that in this namespace"


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one request may ask for (each has a ``PMEM_SERVER_*`` variable in ``pmem serve``)."""

    max_body_bytes: int = 32 * 1024 * 1024  # any request body, uploads included
    max_upload_bytes: int = 16 * 1024 * 1024  # one uploaded file
    max_k: int = 50  # search / query k
    max_new_tokens: int = 256  # query answer length
    max_list: int = 500  # page size of lists
    max_concurrent_generations: int = 1  # model calls at once when max_batch is 1 (more only thrash a CPU)
    max_waiting_generations: int = 32  # model calls waiting; more get 503 busy
    max_batch: int = 8  # queries whose answers are decoded together (continuous batching); 1: one at a time
    max_batch_tokens: int = 16384  # prompt + answer tokens of the queries in one batch (bounds its KV cache)
    query_timeout_s: float = 120.0  # a query not answered by then gets 504
    source_roots: tuple[str, ...] = field(default_factory=tuple)  # server directories sources may come from


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with the code's status."""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers


def _error(code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=ERROR_CODES[code], headers=headers
    )


def _pmem_error_code(e: PMemError) -> str:
    if isinstance(e, BusyError):
        return "busy"
    if isinstance(e, NotFoundError):
        return "not_found"
    if isinstance(e, ValidationError):
        return "invalid_input"
    if isinstance(e, IngestError):
        return "unreadable_file"
    if isinstance(e, ConflictError):
        return "conflict"
    if isinstance(e, DatabaseNotInitialisedError):
        return "not_ready"
    if isinstance(e, (IntegrityError, ModelError, ConfigError)):
        return "internal"
    return "invalid_input"


# ---------------------------------------------------------------------------- request bodies
#: An id or version number as the database holds it (a larger one is a 422, never a database error).
Id = Annotated[int, Field(ge=1, le=MAX_INT)]
IdInPath = Annotated[int, PathParam(ge=1, le=MAX_INT)]
VersionInQuery = Annotated[int | None, Query(ge=1, le=MAX_INT)]
#: A question or search query (the facade's bound, checked before the body reaches it).
QueryText = Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake the caller should hear about


class AddDocument(_Body):
    text: str = Field(min_length=1, description="The document's text (UTF-8).")
    document_id: str | None = Field(default=None, description="Default: derived from the content hash.")
    title: str | None = None
    metadata: dict[str, Any] | None = None


class Rollback(_Body):
    version: Id


class Internalize(_Body):
    version: Id | None = Field(default=None, description="Default: the current version.")
    method: Literal["auto", "d2l", "cd", "self-study"] = "auto"
    force: bool = False
    tier: Literal["instant", "full"] = Field(
        default="instant", description="full: once the adapter of `method` is ready, a self-study job follows."
    )


class AddSource(_Body):
    spec: str = Field(min_length=1, description="A file, directory or glob on the server, under a source root.")
    refresh_interval_s: int | None = Field(default=None, ge=1, le=MAX_INT)
    internalize: bool | None = Field(default=None, description="Default: as the namespace's on_add policy says.")
    method: Literal["auto", "d2l", "cd"] = "auto"


class NamespaceSettings(_Body):
    on_add: Literal["none", "instant", "full"] | None = Field(
        description="What adding a document does: none (store only), instant (the one-pass adapter at once), full "
        "(both tiers, as a job); null: follow the server's PMEM_ON_ADD."
    )


class Refresh(_Body):
    force: bool = False
    method: Literal["auto", "d2l", "cd"] = "auto"


def _search_body(cap_k: int) -> type[BaseModel]:
    class Search(_Body):
        query: QueryText
        k: int = Field(default=4, ge=1, le=cap_k)
        filter: dict[str, Any] | None = None
        min_score: float | None = Field(
            default=None, ge=-1.0, le=1.0, description="Leave out hits below this cosine similarity."
        )

    return Search


def _query_body(cap_k: int, cap_tokens: int) -> type[BaseModel]:
    # (class bodies do not see a closure variable that they also bind: hence cap_* names)
    class QueryRequest(_Body):
        question: QueryText
        mode: Literal["auto", "parametric", "retrieval", "hybrid"] = "auto"
        k: int = Field(default=4, ge=1, le=cap_k)
        document_ids: list[str] | None = Field(default=None, max_length=cap_k)
        max_new_tokens: int = Field(default=64, ge=1, le=cap_tokens)
        skill: Id | None = Field(default=None, description="A skill adapter id (from specialize).")
        log: bool = True
        stream: bool = Field(
            default=False, description="Answer with server-sent events (as does `Accept: text/event-stream`)."
        )

    return QueryRequest


class Feedback(_Body):
    query_id: Id
    score: float = Field(allow_inf_nan=False)


def _experiment_body(cap_k: int, cap_tokens: int) -> type[BaseModel]:
    class ExperimentQuery(_Body):
        question: QueryText
        arms: dict[str, dict[str, Any]] | list[str] = Field(description="As for memory.experiment(arms=...).")
        user_key: str | None = None
        k: int | None = Field(default=None, ge=1, le=cap_k)
        max_new_tokens: int | None = Field(default=None, ge=1, le=cap_tokens)

    return ExperimentQuery


# ---------------------------------------------------------------------------- metrics
class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "pmem_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.queries = Counter(
            "pmem_queries_total", "Queries answered, by the mode that answered.", ["mode"], registry=self.registry
        )
        self.internalizations = Counter(
            "pmem_internalizations_total",
            "Internalization jobs, by outcome (submitted, succeeded, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "pmem_jobs", "Jobs in the database by state (read at scrape time).", ["state"], registry=self.registry
        )
        self.queue = Gauge("pmem_generation_queue_depth", "Model calls running or waiting.", registry=self.registry)


# ---------------------------------------------------------------------------- request body limit
#: The methods /metrics names; any other is counted as "other" (labels must not grow with what clients send).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 ``payload_too_large``.

    The bytes are counted as they arrive, whatever the headers say: a client may send ``Content-Length``
    beside a chunked body (the server reads the chunks), or no length at all. A declared length over the
    limit is refused before anything is read; otherwise the read that crosses the limit raises the 413,
    before the body is parsed or the key checked, so no request makes the server hold more than the limit.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit():
                await _error("invalid_input", "Content-Length is not a number")(scope, receive, send)
                return
            if int(length) > self.max_bytes:
                await self._refuse(scope, receive, send, f"request body is {int(length):,} bytes, ")
                return
        received = 0
        started = False

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # FastAPI re-raises an HTTPException met while reading a body
                    raise StarletteHTTPException(413, self._message("request body is "))
            return message

        async def watched(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except StarletteHTTPException as e:  # raised outside a route (nothing turned it into a response)
            if e.status_code != 413 or started:
                raise
            await self._refuse(scope, receive, send, "request body is ")

    def _message(self, prefix: str) -> str:
        return f"{prefix}over the limit of {self.max_bytes:,} bytes"

    async def _refuse(self, scope: Any, receive: Any, send: Any, prefix: str) -> None:
        await _error("payload_too_large", self._message(prefix))(scope, receive, send)


# ---------------------------------------------------------------------------- the app
def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_no_auth(host: str) -> None:
    """``--no-auth`` is allowed only on a loopback address: anyone who can connect could do anything."""
    if not _is_loopback(host):
        raise ConfigError(
            f"--no-auth needs a loopback host (127.0.0.1, ::1, localhost), got {host!r}; "
            "create API keys with `pmem keys create` instead"
        )


def create_app(
    memory: Any = None, *, auth: bool = True, limits: ServerLimits | None = None, **overrides: Any
) -> FastAPI:
    """The ASGI app over ``memory`` (or a new :class:`~memory.api.ParametricMemory` from ``overrides``).

    Args:
        auth: require an API key on every ``/v1`` request; ``False`` treats every caller as an admin of
            every namespace (only for a server bound to loopback: see :func:`check_no_auth`).
        limits: request bounds (:class:`ServerLimits`).
    """
    if memory is None:
        from memory.api import ParametricMemory

        memory = ParametricMemory(**overrides)
    lim = limits or ServerLimits()
    amem = AsyncParametricMemory(
        memory,
        max_concurrent=lim.max_concurrent_generations,
        max_waiting=lim.max_waiting_generations,
        max_batch=lim.max_batch,
        max_batch_tokens=lim.max_batch_tokens,
    )
    keys = KeyStore.for_memory(memory)
    metrics = _Metrics()
    background: set[asyncio.Task[Any]] = set()
    running: set[int] = set()  # the jobs this process runs (embedded mode: no broker)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not memory.settings.broker_url:  # jobs a stopped or killed server left unfinished: run them now
            await resume_jobs()
        yield

    app = FastAPI(
        title="parametric-memory",
        version=_version(),
        description="Documents stored in model weights (Doc-to-LoRA), with provenance, versions and classic "
        "retrieval. Send `Authorization: Bearer <key>` (keys: `pmem keys create`).",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: _serve_docs serves them from here
        redoc_url=None,
    )
    _serve_docs(app)
    app.state.memory, app.state.amem, app.state.keys, app.state.limits = memory, amem, keys, lim
    app.state.metrics, app.state.background = metrics, background

    # ------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.code, e.message, e.headers)

    @app.exception_handler(PMemError)
    async def _pmem_error(request: Request, e: PMemError) -> JSONResponse:
        code = _pmem_error_code(e)
        if code == "internal":
            log.error("%s %s failed: %s", request.method, request.url.path, e)
        headers = {"Retry-After": "2"} if code in ("busy", "not_ready") else None
        return _error(code, str(e), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        details = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")} for err in errors
        ]  # never echo the input: it may be huge or secret
        types = {d["type"] for d in details}
        if "json_invalid" in types:
            return _error("malformed_json", "the request body is not valid JSON", details=details)
        if "extra_forbidden" in types:
            unknown = [".".join(map(str, d["loc"][1:])) for d in details if d["type"] == "extra_forbidden"]
            return _error("unknown_field", f"unknown field(s): {', '.join(unknown)}", details=details)
        first = details[0] if details else {"loc": [], "msg": "invalid"}
        where = ".".join(str(x) for x in first["loc"] if x != "body") or "request"
        return _error("invalid_input", f"{where}: {first['msg']}", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
            401: "unauthorized",
            403: "forbidden",
        }.get(e.status_code)
        if code is None:
            code = "invalid_input" if 400 <= e.status_code < 500 else "internal"
        return _error(code, str(e.detail) if e.status_code != 404 else "no such resource")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return _error("internal", f"internal error ({type(e).__name__}); see the server log")

    # ------------------------------------------------------------ middleware: body limit, metrics
    app.add_middleware(_BodyLimit, max_bytes=lim.max_body_bytes)  # added first: inside the metrics below

    @app.middleware("http")
    async def _timed(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        method = request.method if request.method in _METHODS else "other"  # a client may invent methods
        metrics.latency.labels(method, getattr(route, "path", "unmatched"), str(response.status_code)).observe(
            time.perf_counter() - t0
        )
        return response

    # ------------------------------------------------------------ auth
    async def caller(request: Request) -> Principal:
        if not auth:
            return LOCAL_ADMIN
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        challenge = {"WWW-Authenticate": "Bearer"}
        if not key:
            raise ApiError(
                "unauthorized", "an API key is required: send 'Authorization: Bearer <key>'", headers=challenge
            )
        principal = await asyncio.to_thread(keys.verify, key)
        if principal is None:
            raise ApiError(
                "unauthorized", "the API key is not valid (unknown, malformed or revoked)", headers=challenge
            )
        return principal

    Caller = Annotated[Principal, Depends(caller)]

    def allow(role: str) -> Any:
        """A dependency: the path's namespace, if the caller's key covers it with ``role``; else 403."""

        async def check(namespace: str, who: Caller) -> str:
            if not who.can(namespace, role):
                raise ApiError("forbidden", _FORBIDDEN)  # the same answer whether the namespace exists or not
            from memory.api import validate_namespace

            return validate_namespace(namespace)

        return Depends(check)

    # One alias a line: mypy does not take a tuple assignment as type aliases.
    Read = Annotated[str, allow("read")]
    Write = Annotated[str, allow("write")]
    Admin = Annotated[str, allow("admin")]

    def page(limit: int, offset: int) -> None:
        if not 0 <= limit <= lim.max_list or not 0 <= offset <= MAX_INT:
            raise ApiError("invalid_input", f"limit must be 0-{lim.max_list} and offset 0-{MAX_INT}")

    def spawn(coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    # ------------------------------------------------------------ health, metrics, identity
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """The database, the blob store and (when configured) the broker answer."""
        checks = await asyncio.to_thread(_readiness, memory)
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
        )

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        """Prometheus metrics: request latency, queries by mode, internalizations, jobs by state."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        counts = await asyncio.to_thread(_job_counts, memory)
        for state, n in counts.items():
            metrics.jobs.labels(state).set(n)
        metrics.queue.set(amem.generation.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/me", tags=["auth"])
    async def me(who: Caller) -> dict[str, Any]:
        """The calling key: its id, name, role and namespaces."""
        return {"key_id": who.key_id, "name": who.name, "role": who.role, "namespaces": list(who.namespaces)}

    # ------------------------------------------------------------ namespaces
    @app.get("/v1/namespaces", tags=["namespaces"])
    async def namespaces(who: Caller) -> dict[str, Any]:
        """The namespaces that exist and that the key may see."""
        names = await amem.namespaces()
        return {"namespaces": [n for n in names if who.sees(n)]}

    ns_prefix = "/v1/namespaces/{namespace}"

    @app.get(ns_prefix, tags=["namespaces"])
    async def namespace_info(ns: Read) -> dict[str, Any]:
        """The namespace's document count and on_add policy (404 when it does not exist)."""
        return (await amem.run_io(memory.namespace_info, ns)).to_dict()

    @app.put(f"{ns_prefix}/settings", tags=["namespaces"])
    async def configure_namespace(ns: Admin, body: NamespaceSettings) -> dict[str, Any]:
        """Set the namespace's on_add policy (applied by document adds, uploads, sources and refreshes)."""
        return (await amem.run_io(memory.configure_namespace, ns, on_add=body.on_add)).to_dict()

    # ------------------------------------------------------------ documents
    @app.post(f"{ns_prefix}/documents", status_code=201, tags=["documents"])
    async def add_document(ns: Write, body: AddDocument) -> dict[str, Any]:
        """Add a text as a new document or a new version (deduplicated by content hash)."""
        r = await amem.add(
            body.text,
            document_id=body.document_id,
            namespace=ns,
            title=body.title,
            metadata=body.metadata,
            on_add="none",
        )
        return await on_add(ns, r)

    @app.post(f"{ns_prefix}/documents/upload", status_code=201, tags=["documents"])
    async def upload_document(
        ns: Write,
        file: Annotated[UploadFile, File()],
        document_id: Annotated[str | None, Form()] = None,
        title: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        """Add a file (Markdown, text, HTML, DOCX, PDF...), parsed with Unstructured."""
        data = await file.read(lim.max_upload_bytes + 1)
        if len(data) > lim.max_upload_bytes:
            raise ApiError("payload_too_large", f"the file is over the upload limit of {lim.max_upload_bytes:,} bytes")
        name = Path(file.filename or "upload.txt").name or "upload.txt"
        r = await amem.run_io(_add_file, memory, data, name, ns, document_id, title)
        return await on_add(ns, r)

    @app.get(f"{ns_prefix}/documents", tags=["documents"])
    async def list_documents(ns: Read, limit: int = 100, offset: int = 0, prefix: str | None = None) -> dict[str, Any]:
        """Documents ordered by id, a page at a time (``prefix`` filters ids)."""
        page(limit, offset)
        docs = await amem.list(namespace=ns, limit=limit, offset=offset, prefix=prefix)
        return {"documents": [d.to_dict() for d in docs], "limit": limit, "offset": offset}

    @app.get(f"{ns_prefix}/documents/{{document_id:path}}/versions", tags=["documents"])
    async def versions(ns: Read, document_id: str) -> dict[str, Any]:
        """Every version of a document, oldest first."""
        return {"versions": [v.to_dict() for v in await amem.history(document_id, namespace=ns)]}

    @app.get(f"{ns_prefix}/documents/{{document_id:path}}/diff", tags=["documents"])
    async def diff(
        ns: Read, document_id: str, old: Annotated[int, Query(ge=1, le=MAX_INT)], new: VersionInQuery = None
    ) -> dict[str, Any]:
        """A unified diff between two versions (``new`` defaults to the current one)."""
        return {"diff": await amem.diff(document_id, old, new, namespace=ns)}

    @app.get(f"{ns_prefix}/documents/{{document_id:path}}/chunks", tags=["documents"])
    async def chunks(ns: Read, document_id: str, version: VersionInQuery = None) -> dict[str, Any]:
        return {"chunks": [c.to_dict() for c in await amem.chunks(document_id, namespace=ns, version=version)]}

    @app.post(f"{ns_prefix}/documents/{{document_id:path}}/rollback", tags=["documents"])
    async def rollback(ns: Write, document_id: str, body: Rollback) -> dict[str, Any]:
        """Make an older version current again."""
        return (await amem.rollback(document_id, body.version, namespace=ns)).to_dict()

    @app.post(f"{ns_prefix}/documents/{{document_id:path}}/internalize", status_code=202, tags=["jobs"])
    async def internalize(ns: Write, document_id: str, body: Internalize) -> dict[str, Any]:
        """Turn a version into a LoRA adapter: 202 with the job (poll ``/jobs/{id}``)."""
        job = await submit_internalize(ns, document_id, body.version, body.method, body.force, body.tier)
        return {"job": job.to_dict()}

    @app.get(f"{ns_prefix}/documents/{{document_id:path}}", tags=["documents"])
    async def get_document(
        ns: Read, document_id: str, version: VersionInQuery = None, with_text: bool = False
    ) -> dict[str, Any]:
        """A document (its current version, or ``version``), optionally with its text."""
        return (await amem.get(document_id, namespace=ns, version=version, with_text=with_text)).to_dict()

    @app.delete(f"{ns_prefix}/documents/{{document_id:path}}", tags=["documents"])
    async def delete_document(ns: Write, document_id: str) -> dict[str, Any]:
        """Delete a document with its versions, chunks, adapters and unreferenced blobs."""
        return (await amem.delete(document_id, namespace=ns)).to_dict()

    # ------------------------------------------------------------ jobs
    async def run_job(job_id: int, model: bool) -> None:
        from memory.jobs import JobStore, run_inline
        from memory.submission import run_body

        store = JobStore.for_memory(memory)
        try:  # an accepted job waits for the model however full the queue: a refusal would lose it
            run = amem.run_job if model else amem.run_io
            info = await run(run_inline, store, job_id, partial(run_body, memory))
            if model:
                metrics.internalizations.labels(info.state).inc()
        except Exception:  # recorded on the job by run_inline; keep the server up
            log.exception("job %s failed", job_id)
            if model:
                metrics.internalizations.labels("failed").inc()
        finally:
            running.discard(job_id)

    def start_job(job_id: int, kind: str) -> None:
        if job_id not in running:
            running.add(job_id)
            spawn(run_job(job_id, model=kind == "internalize"))

    async def resume_jobs() -> None:
        from memory.jobs import JobStore

        for job in await amem.run_io(JobStore.for_memory(memory).stale, 0):
            log.warning("resuming job %s (%s, %s when the server last stopped)", job.id, job.kind, job.state)
            start_job(job.id, job.kind)

    async def submit(kind: str, payload: dict[str, Any], ns: str, key: str | None = None) -> Any:
        """Create the job; a broker gets it at once, else this process runs it in the background."""
        from memory.jobs import JobStore

        if memory.settings.broker_url:
            from memory.submission import submit as submit_to_broker

            return await amem.run_io(submit_to_broker, memory, kind, payload, namespace=ns, key=key, retry_failed=True)
        store = JobStore.for_memory(memory)
        job, created = await amem.run_io(store.create, kind, payload, namespace=ns, idempotency_key=key)
        if not created and job.state == "failed":
            job = await amem.run_io(store.requeue, job.id)
        if job.state != "succeeded":  # new, requeued, or unfinished with nothing here running it: run it
            start_job(job.id, kind)
        return job

    async def submit_internalize(
        ns: str, document_id: str, version: int | None, method: str, force: bool, tier: str = "instant"
    ) -> Any:
        from memory.refresh import version_id_for
        from memory.submission import version_job_key

        info = await amem.get(document_id, namespace=ns, version=version)
        if info.version is None:
            raise NotFoundError(f"document {document_id!r} has no current version")
        vid = await amem.run_io(version_id_for, memory, ns, document_id, info.version.number)
        sha = info.version.content_sha256
        key = await amem.run_io(partial(version_job_key, memory, sha, vid, method, force=force, tier=tier))
        payload = {"version_id": vid, "method": method, "force": force, "document": document_id}
        if tier != "instant":
            payload["tier"] = tier
        job = await submit("internalize", payload, ns, key)
        metrics.internalizations.labels("submitted").inc()
        return job

    app.state.submit_internalize = submit_internalize  # the dashboard's Internalize button (memory/server/ui.py)

    async def on_add(ns: str, r: Any) -> dict[str, Any]:
        """An added document's JSON, after the namespace's on_add policy: with ``instant`` or ``full``, the
        internalization job is submitted (it runs in the background) and returned as ``job``."""
        policy = await amem.run_io(memory.namespace_settings.on_add, ns)
        if policy != "none" and r.document is not None and r.document.version is not None:
            job = await submit_internalize(ns, r.document.id, r.document.version.number, "auto", False, policy)
            return {**r.to_dict(), "job": job.to_dict()}
        return r.to_dict()

    @app.get(f"{ns_prefix}/jobs", tags=["jobs"])
    async def list_jobs(
        ns: Read, kind: str | None = None, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """Jobs of this namespace, newest first."""
        from memory.jobs import JobStore

        page(limit, offset)
        store = JobStore.for_memory(memory)
        jobs = await amem.run_io(store.list, kind=kind, state=state, namespace=ns, limit=limit, offset=offset)
        return {"jobs": [j.to_dict() for j in jobs]}

    @app.get(f"{ns_prefix}/jobs/{{job_id}}", tags=["jobs"])
    async def get_job(ns: Read, job_id: IdInPath) -> dict[str, Any]:
        """One job of this namespace (a job of another namespace is 'not found', like a missing one)."""
        return (await amem.run_io(_job_in, memory, ns, job_id)).to_dict()

    # ------------------------------------------------------------ adapters
    @app.get(f"{ns_prefix}/adapters", tags=["adapters"])
    async def adapters(ns: Read, document_id: str | None = None, status: str | None = None) -> dict[str, Any]:
        """Adapters with their provenance (document version, hypernetwork, base model, blob), newest first."""
        rows = await amem.adapters(namespace=ns, document_id=document_id, status=status)
        return {"adapters": [a.to_dict() for a in rows]}

    @app.get(
        f"{ns_prefix}/adapters/{{adapter_id}}/peft",
        tags=["adapters"],
        response_class=Response,
        responses={200: {"content": {"application/zip": {}}}},
    )
    async def download_adapter(ns: Read, adapter_id: IdInPath) -> Response:
        """The adapter as a PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``) in a zip."""
        data = await amem.run_io(_peft_zip, memory, ns, adapter_id)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="adapter-{adapter_id}.zip"'},
        )

    # ------------------------------------------------------------ sources
    @app.post(f"{ns_prefix}/sources", status_code=202, tags=["sources"])
    async def add_source(ns: Admin, body: AddSource) -> dict[str, Any]:
        """Register a server-side file, directory or glob (under a configured source root) and ingest it."""
        spec = _check_source(body.spec, lim.source_roots)
        job = await submit(
            "ingest",
            {
                "spec": spec,
                "namespace": ns,
                "refresh_interval_s": body.refresh_interval_s,
                "method": body.method,
                "internalize": body.internalize,
            },
            ns,
        )
        return {"job": job.to_dict()}

    @app.get(f"{ns_prefix}/sources", tags=["sources"])
    async def sources(ns: Read) -> dict[str, Any]:
        """Registered sources with their refresh interval, last check and last error."""
        rows = await amem.sources(namespace=ns)
        return {
            "sources": [
                {**r, "last_checked_at": r["last_checked_at"].isoformat() if r["last_checked_at"] else None}
                for r in rows
            ]
        }

    @app.post(f"{ns_prefix}/sources/refresh", status_code=202, tags=["sources"])
    async def refresh(ns: Admin, body: Refresh) -> dict[str, Any]:
        """Re-read the due sources of this namespace (all with an interval if ``force``); 202 with the job."""
        job = await submit("refresh", {"namespace": ns, "force": body.force, "method": body.method}, ns)
        return {"job": job.to_dict()}

    # ------------------------------------------------------------ search and query
    SearchBody = _search_body(lim.max_k)
    QueryBody = _query_body(lim.max_k, lim.max_new_tokens)
    ExperimentBody = _experiment_body(lim.max_k, lim.max_new_tokens)

    @app.post(f"{ns_prefix}/search", tags=["query"])
    async def search(ns: Read, body: SearchBody) -> dict[str, Any]:  # type: ignore[valid-type]
        """Classic vector search over the chunks of current versions (metadata filters on documents)."""
        b: Any = body
        hits = await amem.search(b.query, k=b.k, namespace=ns, filter=b.filter, min_score=b.min_score)
        return {"hits": [h.to_dict() for h in hits]}

    async def bounded(coro: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(coro, lim.query_timeout_s)
        except TimeoutError:
            raise ApiError("timeout", f"no answer within {lim.query_timeout_s:g} s; the model is overloaded") from None

    @app.post(
        f"{ns_prefix}/query",
        tags=["query"],
        response_model=None,
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "description": 'With `stream`: `token` events (`{"text": ...}`, the answer\'s '
                        "pieces as generated), then one `answer` event (the JSON answer) or one `error` "
                        'event (`{"code", "message"}`).'
                    }
                }
            }
        },
    )
    async def query(ns: Read, body: QueryBody, request: Request) -> Any:  # type: ignore[valid-type]
        """Answer from memory: the answer, the mode that answered and why, the adapters and chunks used.

        With ``"stream": true`` (or ``Accept: text/event-stream``) the answer streams as server-sent events:
        ``token`` events whose texts join to the answer, then a final ``answer`` event with the whole result.
        In ``auto`` mode, when adapters answered and the answer is checked, the tokens come after the check
        (in one piece, or streamed from the retrieval answer that replaces a doubted one).
        """
        b: Any = body
        kwargs = {
            "namespace": ns,
            "mode": b.mode,
            "k": b.k,
            "document_ids": b.document_ids,
            "max_new_tokens": b.max_new_tokens,
            "skill": b.skill,
            "log": b.log,
        }
        if b.stream or "text/event-stream" in request.headers.get("accept", ""):
            return await stream_answer(amem.stream_query(b.question, **kwargs))
        r = await bounded(amem.query(b.question, **kwargs))
        metrics.queries.labels(r.mode).inc()
        return r.to_dict()

    async def stream_answer(items: Any) -> StreamingResponse:
        deadline = time.monotonic() + lim.query_timeout_s
        first = await bounded(items.__anext__())  # errors before the first piece are plain JSON errors

        async def events() -> Any:
            item = first
            while True:
                if isinstance(item, str):
                    yield _sse("token", {"text": item})
                else:
                    metrics.queries.labels(item.mode).inc()
                    yield _sse("answer", item.to_dict())
                    return
                try:
                    item = await asyncio.wait_for(items.__anext__(), max(deadline - time.monotonic(), 0.0))
                except TimeoutError:
                    yield _sse("error", {"code": "timeout", "message": f"no answer within {lim.query_timeout_s:g} s"})
                    return
                except PMemError as e:
                    yield _sse("error", {"code": _pmem_error_code(e), "message": str(e)})
                    return
                except Exception as e:  # the stream has started: report the failure in it
                    log.exception("streamed query failed")
                    yield _sse(
                        "error",
                        {"code": "internal", "message": f"internal error ({type(e).__name__}); see the server log"},
                    )
                    return

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    # ------------------------------------------------------------ experiments and feedback
    @app.post(f"{ns_prefix}/experiments/{{name}}/query", tags=["experiments"])
    async def experiment_query(ns: Read, name: str, body: ExperimentBody) -> dict[str, Any]:  # type: ignore[valid-type]
        """Answer with the settings of the arm ``user_key`` is assigned to; logged for the A/B report."""
        b: Any = body
        exp = memory.experiment(name, arms=b.arms, namespace=ns)
        overrides = {k: v for k, v in (("k", b.k), ("max_new_tokens", b.max_new_tokens)) if v is not None}
        for arm in exp.arms.values():  # arms may not lift the request caps
            if int(arm.get("k", 0)) > lim.max_k or int(arm.get("max_new_tokens", 0)) > lim.max_new_tokens:
                raise ApiError(
                    "invalid_input", f"an arm asks for more than k={lim.max_k} or max_new_tokens={lim.max_new_tokens}"
                )
        arm_name = exp.assign(b.user_key if b.user_key is not None else b.question)
        r = await bounded(amem.run_model(exp.query, b.question, user_key=b.user_key, **overrides))
        metrics.queries.labels(r.mode).inc()
        return {"arm": arm_name, **r.to_dict()}

    @app.get(f"{ns_prefix}/experiments/{{name}}/report", tags=["experiments"])
    async def experiment_report(ns: Read, name: str, control: str | None = None) -> dict[str, Any]:
        """Per arm: queries, feedback with a bootstrap CI, latency, modes; differences from the control."""
        from memory.evaluation.experiments import report

        return await amem.run_io(report, memory, name, ns, control=control)

    @app.post(f"{ns_prefix}/feedback", status_code=204, tags=["experiments"])
    async def feedback(ns: Write, body: Feedback) -> Response:
        """Attach a user score to a logged query of this namespace."""
        await amem.feedback(body.query_id, body.score, namespace=ns)
        return Response(status_code=204)

    # ------------------------------------------------------------ maintenance
    @app.post("/v1/admin/gc", tags=["ops"])
    async def gc(who: Caller, dry_run: bool = False) -> dict[str, Any]:
        """Remove blobs no row references (an admin key for every namespace only)."""
        if not who.can(ALL, "admin") or ALL not in who.namespaces:
            raise ApiError("forbidden", "this needs an admin key for every namespace ('*')")
        return {"removed": await amem.run_io(memory.gc, dry_run=dry_run), "dry_run": dry_run}

    from memory.server.conversations import conversations_router
    from memory.server.openai_api import openai_router  # /v1/chat/completions, /v1/models
    from memory.server.ui import ui_router  # the dashboard at /ui

    app.include_router(conversations_router(amem, allow))
    app.include_router(openai_router(app, caller))
    app.include_router(ui_router(app, auth=auth))
    return app


# ---------------------------------------------------------------------------- API docs
DOCS_ASSETS = "/docs/assets"


def _serve_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their scripts, styles and icon served by this server from the
    ``fastapi-offline`` package (the server extra), so they work on a machine with no internet. Without that
    package there are no docs pages (``/openapi.json`` is always there)."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    try:
        from importlib.resources import files

        assets = files("fastapi_offline") / "static"
    except ModuleNotFoundError:
        log.warning("fastapi-offline is not installed: no /docs and /redoc (pip install 'parametric-memory[server]')")
        return
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    title = f"{app.title} - API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


# ---------------------------------------------------------------------------- helpers (run in threads)
def _sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event (the JSON data on one line)."""
    import json

    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("parametric-memory")
    except PackageNotFoundError:
        return "0"


def _readiness(mem: Any) -> dict[str, dict[str, Any]]:
    from sqlalchemy import text

    checks: dict[str, dict[str, Any]] = {}
    try:
        with mem.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as e:  # noqa: BLE001
        checks["database"] = {"ok": False, "error": type(e).__name__}
    try:
        mem.blobs.exists("0" * 64)
        checks["blobs"] = {"ok": True}
    except Exception as e:  # noqa: BLE001
        checks["blobs"] = {"ok": False, "error": type(e).__name__}
    if mem.settings.broker_url:
        try:
            from memory.submission import broker

            broker().check(mem.settings)
            checks["broker"] = {"ok": True}
        except Exception as e:  # noqa: BLE001
            checks["broker"] = {"ok": False, "error": type(e).__name__}
    else:
        checks["broker"] = {"ok": True, "mode": "embedded (jobs run in the server process)"}
    return checks


def _job_counts(mem: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from memory.db import Job, JobState, session_factory

    with session_factory(mem.engine)() as s:
        counts = {state.value: n for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state))}
    return {state.value: counts.get(state.value, 0) for state in JobState}


def _job_in(mem: Any, ns: str, job_id: int) -> Any:
    from sqlalchemy import select

    from memory.db import Job, Namespace, session_factory
    from memory.jobs import JobStore

    with session_factory(mem.engine)() as s:
        found = s.scalar(
            select(Job.id)
            .join(Namespace, Job.namespace_id == Namespace.id)
            .where(Job.id == job_id, Namespace.name == ns)
        )
    if found is None:
        raise NotFoundError(f"no job {job_id} in namespace {ns!r}")
    return JobStore.for_memory(mem).get(job_id)


def _add_file(mem: Any, data: bytes, filename: str, ns: str, document_id: str | None, title: str | None) -> Any:
    """Parse an uploaded file as ``add_source`` parses one file, then add it as a document (named, when no
    ``document_id`` is given, as ``pmem add FILE`` names it: after the file name)."""
    from memory.ingest import chunk_document, chunk_text, document_key, normalize_text, partition_bytes

    if not data:
        raise ValidationError(f"{filename}: the file is empty; nothing to remember")
    parsed = partition_bytes(data, filename, max_bytes=mem.settings.max_document_bytes)
    normalised = normalize_text(parsed.text)
    if normalised == parsed.text:
        chunks = chunk_document(parsed, mem.settings.chunk_tokens)
    else:  # offsets would not match the stored text
        chunks = chunk_text(normalised, mem.settings.chunk_tokens)
    return mem.add(
        normalised,
        document_id=document_id if document_id is not None else document_key(filename),
        namespace=ns,
        title=title,
        parser=parsed.parser,
        chunks=chunks,
        metadata={"filename": filename, "filetype": parsed.filetype},
        on_add="none",  # the server submits the policy's job itself (on_add)
    )


def _peft_zip(mem: Any, ns: str, adapter_id: int) -> bytes:
    from memory.lora.io import save_peft

    info = next((a for a in mem.adapters(namespace=ns) if a.id == adapter_id), None)
    if info is None:
        raise NotFoundError(f"no adapter {adapter_id} in namespace {ns!r}")
    adapter = mem.load_adapter(info)
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="pmem-peft-") as tmp:
        out = save_peft(adapter, Path(tmp) / f"adapter-{adapter_id}", info.base_model)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(out.rglob("*")):
                if f.is_file():
                    zf.write(f, f"adapter-{adapter_id}/{f.relative_to(out)}")
    return buf.getvalue()


def _check_source(spec: str, roots: tuple[str, ...]) -> str:
    """A source path made absolute, if it lies under one of the server's source roots."""
    if not roots:
        raise ApiError("forbidden", "this server takes no server-side sources (start it with --source-root DIR)")
    if "\x00" in spec:
        raise ApiError("invalid_input", "a source path cannot contain a NUL character")
    path = under_roots(spec, roots)
    if path is None:
        raise ApiError("forbidden", "the source is outside the server's source roots")
    return path


__all__ = ["ERROR_CODES", "ServerLimits", "check_no_auth", "create_app"]
