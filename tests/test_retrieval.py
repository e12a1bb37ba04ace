"""memory.retrieval: filters, the vector index (exact and usearch HNSW), embedders.

Run: ``.venv/bin/python -m pytest tests/test_retrieval.py -q`` (``-m "not slow"`` skips the MiniLM model).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from memory.errors import IntegrityError, ModelError, NotFoundError, ValidationError
from memory.retrieval import (
    AnnParams,
    LangChainEmbedder,
    LlamaIndexEmbedder,
    MiniLMEmbedder,
    VectorIndex,
    as_embedder,
    compile_filter,
    usearch_available,
    vector_from_bytes,
    vector_to_bytes,
    vectors_from_bytes,
)
from memory.retrieval.filters import build_column

needs_usearch = pytest.mark.skipif(not usearch_available(), reason="usearch is not installed")


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Unit vectors around a few centres, like sentence embeddings of related chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(vectors: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[int]:
    rows = np.arange(len(vectors)) if rows is None else rows
    qn = q / np.linalg.norm(q)
    scores = vectors[rows] @ qn
    return [int(rows[i]) for i in np.argsort(-scores, kind="stable")[:k]]


def make_index(
    n: int, dim: int, *, backend: str = "exact", namespace: str = "ns", seed: int = 0
) -> tuple[VectorIndex, np.ndarray]:
    x = clustered(n, dim, seed)
    idx = VectorIndex(dim, backend=backend)  # type: ignore[arg-type]
    meta = [{"i": i, "parity": "even" if i % 2 == 0 else "odd", "tags": [f"t{i % 7}"]} for i in range(n)]
    idx.add([f"id{i}" for i in range(n)], x, meta, namespace=namespace)
    return idx, x


# ------------------------------------------------------------------------------------ filters
MD = {"lang": "en", "year": 2021, "score": 0.5, "draft": False, "tags": ["a", "b"], "none": None, "title": "Beta"}

FILTER_CASES = [
    ({"lang": "en"}, True),
    ({"lang": "fr"}, False),
    ({"lang": {"$eq": "en"}}, True),
    ({"lang": {"$ne": "en"}}, False),
    ({"missing": {"$ne": "x"}}, True),  # $ne matches a missing field
    ({"missing": "x"}, False),
    ({"missing": None}, False),  # missing is not None
    ({"none": None}, True),
    ({"year": {"$gt": 2020}}, True),
    ({"year": {"$gt": 2021}}, False),
    ({"year": {"$gte": 2021, "$lt": 2022}}, True),
    ({"year": {"$lte": 2020.5}}, False),
    ({"score": {"$lt": 1}}, True),
    ({"year": 2021.0}, True),  # int equals float of the same value
    ({"draft": 0}, False),  # a bool never equals a number
    ({"draft": False}, True),
    ({"year": {"$gt": "2000"}}, False),  # number vs string: no match, no error
    ({"title": {"$gte": "Alpha"}}, True),  # strings order lexicographically
    ({"lang": {"$in": ["fr", "en"]}}, True),
    ({"lang": {"$in": []}}, False),
    ({"lang": {"$nin": ["fr", "de"]}}, True),
    ({"missing": {"$nin": ["x"]}}, True),
    ({"tags": {"$contains": "b"}}, True),
    ({"tags": {"$contains": "z"}}, False),
    ({"lang": {"$contains": "e"}}, False),  # $contains is list membership, not substring
    ({"tags": {"$exists": True}}, True),
    ({"missing": {"$exists": False}}, True),
    ({"$and": [{"lang": "en"}, {"year": 2021}]}, True),
    ({"$and": [{"lang": "en"}, {"year": 1999}]}, False),
    ({"$or": [{"lang": "fr"}, {"year": 2021}]}, True),
    ({"$or": [{"lang": "fr"}, {"year": 1999}]}, False),
    ({"$not": {"lang": "fr"}}, True),
    ({"lang": "en", "year": 1999}, False),  # top-level keys are AND-ed
    ({"$or": [{"$and": [{"lang": "en"}, {"draft": True}]}, {"tags": {"$contains": "a"}}]}, True),
]


@pytest.mark.parametrize("flt, expected", FILTER_CASES)
def test_filter_semantics(flt, expected):
    """Each operator matches the documented way on one metadata dict, row-wise and column-wise."""
    compiled = compile_filter(flt)
    assert compiled(MD) is expected
    rows = [MD, {}]
    mask = compiled.mask(lambda f: build_column(rows, f), 2)
    assert mask.dtype == bool and bool(mask[0]) is expected


def test_column_evaluation_agrees_with_row_evaluation():
    """On mixed-type metadata (missing fields, bools, ints, floats, strings, lists, None) both evaluators agree."""
    rng = np.random.default_rng(0)
    ns = 1_700_000_000_000_000_000  # a nanosecond timestamp: beyond float64's exact integers
    pool = [
        True,
        False,
        0,
        1,
        2,
        1.0,
        2.5,
        float("nan"),
        "a",
        "b",
        "1",
        None,
        ["a", 1],
        [True],
        {"x": 1},
        ns,
        ns + 1,
        10**400,
    ]
    rows = [{f: pool[rng.integers(len(pool))] for f in ("f", "g") if rng.random() < 0.8} for _ in range(400)]
    big_in = {"f": {"$in": [*range(30), "a"]}}
    for flt, _ in (
        FILTER_CASES
        + [({"f": v}, None) for v in (True, 1, 1.0, "a", None)]
        + [
            ({"f": {"$gt": 0.5}}, None),
            ({"g": {"$lte": "a"}}, None),
            ({"f": {"$contains": 1}}, None),
            ({"$or": [{"f": {"$ne": 1}}, {"g": {"$nin": ["a", None]}}]}, None),
            (big_in, None),
            ({"$not": big_in}, None),
            ({"f": {"$gt": ns}}, None),
            ({"f": {"$lte": ns}}, None),
            ({"g": ns + 1}, None),
            ({"f": {"$gte": 10**300}}, None),
        ]
    ):
        compiled = compile_filter(flt)
        expected = [compiled(md) for md in rows]
        assert compiled.mask(lambda f: build_column(rows, f), len(rows)).tolist() == expected, flt


MALFORMED = [
    ({"lang": {"$regex": "e.*"}}, "unknown operator"),
    ({"$xor": [{"a": 1}]}, "unknown operator"),
    ({"$gt": 3}, "must be applied to a field"),
    ({"year": {"$gt": [1, 2]}}, "number or a string"),
    ({"year": {"$gt": True}}, "number or a string"),
    ({"year": {"$gt": float("nan")}}, "NaN"),
    ({"lang": {"$in": "en"}}, "list of scalars"),
    ({"lang": {"$in": [["en"]]}}, "str, number, bool or None"),
    ({"lang": ["en", "fr"]}, "str, number, bool or None"),
    ({"lang": {"nested": 1}}, "equality against a dict"),
    ({"lang": {}}, "empty operator dict"),
    ({"$and": []}, "non-empty list"),
    ({"$or": {"a": 1}}, "non-empty list"),
    ({"x": {"$exists": "yes"}}, "true or false"),
    ({}, "empty dict"),
    ("lang = en", "expected a dict"),
    ({1: "a"}, "non-empty strings"),
    ({"namespace": "other"}, "namespaces are hard partitions"),
    ({"$or": [{"a": 1}, {"_namespace": "other"}]}, "namespaces are hard partitions"),
    ({"$not": {"NameSpace": {"$ne": "x"}}}, "namespaces are hard partitions"),
    ({"ns": {"$in": ["a", "b"]}}, "namespaces are hard partitions"),
]


@pytest.mark.parametrize("flt, message", MALFORMED)
def test_malformed_filter_is_rejected_with_a_clear_message(flt, message):
    """Unknown operators, wrong operand types and namespace keys raise ValidationError naming the problem."""
    with pytest.raises(ValidationError, match=message):
        compile_filter(flt)


def test_malformed_filter_raises_before_search_even_on_empty_namespace():
    """Validation does not depend on data: an unknown namespace still rejects a bad filter."""
    idx = VectorIndex(dim=2)
    with pytest.raises(ValidationError, match="unknown operator"):
        idx.search([1.0, 0.0], k=1, namespace="nobody", filter={"a": {"$bogus": 1}})


def test_overdeep_filter_is_rejected():
    flt: dict = {"a": 1}
    for _ in range(40):
        flt = {"$not": flt}
    with pytest.raises(ValidationError, match="deeper"):
        compile_filter(flt)


# ------------------------------------------------------------------------------------ exact index
def test_exact_search_matches_brute_force():
    """Top-k ids and scores equal a numpy brute-force ranking, with and without a filter."""
    idx, x = make_index(500, 16)
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.standard_normal(16).astype(np.float32)
        hits = idx.search(q, k=7, namespace="ns")
        assert [h.id for h in hits] == [f"id{r}" for r in brute_force(x, q, 7)]
        expected_scores = x[[int(h.id[2:]) for h in hits]] @ (q / np.linalg.norm(q))
        np.testing.assert_allclose([h.score for h in hits], expected_scores, atol=1e-5)
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
        even = np.arange(0, 500, 2)
        hits = idx.search(q, k=7, namespace="ns", filter={"parity": "even"})
        assert [h.id for h in hits] == [f"id{r}" for r in brute_force(x, q, 7, even)]


def test_k_larger_than_collection_and_k_zero():
    idx, _ = make_index(5, 4)
    assert len(idx.search(np.ones(4), k=50, namespace="ns")) == 5
    assert idx.search(np.ones(4), k=0, namespace="ns") == []
    with pytest.raises(ValidationError, match="k must be"):
        idx.search(np.ones(4), k=-1, namespace="ns")


def test_upsert_replaces_and_delete_ignores_missing():
    idx = VectorIndex(dim=2)
    idx.add(["a", "b"], [[1, 0], [0, 1]], [{"v": 1}, {"v": 1}])
    idx.add(["a"], [[0, 1]], [{"v": 2}])  # overwrite vector and metadata
    assert len(idx) == 2
    assert idx.get_metadata("a") == {"v": 2}
    top = idx.search([0, 1], k=2)
    assert {h.id for h in top} == {"a", "b"} and top[0].score == pytest.approx(1.0)
    assert idx.delete(["a", "never-added"]) == 1
    assert idx.ids() == ["b"] and len(idx) == 1
    assert idx.delete(["a"]) == 0
    assert idx.delete(None) == 1 and len(idx) == 0 and idx.namespaces() == []


def test_repeated_id_in_one_call_keeps_the_last():
    idx = VectorIndex(dim=2)
    idx.add(["a", "a"], [[1, 0], [0, 1]], [{"n": 1}, {"n": 2}])
    assert len(idx) == 1 and idx.get_metadata("a") == {"n": 2}


def test_deletes_keep_rows_consistent():
    """After deleting half the rows (swap-remove), search still equals brute force on what is left."""
    idx, x = make_index(300, 8)
    gone = set(range(0, 300, 3))
    idx.delete([f"id{i}" for i in gone], namespace="ns")
    left = np.array(sorted(set(range(300)) - gone))
    q = np.random.default_rng(5).standard_normal(8).astype(np.float32)
    assert [h.id for h in idx.search(q, k=10, namespace="ns")] == [f"id{r}" for r in brute_force(x, q, 10, left)]
    assert all(idx.get_metadata(f"id{i}", "ns")["i"] == i for i in left)


def test_metadata_is_copied_in_and_out():
    """Callers mutating their dicts (before or after) never change what the index holds."""
    idx = VectorIndex(dim=2)
    md = {"tags": ["x"]}
    idx.add(["a"], [[1, 0]], [md])
    md["tags"].append("y")
    hit = idx.search([1, 0], k=1)[0]
    hit.metadata["tags"].append("z")
    assert idx.get_metadata("a") == {"tags": ["x"]}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda i: i.add(["a"], [[1.0, 2.0, 3.0]]), "dimension 3"),
        (lambda i: i.add(["a"], [[np.nan, 1.0]]), "NaN"),
        (lambda i: i.add(["a", "b"], [[1.0, 2.0]]), "shape"),
        (lambda i: i.add("ab", [[1.0, 2.0]]), "list of strings"),
        (lambda i: i.add([""], [[1.0, 2.0]]), "non-empty string"),
        (lambda i: i.add(["a"], [[1.0, 2.0]], [{"f": object()}]), "JSON"),
        (lambda i: i.add(["a"], [[1.0, 2.0]], [{}, {}]), "metadata dicts"),
        (lambda i: i.add(["a"], [[1.0, 2.0]], namespace=""), "namespace"),
        (lambda i: i.search([1.0, 2.0, 3.0], k=1), "dimension 2"),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(call, message):
    idx = VectorIndex(dim=2)
    idx.add(["keep"], [[1.0, 0.0]])
    with pytest.raises(ValidationError, match=message):
        call(idx)
    assert idx.ids() == ["keep"]


# ------------------------------------------------------------------------------------ namespaces
@pytest.mark.parametrize("backend", ["exact", pytest.param("usearch", marks=needs_usearch)])
def test_namespaces_are_hard_partitions(backend):
    """Same ids and vectors in two namespaces: a search in one never yields the other's rows."""
    x = clustered(400, 8)
    idx = VectorIndex(8, backend=backend)
    ids = [f"c{i}" for i in range(400)]
    idx.add(ids, x, [{"owner": "alice"} for _ in ids], namespace="alice")
    idx.add(ids, x, [{"owner": "bob"} for _ in ids], namespace="bob")
    q = x[17]
    for flt in (None, {"owner": "bob"}, {"$or": [{"owner": "bob"}, {"owner": "alice"}]}, {"owner": {"$ne": "alice"}}):
        hits = idx.search(q, k=400, namespace="alice", filter=flt)
        assert all(h.metadata["owner"] == "alice" for h in hits)
    assert idx.search(q, k=5, namespace="alice", filter={"owner": "bob"}) == []
    assert idx.search(q, k=5, namespace="carol") == []
    for hostile in ({"namespace": "bob"}, {"$or": [{"owner": "alice"}, {"namespace": "bob"}]}, {"$namespace": "bob"}):
        with pytest.raises(ValidationError, match="hard partitions"):
            idx.search(q, k=5, namespace="alice", filter=hostile)
    idx.delete(["c17"], namespace="bob")
    assert idx.contains("c17", "alice") and not idx.contains("c17", "bob")
    assert idx.search(q, k=1, namespace="alice")[0].id == "c17"
    assert idx.count("alice") == 400 and idx.count("bob") == 399 and len(idx) == 799


