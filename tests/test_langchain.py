"""LangChain integration: the langchain-tests standard suites, plus namespaces, filters and routing.

Run: ``.venv/bin/python -m pytest tests/test_langchain.py -q`` (``-m "not slow"`` skips the chat-model
integration suite, which generates with the real 135M model).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests

from integrations.langchain import (
    ParametricChatModel,
    ParametricMemoryRetriever,
    ParametricMemoryVectorStore,
    memory_tool,
)
from memory import ParametricMemory
from memory.errors import ValidationError

# langchain-tests' async tests are bare ``async def``: they run under ``asyncio_mode = "auto"`` (pyproject).

FAKE_DIM = 6


@cache
def _memory(kind: str) -> ParametricMemory:
    """One memory per embedding kind for this module (a fresh namespace per test keeps tests apart)."""
    home = tempfile.mkdtemp(prefix=f"pmem-lc-{kind}-")
    return ParametricMemory(home=home, embedder=DeterministicFakeEmbedding(size=FAKE_DIM))


def _fresh_ns() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


# ============================================================================ standard suites
class TestVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self) -> Iterator[ParametricMemoryVectorStore]:
        store = ParametricMemoryVectorStore(_memory("fake"), embedding=self.get_embeddings(), namespace=_fresh_ns())
        try:
            yield store
        finally:
            store.delete()


@cache
def _seeded_memory() -> ParametricMemory:
    mem = _memory("fake")
    for i, text in enumerate(
        [
            "Turtles can live for over 150 years.",
            "The vault code is 7342.",
            "Paris is the capital of France.",
            "Leave is 20 days per year.",
        ]
    ):
        mem.add(text, document_id=f"doc{i}", namespace="retriever-suite", metadata={"i": i})
    return mem


class TestRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[ParametricMemoryRetriever]:
        return ParametricMemoryRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"memory": _seeded_memory(), "namespace": "retriever-suite", "mode": "retrieval"}

    @property
    def retriever_query_example(self) -> str:
        return "How long do turtles live?"


class TestChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ParametricChatModel]:
        return ParametricChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m-instruct"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"PMEM_BASE_MODEL": "/models/my-llama"}, {}, {"model_name": "/models/my-llama"}


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> str:
    """One PMEM home for every model-loading test, so the base model is converted once per session."""
    return str(tmp_path_factory.mktemp("lc-model-home"))


@pytest.mark.slow
class TestChatModelIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _shared_home(self, model_home, monkeypatch) -> None:
        monkeypatch.setenv("PMEM_HOME", model_home)

    @property
    def chat_model_class(self) -> type[ParametricChatModel]:
        return ParametricChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 8}

    # What the model does not support, declared (the suite then skips those tests itself):
    @property
    def has_tool_calling(self) -> bool:
        return False  # a 135M model does not follow tool schemas

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False  # one base model per process in these tests; a per-call model= loads another


# ============================================================================ our own tests
@pytest.fixture
def store() -> Iterator[ParametricMemoryVectorStore]:
    s = ParametricMemoryVectorStore(_memory("fake"), namespace=_fresh_ns())
    try:
        yield s
    finally:
        s.delete()


def _docs() -> list[Document]:
    return [
        Document(page_content="Refunds are accepted within 30 days.", metadata={"team": "sales", "year": 2024}),
        Document(page_content="Laptops are replaced every 3 years.", metadata={"team": "it", "year": 2022}),
        Document(page_content="Expenses need a receipt.", metadata={"team": "finance", "year": 2025}),
    ]


def test_metadata_filter_selects_documents(store: ParametricMemoryVectorStore) -> None:
    """A filter keeps only the documents whose metadata match; scores are similarities in [-1, 1]."""
    store.add_documents(_docs(), ids=["refund", "laptop", "expense"])
    hits = store.similarity_search_with_score("policy", k=3, filter={"year": {"$gte": 2024}})
    assert sorted(d.id for d, _ in hits) == ["expense", "refund"]
    assert all(-1.0 <= s <= 1.0 for _, s in hits)
    only_it = store.similarity_search("policy", k=3, filter={"$or": [{"team": "it"}, {"team": "nobody"}]})
    assert [d.id for d in only_it] == ["laptop"]
    assert only_it[0].metadata == {"team": "it", "year": 2022}
    rel = store.similarity_search_with_relevance_scores("policy", k=3)
    assert all(0.0 <= s <= 1.0 for _, s in rel)


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"year": {"$gtx": 1}}, "unknown operator"),
        ({"namespace": "other"}, "namespace"),
        ({"$or": []}, "non-empty list"),
        ({"team": {"nested": "dict"}}, "equality against a dict"),
        ("team == it", "expected a dict"),
    ],
)
def test_malformed_filter_is_a_clear_error(store: ParametricMemoryVectorStore, bad: Any, words: str) -> None:
    store.add_documents(_docs()[:1], ids=["refund"])
    with pytest.raises(ValidationError, match=words):
        store.similarity_search("refunds", k=1, filter=bad)
    with pytest.raises(Exception, match=words):  # the retriever rejects it at construction
        ParametricMemoryRetriever(memory=store.memory, namespace=store.namespace, filter=bad)


def test_namespaces_are_isolated() -> None:
    """Nothing in one namespace is visible, deletable or filterable from another."""
    mem = _memory("fake")
    a = ParametricMemoryVectorStore(mem, namespace=_fresh_ns())
    b = ParametricMemoryVectorStore(mem, namespace=_fresh_ns())
    try:
        a.add_documents(_docs(), ids=["refund", "laptop", "expense"])
        b.add_texts(["Only B knows the vault code 7342."], metadatas=[{"team": "sales"}], ids=["secret"])
        assert [d.id for d in b.similarity_search("refund vault laptop", k=10)] == ["secret"]
        assert b.get_by_ids(["refund", "laptop"]) == []
        assert a.get_by_ids(["secret"]) == []
        for flt in ({"team": "sales"}, {"document_id": "secret"}, {"$not": {"team": "nobody"}}):
            assert "secret" not in {d.id for d in a.similarity_search("vault code", k=10, filter=flt)}
        with pytest.raises(ValidationError, match="namespace"):
            a.similarity_search("vault", k=10, filter={"_namespace": b.namespace})
        a.delete(["secret"])  # a missing id here: ignored, and B keeps its document
        assert [d.id for d in b.get_by_ids(["secret"])] == ["secret"]
        retriever = ParametricMemoryRetriever(memory=mem, namespace=a.namespace, mode="retrieval", k=10)
        assert {d.metadata["document_id"] for d in retriever.invoke("vault code")} == {"refund", "laptop", "expense"}
        a.delete()
        assert a.similarity_search("refund", k=3) == []
        assert len(b.similarity_search("refund", k=3)) == 1
    finally:
        a.delete()
        b.delete()


def test_upsert_makes_a_new_version_and_keeps_metadata(store: ParametricMemoryVectorStore) -> None:
    store.add_texts(["Refunds within 30 days."], metadatas=[{"v": 1}], ids=["refund"])
    store.add_texts(["Refunds within 60 days."], metadatas=[{"v": 2}], ids=["refund"])
    assert store.get_by_ids(["refund"]) == [
        Document(id="refund", page_content="Refunds within 60 days.", metadata={"v": 2})
    ]
    info = store.memory.get("refund", namespace=store.namespace)
    assert info.version is not None and info.version.number == 2 and info.version_count == 2


def test_from_texts_and_as_retriever(tmp_path) -> None:
    emb = DeterministicFakeEmbedding(size=FAKE_DIM)
    store = ParametricMemoryVectorStore.from_texts(
        ["alpha fact", "beta fact"], emb, metadatas=[{"n": 1}, {"n": 2}], ids=["a", "b"], home=str(tmp_path / "h")
    )
    got = store.as_retriever(search_kwargs={"k": 1, "filter": {"n": 2}}).invoke("fact")
    assert [d.id for d in got] == ["b"]
    with pytest.raises(ValidationError, match="embeds with"):
        ParametricMemoryVectorStore(store.memory, embedding=DeterministicFakeEmbedding(size=FAKE_DIM + 1))


def test_retriever_retrieval_mode_reports_mode_and_reason() -> None:
    retriever = ParametricMemoryRetriever(memory=_seeded_memory(), namespace="retriever-suite", mode="retrieval", k=2)
    docs = retriever.invoke("vault code", filter={"i": {"$in": [1, 2]}})
    assert len(docs) == 2
    assert {d.metadata["document_id"] for d in docs} == {"doc1", "doc2"}
    assert all(d.metadata["mode"] == "retrieval" and d.metadata["reason"] for d in docs)
    with pytest.raises(ValidationError, match="unknown argument"):
        retriever.invoke("x", topk=3)
    with pytest.raises(ValidationError, match="mode must be one of"):
        retriever.invoke("x", mode="psychic")


def test_memory_tool_schema() -> None:
    tool = memory_tool(_seeded_memory(), namespace="retriever-suite")
    assert tool.name == "parametric_memory"
    assert set(tool.args) == {"question"}
    assert "retriever-suite" in tool.description
    with pytest.raises(ValidationError):
        memory_tool(_seeded_memory(), mode="psychic")


def test_chat_messages_render_with_the_chat_template() -> None:
    """Roles map to the chat template; unsupported content is refused with a clear error (no model needed)."""
    from integrations.langchain import _turns

    turns = _turns([SystemMessage("be brief"), HumanMessage([{"type": "text", "text": "hi"}]), AIMessage("hello")])
    assert turns == [("system", "be brief"), ("user", "hi"), ("assistant", "hello")]
    with pytest.raises(ValidationError, match="not supported"):
        _turns([HumanMessage([{"type": "image", "url": "http://x"}])])


def test_unstorable_metadata_is_a_clear_error(store: ParametricMemoryVectorStore) -> None:
    import datetime

    with pytest.raises(ValidationError, match="metadata of text 1 cannot be stored"):
        store.add_texts(
            ["ok", "bad"],
            metadatas=[{"a": 1}, {"when": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)}],
            ids=["x", "y"],
        )
    assert store.get_by_ids(["x", "y"]) == []  # nothing was written
    with pytest.raises(ValidationError, match="got 1 ids for 2 texts"):
        store.add_texts(["a", "b"], ids=["only-one"])


def test_langchain_indexing_api_reindexes_only_changes(store: ParametricMemoryVectorStore) -> None:
    """``langchain_core.indexing.index`` drives the store: unchanged documents are skipped, stale ones deleted."""
    from langchain_core.indexing import InMemoryRecordManager, index

    records = InMemoryRecordManager(namespace=store.namespace)
    records.create_schema()
    docs = [
        Document(page_content="Refunds within 30 days.", metadata={"source": "refund.md"}),
        Document(page_content="Laptops every 3 years.", metadata={"source": "it.md"}),
    ]
    first = index(docs, records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    assert (first["num_added"], first["num_skipped"]) == (2, 0)
    changed = [Document(page_content="Refunds within 60 days.", metadata={"source": "refund.md"}), docs[1]]
    second = index(changed, records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    assert (second["num_added"], second["num_skipped"], second["num_deleted"]) == (1, 1, 1)
    texts = sorted(d.page_content for d in store.similarity_search("policy", k=10))
    assert texts == ["Laptops every 3 years.", "Refunds within 60 days."]


def test_document_id_and_version_filters_mean_what_they_mean_everywhere(
    store: ParametricMemoryVectorStore, monkeypatch
) -> None:
    """Issue 14.7: ``document_id``/``version`` are the document's id and current version on every path."""
    from memory.retrieval import filters

    store.add_documents(_docs(), ids=["keep", "drop1", "drop2"])
    store.add_documents(
        [Document(page_content="Laptops are replaced every 4 years.", metadata={"team": "it"})], ids=["drop1"]
    )  # version 2
    not_keep = {"document_id": {"$ne": "keep"}}
    assert {d.id for d in store.similarity_search("refunds laptops", k=5, filter=not_keep)} == {"drop1", "drop2"}
    assert {d.id for d in store.similarity_search("refunds laptops", k=5, filter={"version": 2})} == {"drop1"}
    assert store.memory.document_ids_matching(not_keep, namespace=store.namespace) == ["drop1", "drop2"]
    monkeypatch.setattr(filters, "MAX_IN_LIST", 1)  # a broad filter is never turned into an id list
    retriever = ParametricMemoryRetriever(
        memory=store.memory, namespace=store.namespace, mode="retrieval", k=5, filter=not_keep
    )
    assert {d.metadata["document_id"] for d in retriever.invoke("refunds laptops")} == {"drop1", "drop2"}
