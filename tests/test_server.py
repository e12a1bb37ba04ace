"""The memory server against a real uvicorn process on 127.0.0.1 (SQLite and PostgreSQL).

Every resource, the auth matrix, cross-namespace probes, bad input without side effects, RemoteMemory
with the LangChain and LlamaIndex classes in a process that cannot import torch, the MCP tools through
the official ``mcp`` client over stdio, 50 concurrent mixed requests, the async API. The served memory
embeds with a tiny real embedder (``_embedders.BagOfWords``); tests that generate (query) load the
real base model and are marked slow.

    .venv/bin/python -m pytest tests/test_server.py -q -m "not slow"
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server import REPO, ServerProcess, server_env

NS, OTHER = "alpha", "beta"
# Tests that add after others deleted use a namespace of their own: on SQLite a deleted row id is reused, and
# the chunk index before the document stamps of issue 14.3 can miss that change within one namespace.
MCP_NS, REMOTE_NS = "gamma", "delta"


@dataclass
class Served:
    url: str
    keys: dict[str, str]
    key_ids: dict[str, str]
    home: Path
    db_url: str
    proc: ServerProcess
    source_root: Path

    def call(self, method: str, path: str, key: str | None = "admin", **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        return httpx.request(method, self.url + path, headers=headers, timeout=300, **kw)


def _start(tmp: Path, model_cache: str, database_url: str | None = None, **env: str) -> Served:
    from memory.config import Settings
    from memory.db import migrate
    from memory.db.migrate import ensure_schema
    from memory.server.auth import KeyStore

    home = tmp / "home"
    settings = Settings.from_env(home=home, database_url=database_url)
    url = settings.resolved_database_url
    if database_url:
        migrate.upgrade(url)
    else:
        ensure_schema(url, auto_migrate=True)
    store = KeyStore.for_url(url)
    specs = {
        "admin": ("admin", ["*"]),
        "writer": ("write", [NS, MCP_NS, REMOTE_NS]),
        "reader": ("read", [NS]),
        "other": ("write", [OTHER]),
        "revoked": ("write", [NS]),
    }
    created = {name: store.create(name, role=role, namespaces=nss) for name, (role, nss) in specs.items()}
    store.revoke(created["revoked"].info.key_id)
    root = tmp / "sources"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "leave.md").write_text("# Leave\n\nStaff get 25 days of paid leave a year.\n")
    (root / "notes" / "travel.txt").write_text("Travel must be booked two weeks ahead.\n")
    extra = {"PMEM_MODEL_CACHE": model_cache, "PMEM_TEST_SOURCE_ROOTS": str(root), **env}
    if database_url:
        extra["PMEM_DATABASE_URL"] = database_url
    proc = ServerProcess(server_env(home, **extra), tmp / "server.log").wait_ready()
    return Served(
        proc.url,
        {k: c.secret for k, c in created.items()},
        {k: c.info.key_id for k, c in created.items()},
        home,
        url,
        proc,
        root,
    )


@pytest.fixture(scope="module")
def sqlite_served(tmp_path_factory, model_cache) -> Any:
    srv = _start(tmp_path_factory.mktemp("server-sqlite"), model_cache)
    yield srv
    srv.proc.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory, model_cache) -> Any:
    if request.param == "sqlite":  # one SQLite server for the whole module (each start costs ~15 s here)
        yield request.getfixturevalue("sqlite_served")
        return
    import psycopg

    db_url = request.getfixturevalue("pg_server_url")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    srv = _start(tmp_path_factory.mktemp("server-postgresql"), model_cache, db_url)
    yield srv
    srv.proc.stop()


def _wait_job(srv: Served, job_id: int, ns: str = NS, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = srv.call("GET", f"/v1/namespaces/{ns}/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def _blob_count(srv: Served) -> int:
    return sum(1 for p in (srv.home / "blobs").rglob("*") if p.is_file()) if (srv.home / "blobs").exists() else 0


# ============================================================================ every resource
def test_every_resource(served: Served) -> None:
    base = f"/v1/namespaces/{NS}"
    assert served.call("GET", "/healthz", key=None).json() == {"status": "ok"}
    ready = served.call("GET", "/readyz", key=None)
    assert ready.status_code == 200 and ready.json()["checks"]["database"]["ok"]
    assert served.call("GET", "/v1/me", key="writer").json()["role"] == "write"

    # documents: add, dedupe, new version, upload
    r = served.call(
        "POST",
        f"{base}/documents",
        key="writer",
        json={"text": "Leave policy: 20 days a year.", "document_id": "policy", "metadata": {"dept": "hr"}},
    )
    assert r.status_code == 201 and r.json()["status"] == "created"
    r = served.call(
        "POST",
        f"{base}/documents",
        key="writer",
        json={"text": "Leave policy: 20 days a year.", "document_id": "policy"},
    )
    assert r.json()["status"] == "unchanged"
    r = served.call(
        "POST",
        f"{base}/documents",
        key="writer",
        json={"text": "Leave policy: 25 days a year.", "document_id": "policy"},
    )
    assert r.json()["status"] == "new_version" and r.json()["document"]["version"]["number"] == 2
    r = served.call(
        "POST",
        f"{base}/documents/upload",
        key="writer",
        data={"document_id": "guides/onboarding"},
        files={"file": ("onboarding.md", b"# Onboarding\n\nBadges are collected at the front desk.\n")},
    )
    assert r.status_code == 201, r.text
    assert r.json()["document"]["metadata"]["filetype"] == "md" and r.json()["document"]["id"] == "guides/onboarding"

    # list with paging and prefix; get; versions; diff; chunks; rollback
    page = served.call("GET", f"{base}/documents", key="reader", params={"limit": 1, "offset": 0}).json()
    assert len(page["documents"]) == 1
    assert [
        d["id"]
        for d in served.call("GET", f"{base}/documents", key="reader", params={"prefix": "guides/"}).json()["documents"]
    ] == ["guides/onboarding"]
    doc = served.call("GET", f"{base}/documents/policy", key="reader", params={"with_text": True}).json()
    assert doc["text"] == "Leave policy: 25 days a year." and doc["version"]["number"] == 2
    old = served.call("GET", f"{base}/documents/policy", key="reader", params={"version": 1}).json()
    assert old["version"]["number"] == 1 and not old["version"]["is_current"]
    assert served.call("GET", f"{base}/documents/guides/onboarding", key="reader").json()["id"] == "guides/onboarding"
    versions = served.call("GET", f"{base}/documents/policy/versions", key="reader").json()["versions"]
    assert [(v["number"], v["is_current"]) for v in versions] == [(1, False), (2, True)]
    diff = served.call("GET", f"{base}/documents/policy/diff", key="reader", params={"old": 1}).json()["diff"]
    assert "-Leave policy: 20 days a year." in diff and "+Leave policy: 25 days a year." in diff
    chunks = served.call("GET", f"{base}/documents/policy/chunks", key="reader").json()["chunks"]
    assert chunks and chunks[0]["text"] == "Leave policy: 25 days a year."
    r = served.call("POST", f"{base}/documents/policy/rollback", key="writer", json={"version": 1})
    assert r.status_code == 200 and r.json()["version"]["number"] == 1

    # search (with a metadata filter)
    hits = served.call("POST", f"{base}/search", key="reader", json={"query": "leave policy days", "k": 3}).json()[
        "hits"
    ]
    assert hits[0]["document_id"] == "policy" and hits[0]["text"] == "Leave policy: 20 days a year."
    hits = served.call(
        "POST", f"{base}/search", key="reader", json={"query": "leave policy", "k": 5, "filter": {"dept": "hr"}}
    ).json()["hits"]
    assert {h["document_id"] for h in hits} == {"policy"}

    # sources (admin, under the source root) -> ingest job; refresh job; jobs
    r = served.call("POST", f"{base}/sources", key="admin", json={"spec": str(served.source_root / "notes")})
    assert r.status_code == 202, r.text
    job = _wait_job(served, r.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    srcs = served.call("GET", f"{base}/sources", key="reader").json()["sources"]
    assert any(s["uri"].endswith("notes") and s["kind"] == "directory" for s in srcs)
    ids = {d["id"] for d in served.call("GET", f"{base}/documents", key="reader").json()["documents"]}
    assert {"leave.md", "travel.txt"} <= ids, ids
    r = served.call("POST", f"{base}/sources/refresh", key="admin", json={"force": True})
    assert r.status_code == 202
    assert _wait_job(served, r.json()["job"]["id"])["state"] == "succeeded"
    kinds = [j["kind"] for j in served.call("GET", f"{base}/jobs", key="reader").json()["jobs"]]
    assert "ingest" in kinds and "refresh" in kinds

    # adapters (none yet), internalize of a missing document, feedback, experiments report
    assert served.call("GET", f"{base}/adapters", key="reader").json() == {"adapters": []}
    assert served.call("GET", f"{base}/adapters/999/peft", key="reader").json()["error"]["code"] == "not_found"
    r = served.call("POST", f"{base}/documents/missing/internalize", key="writer", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = served.call("POST", f"{base}/feedback", key="writer", json={"query_id": 987654, "score": 1})
    assert r.status_code == 404
    rep = served.call("GET", f"{base}/experiments/router-vs-rag/report", key="reader").json()
    assert rep["experiment"] == "router-vs-rag" and rep["queries"] == 0

    # delete
    r = served.call("DELETE", f"{base}/documents/guides/onboarding", key="writer")
    assert r.status_code == 200 and r.json()["versions"] == 1
    assert served.call("GET", f"{base}/documents/guides/onboarding", key="reader").status_code == 404

    # namespaces, metrics, OpenAPI
    assert NS in served.call("GET", "/v1/namespaces").json()["namespaces"]
    metrics = served.call("GET", "/metrics", key=None).text
    assert (
        'pmem_http_request_duration_seconds_count{method="POST",route="/v1/namespaces/{namespace}/documents"' in metrics
    )
    assert 'pmem_jobs{state="succeeded"}' in metrics and "pmem_generation_queue_depth" in metrics
    paths = served.call("GET", "/openapi.json", key=None).json()["paths"]
    for p in (
        "/v1/namespaces/{namespace}/query",
        "/v1/namespaces/{namespace}/search",
        "/v1/namespaces/{namespace}/adapters/{adapter_id}/peft",
        "/v1/namespaces/{namespace}/jobs/{job_id}",
    ):
        assert p in paths


# ============================================================================ auth
def test_auth_matrix(served: Served) -> None:
    base = f"/v1/namespaces/{NS}"
    served.call("POST", f"{base}/documents", key="admin", json={"text": "Auth matrix doc.", "document_id": "auth-doc"})
    probes = [
        ("GET", f"{base}/documents", {}),
        ("POST", f"{base}/search", {"json": {"query": "doc"}}),
        ("POST", f"{base}/documents", {"json": {"text": "x y z", "document_id": "auth-new"}}),
        ("DELETE", f"{base}/documents/auth-doc", {}),
    ]
    for method, path, kw in probes:
        for key in (None, "pmk_000000000000_" + "A" * 43, "not-a-key", "revoked"):
            r = served.call(method, path, key=key, **kw)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (method, path, key)
            assert r.headers["www-authenticate"] == "Bearer"
    # read key: reads yes, writes no
    assert served.call("GET", f"{base}/documents", key="reader").status_code == 200
    assert served.call("POST", f"{base}/search", key="reader", json={"query": "doc"}).status_code == 200
    for method, path, kw in [
        *probes[2:],
        ("POST", f"{base}/documents/auth-doc/rollback", {"json": {"version": 1}}),
        ("POST", f"{base}/feedback", {"json": {"query_id": 1, "score": 1}}),
    ]:
        r = served.call(method, path, key="reader", **kw)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (method, path)
    # write key: writes yes, admin-only sources no, other namespaces no
    assert (
        served.call(
            "POST", f"{base}/documents", key="writer", json={"text": "written by the writer", "document_id": "auth-w"}
        ).status_code
        == 201
    )
    assert (
        served.call("POST", f"{base}/sources", key="writer", json={"spec": str(served.source_root)}).status_code == 403
    )
    assert served.call("POST", "/v1/admin/gc", key="writer").status_code == 403
    assert served.call("GET", f"/v1/namespaces/{OTHER}/documents", key="writer").status_code == 403
    assert served.call("GET", f"{base}/documents", key="other").status_code == 403
    # a key revoked while in use stops working at once
    from memory.server.auth import KeyStore

    assert served.call("GET", f"{base}/documents", key="writer").status_code == 200
    store = KeyStore.for_url(served.db_url)
    extra = store.create("short-lived", role="read", namespaces=[NS])
    assert served.call("GET", f"{base}/documents", key=extra.secret).status_code == 200
    store.revoke(extra.info.key_id)
    assert served.call("GET", f"{base}/documents", key=extra.secret).status_code == 401
    # the secret is stored hashed only
    from sqlalchemy import create_engine, text

    engine = create_engine(served.db_url)
    with engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(text("SELECT key_id, secret_sha256 FROM api_keys"))]
    engine.dispose()
    secrets = {s.split("_", 2)[2] for s in served.keys.values()}
    assert stored and not any(s in str(stored) for s in secrets)


def test_cross_namespace_probes_learn_nothing(served: Served) -> None:
    base = f"/v1/namespaces/{NS}"
    served.call("POST", f"{base}/documents", key="admin", json={"text": "Secret plans.", "document_id": "secret"})
    job = served.call("POST", f"{base}/sources/refresh", key="admin", json={}).json()["job"]
    _wait_job(served, job["id"])
    # a key for another namespace: the same 403 whether the namespace, document or job exists or not
    answers = set()
    for path in (
        f"{base}/documents/secret",
        f"{base}/documents/no-such-doc",
        "/v1/namespaces/no-such-ns/documents/secret",
        f"{base}/jobs/{job['id']}",
        f"{base}/jobs/99999999",
        f"{base}/adapters/1/peft",
        f"{base}/documents/secret/versions",
        f"{base}/documents/no-such-doc/versions",
    ):
        r = served.call("GET", path, key="other")
        answers.add((r.status_code, r.text))
    r = served.call("DELETE", f"{base}/documents/secret", key="other")
    answers.add((r.status_code, r.text))
    assert len(answers) == 1 and next(iter(answers))[0] == 403, answers
    assert served.call("GET", f"{base}/documents/secret", key="admin").status_code == 200  # still there
    # in its own namespace, another namespace's job id is as unknown as a job id that never existed
    mine = served.call("GET", f"/v1/namespaces/{OTHER}/jobs/{job['id']}", key="other")
    never = served.call("GET", f"/v1/namespaces/{OTHER}/jobs/99999999", key="other")
    assert mine.status_code == never.status_code == 404
    assert mine.json()["error"]["message"].replace(str(job["id"]), "N") == never.json()["error"]["message"].replace(
        "99999999", "N"
    )
    assert NS not in served.call("GET", "/v1/namespaces", key="other").json()["namespaces"]
    # search with a filter that names another namespace is refused, not widened
    r = served.call(
        "POST",
        f"/v1/namespaces/{OTHER}/search",
        key="other",
        json={"query": "secret plans", "filter": {"namespace": NS}},
    )
    assert r.status_code == 422


# ============================================================================ bad input
def test_bad_input_gets_4xx_and_changes_nothing(served: Served) -> None:
    base = f"/v1/namespaces/{NS}"

    def state() -> tuple[Any, ...]:
        docs = served.call("GET", f"{base}/documents", params={"limit": 500}).json()["documents"]
        jobs = served.call("GET", f"{base}/jobs", params={"limit": 500}).json()["jobs"]
        return (
            sorted((d["id"], d["version"]["number"]) for d in docs),
            len(jobs),
            _blob_count(served),
            served.call("GET", "/v1/namespaces").json()["namespaces"],
        )

    before = state()
    cases = [
        (
            "oversized upload",
            "POST",
            f"{base}/documents/upload",
            {"files": {"file": ("big.txt", b"word " * 300_000)}},
            413,
            "payload_too_large",
        ),
        (
            "oversized body",
            "POST",
            f"{base}/documents",
            {"json": {"text": "x" * (3 * 2**20)}},
            413,
            "payload_too_large",
        ),
        (
            "binary junk upload",
            "POST",
            f"{base}/documents/upload",
            {"files": {"file": ("junk.txt", os.urandom(4096))}},
            422,
            None,
        ),
        (
            "binary junk with a known type",
            "POST",
            f"{base}/documents/upload",
            {"files": {"file": ("junk.pdf", os.urandom(4096))}},
            422,
            "unreadable_file",
        ),
        ("empty upload", "POST", f"{base}/documents/upload", {"files": {"file": ("empty.md", b"")}}, 422, None),
        ("NUL bytes in text", "POST", f"{base}/documents", {"json": {"text": "a\x00b" * 100}}, 422, "invalid_input"),
        ("whitespace text", "POST", f"{base}/documents", {"json": {"text": "   \n  "}}, 422, "invalid_input"),
        (
            "malformed JSON",
            "POST",
            f"{base}/documents",
            {"content": b'{"text": "abc"', "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
        ),
        (
            "unknown field",
            "POST",
            f"{base}/documents",
            {"json": {"text": "fine text", "colour": "red"}},
            422,
            "unknown_field",
        ),
        ("wrong type", "POST", f"{base}/documents", {"json": {"text": 42}}, 422, "invalid_input"),
        (
            "malicious id",
            "POST",
            f"{base}/documents",
            {"json": {"text": "fine text", "document_id": "../etc/passwd"}},
            422,
            "invalid_input",
        ),
        (
            "bad namespace",
            "POST",
            "/v1/namespaces/Bad%20NS!/documents",
            {"json": {"text": "fine text"}},
            422,
            "invalid_input",
        ),
        ("huge k search", "POST", f"{base}/search", {"json": {"query": "leave", "k": 10**9}}, 422, "invalid_input"),
        ("huge k query", "POST", f"{base}/query", {"json": {"question": "leave?", "k": 10**6}}, 422, "invalid_input"),
        (
            "huge max_new_tokens",
            "POST",
            f"{base}/query",
            {"json": {"question": "leave?", "max_new_tokens": 10**6}},
            422,
            "invalid_input",
        ),
        (
            "unknown mode",
            "POST",
            f"{base}/query",
            {"json": {"question": "leave?", "mode": "psychic"}},
            422,
            "invalid_input",
        ),
        ("empty question", "POST", f"{base}/query", {"json": {"question": ""}}, 422, "invalid_input"),
        (
            "hostile filter",
            "POST",
            f"{base}/search",
            {"json": {"query": "x", "filter": {"$where": "1"}}},
            422,
            "invalid_input",
        ),
        ("page too large", "GET", f"{base}/documents", {"params": {"limit": 10**6}}, 422, "invalid_input"),
        ("source outside the roots", "POST", f"{base}/sources", {"json": {"spec": "/etc"}}, 403, "forbidden"),
        (
            "NaN score",
            "POST",
            f"{base}/feedback",
            {"content": b'{"query_id": 1, "score": NaN}', "headers": {"content-type": "application/json"}},
            422,
            None,
        ),
        ("unknown route", "GET", "/v1/nothing-here", {}, 404, "not_found"),
    ]
    for name, method, path, kw, status, code in cases:
        r = served.call(method, path, **kw)
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"], name
        if code:
            assert err["code"] == code, (name, err)
        assert len(r.content) < 10_000, name  # the input is never echoed back
    assert state() == before


# ============================================================================ Celery path
@pytest.fixture
def celery_served(tmp_path, model_cache, redis_url, pg_server_url) -> Any:
    """A server on its own PostgreSQL database with a Redis broker, and a real Celery worker beside it.

    The worker's internalizer is the test double of the worker tests (``PMEM_WORKER_INTERNALIZER``): the
    path from the HTTP request through the broker to the job and adapter rows is real; D2L itself runs
    for real in ``test_internalize_query_and_adapter_download``.
    """
    import uuid

    import psycopg
    from _fixtures_workers import WorkerProcess, purge_prefix, worker_env

    from memory.db import dispose_engines

    admin = psycopg.connect(pg_server_url, autocommit=True)
    name = f"pmem_srv_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    db_url = f"{pg_server_url.rsplit('/', 1)[0]}/{name}"
    prefix = f"pmem-srv-{uuid.uuid4().hex[:8]}-"
    srv = worker = None
    try:
        srv = _start(tmp_path, model_cache, db_url, PMEM_BROKER_URL=redis_url, PMEM_BROKER_KEYPREFIX=prefix)
        worker = WorkerProcess(
            worker_env(
                srv.home,
                redis_url,
                prefix,
                PMEM_DATABASE_URL=db_url,
                PMEM_MODEL_CACHE=model_cache,
                PMEM_WORKER_INTERNALIZER="_fixtures_workers:stub_internalize",
            ),
            tmp_path / "worker.log",
        ).wait_ready()
        yield srv
    finally:
        if worker is not None:
            worker.stop()
        if srv is not None:
            srv.proc.stop()
        purge_prefix(redis_url, prefix)
        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.slow  # a second server, a Celery worker and its start-up: ~90 s here
@pytest.mark.services
def test_internalize_and_ingest_through_celery(celery_served: Served) -> None:
    srv, base = celery_served, f"/v1/namespaces/{NS}"
    checks = srv.call("GET", "/readyz", key=None).json()["checks"]
    assert checks["broker"] == {"ok": True} and checks["database"]["ok"]
    srv.call("POST", f"{base}/documents", key="writer", json={"text": "The vault code is 7342.", "document_id": "v"})
    r = srv.call("POST", f"{base}/documents/v/internalize", key="writer", json={})
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert job["kind"] == "internalize" and job["celery_id"]
    again = srv.call("POST", f"{base}/documents/v/internalize", key="writer", json={}).json()["job"]
    assert again["id"] == job["id"]  # one job per version and hypernetwork
    # The server keys the job as the CLI and the workers do (memory.submission.version_job_key): the same
    # version submitted by `pmem jobs` or a worker's refresh finds this job instead of making a second one.
    from memory.api import ParametricMemory
    from memory.config import Settings
    from memory.jobs import JobStore
    from memory.refresh import version_id_for
    from memory.submission import version_job_key

    core = ParametricMemory(Settings.from_env(home=srv.home, database_url=srv.db_url))
    sha = srv.call("GET", f"{base}/documents/v", key="reader").json()["version"]["content_sha256"]
    key = version_job_key(core, sha, version_id_for(core, NS, "v", 1), "auto")
    found = JobStore.for_memory(core).find(key)
    assert found is not None and found.id == job["id"], key
    done = _wait_job(srv, job["id"])
    assert done["state"] == "succeeded", done
    adapters = srv.call("GET", f"{base}/adapters", key="reader").json()["adapters"]
    assert [(a["document_id"], a["version"], a["status"]) for a in adapters] == [("v", 1, "ready")]
    assert adapters[0]["id"] == done["result"]["adapter_id"] and adapters[0]["hypernetwork"].startswith(
        "test-slow-stub@"
    )
    r = srv.call("POST", f"{base}/sources", key="admin", json={"spec": str(srv.source_root / "notes")})
    ingest = _wait_job(srv, r.json()["job"]["id"])
    assert ingest["state"] == "succeeded" and ingest["celery_id"], ingest
    ids = {d["id"] for d in srv.call("GET", f"{base}/documents", key="reader").json()["documents"]}
    assert {"v", "leave.md", "travel.txt"} <= ids


# ============================================================================ RemoteMemory + integrations, no torch
_NO_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "transformers", "sentence_transformers"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, _NoTorch())
"""