# ------------------------------------------------------------------------------------ ANN
@needs_usearch
def test_ann_recall_and_exact_rescoring():
    """HNSW top-5 agrees with exact search (recall@5 >= 0.9) and reports exact cosine scores."""
    idx, x = make_index(3000, 32, backend="usearch")
    rng = np.random.default_rng(2)
    recall = []
    for _ in range(30):
        q = x[rng.integers(0, 3000)] + 0.3 * rng.standard_normal(32).astype(np.float32)
        ann = idx.search(q, k=5, namespace="ns")
        exact = idx.search(q, k=5, namespace="ns", exact=True)
        assert len(ann) == 5
        recall.append(len({h.id for h in ann} & {h.id for h in exact}) / 5)
        qn = q / np.linalg.norm(q)
        for h in ann:
            assert h.score == pytest.approx(float(x[int(h.id[2:])] @ qn), abs=1e-5)
    assert np.mean(recall) >= 0.9


@needs_usearch
def test_ann_with_filters_overfetch_and_fallback(monkeypatch):
    """A broad filter is served from over-fetched graph hits; a selective one scans its subset exactly."""
    x = clustered(3000, 32)
    idx = VectorIndex(32, backend="usearch", ann_threshold=500)
    idx.add([f"id{i}" for i in range(3000)], x, [{"parity": i % 2, "i": i} for i in range(3000)])
    part = idx._parts["default"]
    calls: list[int] = []
    real = part.ann_rows
    monkeypatch.setattr(part, "ann_rows", lambda q, count: calls.append(count) or real(q, count))
    rng = np.random.default_rng(3)
    odd = np.arange(1, 3000, 2)
    recall = []
    for _ in range(10):
        q = rng.standard_normal(32).astype(np.float32)
        hits = idx.search(q, k=5, filter={"parity": 1})
        assert len(hits) == 5 and all(h.metadata["parity"] == 1 for h in hits)
        recall.append(len({h.id for h in hits} & {f"id{r}" for r in brute_force(x, q, 5, odd)}) / 5)
        rare = {"i": {"$in": [7, 1234, 2999]}}  # 3 of 3000 rows: exact scan of the subset
        assert [h.id for h in idx.search(q, k=5, filter=rare)] == [
            f"id{r}" for r in brute_force(x, q, 5, np.array([7, 1234, 2999]))
        ]
    assert calls and calls[0] == 5 * idx.ann_params.overfetch * 2  # k * overfetch / selectivity (1/2)
    assert len(calls) >= 10 and np.mean(recall) >= 0.9
    # the graph cannot find matches hidden far away: over-fetch runs dry and the exact subset scan answers
    far = {"i": {"$gte": 2400}}  # 600 rows > ann_threshold, so the graph is tried first
    q = x[10]
    want = [f"id{r}" for r in brute_force(x, q, 5, np.arange(2400, 3000))]
    assert [h.id for h in idx.search(q, k=5, filter=far)] == want


