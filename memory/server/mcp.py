"""``pmem mcp``: parametric-memory as an MCP server (stdio or streamable HTTP) for agent hosts.

Tools: ``remember`` (a text), ``remember_file`` (a file by path), ``recall`` (search), ``ask`` (query with a
mode), ``internalize`` (documents into adapters, with each job's state), ``forget`` (delete) and
``list_documents``. ``remember`` follows the namespace's ``on_add`` policy. Every tool works in one namespace,
fixed when the server starts. With ``--url`` the tools go through a memory server
(:class:`~memory.client.RemoteMemory`); without it they use an in-process :class:`~memory.api.ParametricMemory`
(the embedded default).

Who may do what:

- over stdio, the agent host that started the process; with ``--url``, under ``PMEM_API_KEY``;
- over streamable HTTP, every request carries an API key of the memory server (``Authorization: Bearer``),
  checked as the server checks it (:class:`KeyAccess`): its role (``read``: recall, ask, list, a job's state;
  ``write``: also remember, remember_file, internalize, forget) and its namespaces apply, and with ``--url``
  each caller's own key goes to the server (the MCP process holds none). ``--no-auth`` drops the check, on a
  loopback host only;
- ``remember_file`` reads only files under the configured file roots (``--file-root``,
  ``PMEM_MCP_FILE_ROOTS``); with none, it reads nothing.

>>> server = build_server(memory, namespace="notes")  # doctest: +SKIP
>>> server.run("stdio")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from memory.errors import PMemError
from memory.server.app import ServerLimits
from memory.server.auth import KeyStore, Principal, under_roots

_CAPS = ServerLimits()  # the HTTP server's caps on k and answer length bound the tools too
INSTRUCTIONS = (
    "Long-term memory. `remember` stores a text (a new version if the document id exists), `recall` finds "
    "the passages most similar to a query, `ask` answers a question from memory and says which mode "
    "answered (parametric: from adapters; retrieval: from passages; abstain: nothing stored is about it) and "
    "why, `internalize` turns stored documents into adapters and reports its jobs' states, `forget` deletes a "
    "document, `list_documents` lists what is stored."
)


class KeyAccess:
    """MCP over HTTP with the memory server's API keys: a token verifier for the MCP SDK, and the memory each
    tool call may use.

    Args:
        namespace: the namespace the tools work in.
        memory: an in-process memory, whose key table verifies the keys; or
        url: a memory server, which verifies each key (``GET /v1/me``) and answers each caller under its own key.
    """

    _MAX_CLIENTS = 64  # RemoteMemory clients kept, one per recent caller key

    def __init__(self, namespace: str, *, memory: Any = None, url: str | None = None) -> None:
        if (memory is None) == (url is None):
            raise ValueError("KeyAccess needs memory= (in-process) or url= (a memory server), not both")
        self.namespace, self.memory, self.url = namespace, memory, url
        self._keys = KeyStore.for_memory(memory) if memory is not None else None
        self._clients: OrderedDict[str, Any] = OrderedDict()

    def __repr__(self) -> str:
        return f"KeyAccess(namespace={self.namespace!r}, {'url=' + repr(self.url) if self.url else 'in-process'})"

    async def verify_token(self, token: str) -> Any:
        """The SDK's ``TokenVerifier``: an ``AccessToken`` carrying the key's role and namespaces, or ``None`` (401)."""
        import asyncio

        from mcp.server.auth.provider import AccessToken

        if self._keys is not None:
            who = await asyncio.to_thread(self._keys.verify, token)
        else:
            who = await self._remote_principal(token)
        if who is None:
            return None
        return AccessToken(
            token=token,
            client_id=who.key_id,
            scopes=[who.role],
            claims={"name": who.name, "namespaces": list(who.namespaces)},
        )

    async def _remote_principal(self, token: str) -> Principal | None:
        import httpx

        try:
            async with httpx.AsyncClient(base_url=self.url or "", timeout=30) as http:
                r = await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        except httpx.TransportError:
            return None
        if r.status_code != 200:
            return None
        me = r.json()
        return Principal(key_id=me["key_id"], name=me["name"], role=me["role"], namespaces=tuple(me["namespaces"]))

    def memory_for(self, role: str) -> Any:
        """The memory for the calling key, if it may do a ``role`` operation in the namespace; else a PMemError."""
        from mcp.server.auth.middleware.auth_context import get_access_token

        from memory.client import AuthError

        token = get_access_token()
        if token is None:  # the SDK refuses such requests before any tool runs
            raise AuthError("an API key is required", code="unauthorized", status=401)
        claims = token.claims or {}
        who = Principal(token.client_id, str(claims.get("name", "")), token.scopes[0], tuple(claims["namespaces"]))
        if not who.can(self.namespace, role):
            raise AuthError(
                f"this API key may not {role} in namespace {self.namespace!r}", code="forbidden", status=403
            )
        if self.memory is not None:
            return self.memory
        return self._client(token.token)

    def _client(self, key: str) -> Any:
        from memory.client import RemoteMemory

        digest = hashlib.sha256(key.encode()).hexdigest()
        client = self._clients.pop(digest, None)
        if client is None:
            client = RemoteMemory(self.url, key, namespace=self.namespace)
        self._clients[digest] = client
        while len(self._clients) > self._MAX_CLIENTS:
            self._clients.popitem(last=False)[1].close()
        return client


def build_server(
    memory: Any,
    *,
    namespace: str,
    name: str = "parametric-memory",
    file_roots: tuple[str, ...] = (),
    access: KeyAccess | None = None,
) -> Any:
    """An ``MCPServer`` whose tools act on ``memory`` (a ParametricMemory or a RemoteMemory) in ``namespace``.

    Args:
        file_roots: directories ``remember_file`` may read from (none: it reads no file).
        access: check each call's API key (:class:`KeyAccess`; streamable HTTP); ``None``: every call may do
            everything ``memory`` may (stdio, ``--no-auth``).
    """
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from memory.api import validate_namespace

    ns = validate_namespace(namespace)
    if access is None:
        server = MCPServer(name, instructions=INSTRUCTIONS)
    else:
        from mcp.server.auth.settings import AuthSettings

        settings = AuthSettings(issuer_url="http://127.0.0.1", resource_server_url=None)  # keys, not OAuth
        server = MCPServer(name, instructions=INSTRUCTIONS, token_verifier=access, auth=settings)

    def guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PMemError as e:  # the agent sees the reason (and the fix), not a traceback
            raise ToolError(f"{type(e).__name__}: {e}") from None

    def mem(role: str) -> Any:
        """The memory this call may use for a ``role`` operation (a tool error if the caller's key may not)."""
        return memory if access is None else guarded(access.memory_for, role)

    @server.tool()
    def remember(text: str, document_id: str | None = None, title: str | None = None) -> dict[str, Any]:
        """Store a text in memory; an existing document_id gets a new version. Returns the status and id."""
        r = guarded(mem("write").add, text, document_id=document_id, namespace=ns, title=title)
        doc = r.document
        return {
            "status": r.status,
            "document_id": doc.id if doc else None,
            "version": doc.version.number if doc and doc.version else None,
            "internalize_job": _job_state(r.job) if r.job is not None else None,  # the on_add policy's
        }

    @server.tool()
    def remember_file(path: str, document_id: str | None = None) -> dict[str, Any]:
        """Store a file (Markdown, text, HTML, DOCX, PDF) by its path on this machine, under a file root."""
        target = mem("write")
        if not file_roots:
            raise ToolError("this MCP server reads no files: start it with --file-root DIR (or PMEM_MCP_FILE_ROOTS)")
        real = under_roots(path, file_roots) if isinstance(path, str) else None
        if real is None:
            raise ToolError(f"{path!r} is outside the file roots of this MCP server")
        p = Path(real)
        if not p.is_file():
            raise ToolError(f"{path!r} is not a file")
        if hasattr(target, "add_file"):  # a server: upload it
            r = guarded(target.add_file, p, document_id=document_id, namespace=ns)
        else:
            results = guarded(target.add_source, str(p), namespace=ns, document_id=document_id)
            r = results[0]
            if r.status == "failed":
                raise ToolError(r.error or f"{path} could not be read")
        doc = r.document
        return {
            "status": r.status,
            "document_id": doc.id if doc else None,
            "version": doc.version.number if doc and doc.version else None,
        }

    @server.tool()
    def recall(query: str, k: Annotated[int, Field(ge=1, le=_CAPS.max_k)] = 4) -> list[dict[str, Any]]:
        """The k stored passages most similar to the query, best first, with their document ids and scores."""
        hits = guarded(mem("read").search, query, k=k, namespace=ns)
        return [
            {"document_id": h.document_id, "version": h.version, "text": h.text, "score": round(h.score, 4)}
            for h in hits
        ]

    @server.tool()
    def ask(
        question: str,
        mode: Literal["auto", "parametric", "retrieval", "hybrid"] = "auto",
        k: Annotated[int, Field(ge=1, le=_CAPS.max_k)] = 4,
        max_new_tokens: Annotated[int, Field(ge=1, le=_CAPS.max_new_tokens)] = 64,
    ) -> dict[str, Any]:
        """Answer a question from memory; says which mode answered and why, and which documents it used."""
        r = guarded(mem("read").query, question, namespace=ns, mode=mode, k=k, max_new_tokens=max_new_tokens)
        return {
            "answer": r.answer,
            "mode": r.mode,
            "reason": r.reason,
            "query_id": r.query_id,
            "adapters": [{"document_id": a.document_id, "version": a.version} for a in r.adapters],
            "passages": [{"document_id": h.document_id, "text": h.text} for h in r.chunks],
        }

    @server.tool()
    def internalize(document_id: str | None = None, job_id: int | None = None) -> dict[str, Any]:
        """Turn stored documents into adapters, so that `ask` can answer from them: one document, or (no
        document_id) every document whose current version has no ready adapter. Returns each job's state
        (queued, running, succeeded, failed); pass job_id alone to see how a job is doing now."""
        if job_id is not None:
            if document_id is not None:
                raise ToolError("pass document_id to internalize, or job_id to see a job's state, not both")
            return {"jobs": [_job_state(guarded(_job, mem("read"), ns, job_id))]}
        target = mem("write")  # the caller's key must be allowed to write in this namespace
        if not hasattr(target, "submit_internalize"):  # in-process: the jobs run here (or queued with a broker)
            ids = [document_id] if document_id is not None else None
            jobs = guarded(target.internalize_all, namespace=ns, document_ids=ids, stale=document_id is None)
        else:  # a server (RemoteMemory): one job per document, submitted, run there, not waited for
            if document_id is not None:
                ids = [document_id]
            else:
                docs = guarded(target.list, namespace=ns, limit=500)
                ids = [d.id for d in docs if d.version is not None and d.version.adapter_status != "ready"]
            jobs = [guarded(target.submit_internalize, d, namespace=ns) for d in ids]
        return {"jobs": [_job_state(j) for j in jobs]}

    @server.tool()
    def forget(document_id: str) -> dict[str, Any]:
        """Delete a document with all its versions and adapters."""
        d = guarded(mem("write").delete, document_id, namespace=ns)
        return {"deleted": d.document, "versions": d.versions}

    @server.tool()
    def list_documents(limit: int = 50, offset: int = 0, prefix: str | None = None) -> list[dict[str, Any]]:
        """Stored documents (id, title, current version), ordered by id."""
        docs = guarded(mem("read").list, namespace=ns, limit=limit, offset=offset, prefix=prefix)
        return [
            {"document_id": d.id, "title": d.title, "version": d.version.number if d.version else None} for d in docs
        ]

    return server


def _job(memory: Any, namespace: str, job_id: int) -> Any:
    """A job of ``namespace`` by id, from the server or the local job table."""
    if hasattr(memory, "job"):
        return memory.job(job_id, namespace=namespace)
    from memory.server.app import _job_in

    return _job_in(memory, namespace, job_id)


def _job_state(job: Any) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "document_id": job.payload.get("document"),
        "state": job.state,
        "adapter_id": (job.result or {}).get("adapter_id"),
        "error": job.error,
    }


def serve(
    memory: Any,
    *,
    namespace: str,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    file_roots: tuple[str, ...] = (),
    access: KeyAccess | None = None,
) -> None:
    """Run the MCP server until its client hangs up (stdio) or the process is stopped (HTTP).

    Over streamable HTTP without ``access`` (``--no-auth``) the host must be a loopback address.
    """
    if transport not in ("stdio", "streamable-http"):
        raise ValueError(f"transport must be stdio or streamable-http, got {transport!r}")
    if transport == "streamable-http" and access is None:
        from memory.server.app import check_no_auth

        check_no_auth(host)
    server = build_server(
        memory, namespace=namespace, file_roots=file_roots, access=access if transport != "stdio" else None
    )
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)


__all__ = ["INSTRUCTIONS", "KeyAccess", "build_server", "serve"]
