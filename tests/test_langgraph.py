"""LangGraph store: the BaseStore contract (modelled on LangGraph's own store tests, which its packages do not
ship), checked against LangGraph's reference ``InMemoryStore``, on SQLite and PostgreSQL; namespace mapping
safety; a store behind a real server; internalizing a namespace into an adapter (slow).

Run: ``.venv/bin/python -m pytest tests/test_langgraph.py -q`` (``-m "not slow"`` skips the adapter test).
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest
from _embedders import BagOfWords
from langgraph.store.base import GetOp, InvalidNamespaceError, ListNamespacesOp, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore

from integrations.langgraph import (
    ParametricMemoryStore,
    decode_label,
    encode_label,
    item_document_id,
    parse_document_id,
)
from memory.errors import ValidationError
from memory.services.records import validate_document_id

FIELDS = {"fields": ["text"]}  # BagOfWords splits on spaces: embed the text field, not the JSON around it


@pytest.fixture
def store(mem) -> ParametricMemoryStore:
    """A store on the SQLite or PostgreSQL memory of ``mem``, embedding with a bag of words."""
    mem.embedder = BagOfWords()
    return ParametricMemoryStore(mem, namespace="agent", index=FIELDS)


# ============================================================================ namespace mapping
@pytest.mark.parametrize(
    "label", ["users", "a/b", "..", ".", "a_b", "100%", "=", "=41", "café", "emoji 🙂", "*", "", "x" * 60, "a\nb"]
)
def test_labels_round_trip_into_valid_ids(label: str) -> None:
    segment = encode_label(label)
    assert decode_label(segment) == label
    assert "/" not in segment and "." not in segment and "%" not in segment and segment
    doc_id = item_document_id(("ns", "x"), label)
    validate_document_id(doc_id)  # a document id the memory accepts
    assert parse_document_id(doc_id) == (("ns", "x"), label)


def test_random_namespaces_round_trip() -> None:
    rng = random.Random(7)
    alphabet = "ab/._%=*-\\ é🙂\t"
    for _ in range(300):
        ns = tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4)))
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        assert parse_document_id(item_document_id(ns, key)) == (ns, key)


def test_too_long_an_id_is_a_clear_error(store: ParametricMemoryStore) -> None:
    with pytest.raises(ValidationError, match="over 255"):
        store.put(("users",), "é" * 100, {"text": "x"})
    assert store.list_namespaces() == []


def test_labels_never_leak_into_other_namespaces(store: ParametricMemoryStore) -> None:
    """Separators, wildcards of LIKE (_ %) and look-alike prefixes stay in their own namespace."""
    spots = [("a_b",), ("aXb",), ("a",), ("ab",), ("a/b",), ("a", "b"), ("a%",), ("a-b",)]
    for i, ns in enumerate(spots):
        store.put(ns, "k", {"text": f"item {i}", "i": i})
    for i, ns in enumerate(spots):
        got = store.search(ns)
        expected = sorted(j for j, other in enumerate(spots) if other[: len(ns)] == ns)
        assert sorted(item.value["i"] for item in got) == expected, ns
        assert store.get(ns, "k").value["i"] == i
    assert store.search(("a_b",), query="item") and {i.namespace for i in store.search(("a_b",), query="item")} == {
        ("a_b",)
    }
    assert sorted(store.list_namespaces(prefix=("a",))) == [("a",), ("a", "b")]
    assert store.list_namespaces(prefix=("a%",)) == [("a%",)]


def test_invalid_namespaces_are_refused(store: ParametricMemoryStore) -> None:
    for bad in [(), ("the", "thing.about"), ("some", "fun", ""), ("langgraph", "foo")]:
        with pytest.raises(InvalidNamespaceError):
            store.put(bad, "foo", {"a": 1})
    with pytest.raises(InvalidNamespaceError):  # ops given straight to batch are checked too
        store.batch([PutOp(("a.b",), "k", {"a": 1})])
    store.batch([PutOp(("langgraph", "foo"), "bar", {"a": 1})])  # as LangGraph allows past the public API
    assert store.get(("langgraph", "foo"), "bar").value == {"a": 1}
    assert store.list_namespaces() == [("langgraph", "foo")]


# ============================================================================ put / get / delete
def test_put_get_update_delete(store: ParametricMemoryStore) -> None:
    value = {"text": "Ada likes green tea", "nested": {"list": [1, 2.5, None, True], "ü": "✓"}}
    store.put(("users", "ada"), "prefs", value)
    item = store.get(("users", "ada"), "prefs")
    assert item is not None and item.value == value and item.key == "prefs" and item.namespace == ("users", "ada")
    assert item.created_at.tzinfo is not None and item.created_at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - item.updated_at).total_seconds()) < 60

    store.put(("users", "ada"), "prefs", {"text": "Ada likes black coffee"})
    updated = store.get(("users", "ada"), "prefs")
    assert updated.value == {"text": "Ada likes black coffee"}
    assert updated.created_at == item.created_at and updated.updated_at >= item.updated_at
    history = store.memory.history(item_document_id(("users", "ada"), "prefs"), namespace="agent")
    assert [v.number for v in history] == [1, 2]  # the old value is a version, not lost

    assert store.get(("users", "ada"), "other") is None
    assert store.get(("users",), "prefs") is None
    store.delete(("users", "ada"), "prefs")
    assert store.get(("users", "ada"), "prefs") is None
    store.delete(("users", "ada"), "prefs")  # deleting a missing item is silent


def test_unstorable_values_are_clear_errors_and_write_nothing(store: ParametricMemoryStore) -> None:
    for bad in [{"x": float("nan")}, {"x": {1, 2}}, {1: "int key"}]:
        with pytest.raises(ValidationError):
            store.put(("users",), "bad", bad)
    assert store.get(("users",), "bad") is None
    with pytest.raises(ValidationError):  # one bad value in a batch: none of its items is written
        store.batch([PutOp(("users",), "good", {"a": 1}), PutOp(("users",), "bad", {"x": float("inf")})])
    assert store.get(("users",), "good") is None
    with pytest.raises(NotImplementedError):
        store.put(("users",), "t", {"a": 1}, ttl=5)


def test_batch_reads_see_the_state_before_its_writes(store: ParametricMemoryStore) -> None:
    store.put(("b",), "k", {"v": 0})
    results = store.batch(
        [
            PutOp(("b",), "k", {"v": 1}),
            GetOp(("b",), "k"),
            PutOp(("b",), "k", {"v": 2}),
            SearchOp(("b",)),
            ListNamespacesOp(),
            PutOp(("b",), "gone", {"v": 3}),
            PutOp(("b",), "gone", None),
        ]
    )
    assert results[1].value == {"v": 0}
    assert [i.value for i in results[3]] == [{"v": 0}]
    assert results[4] == [("b",)]
    assert store.get(("b",), "k").value == {"v": 2}  # the last put of an item wins
    assert store.get(("b",), "gone") is None
    assert [r for i, r in enumerate(results) if i not in (1, 3, 4)] == [None] * 4


async def test_async_api(store: ParametricMemoryStore) -> None:
    await asyncio.gather(*(store.aput(("as", str(i)), "k", {"text": f"number {i}"}) for i in range(5)))
    assert (await store.aget(("as", "3"), "k")).value == {"text": "number 3"}
    hits = await store.asearch(("as",), query="number 3")
    assert hits[0].namespace == ("as", "3")
    assert await store.alist_namespaces(prefix=("as",), max_depth=1) == [("as",)]
    await store.adelete(("as", "3"), "k")
    assert await store.aget(("as", "3"), "k") is None


# ============================================================================ search
DOCS = [
    ("doc1", {"text": "red apple", "color": "red", "score": 4.5}),
    ("doc2", {"text": "red car", "color": "red", "score": 3.0}),
    ("doc3", {"text": "green apple", "color": "green", "score": 4.0}),
    ("doc4", {"text": "blue car", "color": "blue", "score": 3.5}),
]


def test_vector_search_with_filters(store: ParametricMemoryStore) -> None:
    for key, value in DOCS:
        store.put(("test",), key, value)
    results = store.search(("test",), query="apple", filter={"color": "red"})
    assert [r.key for r in results] == ["doc1", "doc2"]
    assert results[0].score > results[1].score
    assert [r.key for r in store.search(("test",), query="car", filter={"color": "red"})] == ["doc2", "doc1"]
    results = store.search(("test",), query="blue", filter={"score": {"$gt": 3.2}})
    assert len(results) == 3 and results[0].key == "doc4"
    results = store.search(("test",), query="apple", filter={"score": {"$gte": 4.0}, "color": "green"})
    assert [r.key for r in results] == ["doc3"]
    assert [r.key for r in store.search(("test",), filter={"score": {"$lt": 3.5}})] == ["doc2"]
    assert [r.key for r in store.search(("test",), filter={"score": {"$lte": 3.5}})] == ["doc2", "doc4"]
    assert [r.key for r in store.search(("test",), filter={"color": {"$ne": "red"}})] == ["doc3", "doc4"]
    assert [r.key for r in store.search(("test",), filter={"color": {"$eq": "blue"}})] == ["doc4"]
    assert store.search(("test",), filter={"color": "purple"}) == []
    assert all(isinstance(r.score, float) for r in store.search(("test",), query="apple"))
    assert all(r.score is None for r in store.search(("test",)))
    with pytest.raises(ValueError, match="unsupported operator"):
        store.search(("test",), filter={"score": {"$regex": "x"}})


def test_long_string_fields_filter_exactly(store: ParametricMemoryStore) -> None:
    """A string field too long to push down to the database is still filtered, after the search."""
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    store.put(("l",), "one", {"text": "alpha", "body": long_a})
    store.put(("l",), "two", {"text": "alpha", "body": long_b})
    assert [i.key for i in store.search(("l",), filter={"body": long_a})] == ["one"]
    assert [i.key for i in store.search(("l",), query="alpha", filter={"body": {"$ne": long_a}})] == ["two"]
    assert "lg.v.body" not in store.memory.get(item_document_id(("l",), "one"), namespace="agent").metadata


def test_nested_and_list_filters(store: ParametricMemoryStore) -> None:
    store.put(("n",), "a", {"meta": {"lang": "en", "tags": ["x", "y"]}, "flag": True, "n": 1})
    store.put(("n",), "b", {"meta": {"lang": "fr", "tags": ["x"]}, "flag": False, "n": 2})
    assert [i.key for i in store.search(("n",), filter={"meta": {"lang": "en"}})] == ["a"]
    assert [i.key for i in store.search(("n",), filter={"meta": {"tags": ["x"]}})] == ["b"]
    assert [i.key for i in store.search(("n",), filter={"flag": True})] == ["a"]
    assert store.search(("n",), filter={"n": True}) == []  # JSON equality: a bool is not a number
    assert [i.key for i in store.search(("n",), filter={"n": 2.0})] == ["b"]


def test_search_pagination(store: ParametricMemoryStore) -> None:
    for i in range(7):
        store.put(("p",), f"doc{i}", {"text": f"test document number {i}" + " test" * i})
    page1 = store.search(("p",), query="test", limit=3)
    page2 = store.search(("p",), query="test", limit=3, offset=3)
    everything = store.search(("p",), query="test", limit=10)
    assert [i.key for i in everything] == [i.key for i in page1 + page2] + [everything[-1].key]
    assert len(everything) == 7 and len({i.key for i in everything}) == 7
    assert [i.score for i in everything] == sorted((i.score for i in everything), reverse=True)
    plain = store.search(("p",), limit=4, offset=2)
    assert [i.key for i in plain] == ["doc2", "doc3", "doc4", "doc5"]  # without a query: key order
    assert store.search(("p",), query="test", limit=0) == []
    with pytest.raises(ValueError, match="limit and offset"):
        store.search(("p",), limit=-1)


def test_index_fields_and_index_false(store: ParametricMemoryStore) -> None:
    store.put(("i",), "title", {"title": "zebra stripes", "text": "nothing here"}, index=["title"])
    store.put(("i",), "body", {"title": "plain", "text": "zebra zebra zebra"})
    store.put(("i",), "hidden", {"text": "zebra zebra zebra zebra"}, index=False)
    hits = store.search(("i",), query="zebra", limit=2)
    assert {h.key for h in hits} == {"title", "body"} and all(h.score > 0 for h in hits)
    assert "hidden" not in {h.key for h in hits}  # not indexed: never ranked
    everything = store.search(("i",), query="zebra", limit=10)
    assert everything[-1].key == "hidden" and everything[-1].score is None  # it follows, unscored
    assert store.get(("i",), "hidden").value == {"text": "zebra zebra zebra zebra"}
    nested = {"chapters": [{"content": "penguins"}, {"content": "walruses"}]}
    store.put(("i",), "book", nested, index=["chapters[*].content"])
    assert store.search(("i",), query="walruses", limit=1)[0].key == "book"


def test_update_reindexes(store: ParametricMemoryStore) -> None:
    store.put(("u",), "doc1", {"text": "zany zebra Xerxes"})
    store.put(("u",), "doc2", {"text": "something about dogs"})
    before = store.search(("u",), query="zany Xerxes")[0]
    assert before.key == "doc1"
    store.put(("u",), "doc1", {"text": "new text about dogs"})
    after = next(i for i in store.search(("u",), query="zany Xerxes") if i.key == "doc1")
    assert after.score < before.score


# ============================================================================ list_namespaces
NAMESPACES = [
    ("a", "b", "c"),
    ("a", "b", "d", "e"),
    ("a", "b", "d", "i"),
    ("a", "b", "f"),
    ("a", "c", "f"),
    ("b", "a", "f"),
    ("users", "123"),
    ("users", "456", "settings"),
    ("admin", "users", "789"),
]


def test_list_namespaces(store: ParametricMemoryStore) -> None:
    assert store.list_namespaces() == []
    for i, ns in enumerate(NAMESPACES):
        store.put(ns, f"id_{i}", {"data": f"value_{i:02d}"})
    ls = store.list_namespaces
    assert ls(prefix=("a", "b")) == [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f")]
    assert ls(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert ls(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert ls(prefix=("a", "b"), max_depth=3) == [("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]
    assert ls(prefix=("a", "b"), limit=2) == [("a", "b", "c"), ("a", "b", "d", "e")]
    assert ls(prefix=("a", "b"), offset=2) == [("a", "b", "d", "i"), ("a", "b", "f")]
    assert ls(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert ls(suffix=("*", "f")) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert ls(prefix=("users", "*")) == [("users", "123"), ("users", "456", "settings")]
    assert ls(prefix=("*", "users"), suffix=("*", "settings")) == []
    assert ls(prefix=("nonexistent",)) == []
    assert ls(prefix=("users", "123")) == [("users", "123")]
    assert ls(max_depth=2) == [
        ("a", "b"),
        ("a", "c"),
        ("admin", "users"),
        ("b", "a"),
        ("users", "123"),
        ("users", "456"),
    ]
    assert ls() == sorted(NAMESPACES)


# ============================================================================ against LangGraph's reference store
def test_same_answers_as_langgraphs_in_memory_store(store: ParametricMemoryStore) -> None:
    """A random run of puts, deletes, gets, filtered searches and listings gives what InMemoryStore gives."""
    ref = InMemoryStore()
    rng = random.Random(11)
    spaces = [("u", "1"), ("u", "2"), ("u", "2", "x"), ("v",), ("u_", "1")]
    keys = ["a", "b", "c/d", "é"]
    for step in range(60):
        ns, key = rng.choice(spaces), rng.choice(keys)
        if rng.random() < 0.2:
            ops = [PutOp(ns, key, None)]
        else:
            ops = [PutOp(ns, key, {"n": rng.randint(0, 5), "color": rng.choice(["red", "blue"]), "step": step})]
        for s in (store, ref):
            s.batch(ops)
        if step % 6 == 5:
            prefix = rng.choice([(), ("u",), ("u", "2"), ("v",), ("u_",)])
            flt = rng.choice([None, {"color": "red"}, {"n": {"$gte": 3}}, {"n": {"$ne": 2}, "color": "blue"}])
            ours = store.search(prefix, filter=flt, limit=100)
            theirs = ref.search(prefix, filter=flt, limit=100)
            assert sorted((i.namespace, i.key, str(i.value)) for i in ours) == sorted(
                (i.namespace, i.key, str(i.value)) for i in theirs
            )
            # (InMemoryStore also lists namespaces whose items are all deleted; PostgresStore and this store
            # list the namespaces that hold items)
            held = {i.namespace for i in ref.search((), limit=1000) if i.namespace[: len(prefix)] == prefix}
            assert store.list_namespaces(prefix=prefix or None) == sorted(held)
            for ns2 in spaces:
                for key2 in keys:
                    a, b = store.get(ns2, key2), ref.get(ns2, key2)
                    assert (a.value if a else None) == (b.value if b else None)


# ============================================================================ through the server
@pytest.mark.services
def test_store_through_a_real_server(tmp_path) -> None:
    """RemoteMemory behind `pmem serve`'s app: put, get, filtered and ranked search, list, delete."""
    from _server import ServerProcess, server_env

    from memory.client import RemoteMemory

    env = server_env(tmp_path / "srv", PMEM_TEST_NO_AUTH="1")
    server = ServerProcess(env, tmp_path / "server.log").wait_ready()
    try:
        with RemoteMemory(server.url, namespace="agent") as remote:
            store = ParametricMemoryStore(remote)
            for key, value in DOCS:
                store.put(("test",), key, value)
            store.put(("test", "quiet"), "q", {"text": "red apple"}, index=False)
            assert store.get(("test",), "doc3").value == DOCS[2][1]
            assert [i.key for i in store.search(("test",), filter={"color": "red"})] == ["doc1", "doc2"]
            ranked = store.search(("test",), query="green apple", limit=4)
            # (the server chunks the value JSON, which a bag of words cannot rank; MiniLM can)
            assert {i.key for i in ranked} == {"doc1", "doc2", "doc3", "doc4"}
            assert all(i.score is not None for i in ranked)
            assert "q" not in {i.key for i in ranked}
            assert store.list_namespaces() == [("test",), ("test", "quiet")]
            store.delete(("test",), "doc3")
            assert store.get(("test",), "doc3") is None
            with pytest.raises(ValidationError, match="in-process"):
                store.internalize(("test",), tier="full")
            assert [d.id for d in remote.list(prefix="lgd")] == []  # refused before anything is written
    finally:
        server.stop()