@needs_usearch
def test_auto_backend_builds_graph_past_threshold_and_tracks_writes():
    """'auto' stays exact below the threshold, builds HNSW above it, and later adds/deletes reach the graph."""
    idx = VectorIndex(16, backend="auto", ann_threshold=1000)
    x = clustered(1500, 16)
    idx.add([f"id{i}" for i in range(900)], x[:900])
    idx.add(["tiny"], x[:1], namespace="small")
    idx.search(x[0], k=3)
    assert idx._parts["default"].ann is None and idx.prepare() == []
    idx.add([f"id{i}" for i in range(900, 1500)], x[900:])
    assert idx.prepare() == ["default"] and idx._parts["small"].ann is None
    assert idx.search(x[1200], k=1)[0].id == "id1200"
    assert idx._parts["default"].ann is not None
    idx.add(["new"], x[5:6] * -1.0)  # added after the graph exists
    assert idx.search(-x[5], k=1)[0].id == "new"
    idx.delete(["id1200"])
    assert all(h.id != "id1200" for h in idx.search(x[1200], k=10))
    idx.add(["id3"], -x[77:78])  # upsert moves id3 to a new place in the graph
    assert idx.search(-x[77], k=1)[0].id == "id3"


@needs_usearch
def test_graph_is_rebuilt_when_mostly_tombstones():
    idx = VectorIndex(8, backend="usearch")
    x = clustered(1300, 8)
    idx.add([f"id{i}" for i in range(1300)], x)
    idx.search(x[0], k=1)
    idx.delete([f"id{i}" for i in range(1200)])
    part = idx._parts["default"]
    assert part.ann_removed == 1200
    hits = idx.search(x[1250], k=3)
    assert hits[0].id == "id1250" and part.ann_removed == 0 and len(part.ann) == 100


