"""LlamaIndex integration: contract tests of our own (LlamaIndex ships no conformance suite).

Run: ``.venv/bin/python -m pytest tests/test_llamaindex.py -q`` (``-m "not slow"`` skips generation).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from functools import cache

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import MockLLM
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from integrations.llamaindex import (
    DeferredEmbedding,
    ParametricLLM,
    ParametricMemoryBlock,
    ParametricMemoryRetriever,
    ParametricMemoryVectorStore,
    to_memory_filter,
)
from memory import ParametricMemory
from memory.errors import ValidationError


@cache
def _memory(kind: str) -> ParametricMemory:
    """``fake``: hash embeddings (fast, for contract tests); ``minilm``: the real default embedder."""
    home = tempfile.mkdtemp(prefix=f"pmem-li-{kind}-")
    return ParametricMemory(home=home, embedder=DeterministicFakeEmbedding(size=8) if kind == "fake" else None)


@pytest.fixture
def store() -> Iterator[ParametricMemoryVectorStore]:
    s = ParametricMemoryVectorStore(_memory("fake"), namespace=f"t-{uuid.uuid4().hex[:12]}")
    try:
        yield s
    finally:
        s.clear()


def _node(node_id: str, text: str, ref: str, **metadata: object) -> TextNode:
    node = TextNode(id_=node_id, text=text, metadata=dict(metadata))
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref)
    return node


def _nodes() -> list[TextNode]:
    return [
        _node("n1", "Refunds are accepted within 30 days.", "policy", team="sales", year=2024, tags=["money", "legal"]),
        _node("n2", "Refund requests need the receipt.", "policy", team="sales", year=2025, tags=["money"]),
        _node("n3", "Laptops are replaced every 3 years.", "it-handbook", team="it", year=2022, tags=["hardware"]),
    ]


# ============================================================================ vector store contract
def test_is_a_llamaindex_vector_store(store: ParametricMemoryVectorStore) -> None:
    assert BasePydanticVectorStore.__name__ in [c.__name__ for c in type(store).__mro__]
    assert store.stores_text and not store.is_embedding_query
    assert store.client is store.memory


def test_add_get_roundtrip_keeps_text_metadata_and_source(store: ParametricMemoryVectorStore) -> None:
    assert store.add(_nodes()) == ["n1", "n2", "n3"]
    got = {n.node_id: n for n in store.get_nodes(["n1", "n3", "missing", "bad id with spaces"])}
    assert set(got) == {"n1", "n3"}
    assert got["n1"].get_content() == "Refunds are accepted within 30 days."
    assert got["n1"].metadata == {"team": "sales", "year": 2024, "tags": ["money", "legal"]}
    assert got["n1"].ref_doc_id == "policy"
    # re-adding an id replaces the node (a new version of the memory document), never duplicates it
    store.add([_node("n1", "Refunds are accepted within 60 days.", "policy", team="sales", year=2026)])
    (n1,) = store.get_nodes(["n1"])
    assert n1.get_content() == "Refunds are accepted within 60 days." and n1.metadata["year"] == 2026
    assert len(store.get_nodes()) == 3


def test_query_top_k_scores_and_ids(store: ParametricMemoryVectorStore) -> None:
    store.add(_nodes())
    res = store.query(VectorStoreQuery(query_str="refund", similarity_top_k=2))
    assert len(res.nodes) == len(res.ids) == len(res.similarities) == 2
    assert [n.node_id for n in res.nodes] == res.ids
    assert res.similarities == sorted(res.similarities, reverse=True)
    assert len(store.query(VectorStoreQuery(query_str="refund", similarity_top_k=10)).nodes) == 3
    with pytest.raises(ValidationError, match="query_str"):
        store.query(VectorStoreQuery(query_embedding=[0.1] * 8, similarity_top_k=1))


@pytest.mark.parametrize(
    "filters, expected",
    [
        (MetadataFilters(filters=[MetadataFilter(key="team", value="sales")]), {"n1", "n2"}),
        (MetadataFilters(filters=[MetadataFilter(key="year", value=2024, operator=FilterOperator.GTE)]), {"n1", "n2"}),
        (MetadataFilters(filters=[MetadataFilter(key="year", value=2024, operator=FilterOperator.LT)]), {"n3"}),
        (MetadataFilters(filters=[MetadataFilter(key="team", value="it", operator=FilterOperator.NE)]), {"n1", "n2"}),
        (
            MetadataFilters(filters=[MetadataFilter(key="year", value=[2022, 2025], operator=FilterOperator.IN)]),
            {"n2", "n3"},
        ),
        (
            MetadataFilters(filters=[MetadataFilter(key="year", value=[2022], operator=FilterOperator.NIN)]),
            {"n1", "n2"},
        ),
        (
            MetadataFilters(filters=[MetadataFilter(key="tags", value="legal", operator=FilterOperator.CONTAINS)]),
            {"n1"},
        ),
        (
            MetadataFilters(
                filters=[MetadataFilter(key="tags", value=["legal", "hardware"], operator=FilterOperator.ANY)]
            ),
            {"n1", "n3"},
        ),
        (
            MetadataFilters(
                filters=[MetadataFilter(key="tags", value=["money", "legal"], operator=FilterOperator.ALL)]
            ),
            {"n1"},
        ),
        (
            MetadataFilters(filters=[MetadataFilter(key="owner", value=None, operator=FilterOperator.IS_EMPTY)]),
            {"n1", "n2", "n3"},
        ),
        (
            MetadataFilters(
                filters=[MetadataFilter(key="team", value="it"), MetadataFilter(key="year", value=2025)],
                condition=FilterCondition.OR,
            ),
            {"n2", "n3"},
        ),
        (
            MetadataFilters(filters=[MetadataFilter(key="team", value="it")], condition=FilterCondition.NOT),
            {"n1", "n2"},
        ),
        (
            MetadataFilters(
                filters=[
                    MetadataFilter(key="team", value="sales"),
                    MetadataFilters(
                        filters=[MetadataFilter(key="year", value=2024), MetadataFilter(key="year", value=2022)],
                        condition=FilterCondition.OR,
                    ),
                ]
            ),
            {"n1"},
        ),
        ({"year": {"$gt": 2023}}, {"n1", "n2"}),
    ],
)
def test_query_filters(store: ParametricMemoryVectorStore, filters: object, expected: set[str]) -> None:
    store.add(_nodes())
    query = VectorStoreQuery(query_str="policy", similarity_top_k=10, filters=filters)  # type: ignore[arg-type]
    res = store.query(query)
    assert set(res.ids or []) == expected
    assert {n.node_id for n in store.get_nodes(filters=filters)} == expected  # type: ignore[arg-type]


def test_query_doc_ids_and_node_ids(store: ParametricMemoryVectorStore) -> None:
    store.add(_nodes())
    assert set(store.query(VectorStoreQuery(query_str="x", similarity_top_k=10, doc_ids=["it-handbook"])).ids) == {"n3"}
    assert set(store.query(VectorStoreQuery(query_str="x", similarity_top_k=10, node_ids=["n1", "n3"])).ids) == {
        "n1",
        "n3",
    }


@pytest.mark.parametrize(
    "filters, words",
    [
        (
            MetadataFilters(filters=[MetadataFilter(key="team", value="sal", operator=FilterOperator.TEXT_MATCH)]),
            "not supported",
        ),
        (
            MetadataFilters(filters=[MetadataFilter(key="tags", value="x", operator=FilterOperator.ANY)]),
            "non-empty list",
        ),
        (MetadataFilters(filters=[MetadataFilter(key="namespace", value="other")]), "namespace"),
        ({"year": {"$between": [1, 2]}}, "unknown operator"),
    ],
)
def test_malformed_filter_is_a_clear_error(store: ParametricMemoryVectorStore, filters: object, words: str) -> None:
    store.add(_nodes())
    with pytest.raises(ValidationError, match=words):
        store.query(VectorStoreQuery(query_str="x", similarity_top_k=3, filters=filters))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=words):
        ParametricMemoryRetriever(store.memory, namespace=store.namespace, filters=filters)  # type: ignore[arg-type]


def test_delete_by_ref_doc_nodes_and_clear(store: ParametricMemoryVectorStore) -> None:
    store.add(_nodes())
    store.delete("policy")
    assert [n.node_id for n in store.get_nodes()] == ["n3"]
    store.delete("policy")  # nothing left to delete: no error
    store.add(_nodes())
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="year", value=2025)]))
    assert {n.node_id for n in store.get_nodes()} == {"n1", "n3"}
    store.delete_nodes(["n1", "missing"])
    assert {n.node_id for n in store.get_nodes()} == {"n3"}
    store.clear()
    assert store.get_nodes() == []


def test_namespaces_are_isolated() -> None:
    mem = _memory("fake")
    a = ParametricMemoryVectorStore(mem, namespace=f"a-{uuid.uuid4().hex[:8]}")
    b = ParametricMemoryVectorStore(mem, namespace=f"b-{uuid.uuid4().hex[:8]}")
    try:
        a.add(_nodes())
        b.add([_node("secret", "The vault code is 7342.", "vault", team="sales")])
        everything = MetadataFilters(filters=[MetadataFilter(key="team", value="nobody", operator=FilterOperator.NE)])
        assert set(a.query(VectorStoreQuery(query_str="vault code", similarity_top_k=10, filters=everything)).ids) == {
            "n1",
            "n2",
            "n3",
        }
        assert a.get_nodes(["secret"]) == []
        assert (
            set(a.query(VectorStoreQuery(query_str="vault", similarity_top_k=10, node_ids=["secret"])).ids or [])
            == set()
        )
        a.delete("vault")
        a.delete_nodes(["secret"])
        assert [n.node_id for n in b.get_nodes()] == ["secret"]
        r = ParametricMemoryRetriever(mem, namespace=a.namespace, mode="retrieval", similarity_top_k=10)
        assert {n.node.metadata["document_id"] for n in r.retrieve("vault code")} == {"n1", "n2", "n3"}
    finally:
        a.clear()
        b.clear()


def test_vector_store_index_end_to_end() -> None:
    """``VectorStoreIndex`` inserts documents, retrieves with filters, deletes by source document."""
    store = ParametricMemoryVectorStore(_memory("minilm"), namespace=f"e2e-{uuid.uuid4().hex[:8]}")
    try:
        index = VectorStoreIndex.from_documents(
            [
                Document(text="Turtles can live for over 150 years.", doc_id="turtles", metadata={"topic": "animals"}),
                Document(text="The office vault code is 7342.", doc_id="vault", metadata={"topic": "security"}),
                Document(text="Paris is the capital of France.", doc_id="paris", metadata={"topic": "geography"}),
            ],
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=DeferredEmbedding(),
        )
        hits = index.as_retriever(similarity_top_k=1).retrieve("How old can a turtle get?")
        assert hits[0].node.ref_doc_id == "turtles" and "150 years" in hits[0].node.get_content()
        geo = index.as_retriever(
            similarity_top_k=3, filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="geography")])
        ).retrieve("turtles")
        assert [h.node.ref_doc_id for h in geo] == ["paris"]
        # a second index over the same store (from_vector_store) sees the same nodes
        again = store.as_index().as_retriever(similarity_top_k=1).retrieve("What is the vault code?")
        assert again[0].node.ref_doc_id == "vault"
        answer = index.as_query_engine(llm=MockLLM(max_tokens=4), similarity_top_k=1).query("vault code?")
        assert answer.source_nodes and answer.source_nodes[0].node.ref_doc_id == "vault"
        index.delete_ref_doc("vault")
        assert all(
            h.node.ref_doc_id != "vault"
            for h in index.as_retriever(similarity_top_k=3).retrieve("What is the vault code?")
        )
    finally:
        store.clear()


# ============================================================================ retriever, LLM, memory block
def test_retriever_retrieval_mode_reports_mode_and_reason(store: ParametricMemoryVectorStore) -> None:
    store.add(_nodes())
    r = ParametricMemoryRetriever(
        store.memory,
        namespace=store.namespace,
        mode="retrieval",
        similarity_top_k=2,
        filters=MetadataFilters(filters=[MetadataFilter(key="team", value="sales")]),
    )
    got = r.retrieve("refund")
    assert {n.node.metadata["document_id"] for n in got} == {"n1", "n2"}
    assert all(n.node.metadata["mode"] == "retrieval" and n.node.metadata["reason"] for n in got)
    assert "_node_content" not in got[0].node.metadata
    from llama_index.core.schema import MetadataMode

    assert "reason" not in got[0].node.get_content(metadata_mode=MetadataMode.LLM)  # provenance stays out of prompts
    assert asyncio.run(r.aretrieve("refund"))[0].node.metadata["mode"] == "retrieval"
    with pytest.raises(ValidationError, match="mode must be one of"):
        ParametricMemoryRetriever(store.memory, mode="psychic")


def test_filter_translation() -> None:
    f = MetadataFilters(
        filters=[MetadataFilter(key="a", value=1), MetadataFilter(key="b", value=[1, 2], operator=FilterOperator.IN)],
        condition=FilterCondition.OR,
    )
    assert to_memory_filter(f) == {"$or": [{"a": {"$eq": 1}}, {"b": {"$in": [1, 2]}}]}
    assert to_memory_filter(None) is None
    with pytest.raises(ValidationError, match="MetadataFilters or a dict"):
        to_memory_filter("a == 1")  # type: ignore[arg-type]


def test_llm_metadata_without_loading_the_model() -> None:
    llm = ParametricLLM(max_new_tokens=12, context_window=4096)
    meta = llm.metadata
    assert (meta.num_output, meta.context_window, meta.is_chat_model) == (12, 4096, True)
    assert meta.model_name == "smollm2-135m-instruct"
    with pytest.raises(ValueError, match="need memory"):  # pydantic wraps our ValidationError
        ParametricLLM(document_ids=["a"])


def test_memory_block_stores_flushed_conversation(store: ParametricMemoryVectorStore) -> None:
    block = ParametricMemoryBlock(memory=store.memory, namespace=store.namespace)
    msgs = [
        ChatMessage(role=MessageRole.USER, content="My locker number is 42."),
        ChatMessage(role=MessageRole.ASSISTANT, content="Noted: locker 42."),
    ]
    asyncio.run(block.aput(msgs, from_short_term_memory=True, session_id="s1"))
    (doc,) = [d for d in store.memory.list(namespace=store.namespace) if d.metadata.get("kind") == "conversation"]
    assert doc.metadata["session_id"] == "s1"
    text = store.memory.get(doc.id, namespace=store.namespace, with_text=True).text
    assert text == "user: My locker number is 42.\nassistant: Noted: locker 42."
    asyncio.run(block.aput(msgs))  # the same conversation again: the same document, unchanged
    assert len(store.memory.list(namespace=store.namespace)) == 1
    assert asyncio.run(block.aget([])) == ""  # nothing asked yet: nothing to recall
    with pytest.raises(ValueError, match="mode"):
        ParametricMemoryBlock(memory=store.memory, mode="psychic")


@pytest.fixture(scope="module")
def model_home(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("li-model-home"))


@pytest.mark.slow
def test_llm_complete_stream_and_chat(model_home: str, monkeypatch) -> None:
    monkeypatch.setenv("PMEM_HOME", model_home)
    llm = ParametricLLM(max_new_tokens=6)
    done = llm.complete("What is the capital of France?")
    assert done.text and done.additional_kwargs["completion_tokens"] <= 6
    pieces = list(llm.stream_complete("What is the capital of France?"))
    assert pieces[-1].text == done.text  # greedy: streaming yields the same completion
    assert "".join(p.delta or "" for p in pieces) == done.text
    chat = llm.chat(
        [
            ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
            ChatMessage(role=MessageRole.USER, content="What is the capital of France?"),
        ]
    )
    assert chat.message.role == MessageRole.ASSISTANT and chat.message.content


def test_memory_block_in_agent_memory_receives_flushed_messages() -> None:
    """Inside ``Memory``, messages pushed out of the short-term window become conversation documents."""
    from llama_index.core.memory import Memory

    ns = f"agent-{uuid.uuid4().hex[:8]}"
    block = ParametricMemoryBlock(memory=_memory("fake"), namespace=ns)
    chat_memory = Memory.from_defaults(
        session_id="s1", token_limit=60, chat_history_token_ratio=0.5, token_flush_size=20, memory_blocks=[block]
    )
    for i in range(6):
        chat_memory.put(ChatMessage(role=MessageRole.USER, content=f"Fact {i}: my locker is {40 + i}."))
        chat_memory.put(ChatMessage(role=MessageRole.ASSISTANT, content=f"Noted fact {i}."))
    docs = _memory("fake").list(namespace=ns)
    assert docs and all(d.metadata == {"kind": "conversation", "session_id": "s1"} for d in docs)
    stored = "\n".join(_memory("fake").get(d.id, namespace=ns, with_text=True).text or "" for d in docs)
    assert "user: Fact 0: my locker is 40." in stored  # the oldest messages were flushed first


@pytest.mark.slow
def test_memory_block_recalls_into_the_agent_prompt(model_home: str, monkeypatch) -> None:
    from llama_index.core.memory import Memory

    monkeypatch.setenv("PMEM_HOME", model_home)
    mem = ParametricMemory(home=model_home)
    mem.add("The office vault code is 7342.", document_id="vault", namespace="agent")
    block = ParametricMemoryBlock(memory=mem, namespace="agent", mode="retrieval", max_new_tokens=12)
    chat_memory = Memory.from_defaults(session_id="s1", memory_blocks=[block])
    chat_memory.put(ChatMessage(role=MessageRole.USER, content="What is the office vault code?"))
    messages = chat_memory.get()
    system = next(m for m in messages if m.role == MessageRole.SYSTEM)
    assert "parametric_memory" in system.content
    assert "(mode: retrieval; reason: mode retrieval requested)" in system.content


# ---------------------------------------------------------------------------- one filter semantics (issue 14.7)
_NOT_KEEP = MetadataFilters(filters=[MetadataFilter(key="document_id", value="keep", operator=FilterOperator.NE)])


def _keep_and_others(store: ParametricMemoryVectorStore) -> None:
    store.add(
        [
            _node("keep", "Refunds are accepted within 30 days.", "policy", team="sales"),
            _node("drop1", "Refund requests need the receipt.", "policy", team="sales"),
            _node("drop2", "Laptops are replaced every 3 years.", "it-handbook", team="it"),
        ]
    )


def test_document_id_filter_means_the_same_in_query_get_and_delete(store: ParametricMemoryVectorStore) -> None:
    _keep_and_others(store)
    hits = store.query(VectorStoreQuery(query_str="refunds", similarity_top_k=5, filters=_NOT_KEEP))
    assert set(hits.ids) == {"drop1", "drop2"}
    assert {n.node_id for n in store.get_nodes(filters=_NOT_KEEP)} == {"drop1", "drop2"}
    version_1 = MetadataFilters(filters=[MetadataFilter(key="version", value=1)])
    assert {n.node_id for n in store.get_nodes(node_ids=["keep", "drop1"], filters=version_1)} == {"keep", "drop1"}
    store.delete_nodes(filters=_NOT_KEEP)
    assert [n.node_id for n in store.get_nodes(filters=None)] == ["keep"]


def test_a_broad_filter_selects_by_query_not_by_an_id_list(store: ParametricMemoryVectorStore, monkeypatch) -> None:
    from memory.retrieval import filters

    _keep_and_others(store)
    monkeypatch.setattr(filters, "MAX_IN_LIST", 1)  # any id list built from the 2 matches would now be refused
    retriever = ParametricMemoryRetriever(
        store.memory, namespace=store.namespace, mode="retrieval", filters=_NOT_KEEP, similarity_top_k=5
    )
    assert {n.node.metadata["document_id"] for n in retriever.retrieve("refunds")} == {"drop1", "drop2"}
    store.delete_nodes(filters=_NOT_KEEP)
    assert [n.node_id for n in store.get_nodes()] == ["keep"]


@pytest.mark.slow
def test_parametric_path_filter_excludes_documents(store: ParametricMemoryVectorStore, monkeypatch) -> None:
    """The hybrid/parametric path searches and picks adapters through the same filter (no id list)."""
    from memory.retrieval import filters

    _keep_and_others(store)
    monkeypatch.setattr(filters, "MAX_IN_LIST", 1)
    retriever = ParametricMemoryRetriever(
        store.memory, namespace=store.namespace, mode="hybrid", filters=_NOT_KEEP, similarity_top_k=3
    )
    nodes = retriever.retrieve("How long are refunds accepted?")
    chunk_docs = {n.node.metadata["document_id"] for n in nodes if "document_id" in n.node.metadata}
    assert chunk_docs and "keep" not in chunk_docs
