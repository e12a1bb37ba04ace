"""``pmem`` through a running server (``PMEM_URL`` / ``--url``): real subprocesses against a real ``pmem serve``.

The server is a uvicorn process with API keys on (``_server.keyed_server``: the tiny real embedder, the real base
model). Each command runs as ``python -m memory.cli`` with a client ``PMEM_HOME`` that must stay empty: nothing
runs locally. ``--json`` documents are compared with the same commands run in-process (CliRunner, a fresh home).
The ask tests generate with the real base model and are marked slow.

    .venv/bin/python -m pytest tests/test_cli_remote.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from _server import REPO, Served, keyed_server

NS = "cli"


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_cache) -> Iterator[Served]:
    with keyed_server(tmp_path_factory.mktemp("cli-remote"), NS, model_cache) as srv:
        yield srv


def pmem(
    srv: Served, *args: str, key: str = "writer", input: str | None = None, url_var: str = "PMEM_URL", **env: str
) -> subprocess.CompletedProcess:
    """``python -m memory.cli ARGS`` (this checkout) with the server in ``url_var`` and the key in PMEM_API_KEY."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PMEM_")}
    base.update(
        {url_var: srv.url, "PMEM_API_KEY": srv.keys.get(key, key), "PMEM_HOME": str(srv.client_home)},
        COLUMNS="400",  # rich wraps stderr at 80 columns otherwise
        NO_COLOR="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "memory.cli", *args],
        cwd=REPO,
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, **env},
    )


def last_json(proc: subprocess.CompletedProcess) -> Any:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def local_json(*args: str, input: str | None = None) -> Any:
    """The same command in this process, on the test's own fresh home (no server)."""
    from typer.testing import CliRunner

    from memory.cli import app

    r = CliRunner().invoke(app, list(args), input=input)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def shape(doc: Any) -> Any:
    """The keys (recursively) and value types of a JSON document: what must match, whatever the values."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in sorted(doc.items())}
    if isinstance(doc, list):
        return [shape(doc[0])] if doc else []
    return type(doc).__name__


def test_document_commands_match_in_process(served: Served) -> None:
    """add (stdin), ls, show, history --diff, rollback and rm print the JSON the in-process commands print."""
    for text in ("Refunds within 30 days.", "Refunds within 45 days."):
        remote_add = last_json(pmem(served, "add", "-", "--id", "policy", "-n", NS, "--json", input=text))
        local_add = local_json("add", "-", "--id", "policy", "-n", NS, "--json", input=text)
        assert shape(remote_add) == shape(local_add)
        assert (
            remote_add[0]["document"]["version"]["content_sha256"]
            == local_add[0]["document"]["version"]["content_sha256"]
        )
    for args in (("ls",), ("show", "policy", "--text"), ("history", "policy", "--diff"), ("rollback", "policy", "1")):
        remote = last_json(pmem(served, *args, "-n", NS, "--json"))
        local = local_json(*args, "-n", NS, "--json")
        assert shape(remote) == shape(local), args
    assert last_json(pmem(served, "show", "policy", "--text", "-n", NS, "--json"))["text"] == "Refunds within 30 days."
    hist = last_json(pmem(served, "history", "policy", "--diff", "-n", NS, "--json"))
    assert "+Refunds within 45 days." in hist[1]["diff"]
    removed = last_json(pmem(served, "rm", "policy", "-n", NS, "--json"))
    assert removed == local_json("rm", "policy", "-n", NS, "--json")
    assert last_json(pmem(served, "ls", "-n", NS, "--json")) == []
    assert not served.client_home.exists()  # nothing ran in the client's process


def test_add_uploads_a_directory_with_the_in_process_ids(served: Served, tmp_path: Path) -> None:
    """``pmem add DIR`` uploads each file; the documents get the ids the in-process ``add`` gives them."""
    (tmp_path / "docs" / "hr").mkdir(parents=True)
    (tmp_path / "docs" / "leave.md").write_text("# Leave\n\nStaff get 25 days of paid leave a year.\n")
    (tmp_path / "docs" / "hr" / "travel.txt").write_text("Travel must be booked two weeks ahead.\n")
    remote = last_json(pmem(served, "add", str(tmp_path / "docs"), "-n", "files", "--json", key="admin"))
    local = local_json("add", str(tmp_path / "docs"), "-n", "files", "--json")
    assert (
        [(r["status"], r["document"]["id"]) for r in remote]
        == [(r["status"], r["document"]["id"]) for r in local]
        == [("created", "hr/travel.txt"), ("created", "leave.md")]
    )
    assert [r["source"] for r in remote] == [r["source"] for r in local]


@pytest.mark.slow  # the server's Doc-to-LoRA internalization loads the base model
def test_search_internalize_adapters_jobs_and_namespaces(served: Served) -> None:
    """The read and job commands return the facade's objects, and internalize waits for the server's job."""
    from memory.types import AdapterInfo, JobInfo, NamespaceInfo, SearchHit

    pmem(served, "add", "-", "--id", "vault", "-n", NS, input="The vault code is 4412.")
    hits = last_json(pmem(served, "search", "vault code", "-n", NS, "--json"))
    assert hits[0]["document_id"] == "vault" and set(hits[0]) == {f.name for f in fields(SearchHit)}
    adapter = last_json(pmem(served, "internalize", "vault", "-n", NS, "--json"))
    assert adapter["status"] == "ready" and set(adapter) == {f.name for f in fields(AdapterInfo)}
    listed = last_json(pmem(served, "adapters", "-n", NS, "--json"))
    assert [a["id"] for a in listed] == [adapter["id"]]
    jobs = last_json(pmem(served, "jobs", "-n", NS, "--json"))
    assert jobs[0]["kind"] == "internalize" and jobs[0]["state"] == "succeeded"
    assert set(jobs[0]) == {f.name for f in fields(JobInfo)}
    stale = last_json(pmem(served, "internalize", "--stale", "-n", NS, "--json"))
    assert stale == []  # the one document has its ready adapter
    spaces = last_json(pmem(served, "namespaces", "--json", key="admin"))
    assert NS in [s["name"] for s in spaces] and set(spaces[0]) == {f.name for f in fields(NamespaceInfo)}
    table = pmem(served, "adapters", "-n", NS)
    assert table.returncode == 0 and "vault" in table.stdout and "ready" in table.stdout


def test_auth_failures_say_so_and_never_show_the_key(served: Served) -> None:
    """A wrong key and a key without the namespace exit 2 with the server's reason; no output holds a key."""
    bad = "pmk_" + "x" * 40
    proc = pmem(served, "ls", "-n", NS, "--json", key=bad)
    assert proc.returncode == 2 and json.loads(proc.stdout.splitlines()[-1])["type"] == "AuthError"
    assert "error:" in proc.stderr and "API key is not valid" in proc.stderr
    forbidden = pmem(served, "ls", "-n", "elsewhere")
    assert forbidden.returncode == 2 and "error:" in forbidden.stderr and "Traceback" not in forbidden.stderr
    not_admin = pmem(served, "gc", "--dry-run")
    assert not_admin.returncode == 2 and "admin key" in not_admin.stderr
    for p in (proc, forbidden, not_admin):
        for secret in (bad, *served.keys.values()):
            assert secret not in p.stdout + p.stderr


