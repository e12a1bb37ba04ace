"""Scheduled refresh: due sources, change detection by hash, re-internalization, rollback.

Run: .venv/bin/python -m pytest tests/test_refresh.py -q -x
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from memory.refresh import due_sources, refresh_sources

STUB = "_fixtures_workers:stub_internalize"


@pytest.fixture
def mem(tmp_path, monkeypatch):
    from memory.api import ParametricMemory

    monkeypatch.setenv("PMEM_WORKER_INTERNALIZER", STUB)
    return ParametricMemory(home=tmp_path / "home")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_due_sources_follow_each_interval(mem, tmp_path):
    a = _write(tmp_path / "a" / "x.md", "# A\n\nAlpha policy.\n")
    b = _write(tmp_path / "b" / "y.md", "# B\n\nBeta policy.\n")
    c = _write(tmp_path / "c" / "z.md", "# C\n\nGamma policy.\n")
    mem.add_source(str(a.parent), refresh_interval_s=60)
    mem.add_source(str(b.parent), refresh_interval_s=3600, namespace="legal")
    mem.add_source(str(c.parent))  # no interval: never refreshed by the schedule
    now = datetime.now(UTC)
    assert due_sources(mem, now=now) == []
    assert [s.uri for s in due_sources(mem, now=now + timedelta(seconds=61))] == [str(a.parent)]
    later = now + timedelta(seconds=3601)
    assert sorted(s.uri for s in due_sources(mem, now=later)) == sorted([str(a.parent), str(b.parent)])
    assert [s.uri for s in due_sources(mem, now=later, namespace="legal")] == [str(b.parent)]
    assert len(due_sources(mem, now=now, force=True)) == 2  # force: every source with an interval


def test_refresh_detects_changes_by_hash_and_enqueues_new_versions(mem, tmp_path):
    docs = tmp_path / "docs"
    leave = _write(docs / "leave.md", "# Leave\n\nTwenty days of paid leave.\n")
    _write(docs / "hours.txt", "Office hours are 9 to 6.\n")
    mem.add_source(str(docs), refresh_interval_s=60)
    enqueued: list[int] = []
    future = datetime.now(UTC) + timedelta(seconds=120)

    # nothing changed: the source is checked, nothing is enqueued
    report = refresh_sources(mem, now=future, enqueue=enqueued.append)
    assert len(report.checked) == 1 and report.changed == [] and report.checked[0].unchanged == 2
    assert enqueued == []
    # touching a file without changing its text is not a change either
    leave.write_text("# Leave\n\nTwenty days of paid leave.\n")
    assert refresh_sources(mem, now=future + timedelta(seconds=120), enqueue=enqueued.append).changed == []

    leave.write_text("# Leave\n\nThirty days of paid leave.\n")
    report = refresh_sources(mem, now=future + timedelta(seconds=240), enqueue=enqueued.append)
    assert [(c["document"], c["version"], c["status"]) for c in report.changed] == [("leave.md", 2, "new_version")]
    assert enqueued == [report.changed[0]["version_id"]]
    assert mem.get("leave.md").version.number == 2
    # just checked: not due again until its interval has passed
    assert refresh_sources(mem, enqueue=enqueued.append).checked == []


def test_a_vanished_source_records_its_error_and_others_go_on(mem, tmp_path):
    gone = _write(tmp_path / "gone" / "a.md", "# A\n\nAlpha.\n")
    kept = _write(tmp_path / "kept" / "b.md", "# B\n\nBeta.\n")
    mem.add_source(str(gone.parent), refresh_interval_s=60)
    mem.add_source(str(kept.parent), refresh_interval_s=60)
    gone.unlink()
    gone.parent.rmdir()
    kept.write_text("# B\n\nBeta, revised.\n")
    report = refresh_sources(mem, force=True, enqueue=lambda vid: None)
    by_uri = {s.source: s for s in report.checked}
    assert "no such file or directory" in by_uri[str(gone.parent)].error
    assert [c["document"] for c in by_uri[str(kept.parent)].changed] == ["b.md"]
    src = {s["uri"]: s for s in mem.sources()}
    assert "no such file or directory" in src[str(gone.parent)]["last_error"]
    assert report.to_dict()["failed"][0]["source"] == str(gone.parent)
    assert sorted(d.id for d in mem.list()) == ["a.md", "b.md"]  # a vanished source deletes nothing


def test_a_file_removed_from_a_refreshed_directory_loses_its_document(mem, tmp_path):
    """The refresh mirrors the directory: a deleted file's document, chunks and blobs go; the others, a file
    that now fails to parse, and a document added by hand with the same kind of name stay."""
    docs = tmp_path / "docs"
    old = _write(docs / "old-policy.md", "# Old\n\nThe old travel policy allows first class.\n")
    _write(docs / "current.md", "# Current\n\nEconomy class only.\n")
    broken = _write(docs / "sub" / "notes.txt", "Meeting notes.\n")
    mem.add_source(str(docs), refresh_interval_s=60)
    mem.add("Typed in by hand.", document_id="manual.md")
    assert sorted(d.id for d in mem.list()) == ["current.md", "manual.md", "old-policy.md", "sub/notes.txt"]
    old.unlink()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)  # still there, now binary
    report = refresh_sources(mem, force=True, enqueue=lambda vid: None)
    assert report.removed == ["old-policy.md"] and report.to_dict()["removed"] == ["old-policy.md"]
    assert [f["source"] for f in report.failed] == [str(broken)]
    assert sorted(d.id for d in mem.list()) == ["current.md", "manual.md", "sub/notes.txt"]
    assert [h.document_id for h in mem.search("first class travel", k=5)] != [] and all(
        h.document_id != "old-policy.md" for h in mem.search("first class travel", k=5)
    )
    assert mem.gc(dry_run=True) == []  # its blobs went with it
    assert refresh_sources(mem, force=True, enqueue=lambda vid: None).removed == []  # nothing left to remove


def test_a_directory_that_is_suddenly_empty_removes_nothing(mem, tmp_path):
    """An empty (or unmounted) directory is not taken as an order to delete every document."""
    docs = tmp_path / "docs"
    files = [_write(docs / "a.md", "# A\n\nAlpha.\n"), _write(docs / "b.md", "# B\n\nBeta.\n")]
    mem.add_source(str(docs), refresh_interval_s=60)
    for f in files:
        f.unlink()
    report = refresh_sources(mem, force=True, enqueue=lambda vid: None)
    assert report.removed == [] and sorted(d.id for d in mem.list()) == ["a.md", "b.md"]
    assert "holds no files now: nothing was removed" in mem.sources()[0]["last_error"]


def test_refresh_reinternalizes_and_rollback_restores_the_old_adapter(mem, tmp_path):
    """Embedded mode (the same task bodies as the workers): new version -> new adapter; rollback -> old one."""
    from workers.tasks import submit_ingest, submit_refresh

    docs = tmp_path / "docs"
    policy = _write(docs / "refunds.md", "# Refunds\n\nRefunds are paid within 14 days.\n")
    first = submit_ingest(mem, str(docs), refresh_interval_s=60)
    assert first.state == "succeeded"
    [v1] = mem.adapters(document_id="refunds.md")
    assert v1.status == "ready" and v1.version == 1

    policy.write_text("# Refunds\n\nRefunds are paid within 7 days.\n")
    job = submit_refresh(mem, force=True)
    assert job.state == "succeeded", job.error
    [change] = job.result["changed"]
    assert (change["document"], change["version"]) == ("refunds.md", 2) and isinstance(change["job"], int)
    adapters = {a.version: a for a in mem.adapters(document_id="refunds.md")}
    assert adapters[2].status == "ready" and adapters[1].status == "superseded" and adapters[1].id == v1.id

    mem.rollback("refunds.md", 1)
    adapters = {a.version: a for a in mem.adapters(document_id="refunds.md")}
    assert adapters[1].status == "ready" and adapters[2].status == "superseded"
    assert mem.get("refunds.md").version.number == 1
    # the file still says v2: the next refresh makes v2 current again, reusing its adapter (no new job)
    job = submit_refresh(mem, force=True)
    assert [(c["document"], c["version"], c["status"]) for c in job.result["changed"]] == [
        ("refunds.md", 2, "restored")
    ]
    adapters = {a.version: a for a in mem.adapters(document_id="refunds.md")}
    assert adapters[2].status == "ready" and len(adapters) == 2