def _run_without_torch(code: str, **env: str) -> dict[str, Any]:
    script = _NO_TORCH + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, **env}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_client_imports_without_torch() -> None:
    out = _run_without_torch("""
        import json, sys
        import memory, memory.client, memory.aio
        from memory.client import RemoteMemory
        print(json.dumps({"torch": "torch" in sys.modules, "httpx": "httpx" in sys.modules}))
    """)
    assert out == {"torch": False, "httpx": False}


def test_remote_memory_with_langchain_and_llamaindex_without_torch(sqlite_served: Served) -> None:
    out = _run_without_torch(
        """
        import json, os, sys
        from memory.client import RemoteMemory, AuthError
        from memory.errors import NotFoundError
        from integrations.langchain import ParametricMemoryRetriever, ParametricMemoryVectorStore
        from integrations.llamaindex import ParametricMemoryVectorStore as LlamaStore
        from llama_index.core.schema import TextNode
        from llama_index.core.vector_stores.types import VectorStoreQuery

        mem = RemoteMemory(os.environ["URL"], os.environ["KEY"], namespace=os.environ["NS"])
        out = {"repr_has_key": os.environ["KEY"] in repr(mem)}
        store = ParametricMemoryVectorStore(memory=mem)
        ids = store.add_texts(["The vault code is 7342.", "Cats sleep sixteen hours a day."],
                              metadatas=[{"kind": "vault"}, {"kind": "cat"}], ids=["lc-vault", "lc-cat"])
        out["lc_ids"] = ids
        out["lc_search"] = [d.page_content for d in store.similarity_search("what is the vault code", k=1)]
        out["lc_filter"] = [d.id for d in store.similarity_search("hours", k=2, filter={"kind": "cat"})]
        out["lc_get"] = [d.id for d in store.get_by_ids(["lc-cat", "missing"])]
        retriever = ParametricMemoryRetriever(memory=mem, mode="retrieval", k=1)
        out["lc_retriever"] = [(d.page_content, d.metadata["mode"]) for d in retriever.invoke("vault code")]
        # native async methods go through AsyncParametricMemory (counted), not a bare thread
        import asyncio, memory.aio
        from integrations.llamaindex import ParametricMemoryRetriever as LlamaRetriever
        async_calls = []
        plain_search = memory.aio.AsyncParametricMemory.search
        async def counted_search(self, query, **kw):
            async_calls.append(query)
            return await plain_search(self, query, **kw)
        memory.aio.AsyncParametricMemory.search = counted_search
        docs = asyncio.run(retriever.ainvoke("vault code"))
        out["lc_async"] = [(d.page_content, d.metadata["mode"]) for d in docs]
        nodes = asyncio.run(LlamaRetriever(mem, mode="retrieval", similarity_top_k=1).aretrieve("vault code"))
        out["li_async"] = [n.node.get_content() for n in nodes]
        out["async_calls"] = async_calls
        li = LlamaStore(mem)
        li.add([TextNode(id_="li-turtle", text="Turtles can live for 150 years.", metadata={"animal": "turtle"})])
        res = li.query(VectorStoreQuery(query_str="turtles live 150 years", similarity_top_k=1))
        out["li_query"] = res.ids
        out["li_nodes"] = [n.node_id for n in li.get_nodes(["li-turtle"])]
        li.delete_nodes(["li-turtle"])
        out["li_after_delete"] = [n.node_id for n in li.get_nodes(["li-turtle"])]
        store.delete(["lc-cat"])
        try:
            mem.get("lc-cat")
            out["deleted"] = False
        except NotFoundError:
            out["deleted"] = True
        out["versions"] = [v.number for v in mem.history("lc-vault")]
        try:
            remote = RemoteMemory(os.environ["URL"], os.environ["READ_KEY"], namespace=os.environ["NS"])
            remote.add("nope", document_id="x")
        except AuthError as e:
            out["read_key_write"] = e.code
        out["torch_loaded"] = "torch" in sys.modules
        print(json.dumps(out))
    """,
        URL=sqlite_served.url,
        KEY=sqlite_served.keys["writer"],
        READ_KEY=sqlite_served.keys["reader"],
        NS=REMOTE_NS,
    )
    assert out["repr_has_key"] is False
    assert out["lc_ids"] == ["lc-vault", "lc-cat"]
    assert out["lc_search"] == ["The vault code is 7342."]
    assert out["lc_filter"] == ["lc-cat"] and out["lc_get"] == ["lc-cat"]
    assert out["lc_retriever"] == out["lc_async"] == [["The vault code is 7342.", "retrieval"]]
    assert out["li_async"] == ["The vault code is 7342."] and out["async_calls"] == ["vault code", "vault code"]
    assert out["deleted"] is True
    assert out["li_query"] == ["li-turtle"] and out["li_nodes"] == ["li-turtle"] and out["li_after_delete"] == []
    assert out["versions"] == [1] and out["read_key_write"] == "forbidden"
    assert out["torch_loaded"] is False


