"""LangChain over :class:`~memory.api.ParametricMemory`: a vector store, a routing retriever, a chat model, a tool.

- :class:`ParametricMemoryVectorStore` (``VectorStore``): each LangChain ``Document`` is one memory document
  (its id is the document id, its metadata the document metadata). Search is classic vector search over
  the chunks of current versions, with the memory's embedding model, or the LangChain ``Embeddings`` you
  pass. What you add is what you get back: routing information never enters ``Document.metadata`` here.
- :class:`ParametricMemoryRetriever` (``BaseRetriever``): ``mode="retrieval"`` returns chunks;
  ``"parametric"`` returns the adapted model's recollection as one ``Document`` (metadata: ``mode``,
  ``reason``, ``adapters``) so an existing RAG chain runs unchanged; ``"hybrid"`` returns both, and
  ``"auto"`` lets the router choose per query.
- :class:`ParametricChatModel` (``BaseChatModel``): the base model, with the adapters of chosen documents
  applied, with streaming and token usage.
- :func:`memory_tool`: a ``StructuredTool`` that answers questions from memory (for agents).

>>> import tempfile
>>> from langchain_core.embeddings import DeterministicFakeEmbedding
>>> store = ParametricMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=8), home=tempfile.mkdtemp())
>>> store.add_texts(["Turtles can live for over 150 years."], ids=["turtles"])
['turtles']
>>> store.get_by_ids(["turtles"])[0].page_content
'Turtles can live for over 150 years.'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForLLMRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import StructuredTool
from langchain_core.vectorstores import VectorStore
from pydantic import BaseModel as PydanticModel
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from integrations._common import (
    chat_prompt_ids,
    check_mode,
    documents_by_id,
    iter_documents,
    memory_classes,
    memory_for,
    message_text,
    ready_adapters,
    search_documents,
)
from memory.aio import shared_async
from memory.api import ParametricMemory, validate_document_id, validate_namespace
from memory.config import Settings
from memory.errors import NotFoundError, ValidationError
from memory.retrieval.filters import compile_filter

if TYPE_CHECKING:
    from memory.types import QueryResult, SearchHit

log = logging.getLogger(__name__)

DEFAULT_K = 4
Mode = Literal["auto", "parametric", "retrieval", "hybrid"]
PROVIDER = "parametric-memory"


# ============================================================================ converters
def _chunk_document(hit: SearchHit, mode: str, reason: str) -> Document:
    """A retrieved chunk as a ``Document``: the chunk text, the document metadata and where it came from."""
    return Document(
        id=f"{hit.document_id}#{hit.ordinal}",
        page_content=hit.text,
        metadata={
            **hit.metadata,
            "document_id": hit.document_id,
            "version": hit.version,
            "chunk_id": hit.chunk_id,
            "ordinal": hit.ordinal,
            "score": hit.score,
            "mode": mode,
            "reason": reason,
        },
    )


def _adapter_refs(result: QueryResult) -> list[dict[str, Any]]:
    return [
        {"adapter_id": a.id, "document_id": a.document_id, "version": a.version, "method": a.method}
        for a in result.adapters
    ]


def result_documents(result: QueryResult) -> list[Document]:
    """The documents a RAG chain should see for a :class:`~memory.types.QueryResult`.

    Parametric: one recollection ``Document`` (the adapted model's answer). Retrieval: the chunks used.
    Hybrid: the recollection first, then the chunks. Abstain: one document with the memory's "I don't know:
    ..." answer. Every document carries ``mode`` and ``reason``.
    """
    docs = []
    if result.mode in ("parametric", "hybrid", "abstain"):
        docs.append(
            Document(
                page_content=result.answer,
                metadata={
                    "mode": result.mode,
                    "reason": result.reason,
                    "adapters": _adapter_refs(result),
                    "query_id": result.query_id,
                    "source": "parametric-memory recollection",
                },
            )
        )
    if result.mode in ("retrieval", "hybrid"):
        docs.extend(_chunk_document(h, result.mode, result.reason) for h in result.chunks)
    return docs


# ============================================================================ vector store
class ParametricMemoryVectorStore(VectorStore):
    """A LangChain vector store whose documents live in a :class:`ParametricMemory` namespace.

    Args:
        memory (`ParametricMemory`, *optional*): the memory to use; otherwise one is built from
            ``memory_kwargs`` (e.g. ``home=``, ``database_url=``) and ``embedding``.
        embedding (`Embeddings`, *optional*): the embedding model for search; defaults to the memory's own
            (all-MiniLM-L6-v2).
        namespace (`str`, *optional*): the namespace the store reads and writes; defaults to the memory's.
        internalize (`bool`): also turn every added document into an adapter right away (slow; otherwise
            call ``memory.internalize`` or let the workers do it).

    Documents are upserted by id (adding an existing id makes a new version of that document, or
    changes nothing when the text and metadata are the same). ``delete()`` without ids empties the
    namespace. ``similarity_search_with_score`` returns cosine similarities (higher is closer).

    >>> store.similarity_search("How old do turtles get?", k=1)[0].id    # doctest: +SKIP
    'turtles'
    >>> store.similarity_search("...", k=2, filter={"kind": "fact"})    # doctest: +SKIP
    """

    def __init__(
        self,
        memory: ParametricMemory | None = None,
        *,
        embedding: Embeddings | None = None,
        namespace: str | None = None,
        internalize: bool = False,
        **memory_kwargs: Any,
    ) -> None:
        self.memory = memory_for(memory, embedding, memory_kwargs)
        self.namespace = validate_namespace(namespace if namespace is not None else self.memory.settings.namespace)
        self._embedding = embedding
        self.internalize = internalize

    def __repr__(self) -> str:
        return f"ParametricMemoryVectorStore(memory={self.memory!r}, namespace={self.namespace!r})"

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    # ------------------------------------------------------------------ write
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store each text as one memory document; returns the document ids (new uuid4 hex where none given).

        >>> store.add_texts(["a fact"], metadatas=[{"kind": "fact"}], ids=["f1"])   # doctest: +SKIP
        ['f1']
        """
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValidationError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValidationError(f"got {len(ids)} ids for {len(texts)} texts")
        kwargs.pop("batch_size", None)  # sent by langchain_core.indexing; documents are written one by one
        if kwargs:
            raise ValidationError(f"unknown argument(s) {sorted(kwargs)} for add_texts")
        metas = [dict(m) if m is not None else {} for m in metadatas] if metadatas is not None else [{} for _ in texts]
        for i, metadata in enumerate(metas):  # checked before anything is written
            try:
                json.dumps(metadata, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValidationError(
                    f"metadata of text {i} cannot be stored ({e}); use JSON values: str, number, "
                    "bool, None, lists and dicts of them"
                ) from None
        out = [
            validate_document_id(str(ids[i])) if ids is not None and ids[i] else uuid.uuid4().hex
            for i in range(len(texts))
        ]
        for text, doc_id, metadata in zip(texts, out, metas, strict=True):
            self.memory.add(text, document_id=doc_id, namespace=self.namespace, metadata=metadata)
        if self.internalize:
            for doc_id in dict.fromkeys(out):
                self.memory.internalize(doc_id, namespace=self.namespace)
        return out

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (missing ids are ignored); ``ids=None`` deletes the whole namespace."""
        if kwargs:
            raise ValidationError(f"unknown argument(s) {sorted(kwargs)} for delete")
        targets = list(ids) if ids is not None else [d.id for d in iter_documents(self.memory, self.namespace)]
        for doc_id in targets:
            try:
                self.memory.delete(doc_id, namespace=self.namespace)
            except NotFoundError:
                pass
            except ValidationError:  # an id no document can have
                log.debug("delete: ignoring invalid document id %r", doc_id)
        return True

    # ------------------------------------------------------------------ read
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids (missing ones are left out), with their current text and metadata."""
        return [
            Document(id=info.id, page_content=info.text or "", metadata=dict(info.metadata))
            for info in documents_by_id(self.memory, self.namespace, ids)
        ]

    def similarity_search_with_score(
        self,
        query: str,
        k: int = DEFAULT_K,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` most similar documents and their cosine similarity (by their best chunk).

        ``filter`` uses the metadata filter language of :mod:`memory.retrieval.filters`, e.g.
        ``{"year": {"$gte": 2020}}``; a malformed filter raises :class:`~memory.errors.ValidationError`.
        ``score_threshold`` leaves out documents less similar than that (the search's ``min_score``).
        """
        if kwargs:
            raise ValidationError(f"unknown argument(s) {sorted(kwargs)} for similarity search")
        hits = search_documents(
            self.memory, query, k=k, namespace=self.namespace, flt=filter, min_score=score_threshold
        )
        return [
            (
                Document(id=h.document.id, page_content=h.document.text or "", metadata=dict(h.document.metadata)),
                h.score,
            )
            for h in hits
        ]

    def similarity_search(
        self, query: str, k: int = DEFAULT_K, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents most similar to ``query``, best first."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # scores are cosine similarities in [-1, 1]; relevance is the similarity clipped to [0, 1]
        return lambda score: min(1.0, max(0.0, score))

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        memory: ParametricMemory | None = None,
        namespace: str | None = None,
        **kwargs: Any,
    ) -> ParametricMemoryVectorStore:
        """Build a store (on ``memory`` or a new memory from ``kwargs``) and add ``texts`` to it.

        >>> ParametricMemoryVectorStore.from_texts(["x"], embedding=None, home="/tmp/pm")   # doctest: +SKIP
        """
        store = cls(memory, embedding=embedding, namespace=namespace, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # ------------------------------------------------------------------ parametric side
    def query(self, question: str, **kwargs: Any) -> QueryResult:
        """Answer from memory in this namespace (see :meth:`ParametricMemory.query`), with mode and reason."""
        return self.memory.query(question, namespace=self.namespace, **kwargs)

    def as_parametric_retriever(self, **kwargs: Any) -> ParametricMemoryRetriever:
        """A :class:`ParametricMemoryRetriever` over this store's memory and namespace (``mode="auto"``)."""
        return ParametricMemoryRetriever(memory=self.memory, namespace=self.namespace, **kwargs)

    def as_tool(self, **kwargs: Any) -> StructuredTool:
        """A tool that answers questions from this namespace (see :func:`memory_tool`)."""
        return memory_tool(self.memory, namespace=self.namespace, **kwargs)


# ============================================================================ retriever
class ParametricMemoryRetriever(BaseRetriever):
    """A retriever that answers from the adapters, from classic retrieval, or both, per ``mode``.

    Args:
        memory: the :class:`ParametricMemory`.
        namespace: defaults to the memory's.
        mode: ``retrieval`` returns the ``k`` best chunks; ``parametric`` returns one ``Document`` holding the
            adapted model's recollection; ``hybrid`` returns the recollection and the chunks; ``auto``
            lets the router decide per query. Every document's metadata has ``mode`` and ``reason``.
        k: chunks to retrieve (and documents whose adapters may be applied).
        filter: a metadata filter (see :mod:`memory.retrieval.filters`); in the parametric modes it selects
            the documents whose adapters may be applied.
        max_new_tokens: length of the recollection.
        score_threshold: in ``retrieval`` mode, leave out chunks less similar than this (cosine similarity).

    ``invoke(query, k=..., mode=..., filter=...)`` overrides these per call.

    >>> retriever = ParametricMemoryRetriever(memory=mem, mode="parametric")    # doctest: +SKIP
    >>> retriever.invoke("How long do turtles live?")[0].metadata["mode"]       # doctest: +SKIP
    'parametric'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: Any
    namespace: str | None = None
    mode: Mode = "auto"
    k: int = Field(default=DEFAULT_K, ge=1)
    filter: Any = None  # dict | None, checked by our own validator for a precise message
    max_new_tokens: int = Field(default=64, ge=1)
    score_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, v: Any) -> Any:
        if not isinstance(v, memory_classes()):
            raise ValueError(f"memory must be a ParametricMemory or a RemoteMemory, got {type(v).__name__}")
        return v

    @field_validator("filter")
    @classmethod
    def _check_filter(cls, v: Any) -> Any:
        compile_filter(v)  # a malformed filter fails at construction, with the reason
        return v

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, mode, flt, max_new_tokens = self._arguments(kwargs)
        if mode == "retrieval":
            hits = self.memory.search(query, k=k, namespace=self.namespace, filter=flt, min_score=self.score_threshold)
            return [_chunk_document(h, "retrieval", "mode retrieval requested") for h in hits]
        result = self.memory.query(
            query, namespace=self.namespace, mode=mode, k=k, filter=flt, max_new_tokens=max_new_tokens
        )
        return result_documents(result)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """Native async: through the facade's shared :class:`~memory.aio.AsyncParametricMemory` (its generation
        queue), never blocking the event loop."""
        k, mode, flt, max_new_tokens = self._arguments(kwargs)
        amem = shared_async(self.memory)
        if mode == "retrieval":
            hits = await amem.search(query, k=k, namespace=self.namespace, filter=flt, min_score=self.score_threshold)
            return [_chunk_document(h, "retrieval", "mode retrieval requested") for h in hits]
        result = await amem.query(
            query, namespace=self.namespace, mode=mode, k=k, filter=flt, max_new_tokens=max_new_tokens
        )
        return result_documents(result)

    def _arguments(self, kwargs: dict[str, Any]) -> tuple[int, str, Any, int]:
        k = kwargs.pop("k", self.k)
        mode = check_mode(kwargs.pop("mode", self.mode))
        flt = kwargs.pop("filter", self.filter)
        max_new_tokens = kwargs.pop("max_new_tokens", self.max_new_tokens)
        if kwargs:
            raise ValidationError(f"unknown argument(s) {sorted(kwargs)}; use k, mode, filter or max_new_tokens")
        return k, mode, flt, max_new_tokens


# ============================================================================ chat model
_ROLES: dict[type, str] = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant", ToolMessage: "tool"}


def _turns(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    out = []
    for m in messages:
        role = (
            m.role if isinstance(m, ChatMessage) else next((r for cls, r in _ROLES.items() if isinstance(m, cls)), None)
        )
        if role is None:
            raise ValidationError(f"unsupported message type {type(m).__name__}")
        out.append((role, message_text(m.content)))
    return out


class ParametricChatModel(BaseChatModel):
    """A LangChain chat model over the local base model, with the adapters of chosen documents applied.

    Args:
        model: the base model (``PMEM_BASE_MODEL``; default the embedded SmolLM2-135M-Instruct, or a local
            Hugging Face causal-LM directory). A per-call ``model=`` loads that one instead.
        memory, namespace, document_ids: when given, the ready adapters of these documents are applied
            (rank-concatenated): the model answers from what it internalized, with no document in the prompt.
        temperature: 0 is greedy decoding.
        max_tokens: new tokens per answer.
        stop: strings that end the answer (trimmed).
        streaming: ``invoke`` streams internally (callbacks get each token).
        timeout, max_retries: accepted for interface compatibility; a local model has no network to retry.

    Tool calling and structured output are not supported (a 135M model does not follow tool schemas).

    >>> chat = ParametricChatModel(max_tokens=16)              # doctest: +SKIP
    >>> chat.invoke("What is the capital of France?").content   # doctest: +SKIP
    'The capital of France is Paris.'
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str | None = Field(default=None, alias="model")
    temperature: float = Field(default=0.0, ge=0.0)
    max_tokens: int | None = Field(default=256, ge=1)
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    streaming: bool = False
    timeout: float | None = None
    max_retries: int = 2
    system: str | None = None
    # Held, never shown: their URLs may carry passwords, and dumps reach every callback and tracer.
    memory: Any = Field(default=None, exclude=True, repr=False)
    namespace: str | None = None
    document_ids: list[str] | None = None
    settings: Any = Field(default=None, exclude=True, repr=False)

    _adapter_key: Any = PrivateAttr(default=None)
    _adapter: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _defaults(self) -> ParametricChatModel:
        if self.memory is not None and not isinstance(self.memory, ParametricMemory):
            raise ValueError(f"memory must be a ParametricMemory, got {type(self.memory).__name__}")
        if self.settings is not None and not isinstance(self.settings, Settings):
            raise ValueError(f"settings must be a memory.config.Settings, got {type(self.settings).__name__}")
        if self.document_ids and self.memory is None:
            raise ValueError("document_ids need memory= (the ParametricMemory holding their adapters)")
        if self.model_name is None:  # PMEM_BASE_MODEL, or the memory's base model
            self.model_name = self._settings().base_model
        return self

    @property
    def _llm_type(self) -> str:
        return "parametric-memory-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self._resolved_name(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "namespace": self.namespace,
            "document_ids": self.document_ids,
        }

    def _resolved_name(self, override: str | None = None) -> str:
        return override or self.model_name or self._settings().base_model

    def _settings(self) -> Settings:
        if isinstance(self.settings, Settings):
            return self.settings
        if self.memory is not None:
            return self.memory.settings
        return Settings.from_env()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=self._resolved_name(kwargs.get("model")),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ------------------------------------------------------------------ runtime
    def _base(self, override: str | None = None) -> Any:
        from memory.models import load_base_model

        return load_base_model(self._resolved_name(override), settings=self._settings())

    def _adapters(self) -> Any:
        if self.memory is None or not self.document_ids:
            return None
        infos = ready_adapters(self.memory, self.namespace, self.document_ids)
        key = tuple(a.id for a in infos)
        if key != self._adapter_key:
            self._adapter = self.memory.adapter_registry.compose(infos)
            self._adapter_key = key
        return self._adapter

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        known = {"model", "temperature", "max_tokens"}
        unknown = set(kwargs) - known
        if unknown:
            raise ValidationError(f"unknown argument(s) {sorted(unknown)}; use {sorted(known)} or stop")
        return {
            "max_new_tokens": int(kwargs.get("max_tokens") or self.max_tokens or 256),
            "temperature": float(kwargs.get("temperature", self.temperature)),
            "stop": list(stop if stop is not None else (self.stop or [])),
            "adapters": self._adapters(),
        }

    def _prompt(self, base: Any, messages: list[BaseMessage]) -> list[int]:
        turns = _turns(messages)
        if self.system is not None and not any(r == "system" for r, _ in turns):
            turns.insert(0, ("system", self.system))
        return chat_prompt_ids(base, turns)

    @staticmethod
    def _usage(prompt_tokens: int, completion_tokens: int) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=prompt_tokens, output_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            chunks = list(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
            full = chunks[0].message
            for c in chunks[1:]:
                full = full + c.message
            usage = full.usage_metadata if isinstance(full, AIMessageChunk) else None
            msg = AIMessage(content=full.content, usage_metadata=usage, response_metadata=full.response_metadata)
            return ChatResult(generations=[ChatGeneration(message=msg)])
        opts = self._options(stop, kwargs)
        base = self._base(kwargs.get("model"))
        gen = base.generate([self._prompt(base, messages)], **opts)[0]
        msg = AIMessage(
            content=gen.text,
            usage_metadata=self._usage(gen.prompt_tokens, gen.completion_tokens),
            response_metadata={"model_name": base.name, "finish_reason": gen.finish_reason},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)], llm_output={"model_name": base.name})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        opts = self._options(stop, kwargs)
        base = self._base(kwargs.get("model"))
        ids = self._prompt(base, messages)
        pieces = []
        for piece in base.stream(ids, **opts):
            pieces.append(piece)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        # the stream yields text only: the completion's token count is re-counted from it
        completion = base.count_tokens("".join(pieces))
        finish = "length" if completion >= opts["max_new_tokens"] else "stop"
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=self._usage(len(ids), completion),
                response_metadata={"model_name": base.name, "finish_reason": finish},
                chunk_position="last",
            )
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The whole generation runs in ONE worker thread: the base model holds its lock for the life of a
        # stream, so the default (one executor hop per chunk) would release it from another thread.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        def produce() -> None:
            try:
                for chunk in self._stream(messages, stop=stop, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = loop.run_in_executor(None, produce)
        while (item := await queue.get()) is not done:
            if isinstance(item, BaseException):
                await worker
                raise item
            if run_manager and item.text:
                await run_manager.on_llm_new_token(item.text, chunk=item)
            yield item
        await worker


# ============================================================================ tool
class _QuestionArgs(PydanticModel):
    question: str = Field(description="The question to answer from the stored documents.")


def memory_tool(
    memory: ParametricMemory,
    *,
    namespace: str | None = None,
    mode: Mode = "auto",
    k: int = DEFAULT_K,
    max_new_tokens: int = 64,
    name: str = "parametric_memory",
    description: str | None = None,
) -> StructuredTool:
    """A ``StructuredTool`` that answers a question from memory.

    The tool's content is the answer followed by how it was produced (mode and reason); its artifact is
    the whole :class:`~memory.types.QueryResult` as a dict (adapters, chunks, timings).

    >>> tool = memory_tool(mem)                                               # doctest: +SKIP
    >>> tool.invoke({"question": "How long do turtles live?"})                # doctest: +SKIP
    'Over 150 years. [mode: parametric; reason: ...]'
    """
    check_mode(mode)
    ns = validate_namespace(namespace if namespace is not None else memory.settings.namespace)

    def answer(question: str) -> tuple[str, dict[str, Any]]:
        result = memory.query(question, namespace=ns, mode=mode, k=k, max_new_tokens=max_new_tokens)
        return f"{result.answer} [mode: {result.mode}; reason: {result.reason}]", result.to_dict()

    return StructuredTool.from_function(
        func=answer,
        name=name,
        description=description
        or (
            f"Answers questions from the documents stored in the '{ns}' memory (policies, notes, manuals). "
            "Input: a self-contained question."
        ),
        args_schema=_QuestionArgs,
        response_format="content_and_artifact",
    )


# ============================================================================ chat history
class ParametricChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat history kept by :meth:`ParametricMemory.add_conversation`: the session's transcript is a
    versioned document, and with ``extract`` (``"rules"``, ``"model"`` or a function) the facts the user states
    become ``facts/<subject>`` documents that supersede older ones (see :mod:`memory.services.conversations`).

    >>> history = ParametricChatMessageHistory(mem, "chat-1", extract="rules")  # doctest: +SKIP
    >>> history.add_messages([HumanMessage("My favourite colour is green.")])  # doctest: +SKIP
    """

    def __init__(
        self, memory: ParametricMemory, session: str, *, namespace: str | None = None, extract: Any = None
    ) -> None:
        if not isinstance(memory, ParametricMemory):
            raise ValidationError(f"conversation memory needs a ParametricMemory, got {type(memory).__name__}")
        self.memory, self.session, self.namespace, self.extract = memory, session, namespace, extract

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        kinds = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}
        return [
            kinds[role](text) if role in kinds else ChatMessage(role=role, content=text)
            for role, text in self.memory.conversations.transcript(self.session, namespace=self.namespace)
        ]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        if messages:
            self.memory.add_conversation(
                list(messages), session=self.session, namespace=self.namespace, extract=self.extract
            )

    def clear(self) -> None:
        """Delete the transcript (with its versions); the facts it gave stay, as memories of the namespace."""
        from memory.services.conversations import TRANSCRIPTS

        with contextlib.suppress(NotFoundError):
            self.memory.delete(TRANSCRIPTS + self.session, namespace=self.namespace)


__all__ = [
    "ParametricChatMessageHistory",
    "ParametricChatModel",
    "ParametricMemoryRetriever",
    "ParametricMemoryVectorStore",
    "memory_tool",
    "result_documents",
]
