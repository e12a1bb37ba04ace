"""The internalization policy of a namespace (``on_add`` = none | instant | full), applied by add, add_source,
refresh, ingest jobs, the HTTP API and MCP; ``internalize_all`` (``pmem internalize --all / --stale``) and the
MCP ``internalize`` tool (issue 25). Adapters come from the workers' stub internalizer (no model)."""

from __future__ import annotations

import asyncio
import json

import pytest
from _embedders import BagOfWords
from typer.testing import CliRunner

from memory.api import ParametricMemory
from memory.errors import ConfigError, NotFoundError, ValidationError

STUB = "_fixtures_workers:stub_internalize"


@pytest.fixture
def mem(backend_settings, monkeypatch):
    monkeypatch.setenv("PMEM_WORKER_INTERNALIZER", STUB)
    return ParametricMemory(backend_settings, embedder=BagOfWords())


def _ready(mem, ns):
    return sorted((a.document_id, a.version) for a in mem.adapters(namespace=ns, status="ready"))


def test_the_policy_of_a_namespace_applies_to_add_and_add_source(mem, tmp_path):
    r = mem.add("Staff get 25 days of leave.", document_id="leave", namespace="hr")
    assert r.job is None and _ready(mem, "hr") == []  # the default: none
    assert mem.namespace_info("hr").on_add == "none" and mem.namespace_info("hr").on_add_is_default

    info = mem.configure_namespace("hr", on_add="instant")
    assert (info.on_add, info.on_add_is_default, info.documents) == ("instant", False, 1)
    r = mem.add("Staff get 30 days of leave.", document_id="leave", namespace="hr")
    assert r.status == "new_version" and r.job is not None and r.job.state == "succeeded", r
    assert r.job.payload["document"] == "leave" and "tier" not in r.job.payload
    assert _ready(mem, "hr") == [("leave", 2)]
    again = mem.add("Staff get 30 days of leave.", document_id="leave", namespace="hr")  # unchanged: same job
    assert again.status == "unchanged" and again.job.id == r.job.id
    assert mem.add("No policy here.", document_id="x", namespace="other").job is None  # per namespace
    assert mem.add("Skip this one.", document_id="skip", namespace="hr", on_add="none").job is None  # override

    docs = tmp_path / "policies"
    docs.mkdir()
    (docs / "travel.md").write_text("# Travel\n\nBook trains two weeks ahead.\n")
    (docs / "parking.txt").write_text("Visitors park on level two.\n")
    results = mem.add_source(str(docs), namespace="hr")
    assert [(r.document.id, r.job.state) for r in results] == [("parking.txt", "succeeded"), ("travel.md", "succeeded")]
    assert _ready(mem, "hr") == [("leave", 2), ("parking.txt", 1), ("travel.md", 1)]

    mem.configure_namespace("hr", on_add="full")
    r = mem.add("Staff get 31 days of leave.", document_id="leave", namespace="hr")
    assert r.job.payload["tier"] == "full" and r.job.state == "succeeded" and _ready(mem, "hr")[0] == ("leave", 3)

    assert mem.configure_namespace("hr", on_add=None).on_add_is_default  # back to PMEM_ON_ADD
    with pytest.raises(ValidationError, match="on_add must be one of"):
        mem.configure_namespace("hr", on_add="always")
    with pytest.raises(ValidationError, match="on_add must be one of"):
        mem.add("x", namespace="hr", on_add="sometimes")
    with pytest.raises(NotFoundError):
        mem.namespace_info("nope")
    assert mem.namespace_settings.on_add("nope") == "none" and "nope" not in mem.namespaces()  # reads create nothing


def test_the_default_policy_is_a_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("PMEM_WORKER_INTERNALIZER", STUB)
    monkeypatch.setenv("PMEM_ON_ADD", "instant")
    mem = ParametricMemory(home=tmp_path / "h", embedder=BagOfWords())
    assert mem.add("The vault code is 7342.", document_id="vault").job.state == "succeeded"
    assert mem.namespace_info().on_add == "instant" and mem.namespace_info().on_add_is_default
    monkeypatch.setenv("PMEM_ON_ADD", "sometimes")
    with pytest.raises(ConfigError, match="on_add"):
        ParametricMemory(home=tmp_path / "h2")


def test_internalize_all_and_stale(mem):
    for i in range(3):
        mem.add(f"Fact number {i}.", document_id=f"f{i}", namespace="hr")
    seen: list[tuple[int, int, str, bool]] = []
    jobs = mem.internalize_all(namespace="hr", progress=lambda d, t, doc, job: seen.append((d, t, doc, job is None)))
    assert [(j.payload["document"], j.state) for j in jobs] == [(f"f{i}", "succeeded") for i in range(3)]
    before, after = True, False  # progress comes before each document (no job yet) and after it
    assert seen == [
        (0, 3, "f0", before),
        (1, 3, "f0", after),
        (1, 3, "f1", before),
        (2, 3, "f1", after),
        (2, 3, "f2", before),
        (3, 3, "f2", after),
    ]
    assert mem.internalize_all(namespace="hr", stale=True) == []  # every current version has a ready adapter
    mem.add("Fact number one, changed.", document_id="f1", namespace="hr")
    assert [j.payload["document"] for j in mem.internalize_all(namespace="hr", stale=True)] == ["f1"]
    again = mem.internalize_all(namespace="hr")  # idempotent: the same jobs, no new adapters
    assert len(again) == 3 and len(mem.adapters(namespace="hr")) == 4
    # full: both tiers; the second is not built yet, so it is the instant adapter, through the same entry point
    instant = [a for a in mem.adapters(namespace="hr", document_id="f0") if a.status == "ready"]
    assert mem.internalize("f0", namespace="hr", tier="full").id == instant[0].id
    (full,) = mem.internalize_all(namespace="hr", document_ids=["f0"], tier="full")
    assert full.payload["tier"] == "full" and full.state == "succeeded" and full.id not in {j.id for j in jobs}
    with pytest.raises(ValidationError, match="tier must be one of"):
        mem.internalize("f0", namespace="hr", tier="half")
    with pytest.raises(NotFoundError, match="missing"):
        mem.internalize_all(namespace="hr", document_ids=["missing"])
    assert mem.internalize_all(namespace="empty") == [] and "empty" not in mem.namespaces()