# ============================================================================ a namespace as an adapter
@pytest.mark.slow
def test_internalize_a_namespace_and_answer_from_its_adapter(tmp_path) -> None:
    from memory import ParametricMemory

    mem = ParametricMemory(home=str(tmp_path / "home"), embedder=BagOfWords())
    store = ParametricMemoryStore(mem, namespace="agent", index=FIELDS)
    store.put(("users", "ada"), "drink", {"text": "Ada's favourite drink is green tea."})
    store.put(("users", "bob"), "drink", {"text": "Bob's favourite drink is black coffee."})
    adapter = store.internalize(("users", "ada"))
    assert adapter.status == "ready" and adapter.document_id == store.digest_id(("users", "ada"))
    assert store.internalize(("users", "ada")).id == adapter.id  # the same items: the same adapter
    digest = mem.get(adapter.document_id, namespace="agent", with_text=True).text
    assert "green tea" in digest and "coffee" not in digest  # only that namespace's items
    assert store.list_namespaces() == [("users", "ada"), ("users", "bob")]  # the digest is no item
    answer = store.answer(("users", "ada"), "What is Ada's favourite drink?", max_new_tokens=12)
    assert answer.mode == "parametric" and [a.id for a in answer.adapters] == [adapter.id]
    store.put(("users", "ada"), "drink", {"text": "Ada's favourite drink is now lemonade."})
    newer = store.internalize(("users", "ada"))
    assert newer.id != adapter.id and newer.version == 2


# ============================================================================ the example agent
def test_langgraph_agent_example_remembers_across_threads(tmp_path) -> None:
    """examples/langgraph_agent.py: a fact told in one thread is recalled in another of the same user only."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "langgraph_agent.py"
    spec = importlib.util.spec_from_file_location("examples_langgraph_agent", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(str(tmp_path / "home"))
    assert out["transcript"]["thread-1"] == ["Noted: my favourite tea is jasmine."]
    assert out["transcript"]["thread-2"] == ["You told me: my favourite tea is jasmine."]  # another thread
    assert out["transcript"]["thread-3"] == ["I don't know anything about that yet."]  # another user
    assert out["thread_2_messages"] == 2  # the thread's own messages are checkpointed apart from the store
    assert out["namespaces"] == [("memories", "ada")]