# ------------------------------------------------------------------------------------ persistence
@pytest.mark.parametrize("backend", ["exact", pytest.param("usearch", marks=needs_usearch)])
def test_save_load_round_trip(tmp_path, backend):
    idx, x = make_index(1200, 16, backend=backend)
    idx.add(["other"], x[:1], [{"who": "o"}], namespace="second")
    q = x[42] + 0.1
    before = idx.search(q, k=5, namespace="ns", filter={"parity": "even"})
    path = tmp_path / "sub" / "index.npz"
    idx.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["index.npz"]  # no temporary left behind
    loaded = VectorIndex.load(path)
    assert len(loaded) == len(idx) == 1201 and loaded.namespaces() == ["ns", "second"]
    assert loaded.search(q, k=5, namespace="ns", filter={"parity": "even"}) == before
    if backend == "usearch":
        assert loaded._parts["ns"].ann is not None and len(loaded._parts["ns"].ann) == 1200
    loaded.add(["late"], x[3:4] * -1, namespace="ns")  # keys continue after the saved ones
    assert loaded.search(-x[3], k=1, namespace="ns")[0].id == "late"


def test_a_loaded_index_adds_without_copying_its_vectors(tmp_path):
    """Issue 16: the first add after a load fits in room reserved at load, instead of copying every vector
    (about 1 s per million 384-d vectors)."""
    idx = VectorIndex(dim=8, backend="exact")
    idx.add([f"v{i}" for i in range(100)], clustered(100, 8), namespace="n")
    idx.save(tmp_path / "idx.npz")
    loaded = VectorIndex.load(tmp_path / "idx.npz")
    part = loaded._parts["n"]
    matrix = part.vectors
    new = clustered(1, 8, seed=1)
    loaded.add(["new"], new, namespace="n")
    assert part.vectors is matrix
    assert loaded.search(new[0], k=1, namespace="n")[0].id == "new"
    assert [h.id for h in loaded.search(clustered(100, 8)[7], k=1, namespace="n")] == ["v7"]


