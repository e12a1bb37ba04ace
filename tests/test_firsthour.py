"""A new user's first hour with the library and the CLI (issue 25): one file of a directory source updated on its
own, one datetime convention (aware UTC) on SQLite and PostgreSQL and in the CLI's JSON, and search with a
minimum score in the library, the CLI and the LangChain / LlamaIndex integrations."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from _embedders import BagOfWords
from typer.testing import CliRunner

from memory.api import ParametricMemory
from memory.errors import ValidationError


@pytest.fixture
def mem(backend_settings):
    return ParametricMemory(backend_settings, embedder=BagOfWords())


def _utc(ts: datetime) -> bool:
    return ts.tzinfo is not None and ts.utcoffset().total_seconds() == 0


def test_a_file_of_a_directory_source_is_updated_on_its_own(mem, tmp_path: Path) -> None:
    root = tmp_path / "policies"
    (root / "hr").mkdir(parents=True)
    (root / "hr" / "leave.md").write_text("# Leave\n\nStaff get 25 days.\n")
    (root / "travel.md").write_text("# Travel\n\nBook trains.\n")
    assert [r.status for r in mem.add_source(str(root), namespace="pol")] == ["created", "created"]
    (root / "hr" / "leave.md").write_text("# Leave\n\nStaff get 30 days.\n")
    (updated,) = mem.add_source(str(root / "hr" / "leave.md"), namespace="pol")
    assert (updated.status, updated.document.id, updated.document.version.number) == ("new_version", "hr/leave.md", 2)
    assert updated.document.source == str(root)  # still the directory's document
    assert [(s["uri"], s["kind"]) for s in mem.sources(namespace="pol")] == [(str(root), "directory")]
    # a refresh of the directory keeps it (and finds it unchanged)
    again = mem.add_source(str(root), namespace="pol", prune_missing=True)
    assert sorted((r.status, r.document.id) for r in again) == [
        ("unchanged", "hr/leave.md"),
        ("unchanged", "travel.md"),
    ]
    # a new file in the directory, added on its own, joins the directory source
    (root / "hr" / "parking.md").write_text("# Parking\n\nLevel two.\n")
    (added,) = mem.add_source(str(root / "hr" / "parking.md"), namespace="pol")
    assert (added.status, added.document.id, added.document.source) == ("created", "hr/parking.md", str(root))
    # a glob source's file too
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("Alpha.\n")
    mem.add_source(str(tmp_path / "notes" / "*.txt"), namespace="glob")
    (tmp_path / "notes" / "a.txt").write_text("Alpha, changed.\n")
    (g,) = mem.add_source(str(tmp_path / "notes" / "a.txt"), namespace="glob")
    assert (g.status, g.document.id, g.document.source) == ("new_version", "a.txt", str(tmp_path / "notes" / "*.txt"))
    # another namespace's source does not claim the file
    (other,) = mem.add_source(str(root / "travel.md"), namespace="elsewhere")
    assert (other.status, other.document.source) == ("created", str(root / "travel.md"))


def test_every_timestamp_is_aware_utc(mem) -> None:
    added = mem.add("Refunds within 30 days.", document_id="refunds")
    mem.add("Refunds within 45 days.", document_id="refunds")
    got = mem.get("refunds")
    stamps = [added.document.created_at, added.document.updated_at, added.document.version.created_at]
    stamps += [got.created_at, got.updated_at, got.version.created_at, mem.get("refunds", version=1).version.created_at]
    stamps += [v.created_at for v in mem.history("refunds")] + [d.updated_at for d in mem.list()]
    stamps += [mem.namespace_info().created_at]
    assert all(_utc(ts) for ts in stamps), stamps
    assert got.created_at == added.document.created_at  # the same instant, read back
    assert got.to_dict()["created_at"].endswith("+00:00")


def test_cli_json_timestamps_are_aware_utc(tmp_path: Path) -> None:
    from memory.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["add", "-", "--id", "refunds"], input="Refunds within 30 days.").exit_code == 0
    for args in (["ls", "--json"], ["history", "refunds", "--json"], ["show", "refunds", "--json"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout.splitlines()[-1])
        first = doc[0] if isinstance(doc, list) else doc
        assert first["created_at"].endswith("+00:00"), (args, first["created_at"])


def test_search_takes_a_minimum_score(mem) -> None:
    mem.add("Parking is on level two of the garage.", document_id="parking")
    mem.add("Refunds are accepted within 30 days.", document_id="refunds")
    scores = {h.document_id: h.score for h in mem.search("parking level garage", k=10)}
    assert scores["parking"] > scores["refunds"]
    cut = (scores["parking"] + scores["refunds"]) / 2
    assert [h.document_id for h in mem.search("parking level garage", k=10, min_score=cut)] == ["parking"]
    assert mem.search("parking level garage", k=10, min_score=1.0) == []
    for bad in (1.5, -2, "high", True, float("nan")):
        with pytest.raises(ValidationError, match="min_score"):
            mem.search("parking", min_score=bad)


def test_cli_search_min_score(tmp_path: Path) -> None:
    from memory.cli import app

    runner = CliRunner()
    for doc_id, text in (("parking", "Parking is on level two."), ("refunds", "Refunds within 30 days.")):
        assert runner.invoke(app, ["add", "-", "--id", doc_id], input=text).exit_code == 0
    every = json.loads(runner.invoke(app, ["search", "parking level", "--json"]).stdout.splitlines()[-1])
    best = max(h["score"] for h in every)
    r = runner.invoke(app, ["search", "parking level", "--min-score", str(best - 1e-6), "--json"])
    assert r.exit_code == 0 and [h["document_id"] for h in json.loads(r.stdout.splitlines()[-1])] == ["parking"]
    assert runner.invoke(app, ["search", "parking", "--min-score", "3"]).exit_code == 2


def test_integrations_take_a_score_threshold(mem) -> None:
    from integrations.langchain import ParametricMemoryRetriever as LCRetriever
    from integrations.langchain import ParametricMemoryVectorStore
    from integrations.llamaindex import ParametricMemoryRetriever as LIRetriever

    mem.add("Parking is on level two of the garage.", document_id="parking")
    mem.add("Refunds are accepted within 30 days.", document_id="refunds")
    store = ParametricMemoryVectorStore(memory=mem)
    scored = store.similarity_search_with_score("parking level garage", k=5)
    assert len(scored) == 2
    cut = (scored[0][1] + scored[1][1]) / 2
    assert [d.id for d, _ in store.similarity_search_with_score("parking level garage", k=5, score_threshold=cut)] == [
        "parking"
    ]
    relevant = store.similarity_search_with_relevance_scores("parking level garage", k=5, score_threshold=cut)
    assert [d.id for d, _ in relevant] == ["parking"]
    lc = LCRetriever(memory=mem, mode="retrieval", k=5, score_threshold=cut)
    assert [d.metadata["document_id"] for d in lc.invoke("parking level garage")] == ["parking"]
    li = LIRetriever(mem, mode="retrieval", similarity_top_k=5, similarity_cutoff=cut)
    assert [n.node.metadata["document_id"] for n in li.retrieve("parking level garage")] == ["parking"]


def test_gguf_conversion_writes_no_progress_bars(capfd) -> None:
    """The GGUF reader's own tqdm bar (which transformers' switch does not reach) is off while a model converts,
    and back afterwards."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from memory.models.loader import _no_progress_bars

    before = gguf_utils.tqdm
    with _no_progress_bars():
        assert list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2]
    assert "Converting" not in capfd.readouterr().err and gguf_utils.tqdm is before


def test_timestamps_are_utc_whatever_the_postgresql_session_time_zone(pg_url, tmp_path: Path, monkeypatch) -> None:
    """PostgreSQL hands back aware datetimes in the session's time zone: they come out converted to UTC."""
    from memory.db import dispose_engines, migrate

    monkeypatch.setenv("PGTZ", "America/New_York")  # libpq sets the session's TimeZone from it
    dispose_engines()
    migrate.upgrade(pg_url)
    mem = ParametricMemory(home=tmp_path / "h", database_url=pg_url, embedder=BagOfWords())
    added = mem.add("Refunds within 30 days.", document_id="refunds")
    got = mem.get("refunds")
    stamps = [got.created_at, got.updated_at, got.version.created_at, mem.history("refunds")[0].created_at]
    assert all(_utc(ts) for ts in stamps), stamps
    assert got.created_at == added.document.created_at and got.to_dict()["created_at"].endswith("+00:00")
