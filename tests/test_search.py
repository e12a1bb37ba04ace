"""Classic retrieval through the facade: only current versions, hard namespaces, filters, re-embedding.

One suite for every retrieval backend (fixture ``retrieval_settings``): in-process on SQLite and on
PostgreSQL, and pgvector; they must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from memory.api import ParametricMemory
from memory.errors import ValidationError


class BagOfWords:
    """A tiny real embedder (hashed bag of words) so these tests need no model; cosine = word overlap."""

    name = "bag-of-words"
    dim = 64

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for w in text.lower().replace(".", " ").replace("?", " ").split():
            v[hash(w) % self.dim] += 1.0
        n = np.linalg.norm(v)
        return v / n if n else v

    def embed_documents(self, texts):
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_query(self, text):
        return self._vec(text)


@pytest.fixture
def mem(retrieval_settings):
    return ParametricMemory(retrieval_settings, embedder=BagOfWords())


def twin(mem):
    """Another handle on the same database and home, with its own index: a second process, as far as
    retrieval is concerned."""
    return ParametricMemory(mem.settings, embedder=BagOfWords())


def test_search_finds_the_matching_chunk(mem):
    mem.add("The vault code is 7342.", document_id="vault")
    mem.add("The cat is called Biscuit.", document_id="cat")
    hits = mem.search("what is the vault code", k=2)
    assert hits[0].document_id == "vault" and hits[0].score > hits[1].score
    assert hits[0].text == "The vault code is 7342." and hits[0].version == 1


def test_only_current_versions_are_searched(mem):
    mem.add("The vault code is 7342.", document_id="vault")
    mem.search("vault", k=1)  # index built
    mem.add("The vault code is now 9051.", document_id="vault")
    hits = mem.search("vault code", k=5)
    assert [h.text for h in hits] == ["The vault code is now 9051."] and hits[0].version == 2
    mem.rollback("vault", 1)
    assert [h.text for h in mem.search("vault code", k=5)] == ["The vault code is 7342."]
    mem.delete("vault")
    assert mem.search("vault code", k=5) == []


def test_namespaces_are_walls_even_with_hostile_filters(mem):
    mem.add("alpha secret vault code 1111", document_id="s", namespace="alpha", metadata={"team": "x"})
    mem.add("beta public notes", document_id="p", namespace="beta", metadata={"team": "x"})
    assert {h.document_id for h in mem.search("vault code", k=10, namespace="beta")} == {"p"}
    for hostile in ({"namespace": "alpha"}, {"$or": [{"team": "x"}, {"namespace": "alpha"}]}):
        with pytest.raises(ValidationError, match="namespace"):
            mem.search("vault code", k=10, namespace="beta", filter=hostile)
    assert all(h.document_id == "p" for h in mem.search("vault code", k=10, namespace="beta", filter={"team": "x"}))


def test_metadata_filters_and_malformed_filters(mem):
    mem.add("leave policy twenty days", document_id="leave", metadata={"dept": "hr", "year": 2024})
    mem.add("leave policy for contractors", document_id="contract", metadata={"dept": "legal", "year": 2026})
    assert [h.document_id for h in mem.search("leave policy", filter={"dept": "hr"})] == ["leave"]
    assert [h.document_id for h in mem.search("leave policy", filter={"year": {"$gte": 2025}})] == ["contract"]
    for bad in ({"$bad": 1}, {"year": {"$gt": "x", "$lt": []}}, "dept=hr"):
        with pytest.raises(ValidationError):
            mem.search("leave", filter=bad)  # type: ignore[arg-type]


def test_metadata_changes_reach_the_index(mem):
    mem.add("leave policy", document_id="leave", metadata={"dept": "hr"})
    assert mem.search("leave", filter={"dept": "hr"})
    mem.add("leave policy, revised", document_id="leave", metadata={"dept": "ops"})
    assert mem.search("leave", filter={"dept": "hr"}) == []
    assert [h.document_id for h in mem.search("leave", filter={"dept": "ops"})] == ["leave"]


def test_delete_then_add_reusing_row_ids_is_not_served_stale(mem):
    """Issue 14.3: SQLite reuses the row ids of a deleted document; the index must not keep its state."""
    mem.add("quarterly report numbers", document_id="pub", metadata={"acl": "public"})
    assert [h.document_id for h in mem.search("quarterly report", filter={"acl": "public"})] == ["pub"]
    mem.delete("pub")
    mem.add("quarterly salaries secret", document_id="priv", metadata={"acl": "private"})
    assert mem.search("quarterly report", filter={"acl": "public"}) == []
    hits = mem.search("quarterly", k=5)
    assert [(h.document_id, h.metadata.get("acl"), h.text) for h in hits] == [
        ("priv", "private", "quarterly salaries secret")]


def test_another_process_sees_every_change_at_its_next_search(mem):
    other = twin(mem)
    mem.add("the vault code is 7342", document_id="vault", metadata={"acl": "public"})
    assert [h.document_id for h in other.search("vault code")] == ["vault"]
    mem.delete("vault")
    mem.add("the vault code is secret", document_id="vault2", metadata={"acl": "private"})
    assert other.search("vault code", filter={"acl": "public"}) == []
    mem.add("vault notes", document_id="notes", metadata={"acl": "public"})
    assert [h.document_id for h in other.search("vault", filter={"acl": "public"})] == ["notes"]
    mem.add("vault notes", document_id="notes", metadata={"acl": "private"})  # same text: metadata only
    assert other.search("vault", filter={"acl": "public"}) == []
    mem.add("vault code changed", document_id="vault2")
    mem.rollback("vault2", 1)
    assert [h.text for h in other.search("vault code", filter={"document_id": "vault2"})] == ["the vault code is secret"]


def test_bad_queries(mem):
    for q in ("", "   "):
        with pytest.raises(ValidationError):
            mem.search(q)
    with pytest.raises(ValidationError):
        mem.search("x", k=0)


def test_changing_the_embedder_re_embeds(mem):
    mem.add("the vault code", document_id="v")
    assert mem.search("vault")
    class Wider(BagOfWords):
        name = "bag-of-words"
        dim = 32
    mem.embedder = Wider()
    hits = mem.search("vault")
    assert hits and mem.embedder.dim == 32


@pytest.mark.slow
def test_default_minilm_embedder_ranks_the_matching_fact_first(tmp_path):
    from memory.config import Settings

    mem = ParametricMemory(Settings.from_env(home=tmp_path / "h"))
    mem.add("The access code for the Orion vault is 7342.", document_id="vault")
    mem.add("Marisol's cat is called Biscuit and likes fish.", document_id="cat")
    mem.add("Expense reports are due within 14 days.", document_id="expenses")
    assert mem.search("What is the name of the cat?", k=1)[0].document_id == "cat"
    assert mem.search("vault access code", k=1)[0].document_id == "vault"


# ---------------------------------------------------------------------------- in-process index upkeep
@pytest.fixture
def local(tmp_path):
    return ParametricMemory(home=tmp_path / "local", embedder=BagOfWords())


def test_a_write_updates_the_index_in_place_keeping_the_graph(local):
    for i in range(30):
        local.add(f"note {i} about topic {i % 3}", document_id=f"n{i}", metadata={"i": i})
    idx = local.chunk_index.index
    idx.ann_threshold = 10  # HNSW from 10 vectors on, so the graph exists at this size
    assert local.search("note 7 about topic 1", k=1)[0].document_id == "n7"
    graph = idx._parts["default"].ann
    assert graph is not None and len(idx) == 30
    local.add("a brand new note about zebras", document_id="zebra")
    local.delete("n3")
    local.add("note 5 about topic 2, revised", document_id="n5")
    assert local.search("a brand new note about zebras", k=1)[0].document_id == "zebra"
    assert idx._parts["default"].ann is graph  # updated in place, not rebuilt
    assert len(idx) == 30 and local.search("note 3 about topic 0", k=30, filter={"document_id": "n3"}) == []
    assert [h.version for h in local.search("note 5", k=5, filter={"document_id": "n5"})] == [2]


def test_a_new_process_loads_the_saved_index_instead_of_rebuilding(local, monkeypatch):
    for i in range(20):
        local.add(f"fact number {i}", document_id=f"f{i}")
    assert local.search("fact number 4", k=1)[0].document_id == "f4"
    local.chunk_index.save()
    local.add("fact number 20", document_id="f20")  # after the save: the snapshot is stale by one document
    other = ParametricMemory(local.settings, embedder=BagOfWords())
    assert len(other.chunk_index.index) == 20  # loaded from disk
    added = []
    real_add = other.chunk_index.index.add
    monkeypatch.setattr(other.chunk_index.index, "add", lambda ids, *a, **kw: (added.extend(ids), real_add(ids, *a, **kw)))
    assert other.search("fact number 20", k=1)[0].document_id == "f20"
    assert len(added) == 1  # only the missing document, not a rebuild


def test_a_corrupt_saved_index_is_ignored(local):
    local.add("fact", document_id="f")
    local.search("fact")
    local.chunk_index.save()
    local.chunk_index.path.write_bytes(b"not an index")
    other = ParametricMemory(local.settings, embedder=BagOfWords())
    assert [h.document_id for h in other.search("fact")] == ["f"]
