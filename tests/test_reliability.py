"""Issue 14: races, stale state, path escapes, leaks and unbounded input, each reproduced then fixed.

Every test here runs on the embedded SQLite database and on the real PostgreSQL server where the path
uses a database, and with real processes where the finding is about two of them.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from memory.api import ParametricMemory
from memory.errors import IntegrityError, ValidationError
from test_search import BagOfWords

TEXT = "The vault code is 7342.\n\nThe backup vault is in Lyon."


# ---------------------------------------------------------------- 14.1 sweep vs a concurrent writer
def _swept_after_put(writer: ParametricMemory, sweep) -> None:
    """Run ``sweep()`` right after ``writer``'s next blob write, before its rows commit."""
    real_put = writer.blobs.put
    fired = []

    def put(data: bytes) -> str:
        sha = real_put(data)
        if not fired:
            fired.append(sha)
            sweep()
        return sha

    writer.blobs.put = put  # type: ignore[method-assign]


def test_gc_between_a_writers_blob_and_its_commit_keeps_the_blob(backend_settings):
    a, b = ParametricMemory(backend_settings), ParametricMemory(backend_settings)
    _swept_after_put(b, a.gc)
    b.add(TEXT, document_id="b")
    assert b.get("b", with_text=True).text == TEXT
    assert a.gc() == []


def test_delete_of_same_text_during_a_writers_add_keeps_the_blob(backend_settings):
    a, b = ParametricMemory(backend_settings), ParametricMemory(backend_settings)
    a.add(TEXT, document_id="a")
    _swept_after_put(b, lambda: a.delete("a"))
    b.add(TEXT, document_id="b")
    assert b.get("b", with_text=True).text == TEXT


def _gc_loop(settings, seconds: float, out) -> None:
    mem = ParametricMemory(settings)
    end, runs = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        mem.gc()
        runs += 1
    out.put(runs)


def test_gc_in_another_process_never_strands_a_writer(backend_settings):
    """One process sweeps non-stop while this one adds and deletes documents sharing their texts."""
    mem = ParametricMemory(backend_settings)
    mem.add("warm-up", document_id="w")  # schema and namespace exist before the race starts
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_gc_loop, args=(backend_settings, 8.0, out))
    proc.start()
    try:
        texts = [f"Shared text number {i}: the code is {i * 7}." for i in range(4)]
        i = 0
        deadline = time.monotonic() + 20
        while proc.is_alive() and time.monotonic() < deadline:
            t = texts[i % len(texts)]
            mem.add(t, document_id=f"d{i % 6}")
            if i % 3 == 2:
                mem.delete(f"d{(i + 1) % 6}") if _exists(mem, f"d{(i + 1) % 6}") else None
            i += 1
        assert out.get(timeout=60) > 1
    finally:
        proc.join(timeout=60)
    for info in mem.list(limit=1000):
        assert mem.get(info.id, with_text=True).text  # every committed row has its blob


def _exists(mem: ParametricMemory, doc_id: str) -> bool:
    return any(d.id == doc_id for d in mem.list(limit=1000))


# ---------------------------------------------------------------- 14.2 corrupt blob repair
def test_re_adding_the_text_repairs_a_corrupt_blob(mem):
    sha = mem.add(TEXT, document_id="v").document.version.content_sha256
    path = mem.blobs._path(sha)
    with open(path, "r+b") as f:
        f.write(b"X")
    with pytest.raises(IntegrityError, match="corrupt"):
        mem.get("v", with_text=True)
    assert mem.add(TEXT, document_id="v").status == "unchanged"
    assert mem.get("v", with_text=True).text == TEXT


# ---------------------------------------------------------------- 14.4 metadata that JSON cannot hold
@pytest.mark.parametrize("bad", [
    {"score": float("nan")}, {"score": float("inf")}, {"nested": {"x": [1, float("-inf")]}},
    {"tags": {"a", "b"}}, {"raw": b"bytes"}, {1: "int key"}, {"when": object()},
])
def test_metadata_json_cannot_hold_is_refused_and_search_keeps_working(backend_settings, bad):
    mem = ParametricMemory(backend_settings, embedder=BagOfWords())
    mem.add("Refunds are accepted within 30 days.", document_id="ok", metadata={"team": "support"})
    with pytest.raises(ValidationError, match="metadata"):
        mem.add("A poisoned document.", document_id="bad", metadata=bad)
    assert [d.id for d in mem.list()] == ["ok"]
    assert mem.search("refunds", k=2, filter={"team": "support"})[0].document_id == "ok"