def test_refresh_and_ingest_follow_the_policy(mem, tmp_path):
    from memory.refresh import version_id_for
    from memory.submission import refresh_tier, submit_ingest

    mem.add("Kept current.", document_id="had", namespace="hr")
    mem.internalize_all(namespace="hr")
    mem.add("Kept current, v2.", document_id="had", namespace="hr")
    mem.add("Never internalized.", document_id="never", namespace="hr")
    had, never = (version_id_for(mem, "hr", d, n) for d, n in (("had", 2), ("never", 1)))
    assert (refresh_tier(mem, had), refresh_tier(mem, never)) == ("instant", None)  # none: keep adapters current
    mem.configure_namespace("hr", on_add="full")
    assert (refresh_tier(mem, had), refresh_tier(mem, never)) == ("full", "full")

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Alpha.\n")
    job = submit_ingest(mem, str(docs), namespace="ops", internalize=None)  # the server's default: the policy
    assert job.state == "succeeded" and job.result["internalize_jobs"] == [] and _ready(mem, "ops") == []
    mem.configure_namespace("ops", on_add="instant")
    (docs / "b.md").write_text("Beta.\n")
    job = submit_ingest(mem, str(docs), namespace="ops", internalize=None)
    assert len(job.result["internalize_jobs"]) == 2 and _ready(mem, "ops") == [("a.md", 1), ("b.md", 1)]


def test_cli_namespaces_and_internalize_all(tmp_path, monkeypatch):
    from memory.cli import app

    monkeypatch.setenv("PMEM_WORKER_INTERNALIZER", STUB)
    runner = CliRunner()
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.md", "b.md"):
        (docs / name).write_text(f"# {name}\n\nSome text of {name}.\n")
    assert runner.invoke(app, ["add", str(docs), "-n", "pol"]).exit_code == 0
    r = runner.invoke(app, ["namespaces", "--json"])
    assert r.exit_code == 0, r.output
    assert [(n["name"], n["documents"], n["on_add"]) for n in json.loads(r.stdout.splitlines()[-1])] == [
        ("pol", 2, "none")
    ]
    r = runner.invoke(app, ["internalize", "--stale", "-n", "pol", "--json"])
    assert r.exit_code == 0, r.output
    jobs = json.loads(r.stdout.splitlines()[-1])
    assert [(j["payload"]["document"], j["state"]) for j in jobs] == [("a.md", "succeeded"), ("b.md", "succeeded")]
    r = runner.invoke(app, ["internalize", "--stale", "-n", "pol"])
    assert r.exit_code == 0 and "nothing to internalize" in r.stdout
    assert runner.invoke(app, ["internalize", "-n", "pol"]).exit_code == 2  # neither a document nor --all
    r = runner.invoke(app, ["namespaces", "set", "pol", "--on-add", "instant"])
    assert r.exit_code == 0 and "on_add instant" in r.stdout
    (docs / "a.md").write_text("# a.md\n\nChanged text.\n")
    r = runner.invoke(app, ["add", str(docs / "a.md"), "-n", "pol"])
    assert r.exit_code == 0 and "internalize job" in r.stdout and "succeeded" in r.stdout, r.output
    r = runner.invoke(app, ["namespaces"])
    assert r.exit_code == 0 and "instant" in r.stdout
    assert runner.invoke(app, ["namespaces", "set", "pol", "--on-add", "bogus"]).exit_code == 2


def test_mcp_internalize_tool_and_remember_follow_the_policy(tmp_path, monkeypatch):
    from mcp.client.client import Client

    from memory.server.mcp import build_server

    monkeypatch.setenv("PMEM_WORKER_INTERNALIZER", STUB)
    mem = ParametricMemory(home=tmp_path / "h", embedder=BagOfWords())
    server = build_server(mem, namespace="notes")

    async def run(calls):
        async with Client(server) as client:
            out = []
            for name, args in calls:
                r = await client.call_tool(name, args)
                text = "".join(getattr(c, "text", "") for c in r.content)
                out.append(("error", text) if r.is_error else r.structured_content or json.loads(text))
            return out

    remembered, internalized, status, nothing, both = asyncio.run(
        run(
            [
                ("remember", {"text": "The wifi password is orchid-42.", "document_id": "wifi"}),
                ("internalize", {}),
                ("internalize", {"job_id": 1}),
                ("internalize", {}),
                ("internalize", {"document_id": "wifi", "job_id": 1}),
            ]
        )
    )
    assert remembered["internalize_job"] is None  # on_add none
    (job,) = internalized["jobs"]
    assert job["document_id"] == "wifi" and job["state"] == "succeeded" and job["adapter_id"] is not None
    assert status["jobs"][0]["job_id"] == job["job_id"] == 1 and status["jobs"][0]["state"] == "succeeded"
    assert nothing == {"jobs": []} and both[0] == "error"
    mem.configure_namespace("notes", on_add="instant")
    (remembered,) = asyncio.run(run([("remember", {"text": "The door code is 1234.", "document_id": "door"})]))
    assert remembered["internalize_job"]["state"] == "succeeded"
