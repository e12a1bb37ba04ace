"""``RemoteMemory``: the facade's interface over HTTP, for processes without torch (or far from the model).

It talks to ``pmem serve`` and returns the same result objects as :class:`~memory.api.ParametricMemory`
(:mod:`memory.types`); server errors come back as the library's own exceptions (a 404 is a
:class:`~memory.errors.NotFoundError`, a 422 a :class:`~memory.errors.ValidationError`...). The LangChain
and LlamaIndex classes take it wherever they take a ``ParametricMemory``. Importing this module imports
neither torch nor the HTTP client (httpx is loaded when a ``RemoteMemory`` is built).

>>> from memory.client import RemoteMemory
>>> mem = RemoteMemory("http://127.0.0.1:8000", api_key="pmk_...", namespace="hr")  # doctest: +SKIP
>>> mem.add("Leave is 25 days a year.", document_id="leave").status  # doctest: +SKIP
'created'
>>> mem.query("How many days of leave?", mode="retrieval").answer  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memory.errors import ConflictError, IngestError, NotFoundError, PMemError, ValidationError
from memory.names import validate_document_id, validate_namespace
from memory.types import (
    AdapterInfo,
    AddResult,
    ChunkInfo,
    DeleteResult,
    DocumentInfo,
    JobInfo,
    NamespaceInfo,
    QueryResult,
    SearchHit,
    VersionInfo,
)

if TYPE_CHECKING:
    from memory.services.conversations import ConversationResult

_PAGE = 100  # documents per listing request (the server's default page)


class RemoteError(PMemError):
    """The server answered with an error that has no closer library exception (``code`` says which)."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message)
        self.code, self.status = code, status


class AuthError(RemoteError, PermissionError):
    """401 (no key, or an unknown or revoked one) or 403 (the key does not cover this namespace or role)."""


class ServerBusyError(RemoteError):
    """503: the server's generation queue is full or it is not ready; retry later."""


def _error(code: str, message: str, status: int) -> PMemError:
    """The library exception for a server error ``code``."""
    if code in ("unauthorized", "forbidden"):
        return AuthError(message, code=code, status=status)
    if code in ("busy", "not_ready"):
        return ServerBusyError(message, code=code, status=status)
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    return RemoteError(message, code=code, status=status)


_BY_CODE: dict[str, type[PMemError]] = {
    "not_found": NotFoundError,
    "invalid_input": ValidationError,
    "unknown_field": ValidationError,
    "malformed_json": ValidationError,
    "unreadable_file": IngestError,
    "conflict": ConflictError,
}


def server_url_from_env() -> str | None:
    """The memory server named by ``PMEM_URL`` (or ``PMEM_SERVER_URL``, its older name, which ``pmem mcp`` read
    first); ``None`` when neither is set (or both are empty)."""
    return os.environ.get("PMEM_URL") or os.environ.get("PMEM_SERVER_URL") or None


@dataclass(frozen=True)
class RemoteSettings:
    """What the integrations read from ``memory.settings``: the default namespace (and where the server is)."""

    url: str
    namespace: str


