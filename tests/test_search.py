"""Classic retrieval through the facade: only current versions, hard namespaces, filters, re-embedding.

One suite for every retrieval backend (fixture ``retrieval_settings``): in-process on SQLite and on
PostgreSQL, and pgvector; they must agree.
"""

from __future__ import annotations

import pytest
from _embedders import BagOfWords

from memory.api import ParametricMemory
from memory.errors import ConfigError, ValidationError


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
        ("priv", "private", "quarterly salaries secret")
    ]


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
    hits = other.search("vault code", filter={"document_id": "vault2"})
    assert [h.text for h in hits] == ["the vault code is secret"]


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


def test_the_ef_search_setting_reaches_the_backend(retrieval_settings):
    """``retrieval_ef_search`` (``PMEM_RETRIEVAL_EF_SEARCH``) sets the HNSW candidate list of either backend."""
    from sqlalchemy import event

    mem = ParametricMemory(retrieval_settings.with_(retrieval_ef_search=300), embedder=BagOfWords())
    for i in range(12):
        mem.add(f"note {i} about topic {i % 3}", document_id=f"n{i}")
    idx = mem.chunk_index
    assert idx.ef_search == 300
    sent: list[str] = []
    event.listen(mem.engine, "before_cursor_execute", lambda conn, cur, stmt, *a: sent.append(stmt))
    if idx.index is not None:
        idx.index.ann_threshold = 5  # HNSW at this size
    assert mem.search("note 4 about topic 1", k=1)[0].document_id == "n4"
    if idx.index is not None:
        assert idx.index._parts["default"].ann.expansion_search == 300
    else:
        assert any("hnsw.ef_search = 300" in stmt for stmt in sent)
    idx.ef_search = 40
    mem.search("note 5 about topic 2", k=1)
    if idx.index is not None:
        assert idx.index._parts["default"].ann.expansion_search == 40
    else:
        assert any("hnsw.ef_search = 40" in stmt for stmt in sent)
    with pytest.raises(ConfigError):
        idx.ef_search = 5000
    with pytest.raises(ConfigError):
        retrieval_settings.with_(retrieval_ef_search=0)


# ---------------------------------------------------------------------------- in-process index upkeep
def exact_matches(mem, text, **kw):
    """Documents whose chunk equals ``text`` as a bag of words (score 1)."""
    return {h.document_id for h in mem.search(text, k=10, **kw) if h.score > 0.999}


@pytest.fixture
def local(tmp_path):
    return ParametricMemory(home=tmp_path / "local", embedder=BagOfWords())


def test_a_write_updates_the_index_in_place_keeping_the_graph(local):
    for i in range(30):
        local.add(f"note {i} about topic {i % 3}", document_id=f"n{i}", metadata={"i": i})
    idx = local.chunk_index.index
    idx.ann_threshold = 10  # HNSW from 10 vectors on, so the graph exists at this size
    assert "n7" in exact_matches(local, "note 7 about topic 1")
    graph = idx._parts["default"].ann
    assert graph is not None and len(idx) == 30
    local.add("a brand new note about zebras", document_id="zebra")
    local.delete("n3")
    local.add("note 5 about topic 2, revised", document_id="n5")
    assert "zebra" in exact_matches(local, "a brand new note about zebras")
    assert idx._parts["default"].ann is graph  # updated in place, not rebuilt
    assert len(idx) == 30 and local.search("note 3 about topic 0", k=30, filter={"document_id": "n3"}) == []
    assert [h.version for h in local.search("note 5", k=5, filter={"document_id": "n5"})] == [2]


def test_after_additions_the_next_search_reads_only_the_changed_documents(mem, monkeypatch):
    """Issue 16: after a write that adds or changes documents, a search reads the markers of those documents
    only, not of every document of the namespace; a delete (it leaves no row to find) brings the full diff back."""
    other = twin(mem)
    for i in range(20):
        mem.add(f"note {i} about topic {i % 3}", document_id=f"n{i}")
    assert exact_matches(other, "note 4 about topic 1") == {"n4"}
    read = []
    real = other.chunk_index._document_stamps

    def spy(*args, **kwargs):
        stamps = real(*args, **kwargs)
        read.append(len(stamps))
        return stamps

    monkeypatch.setattr(other.chunk_index, "_document_stamps", spy)
    mem.add("a brand new note about zebras", document_id="zebra")
    mem.add("note 5 about topic 2, revised", document_id="n5")
    assert exact_matches(other, "a brand new note about zebras") == {"zebra"}
    assert [h.version for h in other.search("note 5", k=5, filter={"document_id": "n5"})] == [2]
    assert read == [2]  # the two documents written, not all 21
    mem.delete("n3")
    assert other.search("note 3 about topic 0", k=30, filter={"document_id": "n3"}) == []
    assert read[-1] == 20  # full diff
    mem.add("note 3 is back", document_id="n3")
    assert exact_matches(other, "note 3 is back") == {"n3"}
    assert read[-1] == 1