@needs_usearch
def test_a_loaded_graph_searches_with_the_saved_candidate_list(tmp_path):
    """usearch's file does not keep ``expansion_search``: a restored graph searched with usearch's default of 64
    instead of the index's 128, so every process after the first found fewer of the exact neighbours."""
    idx, x = make_index(1200, 16, backend="usearch")
    idx.search(x[0], k=1, namespace="ns")  # builds the graph
    idx.expansion_search = 300
    assert idx._parts["ns"].ann.expansion_search == 300  # the built graph follows the setting
    idx.save(tmp_path / "idx.npz")
    loaded = VectorIndex.load(tmp_path / "idx.npz")
    assert loaded.expansion_search == 300 and loaded._parts["ns"].ann.expansion_search == 300
    with pytest.raises(ValidationError):
        loaded.expansion_search = 0


@needs_usearch
def test_a_higher_candidate_list_finds_more_of_the_exact_neighbours():
    """The knob does what it says on a graph whose default misses neighbours: ef=10 against ef=400."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 32)).astype(np.float32)  # isotropic: hard for a graph
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = VectorIndex(dim=32, backend="usearch")
    idx.add([str(i) for i in range(len(x))], x)
    queries = x[:50] + 0.3 * rng.standard_normal((50, 32)).astype(np.float32)

    def recall(ef: int) -> float:
        idx.expansion_search = ef
        found = 0
        for q in queries:
            exact = set(np.argsort(-(x @ q))[:10].tolist())
            found += len(exact & {int(h.id) for h in idx.search(q, k=10)})
        return found / (10 * len(queries))

    low, high = recall(10), recall(400)
    assert high > low and high >= 0.95


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    idx = VectorIndex(dim=2)
    idx.add(["a"], [[1.0, 0.0]])
    path = tmp_path / "idx.npz"
    idx.save(path)
    idx.add(["b"], [[0.0, 1.0]])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        idx.save(path)
    monkeypatch.undo()
    assert VectorIndex.load(path).ids() == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["idx.npz"]


@needs_usearch
def test_unreadable_saved_graph_is_rebuilt(tmp_path):
    """A damaged graph inside an intact file costs a rebuild, not the index."""
    idx, x = make_index(300, 8, backend="usearch")
    idx.search(x[0], k=1, namespace="ns")
    path = tmp_path / "idx.npz"
    idx.save(path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["a0"] = arrays["a0"][:40]
    np.savez(path, **arrays)
    loaded = VectorIndex.load(path)
    assert loaded._parts["ns"].ann is None
    assert loaded.search(x[7], k=1, namespace="ns")[0].id == "id7"
    assert loaded._parts["ns"].ann is not None


def test_load_ignores_whatever_the_spare_rows_hold(tmp_path, monkeypatch):
    """The rows ``load`` reserves past the end are uninitialised memory; stale keys there (here: copies of the
    real ones) must not relabel real rows (CI once got an IndexError from the search of a loaded index)."""
    from memory.retrieval import index as index_module

    idx, x = make_index(300, 8, backend="usearch" if usearch_available() else "exact")
    path = tmp_path / "idx.npz"
    idx.save(path)
    read_rows = index_module._read_rows

    def stale_room(data, name, room):
        out = read_rows(data, name, room)
        filled = len(out) - room
        out[filled:] = out[:room]
        return out

    monkeypatch.setattr(index_module, "_read_rows", stale_room)
    loaded = VectorIndex.load(path)
    part = loaded._parts["ns"]
    assert sorted(part.row_of_key.values()) == list(range(part.n))
    assert loaded.search(x[7], k=3, namespace="ns")[0].id == "id7"  # through the graph if any


def test_load_missing_and_corrupt_files(tmp_path):
    with pytest.raises(NotFoundError):
        VectorIndex.load(tmp_path / "nope.npz")
    idx, _ = make_index(50, 4)
    path = tmp_path / "idx.npz"
    idx.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="corrupt"):
        VectorIndex.load(path)


# ------------------------------------------------------------------------------------ embedders
def test_vector_bytes_round_trip():
    v = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    blob = vector_to_bytes(v)
    assert len(blob) == 384 * 4
    np.testing.assert_array_equal(vector_from_bytes(blob, 384), v)
    with pytest.raises(ValidationError):
        vector_from_bytes(blob[:-1])
    with pytest.raises(ValidationError, match="expected 10"):
        vector_from_bytes(blob, 10)


def test_many_blobs_decode_into_one_matrix():
    v = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(vectors_from_bytes([vector_to_bytes(r) for r in v], 5), v)
    assert vectors_from_bytes([], 5).shape == (0, 5)
    with pytest.raises(ValidationError, match="blob 1"):
        vectors_from_bytes([vector_to_bytes(v[0]), b"\0" * 8], 5)


def test_without_usearch_everything_is_exact(tmp_path, monkeypatch):
    """With the ANN package missing, 'auto' searches exactly, 'usearch' is refused, saved graphs are dropped."""
    import memory.retrieval.index as index_mod

    x = clustered(300, 8)
    saved = VectorIndex(8, backend="auto", ann_threshold=10, model="m")
    saved.add([f"id{i}" for i in range(300)], x)
    saved.search(x[0], k=1)
    path = tmp_path / "idx.npz"
    saved.save(path)
    monkeypatch.setattr(index_mod, "usearch_available", lambda: False)
    with pytest.raises(ValidationError, match="pip install usearch"):
        VectorIndex(8, backend="usearch")
    idx = VectorIndex(8, backend="auto", ann_threshold=10)
    idx.add([f"id{i}" for i in range(300)], x)
    q = x[3] + 0.05
    assert [h.id for h in idx.search(q, k=5)] == [f"id{r}" for r in brute_force(x, q, 5)]
    assert idx._parts["default"].ann is None
    loaded = VectorIndex.load(path)
    assert loaded._parts["default"].ann is None and loaded.model == "m"
    assert [h.id for h in loaded.search(q, k=5)] == [f"id{r}" for r in brute_force(x, q, 5)]


def test_langchain_adapter():
    from langchain_core.embeddings import DeterministicFakeEmbedding

    lc = DeterministicFakeEmbedding(size=6)
    emb = as_embedder(lc)
    assert isinstance(emb, LangChainEmbedder) and emb.dim == 6
    docs = emb.embed_documents([f"text {i}" for i in range(70)])  # more than one batch
    assert docs.shape == (70, 6) and docs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-6)
    raw = np.asarray(lc.embed_query("text 3"), dtype=np.float32)
    np.testing.assert_allclose(emb.embed_query("text 3"), raw / np.linalg.norm(raw), atol=1e-6)
    np.testing.assert_allclose(docs[3], emb.embed_query("text 3"), atol=1e-6)
    assert emb.embed_documents([]).shape == (0, 6)
    assert "DeterministicFakeEmbedding" in emb.name


def test_a_repeated_query_is_embedded_once():
    """Search and the relevance check of one request embed the same question: the second is a lookup."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    calls: list[str] = []

    class Counting(DeterministicFakeEmbedding):
        def embed_query(self, text: str) -> list[float]:
            calls.append(text)
            return super().embed_query(text)

    emb = as_embedder(Counting(size=6))
    first = emb.embed_query("where is the vault?")
    again = emb.embed_query("where is the vault?")
    assert calls == ["where is the vault?"] and np.array_equal(first, again)
    with pytest.raises(ValueError, match="read-only"):
        again[0] = 1.0  # shared between callers: read-only
    emb._recent.size = 2
    for q in ("a", "b", "c"):
        emb.embed_query(q)
    emb.embed_query("where is the vault?")  # evicted by the three newer ones
    assert calls.count("where is the vault?") == 2