# ============================================================================ MCP over stdio
def _mcp_session(
    srv: Served, key: str, calls: list[tuple[str, dict[str, Any]]], file_root: Path | None = None
) -> tuple[list[str], list[Any]]:
    from mcp.client.client import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "memory.cli", "mcp", "--namespace", MCP_NS, "--url", srv.url],
        env={
            "PMEM_API_KEY": srv.keys[key],
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "PMEM_HOME": str(srv.home / "mcp-home"),
            **({"PMEM_MCP_FILE_ROOTS": str(file_root)} if file_root else {}),
        },
        cwd=str(REPO),
    )

    async def run() -> tuple[list[str], list[Any]]:
        async with Client(params) as client:
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            results = []
            for name, args in calls:
                r = await client.call_tool(name, args)
                text = "".join(getattr(c, "text", "") for c in r.content)
                if r.is_error:
                    results.append(("error", text))
                else:
                    results.append(r.structured_content if r.structured_content is not None else json.loads(text))
            return tools, results

    return asyncio.run(asyncio.wait_for(run(), 180))


def test_mcp_tools_over_stdio(sqlite_served: Served, tmp_path: Path) -> None:
    note = tmp_path / "mcp-note.md"
    note.write_text("# Parking\n\nVisitors park on level minus two.\n")
    tools, results = _mcp_session(
        sqlite_served,
        "writer",
        [
            ("remember", {"text": "The wifi password is orchid-42.", "document_id": "mcp-wifi"}),
            ("remember_file", {"path": str(note), "document_id": "mcp-parking"}),
            ("recall", {"query": "wifi password", "k": 1}),
            ("list_documents", {"prefix": "mcp-"}),
            ("forget", {"document_id": "mcp-wifi"}),
            ("list_documents", {"prefix": "mcp-"}),
            ("forget", {"document_id": "mcp-wifi"}),
        ],
        file_root=tmp_path,
    )
    assert tools == ["ask", "forget", "internalize", "list_documents", "recall", "remember", "remember_file"]
    remembered, filed, recalled, listed, forgot, listed_after, forgot_again = results
    assert remembered == {"status": "created", "document_id": "mcp-wifi", "version": 1, "internalize_job": None}
    assert filed["status"] == "created" and filed["document_id"] == "mcp-parking"
    recalled = recalled["result"] if isinstance(recalled, dict) else recalled
    assert recalled[0]["document_id"] == "mcp-wifi" and "orchid-42" in recalled[0]["text"]
    listed = listed["result"] if isinstance(listed, dict) else listed
    assert [d["document_id"] for d in listed] == ["mcp-parking", "mcp-wifi"]
    assert forgot == {"deleted": "mcp-wifi", "versions": 1}
    listed_after = listed_after["result"] if isinstance(listed_after, dict) else listed_after
    assert [d["document_id"] for d in listed_after] == ["mcp-parking"]
    assert forgot_again[0] == "error" and "NotFoundError" in forgot_again[1]
    # a read key's agent may recall but not remember: the server's 403 reaches the agent as a tool error
    _, (denied,) = _mcp_session(sqlite_served, "reader", [("remember", {"text": "should not be stored"})])
    assert denied[0] == "error" and "may not" in denied[1]


