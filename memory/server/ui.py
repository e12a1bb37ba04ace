"""The dashboard at ``/ui`` of ``pmem serve``: server-rendered pages over the same memory, keys and namespaces.

Pages: the namespaces a key may see; a namespace's documents, adapters and latest jobs, with a form to add a
document and a query box; a document's versions, text, diffs and adapters (with their provenance), with an
``Internalize`` button; a namespace's jobs (the page refreshes itself while one is queued or running); a
query's answer with the mode, the reason, the adapters and the chunks used; the namespace's A/B experiments
(per arm: queries, feedback with its confidence interval, latency, modes; differences from the control) and
its latest logged queries; for a key of every namespace, the ``pmem eval qa`` reports under ``$PMEM_HOME/eval``
with their plots.

Sign-in takes an API key (``pmem keys create``) once: the key is checked as the API checks it and is not kept;
the browser holds only a random session token (an ``HttpOnly``, ``SameSite=Strict`` cookie scoped to ``/ui``)
that the server maps to the key for :data:`SESSION_TTL_S`; every page reads the key's row again, so a revoked
key's sessions end at once. A namespace the key does not
cover answers 403 whether it exists or not, exactly as the API does. Every form carries the session's CSRF
token. Templates are rendered by Jinja2 with autoescaping; the pages load nothing from anywhere else
(a ``Content-Security-Policy`` of ``'self'`` says so to the browser). A server started with ``--no-auth``
(loopback only) needs no sign-in.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from memory.errors import NotFoundError, PMemError, ValidationError
from memory.internalizers import METHODS
from memory.server.auth import ALL, LOCAL_ADMIN, Principal
from memory.services.namespaces import TIERS

SESSION_COOKIE = "pmem_ui"
SESSION_TTL_S = 8 * 3600
MAX_SESSIONS = 10_000  # the oldest are dropped past this
PAGE = 100
MAX_TEXT_CHARS = 100_000  # of a document's text on its page (the API serves all of it)
TEMPLATES = Path(__file__).with_name("templates")
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATUS = {NotFoundError: 404, ValidationError: 422}


@dataclass
class _Session:
    principal: Principal
    csrf: str
    expires: float


class _Sessions:
    """Session tokens -> the signed-in key's principal (in this process; a restart signs everyone out)."""

    def __init__(self) -> None:
        self._by_token: dict[str, _Session] = {}

    def create(self, principal: Principal) -> str:
        now = time.monotonic()
        self._by_token = {t: s for t, s in self._by_token.items() if s.expires > now}
        while len(self._by_token) >= MAX_SESSIONS:
            self._by_token.pop(next(iter(self._by_token)))
        token = secrets.token_urlsafe(32)
        self._by_token[token] = _Session(principal, secrets.token_urlsafe(24), now + SESSION_TTL_S)
        return token

    def get(self, token: str | None) -> _Session | None:
        s = self._by_token.get(token or "")
        if s is None or s.expires <= time.monotonic():
            return None
        return s

    def drop(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _ns_url(ns: str, *rest: str) -> str:
    return "/ui/ns/" + quote(ns, safe="") + "".join("/" + quote(r, safe="/:@+=") for r in rest)


def ui_router(app: FastAPI, *, auth: bool) -> APIRouter:
    """The ``/ui`` routes over ``app``'s memory (``app.state.memory``, ``amem``, ``keys``)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    env.filters["ns_url"] = _ns_url
    sessions = _Sessions()
    # Without auth there is no session, but forms still carry a token only this dashboard's pages hold: a form
    # posted by another site (no preflight for forms) must not write to a --no-auth server.
    local = _Session(LOCAL_ADMIN, secrets.token_urlsafe(24), float("inf"))
    router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(_same_origin)])
    state = app.state

    def render(
        template: str, request: Request, session: _Session | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        session = session if auth else local
        who = session.principal if session else None
        html = env.get_template(template).render(
            who=who, csrf=session.csrf if session else "", auth=auth, status=status, **ctx
        )
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    async def current(request: Request) -> _Session:
        """The caller's session (a stand-in one without auth), or a redirect to sign-in.

        The key is read again on every page, so a revoked key's sessions end at once and a changed role or
        namespaces apply at once.
        """
        if not auth:
            return local
        token = request.cookies.get(SESSION_COOKIE)
        s = sessions.get(token)
        if s is not None:
            principal = await asyncio.to_thread(_principal_now, state.memory, s.principal.key_id)
            if principal is None:
                sessions.drop(token)
                s = None
            else:
                s.principal = principal
        if s is None:
            raise _Redirect("/ui/login?next=" + quote(request.url.path, safe="/"))
        return s

    def allowed(s: _Session, ns: str, role: str = "read") -> str:
        if not s.principal.can(ns, role):
            raise _Denied(403, "this API key may not do that in this namespace")  # exists or not: the same answer
        from memory.api import validate_namespace

        return validate_namespace(ns)

    def check_csrf(s: _Session, token: str) -> None:
        if not hmac.compare_digest(s.csrf.encode(), token.encode()):
            raise _Denied(403, "the form has expired or did not come from this dashboard; reload the page")

    def page(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        """Turn redirects, refusals and library errors into a redirect or an HTML error page."""

        @functools.wraps(fn)
        async def wrapped(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return await fn(request, *args, **kwargs)
            except _Redirect as r:
                return RedirectResponse(r.url, status_code=303)
            except _Denied as d:
                s = sessions.get(request.cookies.get(SESSION_COOKIE)) if auth else None
                return render("error.html", request, s, d.status, message=d.message)
            except PMemError as e:
                s = sessions.get(request.cookies.get(SESSION_COOKIE)) if auth else None
                status = next((v for k, v in _STATUS.items() if isinstance(e, k)), 422)
                return render("error.html", request, s, status, message=str(e))
            except TimeoutError:
                s = sessions.get(request.cookies.get(SESSION_COOKIE)) if auth else None
                return render("error.html", request, s, 504, message="no answer in time; the model is overloaded")

        return wrapped

    # ------------------------------------------------------------ static
    @router.get("/static/ui.css")
    async def css() -> Response:
        return Response(
            (TEMPLATES / "ui.css").read_bytes(), media_type="text/css", headers={"Cache-Control": "max-age=3600"}
        )

    # ------------------------------------------------------------ sign-in
    @router.get("/login")
    async def login_form(request: Request, next: str = "/ui") -> Response:  # noqa: A002 - the query's name
        return render("login.html", request, None, next=_local(next))

    @router.post("/login")
    async def login(
        request: Request,
        key: Annotated[str, Form()],
        next: Annotated[str, Form()] = "/ui",  # noqa: A002 - the form field's name
    ) -> Response:
        principal = await asyncio.to_thread(state.keys.verify, key.strip()) if key.strip() else None
        if principal is None:
            return render("login.html", request, None, 401, next=_local(next), error="That key is not valid.")
        response = RedirectResponse(_local(next), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.create(principal),
            max_age=SESSION_TTL_S,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    @page
    async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        s = await current(request)
        check_csrf(s, csrf)
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    # ------------------------------------------------------------ pages
    @router.get("")
    @page
    async def home(request: Request) -> Response:
        s = await current(request)
        names = [n for n in await state.amem.namespaces() if s.principal.sees(n)]
        return render("namespaces.html", request, s, namespaces=names)

    @router.get("/ns/{namespace}")
    @page
    async def namespace_page(request: Request, namespace: str, offset: int = 0) -> Response:
        s = await current(request)
        ns = allowed(s, namespace)
        offset = max(offset, 0)
        docs = await state.amem.list(namespace=ns, limit=PAGE, offset=offset)
        adapters = await state.amem.adapters(namespace=ns)
        jobs = await state.amem.run_io(_jobs, state.memory, ns, 10)
        return render(
            "namespace.html",
            request,
            s,
            ns=ns,
            docs=docs,
            offset=offset,
            page=PAGE,
            adapters=adapters[:50],
            jobs=jobs,
            can_write=s.principal.can(ns, "write"),
        )

    @router.post("/ns/{namespace}/documents")
    @page
    async def add_document(
        request: Request,
        namespace: str,
        text: Annotated[str, Form()],
        document_id: Annotated[str, Form()] = "",
        title: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        s = await current(request)
        ns = allowed(s, namespace, "write")
        check_csrf(s, csrf)
        r = await state.amem.add(text, document_id=document_id.strip() or None, namespace=ns, title=title or None)
        assert r.document is not None
        return RedirectResponse(_ns_url(ns, "documents", r.document.id), status_code=303)

    @router.get("/ns/{namespace}/documents/{document_id:path}")
    @page
    async def document_page(
        request: Request, namespace: str, document_id: str, old: int | None = None, new: int | None = None
    ) -> Response:
        s = await current(request)
        ns = allowed(s, namespace)
        info = await state.amem.get(document_id, namespace=ns, with_text=True, version=new)
        versions = await state.amem.history(document_id, namespace=ns)
        diff = None
        if old is not None:
            diff = await state.amem.diff(document_id, old, new, namespace=ns)
        elif len(versions) > 1 and info.version is not None and info.version.number > 1:
            diff = await state.amem.diff(document_id, info.version.number - 1, info.version.number, namespace=ns)
        adapters = await state.amem.adapters(namespace=ns, document_id=document_id)
        text = info.text or ""
        return render(
            "document.html",
            request,
            s,
            ns=ns,
            doc=info,
            text=text[:MAX_TEXT_CHARS],
            cut=max(len(text) - MAX_TEXT_CHARS, 0),
            versions=versions,
            diff=diff,
            adapters=adapters,
            can_write=s.principal.can(ns, "write"),
            methods=METHODS,
            tiers=TIERS,
        )

    @router.post("/ns/{namespace}/documents/{document_id:path}/internalize")
    @page
    async def internalize(
        request: Request,
        namespace: str,
        document_id: str,
        method: Annotated[str, Form()] = "auto",
        tier: Annotated[str, Form()] = "instant",
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        s = await current(request)
        ns = allowed(s, namespace, "write")
        check_csrf(s, csrf)
        if method not in METHODS or tier not in TIERS:
            raise ValidationError(
                f"method must be one of {', '.join(METHODS)} and tier one of {', '.join(TIERS)}; "
                f"got {method!r} and {tier!r}"
            )
        await state.submit_internalize(ns, document_id, None, method, False, tier)
        return RedirectResponse(_ns_url(ns, "jobs"), status_code=303)

    @router.get("/ns/{namespace}/jobs")
    @page
    async def jobs_page(request: Request, namespace: str) -> Response:
        s = await current(request)
        ns = allowed(s, namespace)
        jobs = await state.amem.run_io(_jobs, state.memory, ns, PAGE)
        busy = any(j.state in ("queued", "running") for j in jobs)
        return render("jobs.html", request, s, ns=ns, jobs=jobs, refresh=busy)

    @router.get("/ns/{namespace}/experiments")
    @page
    async def experiments_page(request: Request, namespace: str) -> Response:
        s = await current(request)
        ns = allowed(s, namespace)
        names, recent = await state.amem.run_io(_query_log, state.memory, ns, 20)
        from memory.evaluation.experiments import report

        reports = [await state.amem.run_io(report, state.memory, name, ns) for name in names]
        return render("experiments.html", request, s, ns=ns, reports=reports, recent=recent)

    # ------------------------------------------------------------ evaluation reports (pmem eval qa)
    def reports_dir(s: _Session) -> Path:
        if ALL not in s.principal.namespaces:  # reports span namespaces: keys of every namespace only
            raise _Denied(403, "evaluation reports need a key for every namespace ('*')")
        return Path(state.memory.settings.home) / "eval"

    @router.get("/reports")
    @page
    async def reports(request: Request) -> Response:
        s = await current(request)
        found = await asyncio.to_thread(_reports, reports_dir(s))
        return render("reports.html", request, s, reports=found)

    @router.get("/reports/{name}")
    @page
    async def report_page(request: Request, name: str) -> Response:
        s = await current(request)
        folder = _report_folder(reports_dir(s), name)
        text = await asyncio.to_thread((folder / "report.md").read_text, errors="replace")
        plots = sorted(p.name for p in folder.glob("*.png"))
        return render("report.html", request, s, name=name, text=text, plots=plots)

    @router.get("/reports/{name}/{plot}")
    @page
    async def report_plot(request: Request, name: str, plot: str) -> Response:
        s = await current(request)
        folder = _report_folder(reports_dir(s), name)
        if not _PLOT.fullmatch(plot) or not (folder / plot).is_file():
            raise NotFoundError(f"no plot {plot!r} in report {name!r}")
        data = await asyncio.to_thread((folder / plot).read_bytes)
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    @router.post("/ns/{namespace}/query")
    @page
    async def query(
        request: Request,
        namespace: str,
        question: Annotated[str, Form()],
        mode: Annotated[str, Form()] = "auto",
        k: Annotated[int, Form()] = 4,
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        s = await current(request)
        ns = allowed(s, namespace)
        check_csrf(s, csrf)
        limits = state.limits
        if not 1 <= k <= limits.max_k:
            raise ValidationError(f"k must be 1-{limits.max_k}")
        result = await asyncio.wait_for(
            state.amem.query(question, namespace=ns, mode=mode, k=k, max_new_tokens=min(64, limits.max_new_tokens)),
            limits.query_timeout_s,
        )
        return render("answer.html", request, s, ns=ns, question=question, result=result)

    return router


async def _same_origin(request: Request) -> None:
    """A form posted from another site (its browser says so in ``Origin``) is refused, sign-in included."""
    origin = request.headers.get("origin")
    if request.method == "POST" and origin and origin != "null":
        from urllib.parse import urlsplit

        if urlsplit(origin).netloc != request.headers.get("host", ""):
            raise HTTPException(403, "cross-site form posts are refused")


_REPORT = re.compile(r"qa-[A-Za-z0-9_.:-]{1,64}")
_PLOT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}\.png")


def _report_folder(root: Path, name: str) -> Path:
    """The report folder ``name`` under ``root`` (a plain ``qa-...`` name: no path can reach anywhere else)."""
    folder = root / name
    if not _REPORT.fullmatch(name) or name in (".", "..") or not (folder / "report.md").is_file():
        raise NotFoundError(f"no evaluation report {name!r}")
    return folder


def _reports(root: Path) -> list[dict[str, Any]]:
    """The ``pmem eval qa`` reports under ``root`` (``$PMEM_HOME/eval``), newest first, with their arms."""
    import json

    out = []
    for folder in sorted(root.glob("qa-*"), reverse=True):
        if not (_REPORT.fullmatch(folder.name) and (folder / "report.md").is_file()):
            continue
        try:
            result = json.loads((folder / "qa.json").read_text())
        except (OSError, ValueError):
            result = {}
        arms = result.get("arms")
        out.append({"name": folder.name, "arms": list(arms) if isinstance(arms, (dict, list)) else []})
    return out


def _local(url: str) -> str:
    """``url`` if it is a path of this dashboard, else the dashboard's home (no open redirect after sign-in)."""
    return url if url.startswith("/ui") and not url.startswith("//") and "\\" not in url else "/ui"


def _query_log(mem: Any, ns: str, limit: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The experiments with queries in ``ns`` (by name), and its ``limit`` latest logged queries."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from memory.db import Namespace, QueryLog

    with Session(mem.engine) as s:
        in_ns = QueryLog.namespace_id == select(Namespace.id).where(Namespace.name == ns).scalar_subquery()
        names = list(s.scalars(select(QueryLog.experiment).where(in_ns, QueryLog.experiment.is_not(None)).distinct()))
        rows = s.scalars(select(QueryLog).where(in_ns).order_by(QueryLog.id.desc()).limit(limit))
        recent = [
            {
                "id": q.id,
                "query": q.query,
                "mode": q.mode,
                "reason": q.reason,
                "experiment": q.experiment,
                "arm": q.arm,
                "latency_ms": q.latency_ms,
                "feedback": q.feedback,
                "answer": q.answer,
            }
            for q in rows
        ]
    return sorted(n for n in names if n), recent


def _principal_now(mem: Any, key_id: str) -> Principal | None:
    """A key's principal as its row says now (``None`` once revoked or deleted)."""
    from sqlalchemy import select

    from memory.db import ApiKey, session_factory

    with session_factory(mem.engine)() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
        if row is None or row.revoked_at is not None:
            return None
        return Principal(key_id=row.key_id, name=row.name, role=row.role, namespaces=tuple(row.namespaces or ()))


def _jobs(mem: Any, ns: str, limit: int) -> list[Any]:
    from memory.jobs import JobStore

    return JobStore.for_memory(mem).list(namespace=ns, limit=limit)


__all__ = ["SESSION_COOKIE", "ui_router"]