def test_llamaindex_adapter():
    from llama_index.core.embeddings import MockEmbedding

    emb = as_embedder(MockEmbedding(embed_dim=8))
    assert isinstance(emb, LlamaIndexEmbedder) and emb.dim == 8
    out = emb.embed_documents(["a", "b", "c"])
    assert out.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert emb.embed_query("q").shape == (8,)


def test_adapter_checks_foreign_output():
    class Broken:
        def embed_documents(self, texts):
            return [[1.0, 2.0]] * (len(texts) + 1)

        def embed_query(self, text):
            return [float("nan"), 1.0]

    emb = as_embedder(Broken())
    with pytest.raises(ModelError, match="shape"):
        emb.embed_documents(["a"])
    with pytest.raises(ModelError, match="NaN"):
        emb.embed_query("a")
    with pytest.raises(ValidationError, match="cannot use"):
        as_embedder(42)
    with pytest.raises(ValidationError, match="not a single string"):
        emb.embed_documents("abc")


def test_importing_and_wrapping_does_not_import_frameworks():
    """memory.retrieval imports neither LangChain, LlamaIndex nor torch until asked to."""
    code = (
        "import sys, memory.retrieval as r\n"
        "class E:\n"
        "    def embed_documents(self, t): return [[1.0, 0.0] for _ in t]\n"
        "    def embed_query(self, t): return [0.0, 1.0]\n"
        "e = r.as_embedder(E()); e.embed_documents(['x']); r.MiniLMEmbedder().dim\n"
        "heavy = ('langchain_core', 'llama_index', 'torch', 'transformers', 'sentence_transformers')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


@pytest.fixture(scope="module")
def minilm() -> Iterator[MiniLMEmbedder]:
    """The real MiniLM on one torch thread (on a shared CPU, 2 threads were up to 20x slower), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield MiniLMEmbedder()
    finally:
        torch.set_num_threads(before)


FACTS = [
    "The Eiffel Tower is in Paris and was completed in 1889.",
    "Employees get 25 days of paid vacation per year.",
    "The refund window for online orders is 30 days after delivery.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The VPN must be used when connecting from a public network.",
]
QUESTIONS = [
    ("When was the Eiffel Tower finished?", 0),
    ("How many holidays do staff members have?", 1),
    ("Can I return something I bought on the website?", 2),
    ("How do plants make energy from sunlight?", 3),
    ("I'm working from a cafe wifi, what should I do?", 4),
]


@pytest.mark.slow
def test_minilm_ranks_the_matching_fact_first(minilm):
    """With the real model, each question's best hit in a VectorIndex is the fact that answers it."""
    docs = minilm.embed_documents(FACTS)
    assert docs.shape == (5, 384) and docs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    idx = VectorIndex(minilm.dim)
    idx.add([f"f{i}" for i in range(5)], docs, [{"i": i} for i in range(5)], namespace="kb")
    for question, answer in QUESTIONS:
        hits = idx.search(minilm.embed_query(question), k=5, namespace="kb")
        assert hits[0].id == f"f{answer}", (question, hits)
        assert hits[0].score > hits[1].score + 0.05


@pytest.mark.slow
def test_minilm_equals_sentence_transformers(minilm):
    """Plain transformers + mean pooling reproduces sentence-transformers within 1e-4 (incl. truncation)."""
    from sentence_transformers import SentenceTransformer

    from memory.retrieval.embeddings import minilm_model_dir

    texts = [*FACTS, "", "naïve café 日本語 ✓", "token " * 1000]
    st = SentenceTransformer(str(minilm_model_dir()), device="cpu")
    ref = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=4)
    assert np.abs(minilm.embed_documents(texts) - ref).max() < 1e-4
    assert minilm.max_length == st.max_seq_length == 256


@pytest.mark.slow
def test_minilm_truncates_long_text_and_batches_consistently(minilm):
    """Words past the 256-piece limit do not change the vector; batching and order do not either."""
    head = " ".join(f"word{i}" for i in range(600))
    a, b = minilm.embed_documents([head + " apples oranges", head + " completely different ending"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    single = np.stack([minilm.embed_query(t) for t in FACTS])
    np.testing.assert_allclose(MiniLMEmbedder(batch_size=2).embed_documents(FACTS), single, atol=1e-5)
    assert minilm.embed_documents([]).shape == (0, 384)
    with pytest.raises(ValidationError):
        minilm.embed_query(None)  # type: ignore[arg-type]


def test_minilm_missing_model_dir_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"config\.json"):
        MiniLMEmbedder(tmp_path)


def test_ann_params_are_kept():
    idx = VectorIndex(4, ann_params=AnnParams(expansion_search=200))
    assert idx.ann_params.expansion_search == 200
