"""A new user's first hour against a real ``pmem serve`` process (issue 25): docs pages without a CDN, uploads
named like the CLI names files, one datetime convention, search with a minimum score, the on_add policy over
HTTP, and abstention in an empty namespace that is not created by asking."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server import ServerProcess, server_env

NS = "pol"
STUB = "_fixtures_workers:stub_internalize"


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache) -> Any:
    tmp = tmp_path_factory.mktemp("server-firsthour")
    env = server_env(tmp / "home", PMEM_TEST_NO_AUTH="1", PMEM_MODEL_CACHE=model_cache, PMEM_WORKER_INTERNALIZER=STUB)
    proc = ServerProcess(env, tmp / "server.log").wait_ready()
    proc.home = tmp / "home"  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def _call(server: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, server.url + path, timeout=120, **kw)


def _utc(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0, value
    return ts


def test_docs_pages_load_only_their_own_assets(server) -> None:
    for page in ("/docs", "/redoc"):
        r = _call(server, "GET", page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text) + re.findall(
            r"""url\s*:\s*['"]([^'"]+)['"]""", r.text
        )
        assert urls and not [u for u in urls if "//" in u], (page, urls)  # no other host, no CDN
        for url in urls:
            assert _call(server, "GET", url).status_code == 200, url
    assert "javascript" in _call(server, "GET", "/docs/assets/swagger-ui-bundle.js").headers["content-type"]


def test_uploads_are_named_as_the_cli_names_files_and_dates_are_aware_utc(server, tmp_path: Path) -> None:
    from memory.api import ParametricMemory

    text = b"# Leave\n\nStaff get 25 days of paid leave a year.\n"
    r = _call(server, "POST", f"/v1/namespaces/{NS}/documents/upload", files={"file": ("leave.md", text)})
    assert r.status_code == 201, r.text
    doc = r.json()["document"]
    assert doc["id"] == "leave.md" and r.json().get("job") is None  # on_add none: no job
    # the same file added the way `pmem add FILE` adds it is the same document, not a second one
    (tmp_path / "leave.md").write_bytes(text)
    mem = ParametricMemory(home=server.home)
    (added,) = mem.add_source(str(tmp_path / "leave.md"), namespace=NS)
    assert (added.status, added.document.id) == ("unchanged", "leave.md")
    assert [d.id for d in mem.list(namespace=NS)] == ["leave.md"]
    # one datetime convention: aware UTC in the library (add, get, history, list) and over HTTP
    got = mem.get("leave.md", namespace=NS)
    stamps = [
        got.created_at,
        got.updated_at,
        got.version.created_at,
        mem.history("leave.md", namespace=NS)[0].created_at,
    ]
    stamps += [added.document.created_at, mem.list(namespace=NS)[0].updated_at]
    assert all(ts.tzinfo is not None and ts.utcoffset().total_seconds() == 0 for ts in stamps), stamps
    assert got.created_at == added.document.created_at
    body = _call(server, "GET", f"/v1/namespaces/{NS}/documents/leave.md").json()
    for value in (body["created_at"], body["updated_at"], body["version"]["created_at"]):
        assert _utc(value) == got.created_at or _utc(value) >= got.created_at
    versions = _call(server, "GET", f"/v1/namespaces/{NS}/documents/leave.md/versions").json()["versions"]
    assert _utc(versions[0]["created_at"]) == got.version.created_at


def test_search_takes_a_minimum_score(server) -> None:
    _call(
        server, "POST", f"/v1/namespaces/{NS}/documents", json={"text": "Parking is on level two.", "document_id": "p"}
    )
    every = _call(server, "POST", f"/v1/namespaces/{NS}/search", json={"query": "parking level", "k": 10}).json()
    scores = sorted(h["score"] for h in every["hits"])
    assert len(scores) >= 2 and scores[0] < scores[-1]
    cut = (scores[0] + scores[-1]) / 2
    some = _call(
        server, "POST", f"/v1/namespaces/{NS}/search", json={"query": "parking level", "k": 10, "min_score": cut}
    )
    assert some.status_code == 200 and [h["document_id"] for h in some.json()["hits"]] == ["p"]
    bad = _call(server, "POST", f"/v1/namespaces/{NS}/search", json={"query": "parking", "min_score": 2})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"


def test_asking_in_an_empty_namespace_abstains_and_creates_nothing(server) -> None:
    r = _call(server, "POST", "/v1/namespaces/pol-typo/query", json={"question": "How many days of leave?"})
    assert r.status_code == 200 and r.json()["mode"] == "abstain", r.text
    assert r.json()["answer"].startswith("I don't know") and "does not exist" in r.json()["reason"]
    assert "pol-typo" not in _call(server, "GET", "/v1/namespaces").json()["namespaces"]
    assert _call(server, "GET", "/v1/namespaces/pol-typo").status_code == 404


def test_the_on_add_policy_over_http(server) -> None:
    r = _call(server, "PUT", f"/v1/namespaces/{NS}/settings", json={"on_add": "instant"})
    assert r.status_code == 200 and r.json()["on_add"] == "instant", r.text
    assert _call(server, "GET", f"/v1/namespaces/{NS}").json()["on_add"] == "instant"
    bad = _call(server, "PUT", f"/v1/namespaces/{NS}/settings", json={"on_add": "always"})
    assert bad.status_code == 422
    r = _call(
        server, "POST", f"/v1/namespaces/{NS}/documents", json={"text": "The vault code is 7342.", "document_id": "v"}
    )
    assert r.status_code == 201 and r.json()["job"]["kind"] == "internalize", r.text
    job_id = r.json()["job"]["id"]
    deadline = time.monotonic() + 120
    while (job := _call(server, "GET", f"/v1/namespaces/{NS}/jobs/{job_id}").json())["state"] not in (
        "succeeded",
        "failed",
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job["state"] == "succeeded", job
    assert _utc(job["created_at"]) <= datetime.now(UTC)
    adapters = _call(server, "GET", f"/v1/namespaces/{NS}/adapters", params={"document_id": "v"}).json()["adapters"]
    assert [a["status"] for a in adapters] == ["ready"] and _utc(adapters[0]["created_at"])
    full = _call(server, "POST", f"/v1/namespaces/{NS}/documents/v/internalize", json={"tier": "full"})
    assert full.status_code == 202 and full.json()["job"]["payload"]["tier"] == "full", full.text
    assert full.json()["job"]["id"] != job_id  # another job than the instant one


def test_mcp_internalize_through_a_server(server) -> None:
    """MCP in --url mode: `internalize` submits the server's jobs and reports their states; `job_id` polls one."""
    import asyncio
    import json

    from mcp.client.client import Client

    from memory.client import RemoteMemory
    from memory.server.mcp import build_server

    remote = RemoteMemory(server.url, namespace="mcp-remote")
    remote.add("The wifi password is orchid-42.", document_id="wifi")
    mcp = build_server(remote, namespace="mcp-remote")

    async def call(name: str, args: dict[str, Any]) -> Any:
        async with Client(mcp) as client:
            r = await client.call_tool(name, args)
            return r.structured_content or json.loads("".join(getattr(c, "text", "") for c in r.content))

    (job,) = asyncio.run(call("internalize", {}))["jobs"]
    assert job["document_id"] == "wifi" and job["state"] in ("queued", "running", "succeeded"), job
    deadline = time.monotonic() + 120
    while job["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        (job,) = asyncio.run(call("internalize", {"job_id": job["job_id"]}))["jobs"]
    assert job["state"] == "succeeded" and job["adapter_id"] is not None, job
    assert asyncio.run(call("internalize", {}))["jobs"] == []  # nothing left without a current adapter
    remote.close()