def test_where_commands_go(served: Served) -> None:
    """PMEM_SERVER_URL is PMEM_URL's alias and --url wins over both; demo refuses; a dead server is named."""
    pmem(served, "add", "-", "--id", "alias", "-n", "where", key="admin", input="reached through the alias")
    via_alias = last_json(pmem(served, "ls", "-n", "where", "--json", key="admin", url_var="PMEM_SERVER_URL"))
    assert [d["id"] for d in via_alias] == ["alias"]
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    flag = last_json(pmem(served, "--url", served.url, "ls", "-n", "where", "--json", key="admin", PMEM_URL=dead))
    assert [d["id"] for d in flag] == ["alias"]
    down = pmem(served, "ls", "-n", "where", key="admin", PMEM_URL=dead)
    assert down.returncode == 2 and f"cannot reach the memory server at {dead}" in down.stderr
    demo = pmem(served, "demo")
    assert demo.returncode == 2 and "runs in this process only" in demo.stderr
    assert last_json(pmem(served, "gc", "--dry-run", "--json", key="admin")) == {"removed": [], "dry_run": True}
    assert not served.client_home.exists()


def _poisoned(tmp_path: Path) -> str:
    """A directory whose torch, transformers, sentence_transformers and sqlalchemy raise on import."""
    for name in ("torch", "transformers", "sentence_transformers", "sqlalchemy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} imported by a remote pmem')\n")
    return str(tmp_path)


@pytest.mark.slow  # the server generates with the real base model
def test_ask_streams_from_the_server_without_torch(served: Served, tmp_path: Path) -> None:
    """A remote ``pmem ask`` imports neither torch, transformers, the embedder nor the database layer; the
    streamed answer is the one ``--json`` returns."""
    pmem(served, "add", "-", "--id", "vault", "-n", NS, input="The vault code is 4412.")
    path = os.pathsep.join([_poisoned(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = ("ask", "What is the vault code?", "-n", NS, "--mode", "retrieval", "--max-new-tokens", "12")
    streamed = pmem(served, *args, PYTHONPATH=path)
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    assert "mode retrieval" in streamed.stderr
    whole = last_json(pmem(served, *args, "--json", PYTHONPATH=path))
    assert whole["mode"] == "retrieval" and whole["answer"].strip()
    assert streamed.stdout == whole["answer"] + "\n"
    unknown = pmem(served, "ask", "What is the vault code?", "-n", "nowhere", key="admin", PYTHONPATH=path)
    assert unknown.returncode == 1 and "namespaces:" in unknown.stderr
