"""LlamaIndex over :class:`~memory.api.ParametricMemory`: a vector store, a routing retriever, an LLM, a memory block.

- :class:`ParametricMemoryVectorStore` (``BasePydanticVectorStore``): each node is one memory document (id =
  ``node_id``), its text and metadata kept, so ``VectorStoreIndex.from_vector_store`` works end to end
  (insert, query with ``MetadataFilters``, ``delete_ref_doc``). The memory embeds texts and queries with
  its own model (``is_embedding_query = False``): LlamaIndex passes the query text, not a vector.
- :class:`ParametricMemoryRetriever` (``BaseRetriever``): ``retrieval`` / ``parametric`` / ``hybrid`` /
  ``auto``, like the LangChain retriever; every node's metadata says ``mode`` and ``reason``.
- :class:`ParametricLLM` (``CustomLLM``): the base model with the adapters of chosen documents applied
  (complete, stream_complete, chat, stream_chat).
- :class:`ParametricMemoryBlock` (``BaseMemoryBlock[str]``): long-term agent memory for
  ``llama_index.core.memory.Memory``.

>>> store = ParametricMemoryVectorStore(home="/tmp/pmem-li-doc")                         # doctest: +SKIP
>>> index = store.as_index()                                                              # doctest: +SKIP
>>> index.insert(Document(text="Turtles can live for over 150 years.", doc_id="turtles"))   # doctest: +SKIP
>>> index.as_retriever(similarity_top_k=1).retrieve("How old do turtles get?")[0].text      # doctest: +SKIP
'Turtles can live for over 150 years.'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.memory.memory import BaseMemoryBlock
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pydantic import ConfigDict, Field, PrivateAttr

from integrations._common import (
    chat_prompt_ids,
    check_mode,
    document_adapter,
    documents_by_id,
    iter_documents,
    matching_document_ids,
    memory_classes,
    search_documents,
)
from memory.aio import shared_async
from memory.api import ParametricMemory, content_hash, validate_namespace
from memory.config import Settings
from memory.errors import NotFoundError, ValidationError
from memory.retrieval.filters import compile_filter, filter_fields
from memory.types import QueryResult, SearchHit

log = logging.getLogger(__name__)

DEFAULT_K = 4
#: Keys LlamaIndex's own node serialisation adds to the stored metadata (hidden from retrieved chunks).
_NODE_KEYS = ("_node_content", "_node_type", "doc_id", "ref_doc_id")
#: Provenance keys added to retrieved nodes; kept out of the text an LLM or embedder sees.
_PROVENANCE = ("document_id", "version", "chunk_id", "ordinal", "score", "mode", "reason", "adapters", "query_id")


# ============================================================================ filters
def to_memory_filter(filters: MetadataFilters | dict[str, Any] | None) -> dict[str, Any] | None:
    """Translate LlamaIndex ``MetadataFilters`` into the memory's filter language (validated).

    A dict is taken as already written in the memory's language. Operators without an equivalent
    (``text_match``) raise :class:`~memory.errors.ValidationError`.

    >>> to_memory_filter(MetadataFilters(filters=[MetadataFilter(key="year", value=2020, operator=">=")]))
    {'year': {'$gte': 2020}}
    """
    if filters is None:
        return None
    if isinstance(filters, dict):
        compile_filter(filters)
        return filters
    if not isinstance(filters, MetadataFilters):
        raise ValidationError(f"filters must be MetadataFilters or a dict, got {type(filters).__name__}")
    out = _translate(filters)
    compile_filter(out)
    return out


_OPS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.CONTAINS: "$contains",
}


def _translate(filters: MetadataFilters) -> dict[str, Any] | None:
    parts = []
    for f in filters.filters:
        part = _translate(f) if isinstance(f, MetadataFilters) else _translate_one(f)
        if part is not None:
            parts.append(part)
    if not parts:
        return None
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.NOT:  # LlamaIndex: none of the filters match
        return {"$not": parts[0] if len(parts) == 1 else {"$or": parts}}
    if len(parts) == 1:
        return parts[0]
    return {"$and": parts} if condition == FilterCondition.AND else {"$or": parts}


def _translate_one(f: MetadataFilter) -> dict[str, Any]:
    op, key, value = f.operator, f.key, f.value
    if op in _OPS:
        return {key: {_OPS[op]: value}}
    if op == FilterOperator.ANY:
        return {"$or": [{key: {"$contains": v}} for v in _as_list(value, op)]}
    if op == FilterOperator.ALL:
        return {"$and": [{key: {"$contains": v}} for v in _as_list(value, op)]}
    if op == FilterOperator.IS_EMPTY:
        return {"$or": [{key: {"$exists": False}}, {key: None}, {key: ""}]}
    raise ValidationError(
        f"filter operator {op.value!r} on {key!r} is not supported by parametric memory; use ==, !=, >, >=, <, <=, "
        "in, nin, contains, any, all or is_empty"
    )


def _as_list(value: Any, op: FilterOperator) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValidationError(f"filter operator {op.value!r} takes a non-empty list, got {value!r}")
    return value


# ============================================================================ vector store
class DeferredEmbedding(BaseEmbedding):
    """A placeholder embed model for indexes over :class:`ParametricMemoryVectorStore`.

    The store embeds texts itself, with the memory's model, when it indexes them; LlamaIndex's insert path
    still asks the index's embed model for node vectors, which the store would ignore. This model answers
    that call without computing anything (a constant 1-dim vector), so nothing is embedded twice.
    """

    model_name: str = "parametric-memory-deferred"

    @classmethod
    def class_name(cls) -> str:
        return "ParametricMemoryDeferredEmbedding"

    def _get_text_embedding(self, text: str) -> list[float]:
        return [0.0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return [0.0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return [0.0]


class ParametricMemoryVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store whose nodes live in a :class:`ParametricMemory` namespace.

    Args:
        memory (`ParametricMemory`, *optional*): the memory; otherwise one is built from ``memory_kwargs``
            (``home=``, ``database_url=``...) and ``embed_model``.
        namespace (`str`, *optional*): defaults to the memory's namespace.
        embed_model (*optional*): a LlamaIndex embed model (or LangChain embeddings) the new memory searches
            with; default all-MiniLM-L6-v2.
        internalize (`bool`): also turn every added node into an adapter right away.

    ``delete(ref_doc_id)`` removes every node of a source document; ``query`` honours ``similarity_top_k``,
    ``filters`` (``MetadataFilters``), ``doc_ids`` and ``node_ids``; similarities are cosine similarities.

    >>> store = ParametricMemoryVectorStore(mem, namespace="docs")      # doctest: +SKIP
    >>> index = store.as_index()                                        # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stores_text: bool = True
    is_embedding_query: bool = False
    flat_metadata: bool = False
    namespace: str
    internalize: bool = False

    _memory: ParametricMemory = PrivateAttr()

    def __init__(
        self,
        memory: ParametricMemory | None = None,
        *,
        namespace: str | None = None,
        embed_model: Any = None,
        internalize: bool = False,
        **memory_kwargs: Any,
    ) -> None:
        if memory is None:
            memory = ParametricMemory(embedder=embed_model, **memory_kwargs)
        elif not isinstance(memory, memory_classes()):
            raise ValidationError(f"memory must be a ParametricMemory or a RemoteMemory, got {type(memory).__name__}")
        elif memory_kwargs or embed_model is not None:
            raise ValidationError("pass either memory= or the settings (and embed_model) of a new one, not both")
        ns = validate_namespace(namespace if namespace is not None else memory.settings.namespace)
        # pydantic validates against this class's fields (stores_text has a default here); mypy checks the base's
        super().__init__(namespace=ns, internalize=internalize)  # type: ignore[call-arg]
        self._memory = memory

    @classmethod
    def class_name(cls) -> str:
        return "ParametricMemoryVectorStore"

    @property
    def client(self) -> ParametricMemory:
        return self._memory

    @property
    def memory(self) -> ParametricMemory:
        return self._memory

    def as_index(self, **kwargs: Any) -> Any:
        """A ``VectorStoreIndex`` over this store (with :class:`DeferredEmbedding` unless ``embed_model=``)."""
        from llama_index.core import VectorStoreIndex

        kwargs.setdefault("embed_model", DeferredEmbedding())
        return VectorStoreIndex.from_vector_store(self, **kwargs)

    # ------------------------------------------------------------------ write
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Store each node as one memory document (an existing id gets a new version)."""
        ids = []
        for node in nodes:
            metadata = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
            metadata.pop("document_id", None)  # the memory's own key for the document (= node) id
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            self._memory.add(text, document_id=node.node_id, namespace=self.namespace, metadata=metadata)
            ids.append(node.node_id)
        if self.internalize:
            for node_id in dict.fromkeys(ids):
                self._memory.internalize(node_id, namespace=self.namespace)
        return ids

    def _delete_ids(self, ids: Sequence[str]) -> None:
        for doc_id in ids:
            try:
                self._memory.delete(doc_id, namespace=self.namespace)
            except (NotFoundError, ValidationError):
                continue

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose source document is ``ref_doc_id``."""
        self._delete_ids(matching_document_ids(self._memory, self.namespace, {"ref_doc_id": ref_doc_id}))

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete nodes by id and/or filter (both: the intersection; neither: nothing)."""
        if node_ids is None and filters is None:
            return
        self._delete_ids([n.node_id for n in self.get_nodes(node_ids, filters)])

    def clear(self) -> None:
        """Delete every node of this namespace."""
        self._delete_ids([d.id for d in iter_documents(self._memory, self.namespace)])

    # ------------------------------------------------------------------ read
    def _node(self, text: str, metadata: dict[str, Any], doc_id: str) -> BaseNode:
        if "_node_content" in metadata:
            return metadata_dict_to_node(metadata, text=text)
        return TextNode(id_=doc_id, text=text, metadata=dict(metadata))  # a document added outside LlamaIndex

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """Nodes by id and/or filter (missing ids are left out)."""
        flt = to_memory_filter(filters)
        if node_ids is None:
            node_ids = matching_document_ids(self._memory, self.namespace, flt)
            flt = None
        pred = compile_filter(flt)
        return [
            self._node(info.text or "", info.metadata, info.id)
            for info in documents_by_id(self._memory, self.namespace, node_ids)
            if pred is None
            or pred(filter_fields(info.metadata, info.id, info.version.number if info.version else None))
        ]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes most similar to ``query.query_str`` (the memory embeds it)."""
        if query.mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.TEXT_SEARCH):
            raise ValidationError(f"query mode {query.mode.value!r} is not supported; use the default mode")
        if not query.query_str:
            raise ValidationError("this store embeds queries itself: pass query_str (a query vector is not enough)")
        flt = to_memory_filter(query.filters)
        if query.doc_ids:
            by_doc = {"ref_doc_id": {"$in": list(query.doc_ids)}}
            flt = {"$and": [flt, by_doc]} if flt else by_doc
        allowed = set(query.node_ids) if query.node_ids else None
        hits = search_documents(
            self._memory, query.query_str, k=query.similarity_top_k, namespace=self.namespace, flt=flt, allowed=allowed
        )
        nodes = [self._node(h.document.text or "", h.document.metadata, h.document.id) for h in hits]
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[h.score for h in hits], ids=[h.document.id for h in hits]
        )


# ============================================================================ retriever
def _chunk_node(hit: SearchHit, mode: str, reason: str) -> NodeWithScore:
    metadata = {k: v for k, v in hit.metadata.items() if k not in _NODE_KEYS}
    metadata.update(
        document_id=hit.document_id,
        version=hit.version,
        chunk_id=hit.chunk_id,
        ordinal=hit.ordinal,
        score=hit.score,
        mode=mode,
        reason=reason,
    )
    node = TextNode(
        id_=f"{hit.document_id}#{hit.ordinal}",
        text=hit.text,
        metadata=metadata,
        excluded_llm_metadata_keys=list(_PROVENANCE),
        excluded_embed_metadata_keys=list(_PROVENANCE),
    )
    return NodeWithScore(node=node, score=hit.score)


def result_nodes(result: QueryResult, question: str | None = None) -> list[NodeWithScore]:
    """The nodes a query engine should see for a :class:`~memory.types.QueryResult` (recollection and/or chunks).

    A recollection node's text is the memory's answer; with ``question``, what a response synthesizer reads
    (``MetadataMode.LLM``) is 'The answer to "<question>" is <answer>.': a bare "7342" tells a
    small model nothing. An abstention is one node with the memory's "I don't know: ..." answer.
    """
    out = []
    if result.mode in ("parametric", "hybrid", "abstain"):
        adapters = [
            {"adapter_id": a.id, "document_id": a.document_id, "version": a.version, "method": a.method}
            for a in result.adapters
        ]
        asked = {"question": question.strip()} if question and result.mode != "abstain" else {}
        node = TextNode(
            text=result.answer,
            metadata={
                "mode": result.mode,
                "reason": result.reason,
                "adapters": adapters,
                "query_id": result.query_id,
                "source": "parametric-memory recollection",
                **asked,
            },
            excluded_llm_metadata_keys=[*_PROVENANCE, "source"],
            excluded_embed_metadata_keys=[*_PROVENANCE, "source", "question"],
            **(
                {
                    "metadata_template": 'The answer to "{value}" is',
                    "text_template": "{metadata_str} {content}"
                    + ("" if result.answer.endswith((".", "!", "?")) else "."),
                }
                if asked
                else {}
            ),
        )
        out.append(NodeWithScore(node=node, score=None))
    if result.mode in ("retrieval", "hybrid"):
        out.extend(_chunk_node(h, result.mode, result.reason) for h in result.chunks)
    return out


class ParametricMemoryRetriever(BaseRetriever):
    """A LlamaIndex retriever that answers from the adapters, from classic retrieval, or both.

    Args:
        memory: the :class:`ParametricMemory`.
        namespace: defaults to the memory's.
        mode: ``retrieval`` (top-k chunks), ``parametric`` (one node: the adapted model's recollection),
            ``hybrid`` (both) or ``auto`` (the router decides per query).
        similarity_top_k: chunks to retrieve.
        filters: ``MetadataFilters`` or a memory filter dict; in the parametric modes they choose the
            documents whose adapters may be applied.
        max_new_tokens: length of the recollection.
        similarity_cutoff: in ``retrieval`` mode, leave out chunks less similar than this (cosine similarity).

    >>> ParametricMemoryRetriever(mem, mode="parametric").retrieve("How old do turtles get?")   # doctest: +SKIP
    """

    def __init__(
        self,
        memory: ParametricMemory,
        *,
        namespace: str | None = None,
        mode: str = "auto",
        similarity_top_k: int = DEFAULT_K,
        filters: MetadataFilters | dict[str, Any] | None = None,
        max_new_tokens: int = 64,
        similarity_cutoff: float | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(memory, memory_classes()):
            raise ValidationError(f"memory must be a ParametricMemory or a RemoteMemory, got {type(memory).__name__}")
        if not isinstance(similarity_top_k, int) or similarity_top_k < 1:
            raise ValidationError(f"similarity_top_k must be a positive integer, got {similarity_top_k!r}")
        self.memory = memory
        self.namespace = validate_namespace(namespace if namespace is not None else memory.settings.namespace)
        self.mode = check_mode(mode)
        self.similarity_top_k = similarity_top_k
        self.filters = to_memory_filter(filters)
        self.max_new_tokens = max_new_tokens
        self.similarity_cutoff = similarity_cutoff
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        if self.mode == "retrieval":
            hits = self.memory.search(
                query,
                k=self.similarity_top_k,
                namespace=self.namespace,
                filter=self.filters,
                min_score=self.similarity_cutoff,
            )
            return [_chunk_node(h, "retrieval", "mode retrieval requested") for h in hits]
        result = self.memory.query(
            query,
            namespace=self.namespace,
            mode=self.mode,
            k=self.similarity_top_k,
            filter=self.filters,
            max_new_tokens=self.max_new_tokens,
        )
        return result_nodes(result, query)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Native async: through the facade's shared :class:`~memory.aio.AsyncParametricMemory`."""
        query, amem = query_bundle.query_str, shared_async(self.memory)
        if self.mode == "retrieval":
            hits = await amem.search(
                query,
                k=self.similarity_top_k,
                namespace=self.namespace,
                filter=self.filters,
                min_score=self.similarity_cutoff,
            )
            return [_chunk_node(h, "retrieval", "mode retrieval requested") for h in hits]
        result = await amem.query(
            query,
            namespace=self.namespace,
            mode=self.mode,
            k=self.similarity_top_k,
            filter=self.filters,
            max_new_tokens=self.max_new_tokens,
        )
        return result_nodes(result, query)


# ============================================================================ LLM
_LI_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
    MessageRole.DEVELOPER: "system",
}