def test_a_new_process_loads_the_saved_index_instead_of_rebuilding(local, monkeypatch):
    for i in range(20):
        local.add(f"fact number {i}", document_id=f"f{i}")
    assert "f4" in exact_matches(local, "fact number 4")
    local.chunk_index.save()
    local.add("fact number 20", document_id="f20")  # after the save: the snapshot is stale by one document
    other = ParametricMemory(local.settings, embedder=BagOfWords())
    assert len(other.chunk_index.index) == 20  # loaded from disk
    added = []
    real_add = other.chunk_index.index.add
    monkeypatch.setattr(
        other.chunk_index.index, "add", lambda ids, *a, **kw: (added.extend(ids), real_add(ids, *a, **kw))
    )
    assert "f20" in exact_matches(other, "fact number 20")
    assert len(added) == 1  # only the missing document, not a rebuild


def _count_calls(obj, name: str, monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    real = getattr(obj, name)
    monkeypatch.setattr(obj, name, lambda *a, **kw: (calls.append(a), real(*a, **kw))[1])
    return calls


def test_a_new_process_catches_up_from_where_the_saved_index_was_synced(local, monkeypatch):
    """The saved index says how far it was synced, so a new process compares the documents' stamps with the
    file's and re-reads the chunks of the changed documents only, instead of diffing every chunk of the
    namespace (5 of 10 seconds of a first search at a million chunks)."""
    for i in range(20):
        local.add(f"fact number {i}", document_id=f"f{i}")
    assert exact_matches(local, "fact number 4") == {"f4"}
    local.chunk_index.save()

    unchanged = ParametricMemory(local.settings, embedder=BagOfWords())
    stamp_reads = _count_calls(unchanged.chunk_index, "_document_stamps", monkeypatch)
    assert exact_matches(unchanged, "fact number 4") == {"f4"}
    assert stamp_reads == []  # nothing changed since the save: not even the documents' stamps are read

    local.add("fact number 20", document_id="f20")
    local.add("fact number 5, revised", document_id="f5")
    other = ParametricMemory(local.settings, embedder=BagOfWords())
    full = _count_calls(other.chunk_index, "_diff_all", monkeypatch)
    assert exact_matches(other, "fact number 20") == {"f20"}
    assert exact_matches(other, "fact number 5, revised") == {"f5"}
    assert exact_matches(other, "fact number 5") == set()  # the old version's chunk is gone
    assert len(other.chunk_index.index) == 21
    other.add("fact number 21", document_id="f21")  # later changes of this process: the numbered path
    assert exact_matches(other, "fact number 21") == {"f21"} and len(other.chunk_index.index) == 22
    assert full == []

    local.delete("f7")  # after a delete too, the stamps say what changed
    third = ParametricMemory(local.settings, embedder=BagOfWords())
    full = _count_calls(third.chunk_index, "_diff_all", monkeypatch)
    assert exact_matches(third, "fact number 7") == set()
    assert len(third.chunk_index.index) == 21 and exact_matches(third, "fact number 21") == {"f21"}
    assert full == []


def test_a_saved_sync_state_that_does_not_match_the_database_still_gives_the_current_chunks(local):
    from memory.retrieval import VectorIndex

    for i in range(5):
        local.add(f"fact number {i}", document_id=f"f{i}")
    local.search("fact")
    local.chunk_index.save()
    path = local.chunk_index.path
    saved = VectorIndex.load(path)
    state = saved.extra["synced"]["default"]
    state["documents"] = {str(int(d) + 1000): stamp for d, stamp in state["documents"].items()}  # wrong ids
    saved.save(path, extra=saved.extra)
    local.add("fact number 2, revised", document_id="f2")
    other = ParametricMemory(local.settings, embedder=BagOfWords())
    assert exact_matches(other, "fact number 2, revised") == {"f2"}
    assert exact_matches(other, "fact number 2") == set()
    assert len(other.chunk_index.index) == 5

    saved.save(path, extra={"synced": {"default": {"stamp": None}}})  # unreadable: ignored
    local.add("fact number 3, revised", document_id="f3")
    again = ParametricMemory(local.settings, embedder=BagOfWords())
    assert exact_matches(again, "fact number 3, revised") == {"f3"} and len(again.chunk_index.index) == 5
    assert exact_matches(again, "fact number 3") == set()


def test_a_corrupt_saved_index_is_ignored(local):
    local.add("fact", document_id="f")
    local.search("fact")
    local.chunk_index.save()
    local.chunk_index.path.write_bytes(b"not an index")
    other = ParametricMemory(local.settings, embedder=BagOfWords())
    assert [h.document_id for h in other.search("fact")] == ["f"]


# ---------------------------------------------------------------------------- one filter semantics on every backend
_KINDS = {
    "int": {"n": 1, "s": "b", "tags": ["x", 1]},
    "float": {"n": 1.0, "s": "B"},
    "bool": {"n": True, "s": "é"},
    "str": {"n": "1", "s": "ab"},
    "none": {"n": None},
    "missing": {},
    "list": {"n": [1], "tags": [[1], "y"]},
    "big": {"n": 2**60 + 1, "version": "draft", "document_id": "spoof"},
}
_FILTERS = [
    {"n": 1},
    {"n": {"$ne": 1}},
    {"n": True},
    {"n": None},
    {"n": "1"},
    {"n": {"$exists": False}},
    {"n": {"$gt": 0.5}},
    {"n": {"$gte": 2**60}},
    {"n": {"$lt": float("inf")}},
    {"n": {"$gt": float("-inf")}},
    {"n": {"$in": [1, "1"]}},
    {"n": {"$nin": [1, None]}},
    {"s": {"$gt": "a"}},
    {"s": {"$lte": "B"}},
    {"tags": {"$contains": 1}},
    {"tags": {"$contains": "y"}},
    {"$not": {"n": 1}},
    {"$or": [{"n": None}, {"s": "b"}]},
    {"document_id": {"$in": ["big", "none"]}},
    {"document_id": {"$ne": "int"}},
    {"version": 1},
    {"version": {"$gte": 2}},
    {"$and": [{"n": {"$exists": True}}, {"$not": {"document_id": "list"}}]},
]


def test_every_backend_and_path_agrees_with_the_filter_language(mem):
    from memory.retrieval.filters import compile_filter, filter_fields

    for key, meta in _KINDS.items():
        mem.add(f"shared words about {key}", document_id=key, metadata=meta)
    mem.add("shared words about float, second version", document_id="float", metadata=_KINDS["float"])
    versions = {key: 2 if key == "float" else 1 for key in _KINDS}
    for flt in _FILTERS:
        pred = compile_filter(flt)
        expected = {key for key, meta in _KINDS.items() if pred(filter_fields(meta, key, versions[key]))}
        found = {h.document_id for h in mem.search("shared words about", k=20, filter=flt)}
        assert found == expected, flt
        assert set(mem.document_ids_matching(flt)) == expected, flt


def test_a_document_added_by_another_process_is_found_without_a_rebuild(mem, monkeypatch):
    import subprocess
    import sys

    mem.add("the old archive of meeting notes", document_id="old")
    assert [h.document_id for h in mem.search("meeting notes")] == ["old"]
    idx = mem.chunk_index.index
    added = []
    if idx is not None:  # in-process: count what the next search adds to the index
        real_add = idx.add
        monkeypatch.setattr(idx, "add", lambda ids, *a, **kw: (added.extend(ids), real_add(ids, *a, **kw)))
    code = (
        "import sys; from memory.api import ParametricMemory; from memory.config import Settings; "
        "m = ParametricMemory(Settings.from_env(home=sys.argv[1], database_url=sys.argv[2])); "
        "m.add('the new agenda of the budget meeting', document_id='agenda')"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(mem.settings.home), mem.settings.resolved_database_url],
        check=True,
        timeout=300,
    )
    assert "agenda" in {h.document_id for h in mem.search("budget meeting agenda", k=2)}
    assert len(added) == (1 if idx is not None else 0)  # one new chunk, no rebuild
