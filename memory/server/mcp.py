"""``pmem mcp``: parametric-memory as an MCP server (stdio or streamable HTTP) for agent hosts.

Tools: ``remember`` (a text), ``remember_file`` (a file by path), ``recall`` (search), ``ask`` (query with a
mode), ``internalize`` (documents into adapters, with each job's state), ``forget`` (delete) and
``list_documents``. ``remember`` follows the namespace's ``on_add`` policy. Every tool works in one
namespace, fixed when the server starts. With ``--url`` the tools go through a memory server
(:class:`~memory.client.RemoteMemory`) under that server's API key, so the key's namespaces and role decide
what the agent may do; without it they use an in-process :class:`~memory.api.ParametricMemory` (the embedded default).

>>> server = build_server(memory, namespace="notes")  # doctest: +SKIP
>>> server.run("stdio")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from memory.errors import PMemError

INSTRUCTIONS = (
    "Long-term memory. `remember` stores a text (a new version if the document id exists), `recall` finds "
    "the passages most similar to a query, `ask` answers a question from memory and says which mode "
    "answered (parametric: from adapters; retrieval: from passages; abstain: nothing stored is about it) and "
    "why, `internalize` turns stored documents into adapters and reports its jobs' states, `forget` deletes a "
    "document, `list_documents` lists what is stored."
)


def build_server(memory: Any, *, namespace: str, name: str = "parametric-memory") -> Any:
    """An ``MCPServer`` whose tools act on ``memory`` (a ParametricMemory or a RemoteMemory) in ``namespace``."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from memory.api import validate_namespace

    ns = validate_namespace(namespace)
    server = MCPServer(name, instructions=INSTRUCTIONS)

    def guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PMemError as e:  # the agent sees the reason (and the fix), not a traceback
            raise ToolError(f"{type(e).__name__}: {e}") from None

    @server.tool()
    def remember(text: str, document_id: str | None = None, title: str | None = None) -> dict[str, Any]:
        """Store a text in memory; an existing document_id gets a new version. Returns the status and id."""
        r = guarded(memory.add, text, document_id=document_id, namespace=ns, title=title)
        doc = r.document
        return {
            "status": r.status,
            "document_id": doc.id if doc else None,
            "version": doc.version.number if doc and doc.version else None,
            "internalize_job": _job_state(r.job) if r.job is not None else None,  # the on_add policy's
        }

    @server.tool()
    def remember_file(path: str, document_id: str | None = None) -> dict[str, Any]:
        """Store a file (Markdown, text, HTML, DOCX, PDF) by its path on this machine."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise ToolError(f"{path} is not a file")
        if hasattr(memory, "add_file"):  # a server: upload it
            r = guarded(memory.add_file, p, document_id=document_id, namespace=ns)
        else:
            results = guarded(memory.add_source, str(p), namespace=ns, document_id=document_id)
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
    def recall(query: str, k: int = 4) -> list[dict[str, Any]]:
        """The k stored passages most similar to the query, best first, with their document ids and scores."""
        hits = guarded(memory.search, query, k=k, namespace=ns)
        return [
            {"document_id": h.document_id, "version": h.version, "text": h.text, "score": round(h.score, 4)}
            for h in hits
        ]

    @server.tool()
    def ask(
        question: str,
        mode: Literal["auto", "parametric", "retrieval", "hybrid"] = "auto",
        k: int = 4,
        max_new_tokens: int = 64,
    ) -> dict[str, Any]:
        """Answer a question from memory; says which mode answered and why, and which documents it used."""
        r = guarded(memory.query, question, namespace=ns, mode=mode, k=k, max_new_tokens=max_new_tokens)
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
            return {"jobs": [_job_state(guarded(_job, memory, ns, job_id))]}
        if hasattr(memory, "internalize_all"):  # in-process: the jobs run here (or are queued with a broker)
            ids = [document_id] if document_id is not None else None
            jobs = guarded(memory.internalize_all, namespace=ns, document_ids=ids, stale=document_id is None)
        else:  # a server: one job per document, run there
            if document_id is not None:
                ids = [document_id]
            else:
                docs = guarded(memory.list, namespace=ns, limit=500)
                ids = [d.id for d in docs if d.version is not None and d.version.adapter_status != "ready"]
            jobs = [guarded(memory.submit_internalize, d, namespace=ns) for d in ids]
        return {"jobs": [_job_state(j) for j in jobs]}

    @server.tool()
    def forget(document_id: str) -> dict[str, Any]:
        """Delete a document with all its versions and adapters."""
        d = guarded(memory.delete, document_id, namespace=ns)
        return {"deleted": d.document, "versions": d.versions}

    @server.tool()
    def list_documents(limit: int = 50, offset: int = 0, prefix: str | None = None) -> list[dict[str, Any]]:
        """Stored documents (id, title, current version), ordered by id."""
        docs = guarded(memory.list, namespace=ns, limit=limit, offset=offset, prefix=prefix)
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


def serve(memory: Any, *, namespace: str, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the MCP server until its client hangs up (stdio) or the process is stopped (HTTP)."""
    server = build_server(memory, namespace=namespace)
    if transport == "stdio":
        server.run("stdio")
    elif transport == "streamable-http":
        server.run("streamable-http", host=host, port=port)
    else:
        raise ValueError(f"transport must be stdio or streamable-http, got {transport!r}")


__all__ = ["INSTRUCTIONS", "build_server", "serve"]