def test_mcp_over_streamable_http(sqlite_served: Served, tmp_path: Path) -> None:
    import httpx2
    from _server import free_port
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PMEM_HOME": str(tmp_path / "mcp-home"),
    }
    log = (tmp_path / "mcp.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memory.cli",
            "mcp",
            "--namespace",
            MCP_NS,
            "--url",
            sqlite_served.url,
            "--transport",
            "streamable-http",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    async def run() -> tuple[list[str], Any]:
        deadline = time.monotonic() + 90
        while True:  # wait for the port
            try:
                http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {sqlite_served.keys['writer']}"})
                async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
                    tools = sorted(t.name for t in (await client.list_tools()).tools)
                    await client.call_tool(
                        "remember", {"text": "The lift is out of order on Fridays.", "document_id": "mcp-http-lift"}
                    )
                    r = await client.call_tool("recall", {"query": "lift out of order", "k": 1})
                    return tools, r.structured_content
            except Exception:  # not listening yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    try:
        tools, recalled = asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
    assert "recall" in tools and "remember" in tools
    assert recalled["result"][0]["document_id"] == "mcp-http-lift", (tmp_path / "mcp.log").read_text()[-2000:]


def test_serve_refuses_no_auth_off_loopback() -> None:
    from typer.testing import CliRunner

    from memory.cli import app

    r = CliRunner().invoke(app, ["serve", "--no-auth", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "loopback" in r.output


# ============================================================================ concurrency
def test_50_concurrent_mixed_requests_without_the_model(sqlite_served: Served) -> None:
    """Adds, searches, gets and deletes at once: nothing lost, nothing duplicated, every answer well formed."""
    _concurrent_mix(sqlite_served, queries=0)


@pytest.mark.slow
def test_50_concurrent_mixed_requests_with_queries(sqlite_served: Served) -> None:
    _concurrent_mix(sqlite_served, queries=8)


def _concurrent_mix(srv: Served, *, queries: int) -> None:
    base = f"/v1/namespaces/{NS}"
    tag = f"c{queries}"
    if queries:  # load the model first: the burst is about concurrency, not a cold start
        warm = srv.call(
            "POST",
            f"{base}/query",
            key="reader",
            json={"question": "warm up", "mode": "retrieval", "max_new_tokens": 1, "log": False},
        )
        assert warm.status_code == 200, warm.text
    for i in range(10):  # to be deleted concurrently
        srv.call(
            "POST",
            f"{base}/documents",
            key="writer",
            json={"text": f"Doomed note {i} about {tag}.", "document_id": f"{tag}-doomed-{i}"},
        )
    ops: list[tuple[str, str, dict[str, Any]]] = []
    n_adds = 50 - 10 - 10 - queries - 5
    for i in range(n_adds):
        ops.append(
            (
                "POST",
                f"{base}/documents",
                {"json": {"text": f"Fact {i}: the {tag} colour is number {i}.", "document_id": f"{tag}-fact-{i}"}},
            )
        )
    for i in range(10):
        ops.append(("DELETE", f"{base}/documents/{tag}-doomed-{i}", {}))
    for i in range(10):
        ops.append(("POST", f"{base}/search", {"json": {"query": f"{tag} colour number {i}", "k": 3}}))
    for i in range(queries):
        ops.append(
            (
                "POST",
                f"{base}/query",
                {
                    "json": {
                        "question": f"What is the {tag} colour {i}?",
                        "mode": "retrieval",
                        "k": 2,
                        "max_new_tokens": 4,
                    }
                },
            )
        )
    for _ in range(5):
        ops.append(("GET", f"{base}/documents", {"params": {"prefix": f"{tag}-", "limit": 100}}))
    assert len(ops) == 50
    import random

    random.Random(7).shuffle(ops)
    barrier = threading.Barrier(50)

    def go(op: tuple[str, str, dict[str, Any]]) -> tuple[str, str, httpx.Response]:
        barrier.wait(timeout=60)
        return op[0], op[1], srv.call(op[0], op[1], key="writer", **op[2])

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(go, ops))
    for method, path, r in results:
        assert r.headers["content-type"].startswith("application/json"), (method, path)
        body = r.json()
        if method == "POST" and path.endswith("/documents"):
            assert r.status_code == 201 and body["status"] == "created", body
        elif method == "DELETE":
            assert r.status_code == 200 and body["versions"] == 1, body
        elif path.endswith("/search"):
            assert r.status_code == 200 and isinstance(body["hits"], list)
        elif path.endswith("/query"):
            assert r.status_code == 200 and body["mode"] == "retrieval" and isinstance(body["answer"], str), body
        else:
            assert r.status_code == 200 and isinstance(body["documents"], list)
    docs = srv.call("GET", f"{base}/documents", params={"prefix": f"{tag}-", "limit": 500}).json()["documents"]
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)) == n_adds
    assert set(ids) == {f"{tag}-fact-{i}" for i in range(n_adds)}
    assert all(d["version"]["number"] == 1 and d["version_count"] == 1 for d in docs)


