"""The memory server against a hostile or careless client (issue 22), on a real uvicorn process: the body cap
counts the bytes read, /metrics labels stay bounded, invalid numbers and NUL characters are 422 on SQLite and
PostgreSQL, an accepted job is never lost to a full generation queue nor to a killed server, MCP over HTTP
takes the server's keys and reads files only under its roots; a crash test (SIGKILL during concurrent writes
and internalizations) and a load test (32 clients, slow).

    .venv/bin/python -m pytest tests/test_server_hardening.py -q -m "not slow"
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _embedders import BagOfWords
from test_server import MCP_NS, NS, REPO, Served, _start, _wait_job

from memory.api import ParametricMemory

BIG = 2**70  # beyond 64 bits: SQLite's integer and PostgreSQL's bigint


@pytest.fixture(scope="module")
def small(tmp_path_factory, model_cache) -> Any:
    """A SQLite server with a 1 MiB body cap."""
    srv = _start(tmp_path_factory.mktemp("hardening-sqlite"), model_cache, PMEM_TEST_MAX_BODY=str(2**20))
    yield srv
    srv.proc.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def both(request, tmp_path_factory, model_cache) -> Any:
    if request.param == "sqlite":
        yield request.getfixturevalue("small")
        return
    import psycopg

    db_url = request.getfixturevalue("pg_server_url")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    srv = _start(tmp_path_factory.mktemp("hardening-postgresql"), model_cache, db_url)
    yield srv
    srv.proc.stop()


def _raw(srv: Served, head: str, chunks: list[bytes]) -> int:
    """Send a hand-written request (headers, then body pieces) and return the status of the answer."""
    with socket.create_connection(("127.0.0.1", srv.proc.port), timeout=60) as s:
        s.sendall(head.encode())
        try:
            for c in chunks:
                s.sendall(c)
        except OSError:  # the server answered and closed while we were still sending
            pass
        data = b""
        while b"\r\n" not in data:
            part = s.recv(4096)
            if not part:
                break
            data += part
    return int(data.split(b" ", 2)[1])


def _chunked(total: int, piece: int = 64 * 1024) -> list[bytes]:
    out = [b"%x\r\n" % piece + b"x" * piece + b"\r\n" for _ in range(total // piece)]
    return [*out, b"0\r\n\r\n"]


def test_body_cap_counts_the_bytes_read(small: Served) -> None:
    """``Content-Length: 5`` beside a chunked body passed the size check (it trusted the header) while the
    server read the chunks: a client without a key made it hold 24 MiB against a 1 MiB cap, answered 401."""
    path = f"/v1/namespaces/{NS}/documents"
    for auth in ("", f"Authorization: Bearer {small.keys['writer']}\r\n"):
        for lengths in ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "Transfer-Encoding: chunked\r\n"):
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}{lengths}\r\n"
            assert _raw(small, head, _chunked(4 * 2**20)) == 413, (auth, lengths)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {2**30}\r\n\r\n"
    assert _raw(small, head, []) == 413  # a declared length over the cap: refused before reading
    body = b'{"text": "Chunked but small enough.", "document_id": "chunked-ok"}'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {small.keys['writer']}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert _raw(small, head, [b"%x\r\n" % len(body) + body + b"\r\n", b"0\r\n\r\n"]) == 201
    r = small.call("POST", f"{path}/upload", files={"file": ("big.txt", b"word " * 300_000)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert small.call("GET", "/healthz", key=None).status_code == 200


def test_metrics_labels_do_not_grow_with_made_up_methods(small: Served) -> None:
    """Unknown methods (no key needed) each added a series to /metrics: 500 requests took it from 2.7 KB to 1.1 MB."""
    for i in range(20):
        with socket.create_connection(("127.0.0.1", small.proc.port), timeout=30) as s:
            s.sendall(f"MADEUP{i} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            s.recv(4096)
    text = small.call("GET", "/metrics", key=None).text
    assert "MADEUP" not in text
    assert 'method="other"' in text and 'method="GET"' in text


def test_invalid_numbers_and_nul_characters_are_422(both: Served) -> None:
    """Each of these answered 500 with a traceback (SQLite: int too large; PostgreSQL: NUL in text or jsonb)."""
    base = f"/v1/namespaces/{NS}"
    r = both.call("POST", f"{base}/documents", json={"text": "Numbers doc.", "document_id": "numbers"})
    assert r.status_code in (200, 201), r.text
    job = both.call("POST", f"{base}/sources/refresh", json={}).json()["job"]
    _wait_job(both, job["id"])
    docs_before = both.call("GET", f"{base}/documents", params={"limit": 500}).json()["documents"]
    long_query = "leave " * 2000
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"{base}/documents/numbers", {"params": {"version": BIG}}),
        ("GET", f"{base}/documents/numbers", {"params": {"version": 2**31}}),
        ("GET", f"{base}/documents/numbers/chunks", {"params": {"version": BIG}}),
        ("GET", f"{base}/documents/numbers/diff", {"params": {"old": BIG}}),
        ("GET", f"{base}/documents/numbers/diff", {"params": {"old": 1, "new": BIG}}),
        ("POST", f"{base}/documents/numbers/rollback", {"json": {"version": BIG}}),
        ("POST", f"{base}/documents/numbers/internalize", {"json": {"version": BIG}}),
        ("GET", f"{base}/documents", {"params": {"offset": BIG}}),
        ("GET", f"{base}/jobs", {"params": {"offset": BIG}}),
        ("GET", f"{base}/jobs", {"params": {"kind": "a\x00b"}}),
        ("GET", f"{base}/jobs/{BIG}", {}),
        ("GET", f"{base}/adapters/{BIG}/peft", {}),
        ("POST", f"{base}/feedback", {"json": {"query_id": BIG, "score": 1}}),
        ("POST", f"{base}/query", {"json": {"question": "x?", "skill": BIG}}),
        ("POST", f"{base}/sources", {"json": {"spec": "/tmp", "refresh_interval_s": BIG}}),
        ("POST", f"{base}/experiments/e/query", {"json": {"question": "x?", "arms": {"a": {"k": "many"}, "b": {}}}}),
        (
            "POST",
            f"{base}/experiments/e/query",
            {"json": {"question": "x?", "arms": {"a": {"max_new_tokens": "x"}, "b": {}}}},
        ),
        ("GET", f"{base}/experiments/a%00b/report", {}),
        ("POST", f"{base}/search", {"json": {"query": long_query}}),
        ("POST", f"{base}/query", {"json": {"question": long_query}}),
        ("POST", f"{base}/experiments/e/query", {"json": {"question": long_query, "arms": ["auto", "retrieval"]}}),
        ("POST", f"{base}/search", {"json": {"query": "x", "filter": {"dept": "a\x00b"}}}),
        ("POST", f"{base}/search", {"json": {"query": "x", "filter": {"$or": [{"n": i} for i in range(1001)]}}}),
        ("POST", f"{base}/search", {"json": {"query": "a\x00b"}}),
        ("POST", f"{base}/documents", {"json": {"text": "fine", "title": "a\x00b"}}),
        ("POST", f"{base}/documents", {"json": {"text": "fine", "metadata": {"k": "a\x00b"}}}),
        ("GET", f"{base}/documents", {"params": {"prefix": "a\x00b"}}),
        ("POST", f"{base}/sources", {"json": {"spec": "/tmp/a\x00b"}}),
    ]
    for method, path, kw in cases:
        r = both.call(method, path, **kw)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", (method, path, r.text[:300])
        assert len(r.content) < 10_000  # the input is never echoed back
    assert both.call("GET", f"{base}/documents", params={"limit": 500}).json()["documents"] == docs_before


# ============================================================================ accepted jobs
@pytest.fixture
def stub_served(tmp_path, model_cache) -> Any:
    """One generation at a time and none waiting, internalizations by the workers' slow stub (real job rows,
    facade call and adapter rows; stub compute)."""
    srv = _start(
        tmp_path,
        model_cache,
        PMEM_TEST_QUEUE="0",
        PMEM_WORKER_INTERNALIZER="_fixtures_workers:stub_internalize",
        PMEM_TEST_SLEEP_S="1.5",
    )
    yield srv
    srv.proc.stop()


def test_an_accepted_job_is_not_lost_when_the_queue_is_full(stub_served: Served) -> None:
    """A 202 internalization met a full generation queue and stayed ``queued`` with 0 attempts forever;
    posting again returned the same dead job."""
    base = f"/v1/namespaces/{NS}"
    for i in range(3):
        r = stub_served.call(
            "POST", f"{base}/documents", json={"text": f"Note {i} for the queue.", "document_id": f"q{i}"}
        )
        assert r.status_code == 201
    jobs = []
    for i in range(3):  # the first holds the only slot; the others used to be refused
        r = stub_served.call("POST", f"{base}/documents/q{i}/internalize", json={})
        assert r.status_code == 202, r.text
        jobs.append(r.json()["job"]["id"])
    busy = stub_served.call("POST", f"{base}/query", json={"question": "Note?", "mode": "retrieval"})
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"  # requests behind jobs: busy
    done = [_wait_job(stub_served, j, timeout=60) for j in jobs]
    assert [j["state"] for j in done] == ["succeeded"] * 3, done
    assert all(j["attempts"] == 1 for j in done)
    again = stub_served.call("POST", f"{base}/documents/q2/internalize", json={}).json()["job"]
    assert again["id"] == jobs[2] and again["state"] == "succeeded"


def test_unfinished_jobs_are_resumed_when_the_server_starts(tmp_path, model_cache) -> None:
    """A server killed with jobs queued or running left them so forever (embedded mode: no broker): the next
    start runs them."""
    from _server import ServerProcess, server_env

    from memory.jobs import JobStore

    srv = _start(tmp_path, model_cache)
    srv.proc.proc.kill()  # SIGKILL
    srv.proc.stop()
    store = JobStore.for_url(srv.db_url)
    running, _ = store.create("refresh", {"namespace": NS, "force": True}, namespace=NS)
    store.start(running.id)  # "running" in the process that died
    queued, _ = store.create("refresh", {"namespace": NS}, namespace=NS)
    proc = ServerProcess(server_env(srv.home, PMEM_MODEL_CACHE=model_cache), tmp_path / "again.log").wait_ready()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = [store.get(j.id) for j in (running, queued)]
            if all(j.state in ("succeeded", "failed") for j in jobs):
                break
            time.sleep(0.2)
        assert [(j.state, j.attempts) for j in jobs] == [("succeeded", 2), ("succeeded", 1)], proc.log()
    finally:
        proc.stop()


# ============================================================================ MCP
def _mcp_http(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``pmem mcp --transport streamable-http`` on a free port, once it listens."""
    from _server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory.cli", "mcp", "--transport", "streamable-http", "--port", str(port), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(url, timeout=2)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(log.read_text()[-3000:]) from None
            time.sleep(0.3)


