"""Helpers shared by the LangChain and LlamaIndex integrations (neither library is imported here).

- :func:`iter_documents` / :func:`matching_document_ids`: walk a namespace, optionally through a metadata filter.
- :func:`search_documents`: chunk-level vector search folded into one best hit per document.
- :func:`ready_adapters` / :func:`document_adapter`: the ready adapters of some documents (the facade's adapter
  registry decides which), rank-concatenated for one forward pass.
- :func:`chat_prompt_ids`: a multi-turn conversation rendered with the base model's chat template.

>>> from memory import ParametricMemory
>>> import tempfile
>>> mem = ParametricMemory(home=tempfile.mkdtemp())
>>> _ = mem.add("Turtles live long.", document_id="t", metadata={"kind": "fact"})
>>> matching_document_ids(mem, None, {"kind": "fact"})
['t']
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memory.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from memory.api import ParametricMemory
    from memory.models import BaseModel
    from memory.types import AdapterInfo, DocumentInfo, SearchHit

log = logging.getLogger(__name__)

PAGE = 500
MODES = ("auto", "parametric", "retrieval", "hybrid")


def memory_classes() -> tuple[type, ...]:
    """What the integrations accept as ``memory``: the in-process facade or a server (``RemoteMemory``)."""
    from memory.api import ParametricMemory
    from memory.client import RemoteMemory

    return (ParametricMemory, RemoteMemory)


def memory_for(memory: ParametricMemory | None, embedding: Any, memory_kwargs: dict[str, Any]) -> ParametricMemory:
    """``memory`` checked (a facade or a ``RemoteMemory``, its embedder the same as ``embedding``'s), or a new
    :class:`ParametricMemory` built from ``memory_kwargs`` with ``embedding`` when ``memory`` is ``None``."""
    from memory.api import ParametricMemory
    from memory.retrieval import as_embedder

    if memory is None:
        return ParametricMemory(embedder=embedding, **memory_kwargs)
    if not isinstance(memory, memory_classes()):
        raise ValidationError(f"memory must be a ParametricMemory or a RemoteMemory, got {type(memory).__name__}")
    if memory_kwargs:
        raise ValidationError(f"pass either memory= or settings for a new one ({sorted(memory_kwargs)}), not both")
    if embedding is not None:
        ours, theirs = memory.embedder, as_embedder(embedding)
        if (ours.name, ours.dim) != (theirs.name, theirs.dim):
            raise ValidationError(
                f"this memory embeds with {ours.name!r} ({ours.dim} dims), not {theirs.name!r} ({theirs.dim} dims); "
                "build it with ParametricMemory(embedder=<your embeddings>) or leave embedding= out"
            )
    return memory


def check_mode(mode: str) -> str:
    """Reject an unknown routing mode with the list of valid ones.

    >>> check_mode("hybrid")
    'hybrid'
    """
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def iter_documents(memory: ParametricMemory, namespace: str | None) -> Iterator[DocumentInfo]:
    """Every document of a namespace, in id order, a page at a time."""
    offset = 0
    while True:
        page = memory.list(namespace=namespace, limit=PAGE, offset=offset)
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def documents_by_id(memory: ParametricMemory, namespace: str | None, ids: Sequence[str]) -> Iterator[DocumentInfo]:
    """The documents with these ids, with their text, in order; missing or invalid ids are left out."""
    from memory.api import validate_document_id

    for doc_id in ids:
        try:
            validate_document_id(doc_id)
            yield memory.get(doc_id, namespace=namespace, with_text=True)
        except (NotFoundError, ValidationError):
            continue


def matching_document_ids(memory: ParametricMemory, namespace: str | None, flt: Mapping[str, Any] | None) -> list[str]:
    """Ids of the documents of ``namespace`` that ``flt`` matches (validated first; all for None).

    The filter means what it means in a search: metadata plus ``document_id`` and ``version``.
    """
    return memory.document_ids_matching(dict(flt) if flt is not None else None, namespace=namespace)


@dataclass(frozen=True)
class DocumentHit:
    """The best chunk of one document for a query, and the document (with its text)."""

    document: DocumentInfo
    best: SearchHit

    @property
    def score(self) -> float:
        return self.best.score


def search_documents(
    memory: ParametricMemory,
    query: str,
    *,
    k: int,
    namespace: str | None,
    flt: Mapping[str, Any] | None = None,
    allowed: set[str] | None = None,
    min_score: float | None = None,
) -> list[DocumentHit]:
    """The ``k`` documents whose best chunk is most similar to ``query``, best first, with their text.

    Chunk hits are folded per document; the search widens until ``k`` distinct documents are found or the
    namespace is exhausted. ``allowed`` restricts the result to those document ids; ``min_score`` leaves out
    documents whose best chunk scores lower (a cosine similarity).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValidationError(f"k must be a positive integer, got {k!r}")
    if allowed is not None and not allowed:
        return []
    fetch = max(8, 4 * k)
    best: dict[str, SearchHit] = {}
    while True:
        hits = memory.search(query, k=fetch, namespace=namespace, filter=flt, min_score=min_score)  # type: ignore[arg-type]
        best = {}
        for h in hits:
            if (allowed is None or h.document_id in allowed) and h.document_id not in best:
                best[h.document_id] = h
        if len(best) >= k or len(hits) < fetch:
            break
        fetch *= 4
    out = []
    for doc_id, hit in list(best.items())[:k]:
        try:
            info = memory.get(doc_id, namespace=namespace, with_text=True)
        except NotFoundError:  # deleted since the search
            continue
        out.append(DocumentHit(info, hit))
    return out


def ready_adapters(memory: ParametricMemory, namespace: str | None, document_ids: Sequence[str]) -> list[AdapterInfo]:
    """The ready adapters of the current versions of ``document_ids``, in their order (one query).

    Documents without a ready adapter (or missing) are skipped, and logged. Which adapter stands for a
    document is decided in one place, :meth:`memory.services.adapters.AdapterRegistry.current`.
    """
    ready = memory.adapter_registry.current(namespace, document_ids, ready_only=True)
    out = []
    for doc_id in dict.fromkeys(document_ids):
        if doc_id in ready:
            out.append(ready[doc_id])
        else:
            log.info("document %r has no ready adapter; it is not applied", doc_id)
    return out


def document_adapter(memory: ParametricMemory, namespace: str | None, document_ids: Sequence[str]) -> Any:
    """The ready adapters of the current versions of ``document_ids``, concatenated along rank (or ``None``).

    The result is what ``BaseModel.generate(..., adapters=)`` takes.
    """
    return memory.adapter_registry.compose(ready_adapters(memory, namespace, document_ids))


def message_text(content: Any) -> str:
    """The text of a message content: a string, or a list of blocks whose text parts are joined."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, Mapping):
            raise ValidationError(f"content blocks of type {block.get('type')!r} are not supported; send text")
    return "".join(parts)


def chat_prompt_ids(base: BaseModel, turns: Sequence[tuple[str, str]]) -> list[int]:
    """Token ids of a conversation of ``(role, text)`` turns, ending where the assistant's answer starts.

    Roles are ``system``, ``user``, ``assistant`` (and ``tool``, sent as a user turn). Without a system turn
    the template's default applies (as in :meth:`BaseModel.chat_ids`, the format the adapters learnt).
    """
    if not turns:
        raise ValidationError("a conversation needs at least one message")
    messages = [{"role": "user" if r == "tool" else r, "content": t} for r, t in turns]
    tok = base.tokenizer
    if getattr(tok, "chat_template", None):
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates without a system role raise; fold it into the first user turn
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            rest = [dict(m) for m in messages if m["role"] != "system"] or [{"role": "user", "content": ""}]
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]
            text = tok.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)
        return base.encode(text)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    return list(tok(text)["input_ids"])


__all__ = [
    "MODES",
    "DocumentHit",
    "chat_prompt_ids",
    "check_mode",
    "document_adapter",
    "iter_documents",
    "matching_document_ids",
    "memory_classes",
    "memory_for",
    "message_text",
    "ready_adapters",
    "search_documents",
]