# ============================================================================ async API
def test_async_api_does_not_block_the_loop_and_bounds_the_queue(tmp_path: Path) -> None:
    from _embedders import BagOfWords

    from memory.aio import AsyncParametricMemory, BusyError

    amem = AsyncParametricMemory(
        home=tmp_path / "home", embedder=BagOfWords(), max_concurrent=1, max_waiting=1, max_batch=1
    )

    async def main() -> dict[str, Any]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        added = await amem.add("The vault code is 7342.", document_id="vault")
        hits = await amem.search("vault code", k=1)
        running = [asyncio.create_task(amem.run_model(time.sleep, 0.5)) for _ in range(2)]  # 1 runs, 1 waits
        await asyncio.sleep(0.05)
        with pytest.raises(BusyError):
            await amem.run_model(time.sleep, 0.01)
        busy_depth = amem.generation.depth
        # a caller that gives up does not free the slot while its model call still runs
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(running[0], 0.05)
        assert amem.generation.depth >= 1
        await asyncio.gather(*running[1:])
        stop.set()
        await t
        return {
            "status": added.status,
            "hit": hits[0].document_id,
            "ticks": ticks,
            "depth": busy_depth,
            "after": amem.generation.depth,
        }

    out = asyncio.run(main())
    assert out["status"] == "created" and out["hit"] == "vault"
    assert out["depth"] == 2 and out["after"] == 0
    assert out["ticks"] > 30  # ~1 s of model calls ran in threads while the loop kept ticking