# ---------------------------------------------------------------------------- JSON -> result objects
def _dt(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _version(d: dict[str, Any] | None) -> VersionInfo | None:
    return None if d is None else VersionInfo(**{**d, "created_at": _dt(d["created_at"])})


def _document(d: dict[str, Any] | None) -> DocumentInfo | None:
    if d is None:
        return None
    return DocumentInfo(
        **{
            **d,
            "version": _version(d.get("version")),
            "created_at": _dt(d["created_at"]),
            "updated_at": _dt(d["updated_at"]),
        }
    )


def _adapter(d: dict[str, Any]) -> AdapterInfo:
    return AdapterInfo(**{**d, "created_at": _dt(d["created_at"])})


def _job(d: dict[str, Any]) -> JobInfo:
    return JobInfo(**{**d, **{k: _dt(d[k]) for k in ("created_at", "started_at", "finished_at")}})


def _add_result(d: dict[str, Any]) -> AddResult:
    job = d.get("job")
    return AddResult(**{**d, "document": _document(d.get("document")), "job": _job(job) if job else None})


def _query_result(d: dict[str, Any]) -> QueryResult:
    fields = {k: v for k, v in d.items() if k != "arm"}
    return QueryResult(
        **{**fields, "adapters": [_adapter(a) for a in d["adapters"]], "chunks": [SearchHit(**h) for h in d["chunks"]]}
    )


class RemoteMemory:
    """A :class:`~memory.api.ParametricMemory` on a server, reached over HTTP.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000`` (default: ``PMEM_URL``, or its older name
            ``PMEM_SERVER_URL``).
        api_key: a key from ``pmem keys create`` (default: ``PMEM_API_KEY``); none for a ``--no-auth`` server.
        namespace: the default namespace of every call (default: ``PMEM_NAMESPACE`` or ``default``).
        timeout: seconds per request (queries on a busy CPU server can take a while).
        transport: an ``httpx`` transport (tests; an ASGI app in-process).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        namespace: str | None = None,
        timeout: float = 300.0,
        transport: Any = None,
    ) -> None:
        import httpx

        url = url or server_url_from_env()
        if not url:
            raise ValidationError("RemoteMemory needs the server's url (or PMEM_URL), e.g. http://127.0.0.1:8000")
        ns = validate_namespace(namespace or os.environ.get("PMEM_NAMESPACE") or "default")
        self.settings = RemoteSettings(url=url.rstrip("/"), namespace=ns)
        key = api_key if api_key is not None else os.environ.get("PMEM_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._secret = key or None  # only to take it out of error messages
        # Plain http has no TLS: no CA bundle to load (~70 ms of every `pmem` command through a server).
        verify = self.settings.url.startswith("https:")
        self._http = httpx.Client(
            base_url=self.settings.url, headers=headers, timeout=timeout, transport=transport, verify=verify
        )

    def __repr__(self) -> str:  # never the key
        return f"RemoteMemory(url={self.settings.url!r}, namespace={self.settings.namespace!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteMemory:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        import httpx

        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        if r.status_code >= 400:
            raise _response_error(r)
        if raw:
            return r.content
        return r.json() if r.status_code != 204 else None

    def _unreachable(self, e: Exception) -> RemoteError:
        message = f"cannot reach the memory server at {self.settings.url}: {type(e).__name__}: {e}"
        if self._secret:  # a key with a character HTTP headers refuse comes back in the transport's message
            message = message.replace(self._secret, "***")
        return RemoteError(message, code="unreachable", status=0)

    def _ns(self, namespace: str | None) -> str:
        from urllib.parse import quote

        return f"/v1/namespaces/{quote(namespace or self.settings.namespace, safe='')}"

    @staticmethod
    def _doc_path(document_id: str) -> str:
        from urllib.parse import quote

        return quote(validate_document_id(document_id), safe="/:@+=")  # '/' kept: ids may hold path segments

    # ------------------------------------------------------------ documents
    def add(
        self,
        text: str | bytes,
        *,
        document_id: str | None = None,
        namespace: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AddResult:
        """Store a text as a new document or version (see :meth:`ParametricMemory.add`)."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError("document bytes are not UTF-8 text; use add_file for binary formats") from None
        body = {"text": text, "document_id": document_id, "title": title, "metadata": metadata}
        return _add_result(
            self._request(
                "POST", f"{self._ns(namespace)}/documents", json={k: v for k, v in body.items() if v is not None}
            )
        )

    def add_conversation(
        self,
        messages: Any,
        *,
        session: str,
        namespace: str | None = None,
        extract: str | None = None,
    ) -> ConversationResult:
        """Append turns to a session's transcript on the server; ``extract`` (``"rules"`` or ``"model"``) keeps
        the facts they state (see :meth:`ParametricMemory.add_conversation`)."""
        from urllib.parse import quote

        from memory.services.conversations import ConversationResult, normalise_turns

        if extract is not None and not isinstance(extract, str):
            raise ValidationError("over HTTP, extract is 'rules', 'model' or None (a function runs in-process only)")
        body = {"messages": [{"role": r, "content": c} for r, c in normalise_turns(messages)], "extract": extract}
        d = self._request("POST", f"{self._ns(namespace)}/conversations/{quote(session, safe='')}", json=body)
        return ConversationResult(
            session=d["session"], transcript=_add_result(d["transcript"]), facts=[_add_result(f) for f in d["facts"]]
        )

    def add_file(
        self,
        path: str | os.PathLike[str],
        *,
        document_id: str | None = None,
        namespace: str | None = None,
        title: str | None = None,
    ) -> AddResult:
        """Upload a file (Markdown, text, HTML, DOCX, PDF...); the server parses it."""
        p = Path(path)
        form = {k: v for k, v in {"document_id": document_id, "title": title}.items() if v is not None}
        with p.open("rb") as f:
            return _add_result(
                self._request("POST", f"{self._ns(namespace)}/documents/upload", files={"file": (p.name, f)}, data=form)
            )

    def add_files(
        self,
        spec: str,
        *,
        namespace: str | None = None,
        document_id: str | None = None,
        title: str | None = None,
    ) -> builtins.list[AddResult]:
        """Upload the files of a local file, directory or glob, one document each, named as
        :meth:`ParametricMemory.add_source` names them (the path under the directory or the glob's root).

        A file that fails comes back alone as an ``AddResult`` with ``status="failed"`` and its error; an
        unreachable server or a refused key stops at once (every other file would fail the same way).
        """
        from memory.ingest.sources import document_key, scan_source

        scan = scan_source(spec)
        if document_id is not None and len(scan.files) != 1:
            raise ValidationError(f"document_id names one document but {spec!r} holds {len(scan.files)} files")
        results: builtins.list[AddResult] = []
        for path in scan.files:
            try:
                doc_id = document_id or document_key(path, scan.root)
                r = self.add_file(path, document_id=doc_id, namespace=namespace, title=title)
            except RemoteError as e:
                if isinstance(e, (AuthError, ServerBusyError)) or e.code == "unreachable":
                    raise
                results.append(AddResult(status="failed", document=None, source=str(path), error=str(e)))
            except (PMemError, OSError) as e:
                results.append(AddResult(status="failed", document=None, source=str(path), error=str(e)))
            else:
                results.append(r)
        return results

    def get(
        self, document_id: str, *, namespace: str | None = None, with_text: bool = False, version: int | None = None
    ) -> DocumentInfo:
        params: dict[str, Any] = {"with_text": with_text}
        if version is not None:
            params["version"] = version
        doc = _document(
            self._request("GET", f"{self._ns(namespace)}/documents/{self._doc_path(document_id)}", params=params)
        )
        assert doc is not None
        return doc

    def list(
        self, *, namespace: str | None = None, limit: int = 100, offset: int = 0, prefix: str | None = None
    ) -> list[DocumentInfo]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if prefix:
            params["prefix"] = prefix
        data = self._request("GET", f"{self._ns(namespace)}/documents", params=params)
        return [d for d in map(_document, data["documents"]) if d is not None]

    def chunks(
        self, document_id: str, *, namespace: str | None = None, version: int | None = None
    ) -> builtins.list[ChunkInfo]:
        params = {"version": version} if version is not None else {}
        data = self._request(
            "GET", f"{self._ns(namespace)}/documents/{self._doc_path(document_id)}/chunks", params=params
        )
        return [ChunkInfo(**c) for c in data["chunks"]]

    def namespaces(self) -> builtins.list[str]:
        """The namespaces that exist and that this key may see."""
        return list(self._request("GET", "/v1/namespaces")["namespaces"])

    def namespace_info(self, namespace: str | None = None) -> NamespaceInfo:
        """A namespace's document count and on_add policy (see :meth:`ParametricMemory.namespace_info`)."""
        d = self._request("GET", self._ns(namespace))
        return NamespaceInfo(**{**d, "created_at": _dt(d["created_at"])})

    def configure_namespace(self, namespace: str | None = None, *, on_add: str | None) -> NamespaceInfo:
        """Set a namespace's on_add policy (an admin key; see :meth:`ParametricMemory.configure_namespace`)."""
        d = self._request("PUT", f"{self._ns(namespace)}/settings", json={"on_add": on_add})
        return NamespaceInfo(**{**d, "created_at": _dt(d["created_at"])})

    def history(self, document_id: str, *, namespace: str | None = None) -> builtins.list[VersionInfo]:
        data = self._request("GET", f"{self._ns(namespace)}/documents/{self._doc_path(document_id)}/versions")
        return [v for v in map(_version, data["versions"]) if v is not None]

    def diff(self, document_id: str, old: int, new: int | None = None, *, namespace: str | None = None) -> str:
        params = {"old": old, **({"new": new} if new is not None else {})}
        return str(
            self._request("GET", f"{self._ns(namespace)}/documents/{self._doc_path(document_id)}/diff", params=params)[
                "diff"
            ]
        )

    def rollback(self, document_id: str, version: int, *, namespace: str | None = None) -> DocumentInfo:
        doc = _document(
            self._request(
                "POST",
                f"{self._ns(namespace)}/documents/{self._doc_path(document_id)}/rollback",
                json={"version": version},
            )
        )
        assert doc is not None
        return doc

    def delete(self, document_id: str, *, namespace: str | None = None) -> DeleteResult:
        return DeleteResult(**self._request("DELETE", f"{self._ns(namespace)}/documents/{self._doc_path(document_id)}"))

    # ------------------------------------------------------------ search and query
    def search(
        self,
        query: str,
        *,
        k: int = 4,
        namespace: str | None = None,
        filter: dict[str, Any] | None = None,
        min_score: float | None = None,
    ) -> builtins.list[SearchHit]:
        body: dict[str, Any] = {"query": query, "k": k}
        if filter is not None:
            body["filter"] = filter
        if min_score is not None:
            body["min_score"] = min_score
        return [SearchHit(**h) for h in self._request("POST", f"{self._ns(namespace)}/search", json=body)["hits"]]

    def query(
        self,
        question: str,
        *,
        namespace: str | None = None,
        mode: str = "auto",
        k: int = 4,
        document_ids: builtins.list[str] | None = None,
        max_new_tokens: int = 64,
        log: bool = True,
        skill: int | None = None,
        experiment: str | None = None,
        arm: str | None = None,
    ) -> QueryResult:
        """Answer from memory on the server (see :meth:`ParametricMemory.query`)."""
        if experiment is not None or arm is not None:
            raise ValidationError("remote experiments go through experiment_query(name, question, arms=...)")
        body = _query_body(question, mode, k, document_ids, max_new_tokens, log, skill)
        return _query_result(self._request("POST", f"{self._ns(namespace)}/query", json=body))

    def stream_query(
        self,
        question: str,
        *,
        namespace: str | None = None,
        mode: str = "auto",
        k: int = 4,
        document_ids: builtins.list[str] | None = None,
        max_new_tokens: int = 64,
        log: bool = True,
        skill: int | None = None,
    ) -> Iterator[str | QueryResult]:
        """:meth:`query` streamed (server-sent events): yields the answer's pieces (``str``) as the server
        generates them, then the :class:`QueryResult`, whose ``answer`` the pieces join to.

        >>> for item in remote.stream_query("What is the vault code?", mode="retrieval"):  # doctest: +SKIP
        ...     print(item if isinstance(item, str) else f"\\n[{item.mode}]", end="")
        """
        import httpx

        body = {**_query_body(question, mode, k, document_ids, max_new_tokens, log, skill), "stream": True}
        try:
            with self._http.stream(
                "POST", f"{self._ns(namespace)}/query", json=body, headers={"Accept": "text/event-stream"}
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _response_error(r)
                event, data = "message", []
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:  # a blank line ends an event
                        payload = json.loads("\n".join(data))
                        if event == "token":
                            yield payload["text"]
                        elif event == "answer":
                            yield _query_result(payload)
                            return
                        elif event == "error":
                            raise _error(str(payload["code"]), str(payload["message"]), r.status_code)
                        event, data = "message", []
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        raise RemoteError("the server ended the answer stream without a final answer", code="internal", status=0)

    def feedback(self, query_id: int, score: float, *, namespace: str | None = None) -> None:
        self._request("POST", f"{self._ns(namespace)}/feedback", json={"query_id": query_id, "score": score})

    def experiment_query(
        self, name: str, question: str, *, arms: Any, user_key: str | None = None, namespace: str | None = None
    ) -> tuple[str, QueryResult]:
        """Answer with the arm ``user_key`` is assigned to; returns ``(arm, result)``."""
        from urllib.parse import quote

        data = self._request(
            "POST",
            f"{self._ns(namespace)}/experiments/{quote(name, safe='')}/query",
            json={"question": question, "arms": arms, "user_key": user_key},
        )
        return str(data["arm"]), _query_result(data)

    def experiment_report(
        self, name: str, *, namespace: str | None = None, control: str | None = None
    ) -> dict[str, Any]:
        from urllib.parse import quote

        params = {"control": control} if control else {}
        return dict(
            self._request("GET", f"{self._ns(namespace)}/experiments/{quote(name, safe='')}/report", params=params)
        )

    # ------------------------------------------------------------ jobs and adapters
    def job(self, job_id: int, *, namespace: str | None = None) -> JobInfo:
        return _job(self._request("GET", f"{self._ns(namespace)}/jobs/{int(job_id)}"))

    def jobs(
        self, *, namespace: str | None = None, kind: str | None = None, state: str | None = None, limit: int = 50
    ) -> builtins.list[JobInfo]:
        params = {k: v for k, v in {"kind": kind, "state": state, "limit": limit}.items() if v is not None}
        return [_job(j) for j in self._request("GET", f"{self._ns(namespace)}/jobs", params=params)["jobs"]]

    def wait(
        self, job: JobInfo, *, namespace: str | None = None, timeout: float = 600.0, poll_s: float = 0.25
    ) -> JobInfo:
        """Poll a job until it succeeded or failed (or ``timeout`` seconds passed: then it is returned as is)."""
        deadline = time.monotonic() + timeout
        while job.state not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(poll_s)
            job = self.job(job.id, namespace=namespace)
        return job

    def submit_internalize(
        self,
        document_id: str,
        *,
        namespace: str | None = None,
        version: int | None = None,
        method: str = "auto",
        force: bool = False,
        tier: str = "instant",
    ) -> JobInfo:
        """Ask the server to internalize a version (``tier``: instant or full); returns the job at once (202)."""
        body: dict[str, Any] = {"method": method, "force": force}
        if tier != "instant":
            body["tier"] = tier
        if version is not None:
            body["version"] = version
        data = self._request(
            "POST", f"{self._ns(namespace)}/documents/{self._doc_path(document_id)}/internalize", json=body
        )
        return _job(data["job"])

    def internalize(
        self,
        document_id: str,
        *,
        namespace: str | None = None,
        version: int | None = None,
        method: str = "auto",
        force: bool = False,
        tier: str = "instant",
        timeout: float = 600.0,
    ) -> AdapterInfo:
        """Internalize and wait for the adapter (as :meth:`ParametricMemory.internalize` does in-process)."""
        job = self.wait(
            self.submit_internalize(
                document_id, namespace=namespace, version=version, method=method, force=force, tier=tier
            ),
            namespace=namespace,
            timeout=timeout,
        )
        if job.state != "succeeded":
            raise RemoteError(
                f"internalization job {job.id} is {job.state}: {job.error or 'still running'}",
                code="job_" + job.state,
                status=0,
            )
        adapter_id = (job.result or {}).get("adapter_id")
        for a in self.adapters(namespace=namespace, document_id=document_id):
            if a.id == adapter_id:
                return a
        raise NotFoundError(f"adapter {adapter_id} of job {job.id} is gone (the document was deleted?)")

    def internalize_all(
        self,
        *,
        namespace: str | None = None,
        stale: bool = False,
        method: str = "auto",
        force: bool = False,
        tier: str = "instant",
        progress: Callable[[int, int, str, JobInfo | None], None] | None = None,
        timeout: float = 3600.0,
    ) -> builtins.list[JobInfo]:
        """Internalize every document of a namespace on the server, one job each, in id order, and wait for them
        (see :meth:`ParametricMemory.internalize_all`; ``stale``: only those whose current version has no ready
        adapter). ``progress(done, total, document_id, job)`` is called as each job finishes."""
        docs: builtins.list[DocumentInfo] = []
        while True:  # every page
            page = self.list(namespace=namespace, limit=_PAGE, offset=len(docs))
            docs += page
            if len(page) < _PAGE:
                break
        targets = [d.id for d in docs if d.version is not None and not (stale and d.version.adapter_status == "ready")]
        submitted = [
            self.submit_internalize(doc_id, namespace=namespace, method=method, force=force, tier=tier)
            for doc_id in targets
        ]
        deadline = time.monotonic() + timeout
        jobs: builtins.list[JobInfo] = []
        for doc_id, job in zip(targets, submitted, strict=True):
            if progress is not None:
                progress(len(jobs), len(targets), doc_id, None)
            jobs.append(self.wait(job, namespace=namespace, timeout=max(0.0, deadline - time.monotonic())))
            if progress is not None:
                progress(len(jobs), len(targets), doc_id, jobs[-1])
        return jobs

    def adapters(
        self, *, namespace: str | None = None, document_id: str | None = None, status: str | None = None
    ) -> builtins.list[AdapterInfo]:
        params = {k: v for k, v in {"document_id": document_id, "status": status}.items() if v is not None}
        return [_adapter(a) for a in self._request("GET", f"{self._ns(namespace)}/adapters", params=params)["adapters"]]

    def download_adapter(
        self, adapter_id: int, directory: str | os.PathLike[str], *, namespace: str | None = None
    ) -> Path:
        """Save an adapter as a PEFT directory under ``directory``; returns that directory."""
        import io
        import zipfile

        data = self._request("GET", f"{self._ns(namespace)}/adapters/{int(adapter_id)}/peft", raw=True)
        out = Path(directory)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():  # our own archive, but never write outside the target
                if name.startswith("/") or ".." in Path(name).parts:
                    raise RemoteError(f"unsafe path {name!r} in the adapter archive", code="internal", status=0)
            zf.extractall(out)
        return out / f"adapter-{int(adapter_id)}"

    # ------------------------------------------------------------ sources
    def add_source(
        self,
        spec: str,
        *,
        namespace: str | None = None,
        refresh_interval_s: int | None = None,
        internalize: bool = False,
        method: str = "auto",
    ) -> JobInfo:
        """Register a file, directory or glob *on the server* (under its source roots); returns the ingest job."""
        body: dict[str, Any] = {"spec": spec, "internalize": internalize, "method": method}
        if refresh_interval_s is not None:
            body["refresh_interval_s"] = refresh_interval_s
        return _job(self._request("POST", f"{self._ns(namespace)}/sources", json=body)["job"])

    def sources(self, *, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        rows = self._request("GET", f"{self._ns(namespace)}/sources")["sources"]
        return [{**r, "last_checked_at": _dt(r["last_checked_at"])} for r in rows]

    def refresh(self, *, namespace: str | None = None, force: bool = False) -> JobInfo:
        return _job(self._request("POST", f"{self._ns(namespace)}/sources/refresh", json={"force": force})["job"])

    # ------------------------------------------------------------ server
    def gc(self, *, dry_run: bool = False) -> builtins.list[str]:
        """Remove the server's unreferenced blobs (an admin key for every namespace, ``'*'``)."""
        return list(self._request("POST", "/v1/admin/gc", params={"dry_run": dry_run})["removed"])

    def me(self) -> dict[str, Any]:
        """The key this client uses: id, name, role and namespaces."""
        return dict(self._request("GET", "/v1/me"))

    def ready(self) -> dict[str, Any]:
        """``/readyz``: the database, blob store and broker checks (raises ServerBusyError when not ready)."""
        return dict(self._request("GET", "/readyz"))


__all__ = ["AuthError", "RemoteError", "RemoteMemory", "RemoteSettings", "ServerBusyError"]


def _response_error(r: Any) -> PMemError:
    """The library exception for an error response (its ``{"error": {"code", "message"}}`` body when it has one)."""
    try:
        err = r.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "internal", f"HTTP {r.status_code}: {r.text[:200]}"
    return _error(code, message, r.status_code)


def _query_body(
    question: str,
    mode: str,
    k: int,
    document_ids: list[str] | None,
    max_new_tokens: int,
    log: bool,
    skill: int | None,
) -> dict[str, Any]:
    """The JSON body of ``POST /query``."""
    body: dict[str, Any] = {"question": question, "mode": mode, "k": k, "max_new_tokens": max_new_tokens, "log": log}
    if document_ids is not None:
        body["document_ids"] = list(document_ids)
    if skill is not None:
        body["skill"] = skill
    return body
