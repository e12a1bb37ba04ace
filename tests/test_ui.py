"""The dashboard at /ui: sign-in with an API key, namespaces scoped as in the API, documents with versions and
diffs, adapters, jobs, and the query box; on SQLite and PostgreSQL, through FastAPI's TestClient.

Run: ``.venv/bin/python -m pytest tests/test_ui.py -q``. Internalizing, jobs and the query box are driven in a real
browser against a real server in ``tests/test_ui_browser.py``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from _embedders import BagOfWords
from fastapi.testclient import TestClient

from memory.server.app import create_app
from memory.server.ui import SESSION_COOKIE


@pytest.fixture
def served(mem) -> dict[str, Any]:
    """The app over ``mem`` with a writer key of ``alpha`` and a reader key of ``beta``, one document in each."""
    mem.embedder = BagOfWords()
    app = create_app(mem, auth=True)
    keys = {
        "alpha": app.state.keys.create("alpha-writer", role="write", namespaces=["alpha"]).secret,
        "beta": app.state.keys.create("beta-reader", role="read", namespaces=["beta"]).secret,
    }
    mem.add("The vault code is 7342.", document_id="vault", namespace="alpha", title="Vault")
    mem.add("Beta launch plan: Tuesday.", document_id="plans/launch", namespace="beta")
    return {"app": app, "keys": keys, "mem": mem}


def _signed_in(served: dict[str, Any], who: str) -> TestClient:
    client = TestClient(served["app"], base_url="http://testserver")
    r = client.post("/ui/login", data={"key": served["keys"][who], "next": "/ui"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/ui" in cookie
    assert served["keys"][who] not in cookie  # the browser holds a session token, never the key
    return client


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m[1]


def test_sign_in_is_required_and_a_bad_key_is_refused(served) -> None:
    client = TestClient(served["app"])
    r = client.get("/ui/ns/alpha", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/ns/alpha"
    r = client.post("/ui/login", data={"key": "pmk_000000000000_" + "x" * 43})
    assert r.status_code == 401 and "not valid" in r.text and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    cross = client.post("/ui/login", data={"key": served["keys"]["alpha"]}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and SESSION_COOKIE not in cross.headers.get("set-cookie", "")  # login CSRF
    r = client.post("/ui/login", data={"key": served["keys"]["alpha"], "next": "https://evil.example/"})
    assert r.status_code == 200 and r.url.path == "/ui"  # no open redirect: back to the dashboard


def test_pages_are_self_contained(served) -> None:
    client = _signed_in(served, "alpha")
    r = client.get("/ui/ns/alpha")
    assert r.status_code == 200
    assert "default-src 'none'" in r.headers["content-security-policy"] and r.headers["cache-control"] == "no-store"
    assets = re.findall(r'(?:src|href)="([^"#?]+)', r.text)
    assert assets and all(a.startswith("/ui") for a in assets), assets  # nothing from outside
    assert client.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")


def test_a_key_of_another_namespace_sees_nothing(served) -> None:
    beta = _signed_in(served, "beta")
    home = beta.get("/ui")
    assert "beta" in home.text and "alpha" not in home.text
    for path in ["/ui/ns/alpha", "/ui/ns/alpha/documents/vault", "/ui/ns/alpha/jobs", "/ui/ns/nowhere"]:
        r = beta.get(path)
        assert r.status_code == 403, path
        assert "vault" not in r.text.replace(path, "") and "7342" not in r.text
    csrf = _csrf(beta.get("/ui/ns/beta").text)
    r = beta.post("/ui/ns/alpha/query", data={"question": "vault code?", "csrf": csrf})
    assert r.status_code == 403 and "7342" not in r.text
    r = beta.post("/ui/ns/beta/documents", data={"text": "sneaky", "csrf": csrf})  # a read key may not write
    assert r.status_code == 403
    assert "Add a document" not in beta.get("/ui/ns/beta").text
    assert (
        served["mem"].list(namespace="beta")[0].id == "plans/launch" and len(served["mem"].list(namespace="beta")) == 1
    )


def test_documents_versions_diff_and_adapters(served) -> None:
    client = _signed_in(served, "alpha")
    page = client.get("/ui/ns/alpha")
    assert "vault" in page.text and "Vault" in page.text
    csrf = _csrf(page.text)
    r = client.post(
        "/ui/ns/alpha/documents", data={"text": "The vault code is 9999.", "document_id": "vault", "csrf": csrf}
    )
    assert r.status_code == 200 and r.url.path == "/ui/ns/alpha/documents/vault"
    assert "v2" in r.text and "v1" in r.text and "current" in r.text
    assert '<span class="del">-The vault code is 7342.</span>' in r.text  # the diff of the new version
    assert '<span class="add">+The vault code is 9999.</span>' in r.text
    old = client.get("/ui/ns/alpha/documents/vault?new=1")
    assert "7342" in old.text and "(version 1)" in old.text
    r = client.post(
        "/ui/ns/alpha/documents", data={"text": "<script>alert(1)</script>", "document_id": "x/y", "csrf": csrf}
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text and "<script>alert" not in r.text  # escaped
    assert client.get("/ui/ns/alpha/documents/missing").status_code == 404
    bad = client.post("/ui/ns/alpha/documents", data={"text": "x", "document_id": "../etc", "csrf": csrf})
    assert bad.status_code == 422 and "invalid document id" in bad.text
    assert client.post("/ui/ns/alpha/documents", data={"text": "no token"}).status_code == 403  # CSRF
    assert [d.id for d in served["mem"].list(namespace="alpha")] == ["vault", "x/y"]  # nothing else written
    assert "No adapters yet" in client.get("/ui/ns/alpha/documents/vault").text
    doc_page = client.get("/ui/ns/alpha/documents/vault").text
    assert "<option>self-study</option>" in doc_page and "<option>full</option>" in doc_page
    bad = client.post("/ui/ns/alpha/documents/vault/internalize", data={"method": "magic", "csrf": csrf})
    assert bad.status_code == 422 and "method must be one of" in bad.text
    assert client.get("/ui/ns/alpha/jobs").text.count("internalize") == 0  # nothing was queued
    served["mem"].add("word " * 30_000, document_id="long", namespace="alpha")  # 150,000 characters
    long_page = client.get("/ui/ns/alpha/documents/long").text
    assert "… 49,999 more characters" in long_page and long_page.count("word") < 25_000


def test_revoking_a_key_ends_its_sessions(served) -> None:
    client = _signed_in(served, "alpha")
    assert client.get("/ui/ns/alpha").status_code == 200
    served["app"].state.keys.revoke(served["keys"]["alpha"])
    r = client.get("/ui/ns/alpha", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_sign_out_ends_the_session(served) -> None:
    client = _signed_in(served, "alpha")
    csrf = _csrf(client.get("/ui").text)
    r = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.clear()
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_experiments_and_query_log(served) -> None:
    """The experiments page: an A/B report per experiment and the latest logged queries, of this namespace only."""
    from memory.db import Namespace, QueryLog, session_factory

    mem = served["mem"]
    with session_factory(mem.engine).begin() as s:  # logged queries as the query engine writes them
        ns = {n.name: n.id for n in s.query(Namespace)}
        for i in range(6):
            arm = "rag" if i % 2 else "adapter"
            s.add(
                QueryLog(
                    namespace_id=ns["alpha"],
                    query=f"question {i}",
                    mode="retrieval" if arm == "rag" else "parametric",
                    reason="r",
                    experiment="router-ab",
                    arm=arm,
                    latency_ms=100.0 + i,
                    feedback=float(i % 3 > 0),
                )
            )
        s.add(
            QueryLog(namespace_id=ns["beta"], query="beta's secret question", mode="retrieval", experiment="beta-exp")
        )
    client = _signed_in(served, "alpha")
    page = client.get("/ui/ns/alpha/experiments")
    assert page.status_code == 200
    assert "router-ab" in page.text and "6 queries" in page.text and "control" in page.text
    assert "question 5" in page.text and "beta" not in page.text  # another namespace's log stays out
    assert _signed_in(served, "beta").get("/ui/ns/alpha/experiments").status_code == 403


def test_without_auth_forms_still_need_the_pages_token(mem) -> None:
    """--no-auth: no sign-in, but a form another site posts (no CORS preflight for forms) writes nothing."""
    mem.embedder = BagOfWords()
    client = TestClient(create_app(mem, auth=False))
    page = client.get("/ui/ns/open")
    assert page.status_code == 200 and "local (no auth)" in page.text and "Sign out" not in page.text
    assert client.post("/ui/ns/open/documents", data={"text": "from elsewhere"}).status_code == 403
    assert client.post("/ui/ns/open/documents", data={"text": "hi", "csrf": "guess"}).status_code == 403
    ok = client.post("/ui/ns/open/documents", data={"text": "from the page", "csrf": _csrf(page.text)})
    assert ok.status_code == 200 and [d.id for d in mem.list(namespace="open")] == [ok.url.path.rsplit("/", 1)[1]]


def test_evaluation_reports_for_keys_of_every_namespace(served) -> None:
    """pmem eval qa reports under $PMEM_HOME/eval: their text and plots, for a key of '*' only; no path escapes."""
    import json
    from pathlib import Path

    home = Path(served["mem"].settings.home)
    folder = home / "eval" / "qa-20261205T010000Z"
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("# QA report\n\n| arm | contains |\n|---|---|\n| rag | 0.68 |\n")
    (folder / "qa.json").write_text(json.dumps({"arms": {"rag": {}, "self-study": {}}}))
    (folder / "contains.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 16)
    (home / "secret.png").write_bytes(b"\x89PNG secret")
    admin = served["app"].state.keys.create("admin", role="admin", namespaces=["*"]).secret
    served["keys"]["admin"] = admin
    client = _signed_in(served, "admin")
    listing = client.get("/ui/reports")
    assert listing.status_code == 200 and "qa-20261205T010000Z" in listing.text and "rag, self-study" in listing.text
    page = client.get("/ui/reports/qa-20261205T010000Z")
    assert "| rag | 0.68 |" in page.text and 'src="/ui/reports/qa-20261205T010000Z/contains.png"' in page.text
    plot = client.get("/ui/reports/qa-20261205T010000Z/contains.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    for bad in ["/ui/reports/qa-20261205T010000Z/..%2Fsecret.png", "/ui/reports/..%2F..%2Fsecret.png", "/ui/reports/x"]:
        assert client.get(bad).status_code == 404, bad
    assert _signed_in(served, "alpha").get("/ui/reports").status_code == 403  # a key of one namespace