def _mcp_calls(url: str, key: str | None, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Each call's structured result, or ("error", text) for a tool error."""
    import httpx2
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    async def run() -> list[Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers))) as client:
            out = []
            for name, args in calls:
                r = await client.call_tool(name, args)
                text = "".join(getattr(c, "text", "") for c in r.content)
                out.append(("error", text) if r.is_error else r.structured_content)
            return out

    return asyncio.run(asyncio.wait_for(run(), 120))


def _refused_without_a_valid_key(url: str, *more: str) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    headers = {"accept": "application/json, text/event-stream"}
    for key in (None, "not-a-key", "pmk_000000000000_" + "A" * 43, *more):
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(url, json=init, headers={**headers, **auth}, timeout=30)
        assert r.status_code == 401, (key, r.status_code, r.text[:200])


def test_mcp_over_http_through_a_server_uses_each_callers_key(small: Served, tmp_path: Path) -> None:
    """Over HTTP the MCP tools had no authentication, and with --url anyone who reached the port acted with the
    key the MCP process held (here an admin key): now each caller's own key goes to the server."""
    proc, url = _mcp_http(
        ["--namespace", MCP_NS, "--url", small.url],
        {"PMEM_API_KEY": small.keys["admin"], "PMEM_HOME": str(tmp_path / "mcp-home")},
        tmp_path / "mcp.log",
    )
    try:
        _refused_without_a_valid_key(url, small.keys["revoked"])
        remember = ("remember", {"text": "The lift is out of order on Fridays.", "document_id": "mcp-lift"})
        (denied,) = _mcp_calls(url, small.keys["reader"], [remember])
        assert denied[0] == "error" and "may not write" in denied[1]
        (stored,) = _mcp_calls(url, small.keys["writer"], [remember])
        assert stored["status"] == "created"
        (recalled,) = _mcp_calls(url, small.keys["writer"], [("recall", {"query": "lift out of order", "k": 1})])
        assert recalled["result"][0]["document_id"] == "mcp-lift"
        (outsider,) = _mcp_calls(url, small.keys["other"], [("recall", {"query": "lift", "k": 1})])
        assert outsider[0] == "error" and "may not read" in outsider[1]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_mcp_over_http_in_process_checks_the_keys_of_its_database(tmp_path: Path) -> None:
    from memory.config import Settings
    from memory.db.migrate import ensure_schema
    from memory.server.auth import KeyStore

    home = tmp_path / "home"
    url = Settings.from_env(home=home).resolved_database_url
    ensure_schema(url, auto_migrate=True)
    store = KeyStore.for_url(url)
    reader = store.create("r", role="read", namespaces=["notes"]).secret
    writer = store.create("w", role="write", namespaces=["notes"]).secret
    proc, mcp_url = _mcp_http(["--namespace", "notes"], {"PMEM_HOME": str(home)}, tmp_path / "mcp.log")
    try:
        _refused_without_a_valid_key(mcp_url)
        remember = ("remember", {"text": "Parking is on level two.", "document_id": "parking"})
        listing = ("list_documents", {})
        (denied, empty) = _mcp_calls(mcp_url, reader, [remember, listing])
        assert denied[0] == "error" and "may not write" in denied[1] and empty["result"] == []
        (stored, listed) = _mcp_calls(mcp_url, writer, [remember, listing])
        assert stored["status"] == "created" and [d["document_id"] for d in listed["result"]] == ["parking"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_mcp_without_keys_only_on_loopback(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from memory.cli import app

    monkeypatch.setenv("PMEM_HOME", str(tmp_path / "home"))
    for host in ("0.0.0.0", "192.168.1.5"):
        r = CliRunner().invoke(app, ["mcp", "--transport", "streamable-http", "--no-auth", "--host", host])
        assert r.exit_code == 2 and "loopback" in r.output, r.output


def test_mcp_remember_file_reads_only_under_its_file_roots(tmp_path: Path) -> None:
    """remember_file read any file the process could read (then recall returned its text)."""
    from mcp.client.client import Client

    from memory.server.mcp import build_server

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "ok.md").write_text("# Ok\n\nThe canteen opens at noon.\n")
    (outside / "secret.txt").write_text("the root password is hunter2\n")
    (root / "link.txt").symlink_to(outside / "secret.txt")
    mem = ParametricMemory(home=tmp_path / "home", embedder=BagOfWords())

    async def calls(server: Any, paths: list[str]) -> list[tuple[bool, str]]:
        async with Client(server) as client:
            out = []
            for p in paths:
                r = await client.call_tool("remember_file", {"path": p})
                out.append((r.is_error, "".join(getattr(c, "text", "") for c in r.content)))
            return out

    closed = asyncio.run(calls(build_server(mem, namespace="notes"), [str(root / "sub" / "ok.md")]))
    assert closed[0][0] and "reads no files" in closed[0][1]
    server = build_server(mem, namespace="notes", file_roots=(str(root),))
    refused = [
        str(outside / "secret.txt"),
        str(root / "link.txt"),  # a link inside the root to a file outside it
        str(root / "sub" / ".." / ".." / "outside" / "secret.txt"),
        "/etc/passwd",
        str(root / "sub"),  # a directory
        "a\x00b",
    ]
    for (is_error, text), path in zip(asyncio.run(calls(server, refused)), refused, strict=True):
        assert is_error, (path, text)
    ((is_error, text),) = asyncio.run(calls(server, [str(root / "sub" / "ok.md")]))
    assert not is_error, text
    assert [d.id for d in mem.list(namespace="notes")] == ["ok.md"]
    assert not any("hunter2" in h.text for h in mem.search("root password", namespace="notes", k=5))


# ============================================================================ crash
def test_sigkill_during_concurrent_writes_and_internalizations_loses_nothing(tmp_path: Path, model_cache: str) -> None:
    """SIGKILL the server while 8 clients add documents and post internalizations, start it again on the same
    home: every acknowledged write is there with its text, every accepted job finishes (none stays queued or
    running), the database passes its checks and every blob its hash."""
    import signal
    import threading

    from _server import ServerProcess, server_env
    from sqlalchemy import create_engine, text
    from typer.testing import CliRunner

    from memory.cli import app
    from memory.jobs import JobStore

    stub = {"PMEM_WORKER_INTERNALIZER": "_fixtures_workers:stub_internalize", "PMEM_TEST_SLEEP_S": "0.3"}
    srv = _start(tmp_path, model_cache, **stub)
    base = f"/v1/namespaces/{NS}"
    acked: dict[str, str] = {}
    jobs: set[int] = set()
    stop = threading.Event()

    def client(t: int) -> None:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.keys['writer']}"}) as http:
            i = 0
            while not stop.is_set():
                doc, body = f"crash-{t}-{i}", f"Crash note {i} of client {t}: code {t * 1000 + i}."
                try:
                    r = http.post(f"{base}/documents", json={"text": body, "document_id": doc}, timeout=30)
                    if r.status_code == 201:
                        acked[doc] = body
                    if i % 3 == 0 and r.status_code == 201:
                        r = http.post(f"{base}/documents/{doc}/internalize", json={}, timeout=30)
                        if r.status_code == 202:
                            jobs.add(r.json()["job"]["id"])
                except httpx.TransportError:
                    return  # the server is gone
                i += 1

    r = srv.call("POST", f"{base}/documents", json={"text": "Warm up.", "document_id": "warm"})
    warm = srv.call("POST", f"{base}/documents/warm/internalize", json={}).json()["job"]  # the first names the model
    assert _wait_job(srv, warm["id"])["state"] == "succeeded"
    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 60
    while (len(acked) < 40 or len(jobs) < 5) and time.monotonic() < deadline:
        time.sleep(0.1)
    srv.proc.proc.send_signal(signal.SIGKILL)
    stop.set()
    for th in threads:
        th.join(timeout=60)
    srv.proc.stop()
    assert len(acked) >= 40 and len(jobs) >= 5, (len(acked), len(jobs))
    store = JobStore.for_url(srv.db_url)
    left = [j.id for j in store.list(limit=10_000) if j.state not in ("succeeded", "failed")]
    assert left, "the kill came after every job had finished: nothing was tested"

    env = server_env(srv.home, PMEM_MODEL_CACHE=model_cache, PMEM_TEST_SOURCE_ROOTS=str(srv.source_root), **stub)
    proc = ServerProcess(env, tmp_path / "restarted.log").wait_ready()
    try:
        with httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {srv.keys['reader']}"}) as http:
            for doc, body in acked.items():
                r = http.get(f"{base}/documents/{doc}", params={"with_text": True}, timeout=30)
                assert r.status_code == 200 and r.json()["text"] == body, (doc, r.text[:200])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = {j.id: j.state for j in store.list(limit=10_000)}
            if all(s in ("succeeded", "failed") for s in states.values()):
                break
            time.sleep(0.5)
        assert jobs <= set(states) and all(s == "succeeded" for s in states.values()), (states, proc.log())
    finally:
        proc.stop()

    engine = create_engine(srv.db_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()
    env_home = {"PMEM_HOME": str(srv.home)}
    check = CliRunner().invoke(app, ["db", "check"], env=env_home)
    assert check.exit_code == 0, check.output
    mem = ParametricMemory(home=srv.home, embedder=BagOfWords())
    for digest in mem.blobs:
        assert mem.blobs.get(digest)  # re-hashed on read: IntegrityError if torn
    versions = [v for d in mem.list(namespace=NS, limit=10_000) for v in mem.history(d.id, namespace=NS)]
    assert all(mem.blobs.exists(v.content_sha256) for v in versions)
    assert all(a.status == "ready" for a in mem.adapters(namespace=NS))


def test_mcp_tools_keep_the_servers_caps(tmp_path: Path) -> None:
    from mcp.client.client import Client

    from memory.server.app import ServerLimits
    from memory.server.mcp import build_server

    mem = ParametricMemory(home=tmp_path / "home", embedder=BagOfWords())
    mem.add("The canteen opens at noon.", document_id="canteen", namespace="notes")
    lim = ServerLimits()

    async def calls() -> list[tuple[bool, str]]:
        async with Client(build_server(mem, namespace="notes")) as client:
            out = []
            for name, args in [
                ("recall", {"query": "canteen", "k": lim.max_k + 1}),
                ("recall", {"query": "canteen", "k": 0}),
                ("ask", {"question": "When?", "max_new_tokens": lim.max_new_tokens + 1}),
                ("list_documents", {"offset": 2**70}),
                ("recall", {"query": "canteen", "k": 1}),
            ]:
                r = await client.call_tool(name, args)
                out.append((r.is_error, "".join(getattr(c, "text", "") for c in r.content)))
            return out

    *refused, (ok_error, ok_text) = asyncio.run(calls())
    assert all(is_error for is_error, _ in refused), refused
    assert not ok_error and "canteen" in ok_text


# ============================================================================ load
def _rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux ``/proc``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


@pytest.mark.slow  # loads the real base model; ~1 min here
def test_32_clients_mixing_search_query_and_writes(small: Served) -> None:
    """32 clients for 20 s: searches, retrieval queries (4 new tokens) and adds at once. Every answer is a success
    or 503 ``busy``; the server's memory stays bounded; p50/p95 per kind are printed (README, "Server")."""
    import random
    import threading

    base = f"/v1/namespaces/{NS}"
    for i in range(50):
        small.call(
            "POST", f"{base}/documents", json={"text": f"Load fact {i}: door {i} is blue.", "document_id": f"l{i}"}
        )
    warm = {"question": "Which door?", "mode": "retrieval", "max_new_tokens": 1, "log": False}
    assert small.call("POST", f"{base}/query", json=warm).status_code == 200  # the model is loaded first
    rss_before = _rss_mib(small.proc.proc.pid)
    latencies: dict[str, list[float]] = {"search": [], "query": [], "add": []}
    bad: list[tuple[str, int, str]] = []
    busy = 0
    stop = time.monotonic() + 20
    lock = threading.Lock()

    def client(c: int) -> None:
        nonlocal busy
        rng = random.Random(c)
        with httpx.Client(base_url=small.url, headers={"Authorization": f"Bearer {small.keys['writer']}"}) as http:
            i = 0
            while time.monotonic() < stop:
                kind = rng.choices(["search", "query", "add"], weights=[6, 1, 3])[0]
                if kind == "search":
                    path, body = f"{base}/search", {"query": f"door {rng.randrange(50)}", "k": 4}
                elif kind == "query":
                    path, body = (
                        f"{base}/query",
                        {**warm, "question": f"Which door is {rng.randrange(50)}?", "max_new_tokens": 4},
                    )
                else:
                    path, body = f"{base}/documents", {"text": f"Client {c} note {i}.", "document_id": f"load-{c}-{i}"}
                t0 = time.perf_counter()
                r = http.post(path, json=body, timeout=600)
                with lock:
                    if r.status_code == 503 and r.json()["error"]["code"] == "busy":
                        busy += 1
                    elif r.status_code in (200, 201):
                        latencies[kind].append(time.perf_counter() - t0)
                    else:
                        bad.append((kind, r.status_code, r.text[:200]))
                i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(32)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=900)
    grown = _rss_mib(small.proc.proc.pid) - rss_before
    figures = {
        kind: {
            "n": len(ls),
            "p50_ms": round(1000 * sorted(ls)[len(ls) // 2]) if ls else None,
            "p95_ms": round(1000 * sorted(ls)[int(len(ls) * 0.95)]) if ls else None,
        }
        for kind, ls in latencies.items()
    }
    print(json.dumps({"clients": 32, "seconds": 20, "busy": busy, "rss_growth_mib": round(grown), **figures}))
    assert not bad, bad[:5]
    assert all(f["n"] for f in figures.values()), figures
    assert grown < 512, f"server memory grew {grown:.0f} MiB"