# ============================================================================ CLI
def test_keys_cli_create_list_revoke(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from memory.cli import app

    monkeypatch.setenv("PMEM_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    r = runner.invoke(app, ["keys", "create", "support-agent", "--role", "write", "-n", "hr", "-n", "ops", "--json"])
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout.strip().splitlines()[-1])
    assert created["key"].startswith(f"pmk_{created['key_id']}_") and created["namespaces"] == ["hr", "ops"]
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert created["key"].split("_", 2)[2] not in listed.output
    assert [k["name"] for k in json.loads(listed.stdout.strip().splitlines()[-1])] == ["support-agent"]
    assert runner.invoke(app, ["keys", "revoke", created["key_id"]]).exit_code == 0
    assert json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout.strip().splitlines()[-1]) == []
    bad = runner.invoke(app, ["keys", "create", "x", "--role", "god", "-n", "hr"])
    assert bad.exit_code == 2 and "role must be one of" in bad.output
    nons = runner.invoke(app, ["keys", "create", "x", "--role", "read"])
    assert nons.exit_code == 2 and "at least one namespace" in nons.output
    assert runner.invoke(app, ["keys", "revoke", "ffffffffffff"]).exit_code == 2


def test_no_auth_only_on_loopback() -> None:
    from memory.errors import ConfigError
    from memory.server.app import check_no_auth

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_no_auth(host)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(ConfigError, match="loopback"):
            check_no_auth(host)