class ParametricLLM(CustomLLM):
    """A LlamaIndex LLM over the local base model, with the adapters of chosen documents applied.

    Args:
        model_name: the base model (default ``PMEM_BASE_MODEL``: the embedded SmolLM2-135M-Instruct).
        memory, namespace, document_ids: when given, the ready adapters of these documents are applied.
        max_new_tokens, temperature, context_window, system: generation settings.

    >>> llm = ParametricLLM(max_new_tokens=16)                    # doctest: +SKIP
    >>> llm.complete("What is the capital of France?").text        # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str | None = None
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    context_window: int = Field(default=8192, ge=1)
    system: str | None = None
    namespace: str | None = None
    document_ids: list[str] | None = None
    # Held, never shown: their URLs may carry passwords.
    memory: Any = Field(default=None, exclude=True, repr=False)
    settings: Any = Field(default=None, exclude=True, repr=False)

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.memory is not None and not isinstance(self.memory, ParametricMemory):
            raise ValidationError(f"memory must be a ParametricMemory, got {type(self.memory).__name__}")
        if self.document_ids and self.memory is None:
            raise ValidationError("document_ids need memory= (the ParametricMemory holding their adapters)")
        if self.model_name is None:
            self.model_name = self._settings().base_model

    @classmethod
    def class_name(cls) -> str:
        return "ParametricLLM"

    def _settings(self) -> Settings:
        if isinstance(self.settings, Settings):
            return self.settings
        if self.memory is not None:
            return self.memory.settings
        return Settings.from_env()

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self.model_name or "",
        )

    def _base(self) -> Any:
        from memory.models import load_base_model

        return load_base_model(self.model_name, settings=self._settings())

    def _opts(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        adapters = document_adapter(self.memory, self.namespace, self.document_ids) if self.document_ids else None
        return {
            "max_new_tokens": int(kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))),
            "temperature": float(kwargs.get("temperature", self.temperature)),
            "stop": list(kwargs.get("stop") or []),
            "adapters": adapters,
        }

    def _turns(self, turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.system is not None and not any(r == "system" for r, _ in turns):
            return [("system", self.system), *turns]
        return turns

    def _prompt_ids(self, base: Any, prompt: str, formatted: bool) -> list[int]:
        if not formatted and self.completion_to_prompt is not None:  # None: LlamaIndex's default, the identity
            prompt = self.completion_to_prompt(prompt)
        return chat_prompt_ids(base, self._turns([("user", prompt)]))

    @staticmethod
    def _chat_turns(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
        return [(_LI_ROLES.get(m.role, "user"), m.content or "") for m in messages]

    def _complete_ids(self, base: Any, ids: list[int], kwargs: dict[str, Any]) -> CompletionResponse:
        gen = base.generate([ids], **self._opts(kwargs))[0]
        usage = {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        }
        return CompletionResponse(
            text=gen.text, raw={"finish_reason": gen.finish_reason, "usage": usage}, additional_kwargs=usage
        )

    def _stream_ids(self, base: Any, ids: list[int], kwargs: dict[str, Any]) -> CompletionResponseGen:
        text = ""
        for piece in base.stream(ids, **self._opts(kwargs)):
            text += piece
            yield CompletionResponse(text=text, delta=piece)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        base = self._base()
        return self._complete_ids(base, self._prompt_ids(base, prompt, formatted), kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        base = self._base()
        return self._stream_ids(base, self._prompt_ids(base, prompt, formatted), kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        base = self._base()
        resp = self._complete_ids(base, chat_prompt_ids(base, self._turns(self._chat_turns(messages))), kwargs)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=resp.text),
            raw=resp.raw,
            additional_kwargs=resp.additional_kwargs,
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        base = self._base()
        ids = chat_prompt_ids(base, self._turns(self._chat_turns(messages)))

        def gen() -> ChatResponseGen:
            for r in self._stream_ids(base, ids, kwargs):
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=r.text), delta=r.delta)

        return gen()


# ============================================================================ agent memory block
class ParametricMemoryBlock(BaseMemoryBlock[str]):
    """Long-term agent memory backed by a :class:`ParametricMemory`.

    ``aget`` answers the latest user message from memory (adapters and/or retrieval, per ``mode``) and
    returns the answer with its mode and reason; ``aput`` stores the messages flushed from short-term
    memory as one conversation document (optionally internalized into an adapter).

    >>> from llama_index.core.memory import Memory
    >>> block = ParametricMemoryBlock(memory=mem)                              # doctest: +SKIP
    >>> chat_memory = Memory.from_defaults(session_id="s1", memory_blocks=[block])   # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "parametric_memory"
    description: str | None = "What the parametric memory recalls about the latest user message."
    memory: Any = Field(exclude=True)
    namespace: str | None = None
    mode: str = "auto"
    k: int = Field(default=DEFAULT_K, ge=1)
    max_new_tokens: int = Field(default=64, ge=1)
    internalize: bool = False
    # With a session, flushed messages go to ParametricMemory.add_conversation: one transcript document per
    # session (conversations/<session>, a version per flush) and, with extract ("rules", "model" or a function),
    # facts that supersede earlier ones as new versions (memory.services.conversations).
    session: str | None = None
    extract: Any = None

    def model_post_init(self, __context: Any) -> None:
        if not isinstance(self.memory, memory_classes()):
            raise ValidationError(
                f"memory must be a ParametricMemory or a RemoteMemory, got {type(self.memory).__name__}"
            )
        if self.session is not None and not isinstance(self.memory, ParametricMemory):
            raise ValidationError("session= (conversation memory) needs a ParametricMemory, not a RemoteMemory")
        check_mode(self.mode)

    def recall(self, question: str) -> QueryResult:
        """Answer ``question`` from memory (what :meth:`aget` does natively async)."""
        return self.memory.query(
            question, namespace=self.namespace, mode=self.mode, k=self.k, max_new_tokens=self.max_new_tokens
        )

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        question = next((m.content for m in reversed(messages or []) if m.role == MessageRole.USER and m.content), None)
        if not question:
            return ""
        result = await shared_async(self.memory).query(
            question, namespace=self.namespace, mode=self.mode, k=self.k, max_new_tokens=self.max_new_tokens
        )
        return f"{result.answer}\n(mode: {result.mode}; reason: {result.reason})"

    def remember(self, messages: Sequence[ChatMessage]) -> str | None:
        """Store ``messages`` as one conversation document (or, with a ``session``, append them to the session's
        transcript and keep the facts they state); returns the document id (None if there is no text)."""
        lines = [f"{m.role.value}: {m.content}" for m in messages if m.content]
        if not lines:
            return None
        if self.session is not None:
            said = [m for m in messages if m.content]
            result = self.memory.add_conversation(
                said, session=self.session, namespace=self.namespace, extract=self.extract
            )
            if self.internalize:
                for fact in result.facts:
                    if fact.document is not None and fact.status != "unchanged":
                        self.memory.internalize(fact.document.id, namespace=self.namespace)
            return result.transcript.document.id if result.transcript.document else None
        text = "\n".join(lines)
        doc_id = f"conversation-{content_hash(text)[:16]}"
        sessions = sorted(
            {
                str(m.additional_kwargs["session_id"])
                for m in messages
                if m.additional_kwargs.get("session_id") is not None
            }
        )
        metadata: dict[str, Any] = {"kind": "conversation"}
        if sessions:
            metadata["session_id"] = sessions[0] if len(sessions) == 1 else sessions
        self.memory.add(text, document_id=doc_id, namespace=self.namespace, metadata=metadata)
        if self.internalize:
            self.memory.internalize(doc_id, namespace=self.namespace)
        return doc_id

    async def _aput(self, messages: list[ChatMessage]) -> None:
        await shared_async(self.memory).run_io(self.remember, messages)


__all__ = [
    "DeferredEmbedding",
    "ParametricLLM",
    "ParametricMemoryBlock",
    "ParametricMemoryRetriever",
    "ParametricMemoryVectorStore",
    "result_nodes",
    "to_memory_filter",
]