def test_finite_json_metadata_round_trips(mem):
    md = {"score": 1.5, "n": -3, "ok": True, "none": None, "tags": ["a", "b"], "nested": {"x": 0.0}}
    mem.add("Kept with its metadata.", document_id="m", metadata=md)
    assert mem.get("m").metadata == md


# ---------------------------------------------------------------- 14.12 validators
@pytest.mark.parametrize("doc_id", ["policy\n", "a" * 255 + "\n", "a" * 256, "x" * 4000])
def test_document_ids_with_a_trailing_newline_or_over_long_are_a_clear_error(mem, doc_id):
    with pytest.raises(ValidationError, match="invalid document id"):
        mem.add(TEXT, document_id=doc_id)
    assert mem.list() == []


@pytest.mark.parametrize("ns", ["team\n", "a" * 65])
def test_namespaces_with_a_trailing_newline_or_over_long_are_a_clear_error(mem, ns):
    with pytest.raises(ValidationError, match="invalid namespace"):
        mem.add(TEXT, document_id="d", namespace=ns)


def test_over_long_title_is_a_clear_error(mem):
    with pytest.raises(ValidationError, match="title"):
        mem.add(TEXT, document_id="d", title="t" * 513)
    assert mem.add(TEXT, document_id="d", title="t" * 512).document.title == "t" * 512


# ---------------------------------------------------------------- 14.8 secrets
SECRET = "s3cr3t-pw"


@pytest.fixture
def secret_settings(pg_url, tmp_path):
    """Settings whose URLs carry a password (the test server trusts any password, so they work)."""
    from memory.config import Settings
    from memory.db import migrate

    url = pg_url.replace("postgres@", f"postgres:{SECRET}@")
    migrate.upgrade(url)
    return Settings.from_env(home=tmp_path / "h", database_url=url,
                             broker_url=f"redis://:{SECRET}@127.0.0.1:6399/0",
                             blob_url=str(tmp_path / "blobs"))


def test_chat_model_and_llm_never_show_the_urls_passwords(secret_settings):
    import json

    from langchain_core.load import dumpd, dumps

    from integrations.langchain import ParametricChatModel
    from integrations.llamaindex import ParametricLLM

    mem = ParametricMemory(secret_settings)
    assert SECRET not in repr(secret_settings) and "***" in repr(secret_settings)
    for obj in (ParametricChatModel(memory=mem, settings=secret_settings, max_tokens=8),
                ParametricChatModel(settings=secret_settings)):
        shown = [repr(obj), str(obj), str(obj.model_dump()), json.dumps(dumpd(obj), default=str), dumps(obj),
                 obj.model_dump_json(), str(obj._identifying_params)]
        assert not [s for s in shown if SECRET in s]
    llm = ParametricLLM(memory=mem, settings=secret_settings)
    shown = [repr(llm), str(llm), str(llm.model_dump()), llm.model_dump_json(), llm.to_json(), str(llm.metadata)]
    assert not [s for s in shown if SECRET in s]
    assert SECRET not in repr(mem)


def test_job_rows_and_cli_errors_never_hold_a_password(secret_settings, monkeypatch, capsys):
    from memory.jobs import JobStore, describe

    store = JobStore.for_memory(ParametricMemory(secret_settings))
    job, _ = store.create("ingest", {"spec": "docs/"})
    err = ConnectionError(f"Error connecting to {secret_settings.broker_url}: refused")
    assert SECRET not in describe(err)
    store.fail(job.id, f"OperationalError: could not reach {secret_settings.database_url}")
    assert SECRET not in (store.get(job.id).error or "") and "***" in store.get(job.id).error

    from typer.testing import CliRunner

    from memory.cli import app

    monkeypatch.setenv("PMEM_DATABASE_URL", f"postgresql://postgres:{SECRET}@127.0.0.1:5432/no_such_db_here")
    result = CliRunner().invoke(app, ["ls", "--json"])
    assert result.exit_code != 0
    assert SECRET not in result.output + str(result.exception or "")