def test_ready_check_asks_the_broker_the_core_finds(tmp_path: Path, monkeypatch) -> None:
    """/readyz checks the broker through :func:`memory.submission.broker`, so the server never imports the
    task queue; with a broker URL and none installed, the check fails with the configuration error."""
    import importlib.metadata

    from memory import submission
    from memory.api import ParametricMemory
    from memory.server.app import _readiness

    monkeypatch.setenv("PMEM_BROKER_URL", "redis://127.0.0.1:9/0")
    mem = ParametricMemory(home=tmp_path / "home")
    submission.broker.cache_clear()
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    assert _readiness(mem)["broker"] == {"ok": False, "error": "ConfigError"}

    checked = []

    class Up:
        def check(self, settings: Any) -> None:
            checked.append(settings.broker_url)

    monkeypatch.setattr(submission, "broker", Up)
    assert _readiness(mem)["broker"] == {"ok": True} and checked == ["redis://127.0.0.1:9/0"]


# ============================================================================ the model (slow)
@pytest.mark.slow
def test_internalize_query_and_adapter_download(sqlite_served: Served, tmp_path: Path) -> None:
    """202 + job -> ready adapter with provenance -> PEFT archive -> a parametric query that names it."""
    from memory.client import RemoteMemory

    mem = RemoteMemory(sqlite_served.url, sqlite_served.keys["writer"], namespace=NS)
    mem.add("The vault code is 7342. Only the night guard knows it.", document_id="slow-vault")
    job = mem.submit_internalize("slow-vault")
    assert job.state in ("queued", "running", "succeeded")
    job = mem.wait(job, timeout=300)
    assert job.state == "succeeded", job.error
    adapter = next(a for a in mem.adapters(document_id="slow-vault") if a.id == job.result["adapter_id"])
    assert adapter.status == "ready" and adapter.version == 1 and adapter.blob_sha256
    peft_dir = mem.download_adapter(adapter.id, tmp_path / "peft")
    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    assert cfg["r"] == adapter.rank and (peft_dir / "adapter_model.safetensors").stat().st_size > 0
    r = mem.query("What is the vault code?", mode="parametric", document_ids=["slow-vault"], max_new_tokens=12)
    assert r.mode in ("parametric", "retrieval") and [a.id for a in r.adapters] == [adapter.id]
    assert r.query_id is not None
    mem.feedback(r.query_id, 1.0)
    metrics = httpx.get(f"{sqlite_served.url}/metrics").text
    assert 'pmem_internalizations_total{outcome="succeeded"}' in metrics and "pmem_queries_total{mode=" in metrics
    # an experiment through the server, then its report
    arms = {"short": {"mode": "retrieval", "max_new_tokens": 4}, "long": {"mode": "retrieval", "max_new_tokens": 8}}
    arm, res = mem.experiment_query("len-test", "What is the vault code?", arms=arms, user_key="u1")
    assert arm in arms and res.mode == "retrieval" and res.completion_tokens <= arms[arm]["max_new_tokens"]
    mem.feedback(res.query_id, 0.5)
    report = mem.experiment_report("len-test")
    assert report["arms"][arm]["queries"] == 1 and report["arms"][arm]["feedback"]["n"] == 1


