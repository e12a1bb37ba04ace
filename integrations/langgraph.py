"""LangGraph over :class:`~memory.api.ParametricMemory`: a long-term memory ``BaseStore`` for agents.

:class:`ParametricMemoryStore` keeps every LangGraph item as one memory document in one of our namespaces
(``namespace=``): the LangGraph namespace tuple and the key become the document id, the value is the
document's text (canonical JSON, so every ``put`` of a new value is a new version with its history and diff)
and is also kept, with the item's namespace and key, in the document metadata. What LangGraph indexes (the
store's ``index["fields"]`` or a put's ``index=[...]``) becomes the document's chunks, embedded by the
memory's embedding model; ``index=False`` stores no chunk.

Document ids: ``lg/<label>/<label>/.../<key>``, every label and the key percent-style encoded with ``=XX``
(UTF-8 bytes) for everything but ``A-Z a-z 0-9 _ -``, so no label can hold a ``/`` that escapes into another
namespace, a ``.`` that makes a ``..`` segment, or anything a database pattern would read as a wildcard;
``=`` alone is the empty string. The mapping is reversible (:func:`item_document_id`,
:func:`parse_document_id`). An encoded id is at most 255 characters.

Beyond other stores, :meth:`ParametricMemoryStore.internalize` turns the items of a LangGraph namespace into
one adapter (a digest document ``lgd/<labels>``, internalized with the memory's ``internalize``) and
:meth:`ParametricMemoryStore.answer` answers a question from it.

>>> from langchain_core.embeddings import DeterministicFakeEmbedding
>>> from memory import ParametricMemory
>>> import tempfile
>>> mem = ParametricMemory(home=tempfile.mkdtemp(), embedder=DeterministicFakeEmbedding(size=8))
>>> store = ParametricMemoryStore(mem, namespace="lg-doc")
>>> store.put(("users", "ada"), "prefs", {"text": "Ada likes green tea", "kind": "drink"})
>>> store.get(("users", "ada"), "prefs").value["kind"]
'drink'
>>> [i.key for i in store.search(("users",), filter={"kind": "drink"})]
['prefs']
>>> store.list_namespaces(prefix=("users",))
[('users', 'ada')]
>>> item_document_id(("users", "a/b.c"), "k")
'lg/users/a=2Fb=2Ec/k'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from integrations._common import PAGE, memory_for
from memory.api import ParametricMemory, validate_metadata, validate_namespace
from memory.errors import NotFoundError, ValidationError
from memory.ingest import ChunkSpec, approx_token_count

if TYPE_CHECKING:
    from memory.types import AdapterInfo, DocumentInfo, QueryResult, SearchHit

log = logging.getLogger(__name__)

ITEM_PREFIX = "lg/"  # document ids of items
DIGEST_PREFIX = "lgd/"  # document ids of the digests internalize() writes, one per LangGraph namespace
META = "langgraph"  # metadata key of an item's namespace, key, value and index
PREFIXES = "lg_prefixes"  # metadata: the encoded prefixes of the item's namespace (for search by prefix)
INDEXED = "lg_indexed"  # metadata: whether the item has chunks (vector search skips the others)
FIELD = "lg.v."  # metadata: top-level scalar fields of the value, for filters the database can apply
MAX_ID = 255  # memory.services.records.validate_document_id
MAX_PUSHDOWN_STR = 200  # characters: longer string fields are filtered after the search only
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_COMPARE = {"$gt": float.__gt__, "$gte": float.__ge__, "$lt": float.__lt__, "$lte": float.__le__}
_OPERATORS = ("$eq", "$ne", *_COMPARE)


# ============================================================================ namespaces <-> document ids
def encode_label(label: str) -> str:
    """A namespace label or key as one document-id segment: ``A-Z a-z 0-9 _ -`` kept, other bytes ``=XX``.

    >>> encode_label("café/1"), encode_label("")
    ('caf=C3=A9=2F1', '=')
    """
    if not isinstance(label, str):
        raise ValidationError(f"namespace labels and keys are strings, got {type(label).__name__}")
    if label == "":
        return "="
    try:
        raw = label.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{label!r} is not valid Unicode text (unpaired surrogates)") from None
    return "".join(chr(b) if chr(b) in _SAFE else f"={b:02X}" for b in raw)


def decode_label(segment: str) -> str:
    """The inverse of :func:`encode_label`.

    >>> decode_label("caf=C3=A9=2F1")
    'café/1'
    """
    if segment == "=":
        return ""
    out, i = bytearray(), 0
    while i < len(segment):
        if segment[i] == "=":
            out.append(int(segment[i + 1 : i + 3], 16))
            i += 3
        else:
            out += segment[i].encode("ascii")
            i += 1
    return out.decode("utf-8")


def namespace_prefix_id(namespace: tuple[str, ...], root: str = ITEM_PREFIX) -> str:
    """The document-id prefix of every item under ``namespace`` (ends with ``/``: ``("a",)`` is not ``("ab",)``)."""
    return root + "".join(encode_label(label) + "/" for label in namespace)


def item_document_id(namespace: tuple[str, ...], key: str) -> str:
    """The document id of an item (see the module docstring); too long an id is a :class:`ValidationError`."""
    doc_id = namespace_prefix_id(namespace) + encode_label(key)
    if len(doc_id) > MAX_ID:
        raise ValidationError(
            f"namespace {namespace!r} with key {key[:40]!r} is {len(doc_id)} characters as a document id "
            f"(labels and key, =XX-encoded), over {MAX_ID}; use shorter labels or keys"
        )
    return doc_id


def parse_document_id(doc_id: str) -> tuple[tuple[str, ...], str]:
    """``(namespace, key)`` of an item's document id.

    >>> parse_document_id("lg/users/a=2Fb=2Ec/k")
    (('users', 'a/b.c'), 'k')
    """
    if not doc_id.startswith(ITEM_PREFIX):
        raise ValidationError(f"{doc_id!r} is not a LangGraph item id (they start with {ITEM_PREFIX!r})")
    *labels, key = doc_id[len(ITEM_PREFIX) :].split("/")
    return tuple(decode_label(s) for s in labels), decode_label(key)


# ============================================================================ filters (LangGraph's language)
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_short_str(x: Any) -> bool:
    """Strings the filter pushdown handles: longer ones are neither copied to metadata nor pushed down, so
    a value's copy in the metadata does not double the room its long texts take there."""
    return isinstance(x, str) and len(x) <= MAX_PUSHDOWN_STR


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: ``True`` is not ``1`` (as in PostgreSQL's jsonb), ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _as_float(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _check_filter(flt: Any) -> None:
    """Reject what LangGraph's filter language has no meaning for (an unknown ``$`` operator, a non-dict)."""
    if flt is None:
        return
    if not isinstance(flt, Mapping):
        raise ValidationError(f"a filter is a dict of field -> value or {{operator: value}}, got {flt!r}")
    for field, cond in flt.items():
        if isinstance(cond, Mapping) and any(str(k).startswith("$") for k in cond):
            unknown = [k for k in cond if k not in _OPERATORS]
            if unknown:
                raise ValidationError(
                    f"filter on {field!r}: unsupported operator(s) {unknown}; use {', '.join(_OPERATORS)}"
                )


def _matches(value: Any, cond: Any) -> bool:
    """Whether a value field matches one filter condition (LangGraph's semantics, JSON equality)."""
    if isinstance(cond, Mapping) and any(str(k).startswith("$") for k in cond):
        return all(_apply(value, op, arg) for op, arg in cond.items())
    if isinstance(cond, Mapping):
        return isinstance(value, dict) and all(_matches(value.get(k), c) for k, c in cond.items())
    if isinstance(cond, (list, tuple)):
        return (
            isinstance(value, list)
            and len(value) == len(cond)
            and all(_matches(v, c) for v, c in zip(value, cond, strict=True))
        )
    return _json_equal(value, cond)


def _apply(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return _matches(value, arg)
    if op == "$ne":
        return not _matches(value, arg)
    a, b = _as_float(value), _as_float(arg)
    return a is not None and b is not None and bool(_COMPARE[op](a, b))


def value_matches(value: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    """Whether an item's value matches a LangGraph filter (several fields are AND-ed).

    >>> value_matches({"score": 4.5, "color": "red"}, {"score": {"$gte": 4}, "color": "red"})
    True
    >>> value_matches({"n": 1}, {"n": True})  # JSON equality: a bool is not a number
    False
    """
    return not flt or all(_matches(value.get(field), cond) for field, cond in flt.items())


def _pushdown(flt: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The clauses of a LangGraph filter that the memory's filter language can apply before ranking.

    Each clause selects a superset of what :func:`value_matches` keeps (which always runs after), so they only
    make the search narrower: equality with a string or number, ``$ne`` with one, comparisons with a number.
    """
    clauses: list[dict[str, Any]] = []
    for field, cond in (flt or {}).items():
        ops = cond if isinstance(cond, Mapping) and any(str(k).startswith("$") for k in cond) else {"$eq": cond}
        for op, arg in ops.items():
            equality = op in ("$eq", "$ne") and (_is_short_str(arg) or _is_number(arg))
            if equality or (op in _COMPARE and _is_number(arg) and math.isfinite(arg)):
                clauses.append({FIELD + field: {op: arg}})
    return clauses


# ============================================================================ the store
@dataclass(frozen=True)
class _Stored:
    """An item as read back from its document."""

    namespace: tuple[str, ...]
    key: str
    value: dict[str, Any]
    indexed: bool


def _stored(metadata: Mapping[str, Any]) -> _Stored | None:
    meta = metadata.get(META)
    if not isinstance(meta, Mapping) or not isinstance(meta.get("value"), dict):
        return None  # a document under lg/ that this store did not write
    return _Stored(tuple(meta["namespace"]), str(meta["key"]), dict(meta["value"]), bool(metadata.get(INDEXED)))


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _item(info: DocumentInfo, stored: _Stored) -> Item:
    created, updated = _aware(info.created_at), _aware(info.updated_at)
    return Item(value=stored.value, key=stored.key, namespace=stored.namespace, created_at=created, updated_at=updated)


def _search_item(info: DocumentInfo, stored: _Stored, score: float | None = None) -> SearchItem:
    created, updated = _aware(info.created_at), _aware(info.updated_at)
    return SearchItem(stored.namespace, stored.key, stored.value, created, updated, score)


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """LangGraph's prefix / suffix match with ``*`` wildcards, on decoded labels."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValidationError(f"match_type must be 'prefix' or 'suffix', got {condition.match_type!r}")
    return all(p == "*" or n == p for n, p in pairs)


class ParametricMemoryStore(BaseStore):
    """A LangGraph ``BaseStore`` whose items are documents of a :class:`ParametricMemory` (or ``RemoteMemory``).

    Args:
        memory (`ParametricMemory` or `RemoteMemory`, *optional*): where the items live; otherwise one is built
            from ``memory_kwargs`` (e.g. ``home=``, ``database_url=``).
        namespace (`str`, *optional*): the memory namespace that holds every item of this store (an API key of
            the server must cover it); defaults to the memory's.
        index (`IndexConfig`, *optional*): LangGraph's index config. ``fields`` (default ``["$"]``, the whole
            value) says what each item's chunks hold; ``embed`` (a LangChain ``Embeddings`` or a function) must
            be the memory's own embedding model, and ``dims`` its size, when given. The memory always has an
            embedding model, so items are indexed even without ``index``; ``put(..., index=False)`` skips one.

    Setup::

        from langgraph.graph import StateGraph
        store = ParametricMemoryStore(ParametricMemory(), namespace="agent")
        graph = builder.compile(store=store)  # nodes get it as `store` / runtime.store

    Put, get, delete::

        store.put(("users", "ada"), "prefs", {"text": "likes green tea"})   # a new version if it existed
        store.get(("users", "ada"), "prefs").value                           # {'text': 'likes green tea'}
        store.delete(("users", "ada"), "prefs")

    Search (``query`` ranks by cosine similarity, ``score`` is set; items with no chunks follow, unscored)::

        store.search(("users",), query="what does Ada drink?", filter={"kind": "drink"}, limit=3)

    Filters are LangGraph's: ``{"field": value}``, ``$eq $ne $gt $gte $lt $lte``; nested dicts and lists compare
    whole, with JSON equality (``True`` is not ``1``). Without ``query`` results come in namespace, then key
    order. ``list_namespaces(prefix=, suffix=, max_depth=)`` with ``*`` wildcards. TTLs are not supported.

    Through a ``RemoteMemory`` the server chunks the value's JSON itself (the ``fields`` are not applied;
    ``index=False`` still keeps an item out of ranked search).
    """

    supports_ttl = False

    def __init__(
        self,
        memory: ParametricMemory | None = None,
        *,
        namespace: str | None = None,
        index: IndexConfig | None = None,
        **memory_kwargs: Any,
    ) -> None:
        config: dict[str, Any] = dict(index or {})
        embed = config.get("embed")
        if isinstance(embed, str):
            raise ValidationError(
                f"index['embed'] is a provider name ({embed!r}); pass the Embeddings object, or leave it out to "
                "use the memory's embedding model"
            )
        if embed is not None and not callable(getattr(embed, "embed_documents", None)):
            embed = ensure_embeddings(embed)  # a plain (async) function of texts
        self.memory = memory_for(memory, embed, memory_kwargs)
        dims = config.get("dims")
        embedder = getattr(self.memory, "embedder", None)  # a RemoteMemory embeds on the server
        if dims is not None and embedder is not None and dims != embedder.dim:
            raise ValidationError(
                f"index['dims'] is {dims}, but the memory's embedding model {embedder.name!r} gives {embedder.dim}"
            )
        self.namespace = validate_namespace(namespace if namespace is not None else self.memory.settings.namespace)
        fields = config.get("fields") or ["$"]
        if not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields):
            raise ValidationError(f"index['fields'] must be a list of JSON paths, got {fields!r}")
        self.index_config = {**config, "fields": fields}
        self._fields = [(f, f if f == "$" else tokenize_path(f)) for f in fields]
        self._chunks_supported = isinstance(self.memory, ParametricMemory)

    def __repr__(self) -> str:
        return f"ParametricMemoryStore(memory={self.memory!r}, namespace={self.namespace!r})"

    # ------------------------------------------------------------------ batch
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops``: reads (get, search, list) in order against the state before the batch, then the writes,
        one per item (the last put or delete of an item wins), as LangGraph's own stores do."""
        ops = list(ops)
        for op in ops:
            validate_op_namespace(op)
        results: list[Result] = [None] * len(ops)
        writes: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for i, op in enumerate(ops):
            if isinstance(op, GetOp):
                results[i] = self._get(op)
            elif isinstance(op, SearchOp):
                results[i] = self._search(op)
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op)
            elif isinstance(op, PutOp):
                if op.ttl is not None:
                    raise NotImplementedError("ParametricMemoryStore does not support TTLs; put with ttl=None")
                writes.pop((tuple(op.namespace), op.key), None)
                writes[(tuple(op.namespace), op.key)] = op
            else:
                raise ValidationError(f"unknown store operation {type(op).__name__}")
        prepared = [self._prepare(op) for op in writes.values()]  # every write checked before any is made
        for doc_id, args in prepared:
            self._write(doc_id, args)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`batch` in a worker thread (the database and the embedding model are blocking)."""
        return await asyncio.to_thread(self.batch, list(ops))

    # ------------------------------------------------------------------ operations
    def _get(self, op: GetOp) -> Item | None:
        try:
            info = self.memory.get(item_document_id(tuple(op.namespace), op.key), namespace=self.namespace)
        except (NotFoundError, ValidationError):
            return None  # missing, or an id no item can have
        stored = _stored(info.metadata)
        return _item(info, stored) if stored is not None else None

    def _texts(self, value: dict[str, Any], index: Any) -> list[str]:
        """What to embed for a value: the texts at the store's fields, or at ``index``'s (none for ``False``)."""
        if index is False:
            return []
        if index is None:
            paths = self._fields
        elif isinstance(index, list) and all(isinstance(p, str) and p for p in index):
            paths = [(p, p if p == "$" else tokenize_path(p)) for p in index]
        else:
            raise ValidationError(f"index must be False, None or a list of JSON paths, got {index!r}")
        texts: list[str] = []
        for _, path in paths:
            texts += [t for t in get_text_at_path(value, path) if t and t.strip()]
        return list(dict.fromkeys(texts))

    def _prepare(self, op: PutOp) -> tuple[str, dict[str, Any] | None]:
        """A put or delete checked, as ``(document id, arguments of memory.add)`` (``None``: a delete); nothing is
        written, so a batch with one bad value writes none of its items."""
        namespace = tuple(op.namespace)
        doc_id = item_document_id(namespace, op.key)
        if op.value is None:
            return doc_id, None
        if not isinstance(op.value, Mapping):
            raise ValidationError(f"a value is a dict, got {type(op.value).__name__}")
        try:  # JSON: string keys, finite numbers, no sets or objects
            value = validate_metadata(dict(op.value))
        except ValidationError as e:
            raise ValidationError(f"the value of {namespace!r}/{op.key!r} cannot be stored: {e}") from None
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False, indent=1)
        texts = self._texts(value, op.index)
        metadata: dict[str, Any] = {
            META: {"namespace": list(namespace), "key": op.key, "value": value},
            PREFIXES: [namespace_prefix_id(namespace[:n]) for n in range(len(namespace) + 1)],
            INDEXED: bool(texts),
        }
        metadata.update(
            {FIELD + k: v for k, v in value.items() if _is_short_str(v) or (_is_number(v) and math.isfinite(v))}
        )
        args: dict[str, Any] = {"text": text, "metadata": validate_metadata(metadata)}
        if self._chunks_supported:  # (a RemoteMemory's server chunks the JSON itself)
            args["chunks"] = [ChunkSpec(i, t, 0, len(text), approx_token_count(t)) for i, t in enumerate(texts)]
        return doc_id, args

    def _write(self, doc_id: str, args: dict[str, Any] | None) -> None:
        if args is None:
            with contextlib.suppress(NotFoundError):  # deleting a missing item is no error
                self.memory.delete(doc_id, namespace=self.namespace)
            return
        self.memory.add(document_id=doc_id, namespace=self.namespace, **args)

    def _iter_stored(self, prefix: tuple[str, ...]) -> Iterator[tuple[DocumentInfo, _Stored]]:
        """Every item under ``prefix``, in document-id order (namespace, then key), a page at a time."""
        offset, start = 0, namespace_prefix_id(prefix)
        while True:
            page = self.memory.list(namespace=self.namespace, limit=PAGE, offset=offset, prefix=start)
            for info in page:
                stored = _stored(info.metadata)
                if stored is not None:
                    yield info, stored
            if len(page) < PAGE:
                return
            offset += PAGE

    def _search(self, op: SearchOp) -> list[SearchItem]:
        _check_filter(op.filter)
        if op.limit < 0 or op.offset < 0:
            raise ValidationError(f"limit and offset must be >= 0, got {op.limit} and {op.offset}")
        prefix = tuple(op.namespace_prefix)
        want = op.offset + op.limit
        if not op.query or not op.query.strip():
            found = []
            for info, stored in self._iter_stored(prefix):
                if value_matches(stored.value, op.filter):
                    found.append(_search_item(info, stored))
                    if len(found) >= want:
                        break
            return found[op.offset : want]
        ranked = self._ranked(op.query, prefix, op.filter, want)
        out: list[SearchItem] = []
        for doc_id, score in ranked[op.offset : want]:
            try:
                info = self.memory.get(doc_id, namespace=self.namespace)
            except NotFoundError:  # deleted since the search
                continue
            hit = _stored(info.metadata)
            if hit is not None:
                out.append(_search_item(info, hit, score))
        if len(ranked) < want:  # unindexed items follow, unscored (as in LangGraph's InMemoryStore)
            skip = max(op.offset - len(ranked), 0)
            for info, stored in self._iter_stored(prefix):
                if len(out) >= op.limit:
                    break
                if not stored.indexed and value_matches(stored.value, op.filter):
                    if skip:
                        skip -= 1
                        continue
                    out.append(_search_item(info, stored))
        return out

    def _ranked(
        self, query: str, prefix: tuple[str, ...], flt: Mapping[str, Any] | None, want: int
    ) -> list[tuple[str, float]]:
        """Up to ``want`` indexed item ids under ``prefix`` that match ``flt``, best first, with their scores.

        Chunk hits fold to the best per item; the search widens until ``want`` items are found or no more chunks
        match (up to the memory's largest ``k``).
        """
        from memory.services.query import MAX_K

        ours: dict[str, Any] = {
            "$and": [{PREFIXES: {"$contains": namespace_prefix_id(prefix)}}, {INDEXED: True}, *_pushdown(flt)]
        }
        k = min(max(8, 4 * want), MAX_K)
        while True:
            hits: list[SearchHit] = self.memory.search(query, k=k, namespace=self.namespace, filter=ours)
            best: dict[str, float] = {}
            for h in hits:
                if h.document_id in best:
                    continue
                stored = _stored(h.metadata)
                if stored is not None and value_matches(stored.value, flt):
                    best[h.document_id] = float(h.score)
            if len(best) >= want or len(hits) < k or k >= MAX_K:
                return list(best.items())
            k = min(k * 4, MAX_K)

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = tuple(op.match_conditions or ())
        if op.max_depth is not None and op.max_depth < 1:
            raise ValidationError(f"max_depth must be >= 1, got {op.max_depth}")
        # A literal prefix (no wildcard) narrows what is read.
        literal: tuple[str, ...] = ()
        for c in conditions:
            if c.match_type == "prefix":
                literal = tuple(c.path[: next((i for i, p in enumerate(c.path) if p == "*"), len(c.path))])
        found: set[tuple[str, ...]] = set()
        for _, stored in self._iter_stored(literal):
            ns = stored.namespace
            if all(_does_match(c, ns) for c in conditions):
                found.add(ns[: op.max_depth] if op.max_depth is not None else ns)
        return sorted(found)[op.offset : op.offset + op.limit]

    # ------------------------------------------------------------------ beyond other stores
    def add_conversation(self, messages: Any, *, session: str, extract: Any = None) -> Any:
        """Record a thread's messages (LangChain messages, dicts or ``(role, text)``) in conversation memory:
        the transcript ``conversations/<session>`` of this store's memory namespace and, with ``extract``, the
        facts stated, each superseding older ones about its subject (see
        :meth:`ParametricMemory.add_conversation`; a ``RemoteMemory`` takes ``"rules"`` / ``"model"``).
        These are documents of the memory, not store items: ask them with ``store.memory.query``."""
        return self.memory.add_conversation(messages, session=session, namespace=self.namespace, extract=extract)

    def internalize(
        self, namespace: tuple[str, ...], *, method: str = "auto", tier: str = "instant", force: bool = False
    ) -> AdapterInfo:
        """Turn every item under ``namespace`` into one adapter, and return it.

        The items' values are written, one per line (``namespace / key: value``), to a digest document
        ``lgd/<labels>`` of the memory namespace (a new version when they changed), which the memory internalizes
        with ``method`` (``auto``, ``d2l``, ``cd``, ``self-study``) and ``tier`` (``full``: the instant adapter,
        then the self-study one; see :meth:`ParametricMemory.internalize`). Idempotent: the same items give the
        same adapter.
        """
        namespace = tuple(namespace)
        validate_op_namespace(SearchOp(namespace))
        if tier != "instant" and not self._chunks_supported:
            raise ValidationError("tier='full' runs in-process: use a ParametricMemory (or the server's HTTP API)")
        lines = [
            f"{'/'.join(s.namespace)} / {s.key}: {json.dumps(s.value, sort_keys=True, ensure_ascii=False)}"
            for _, s in self._iter_stored(namespace)
        ]
        if not lines:
            raise NotFoundError(f"no items under {namespace!r} in namespace {self.namespace!r}: nothing to internalize")
        digest = self.digest_id(namespace)
        self.memory.add(
            "\n".join(lines),
            document_id=digest,
            namespace=self.namespace,
            title=f"LangGraph memories under {'/'.join(namespace) or '(all)'}",
            metadata={META + "_digest": list(namespace)},
        )
        if tier == "instant":  # (what a RemoteMemory takes too)
            return self.memory.internalize(digest, namespace=self.namespace, method=method, force=force)
        return self.memory.internalize(digest, namespace=self.namespace, method=method, force=force, tier=tier)

    @staticmethod
    def digest_id(namespace: tuple[str, ...]) -> str:
        """The document id of the digest of the items under ``namespace`` (see :meth:`internalize`)."""
        return namespace_prefix_id(tuple(namespace), root=DIGEST_PREFIX).rstrip("/")

    def answer(
        self, namespace: tuple[str, ...], question: str, *, mode: str = "parametric", **kwargs: Any
    ) -> QueryResult:
        """Answer ``question`` from the adapter of :meth:`internalize` (``mode="parametric"``), or with the
        router (``"auto"``, ``"hybrid"``, ``"retrieval"``) over that digest only; the result says which."""
        return self.memory.query(
            question, namespace=self.namespace, mode=mode, document_ids=[self.digest_id(tuple(namespace))], **kwargs
        )


__all__ = [
    "ParametricMemoryStore",
    "decode_label",
    "encode_label",
    "item_document_id",
    "namespace_prefix_id",
    "parse_document_id",
    "value_matches",
]