def test_stream_query_errors_before_the_stream_are_plain_errors(sqlite_served: Served) -> None:
    """A streamed query refused before any token (no key, wrong namespace, over the caps) raises as query does."""
    from memory.client import AuthError, RemoteMemory
    from memory.errors import ValidationError

    with RemoteMemory(sqlite_served.url, sqlite_served.keys["reader"], namespace=NS) as mem:
        with pytest.raises(AuthError):
            list(mem.stream_query("What is the vault code?", namespace=OTHER))
        with pytest.raises(ValidationError):
            list(mem.stream_query("What is the vault code?", k=10_000))
        with pytest.raises(ValidationError):
            list(mem.stream_query("What is the vault code?", max_new_tokens=10**6))
    r = sqlite_served.call(
        "POST",
        f"/v1/namespaces/{NS}/query",
        key=None,
        headers={"Accept": "text/event-stream"},
        json={"question": "What is the vault code?", "stream": True},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.slow
def test_stream_query_sends_tokens_then_the_answer(sqlite_served: Served) -> None:
    """Server-sent events from the real model: several token events, then the answer they join to."""
    from memory.client import RemoteMemory
    from memory.types import QueryResult

    mem = RemoteMemory(sqlite_served.url, sqlite_served.keys["writer"], namespace=NS)
    mem.add("The lighthouse on Corran Point was built in 1874 by the engineer Ada Whitlow.", document_id="stream-doc")
    question = "Who built the lighthouse on Corran Point, and when?"
    # raw SSE: event names and order, as any client sees them
    events: list[tuple[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{sqlite_served.url}/v1/namespaces/{NS}/query",
        timeout=300,
        headers={"Authorization": f"Bearer {sqlite_served.keys['reader']}"},
        json={"question": question, "mode": "retrieval", "max_new_tokens": 24, "stream": True, "log": False},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    kinds = [e for e, _ in events]
    assert kinds[-1] == "answer" and set(kinds[:-1]) == {"token"} and len(kinds) >= 3, kinds
    final = events[-1][1]
    assert final["answer"] and "".join(d["text"] for _, d in events[:-1]) == final["answer"]
    assert final["mode"] == "retrieval" and final["reason"] and final["completion_tokens"] <= 24
    assert final["adapters"] == [] and any(c["document_id"] == "stream-doc" for c in final["chunks"])
    # the same answer as the plain query (greedy decoding), and through RemoteMemory.stream_query
    plain = mem.query(question, mode="retrieval", max_new_tokens=24, log=False)
    assert plain.answer == final["answer"]
    items = list(mem.stream_query(question, mode="retrieval", max_new_tokens=24))
    pieces, result = items[:-1], items[-1]
    assert isinstance(result, QueryResult) and all(isinstance(p, str) for p in pieces) and len(pieces) >= 2
    assert "".join(pieces) == result.answer == plain.answer and result.query_id is not None
    mem.close()
