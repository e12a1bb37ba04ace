"""A vector index over chunk embeddings: hard namespace partitions, metadata filters, exact or ANN search.

The index is database-agnostic: it is given string ids, vectors and metadata dicts, and answers
``search`` with :class:`Hit` objects. The caller (``memory.api``) keeps it in step with the ``chunks``
table and can rebuild it from the stored embeddings at any time.

Design:

- **Namespaces are hard partitions.** Each namespace owns its own arrays and its own ANN graph; a
  search reads exactly one partition, so no filter can reach another namespace's ids (and a filter
  naming ``namespace`` is rejected, see :mod:`memory.retrieval.filters`).
- **Scores are cosine similarities** in ``[-1, 1]``: vectors are L2-normalised on the way in, and
  every returned score is recomputed exactly from the stored vector, whichever backend found it.
- **Backends.** Below ``ann_threshold`` vectors per namespace, search is an exact single-threaded
  numpy matvec (under 1 ms per 10k x 384 here). From there on, an HNSW graph from ``usearch`` is built
  on first search, or ahead of it by :meth:`VectorIndex.prepare` (about 6 s per 10k vectors on one
  core), and kept up to date on add/delete. Without ``usearch`` installed, search
  stays exact. ``search(..., exact=True)`` forces exact search.
- **Filters.** A filter is first evaluated column-wise over the namespace (numpy over cached
  per-field columns, about 1 ms per 100k rows). A matching subset of at most ``ann_threshold`` rows
  is scanned exactly. A larger one is served from the graph: it is asked for
  ``k * overfetch / selectivity`` candidates (8x more on a second round), which are filtered; when
  fewer than ``k`` survive, the search falls back to an exact scan of the filtered subset, so a
  filter never loses hits.
- **Upserts.** Adding an id that exists replaces its vector and metadata; deleting a missing id
  is a no-op.
- **Persistence.** ``save`` writes one ``.npz`` file (vectors, ids, JSON metadata, and the serialised
  HNSW graphs) to a temporary file and renames it into place, so a crash never leaves a torn file.

>>> import numpy as np
>>> idx = VectorIndex(dim=3)
>>> idx.add(["a", "b"], np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32), [{"t": 1}, {"t": 2}], namespace="n1")
>>> [h.id for h in idx.search(np.array([1, 0.1, 0], dtype=np.float32), k=1, namespace="n1")]
['a']
>>> idx.search(np.array([1, 0, 0], dtype=np.float32), k=1, namespace="n2")
[]
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from memory.config import DEFAULT_NAMESPACE
from memory.errors import IntegrityError, NotFoundError, ValidationError
from memory.retrieval.filters import Column, Filter, build_column, compile_filter

log = logging.getLogger(__name__)

Backend = Literal["auto", "exact", "usearch"]
FORMAT_VERSION = 1
DEFAULT_ANN_THRESHOLD = 20_000  # exact search of 20k x 384 float32 takes ~2 ms here; HNSW pays off above
# A loaded partition gets room for n / LOAD_ROOM more rows, so that the first adds after a load do not copy every
# vector into a bigger matrix (1M x 384: 1.5 GB, about a second).
LOAD_ROOM = 16
_READ_BLOCK = 1 << 24


def usearch_available() -> bool:
    """Whether the optional ANN backend (``usearch``) can be imported.

    >>> isinstance(usearch_available(), bool)
    True
    """
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk id, its cosine similarity to the query, and a copy of its metadata."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnnParams:
    """HNSW parameters for the usearch backend (usearch's own names)."""

    connectivity: int = 16  # graph degree M
    expansion_add: int = 64  # ef_construction; 128 doubles the build time for +0.001 recall@5 (20k x 384)
    expansion_search: int = 128  # ef at query time; 100k x 384 recall@5: 64 -> 0.957, 96 -> 0.980, 128 -> 0.990
    overfetch: int = 4  # filtered search: graph candidates per wanted hit, divided by the filter's selectivity
    # Graph vector storage. Hits are rescored exactly from the float32 rows, so the graph only has to
    # rank roughly: bf16 builds 5x faster than f32 at 20k x 384 (recall@5 0.997 before rescoring).
    # "auto": bf16 where the CPU has AVX512-BF16, else f16 (F16C is on every x86-64 since 2012).
    dtype: str = "auto"


def _graph_dtype(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        return "f16"
    return "bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else "f16"


def _matvec(mat: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``mat @ q`` on one thread.

    A query matvec is memory-bound; multi-threaded BLAS gains little on it and, on a busy CPU, its
    threads wait for each other (measured here: 28 ms instead of 0.9 ms for 10k x 384 under load).
    numpy's own einsum loop is single-threaded and SIMD.
    """
    return np.einsum("ij,j->i", mat, q)


# ---------------------------------------------------------------------------- partition
class _Partition:
    """The rows of one namespace: a growable float32 matrix, ids, metadata and an optional HNSW graph.

    Rows are dense (``0..n-1``); delete moves the last row into the hole. Each row also carries a
    64-bit key, unique within the partition and never reused, which is the row's label in the graph.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.keys = np.empty(0, dtype=np.uint64)
        self.ids: list[str] = []
        self.metadata: list[dict[str, Any]] = []
        self.row_of: dict[str, int] = {}
        self.row_of_key: dict[int, int] = {}
        self.next_key = 0
        self.ann: Any = None  # usearch.index.Index or None
        self.ann_removed = 0  # graph entries removed since the build (usearch leaves tombstones)
        self.columns: dict[str, Column] = {}  # filter columns, dropped on every write

    # ---------------------------------------------------------------- storage
    def _reserve(self, extra: int) -> None:
        need = self.n + extra
        if need <= len(self.vectors):
            return
        cap = max(need, 2 * len(self.vectors), 64)
        vectors = np.empty((cap, self.dim), dtype=np.float32)
        vectors[: self.n] = self.vectors[: self.n]
        keys = np.empty(cap, dtype=np.uint64)
        keys[: self.n] = self.keys[: self.n]
        self.vectors, self.keys = vectors, keys

    def upsert(self, ids: list[str], vectors: np.ndarray, metadata: list[dict[str, Any]], threads: int) -> None:
        self.columns.clear()
        new_rows: list[int] = []
        for i, id_ in enumerate(ids):
            row = self.row_of.get(id_)
            if row is None:
                new_rows.append(i)
                continue
            self.vectors[row] = vectors[i]
            self.metadata[row] = metadata[i]
            if self.ann is not None:  # re-label: a fresh key for the new vector
                old = int(self.keys[row])
                self.ann.remove(old)
                self.ann_removed += 1
                del self.row_of_key[old]
                key = self._new_key()
                self.keys[row] = key
                self.row_of_key[key] = row
                self.ann.add(np.uint64(key), vectors[i], threads=1)
        if not new_rows:
            return
        m = len(new_rows)
        self._reserve(m)
        start = self.n
        keys = np.arange(self.next_key, self.next_key + m, dtype=np.uint64)
        self.next_key += m
        self.vectors[start : start + m] = vectors[new_rows]
        self.keys[start : start + m] = keys
        for j, i in enumerate(new_rows):
            self.ids.append(ids[i])
            self.metadata.append(metadata[i])
            self.row_of[ids[i]] = start + j
            self.row_of_key[int(keys[j])] = start + j
        self.n += m
        if self.ann is not None:
            self.ann.add(keys, self.vectors[start : start + m], threads=threads)

    def _new_key(self) -> int:
        key = self.next_key
        self.next_key += 1
        return key

    def delete(self, ids: Sequence[str]) -> int:
        self.columns.clear()
        removed = 0
        for id_ in ids:
            row = self.row_of.pop(id_, None)
            if row is None:
                continue
            key = int(self.keys[row])
            del self.row_of_key[key]
            if self.ann is not None:
                self.ann.remove(key)
                self.ann_removed += 1
            last = self.n - 1
            if row != last:  # move the last row into the hole
                self.vectors[row] = self.vectors[last]
                self.keys[row] = self.keys[last]
                self.ids[row] = self.ids[last]
                self.metadata[row] = self.metadata[last]
                self.row_of[self.ids[row]] = row
                self.row_of_key[int(self.keys[row])] = row
            self.ids.pop()
            self.metadata.pop()
            self.n -= 1
            removed += 1
        return removed

    # ---------------------------------------------------------------- ANN
    def build_ann(self, params: AnnParams, threads: int) -> None:
        from usearch.index import Index

        ann = Index(
            ndim=self.dim,
            metric="ip",  # vectors are unit-norm, so inner product = cosine
            dtype=_graph_dtype(params.dtype),
            connectivity=params.connectivity,
            expansion_add=params.expansion_add,
            expansion_search=params.expansion_search,
        )
        if self.n:
            ann.add(self.keys[: self.n], self.vectors[: self.n], threads=threads)
        self.ann = ann
        self.ann_removed = 0
        log.info("built HNSW graph over %d vectors (dim %d)", self.n, self.dim)

    def ann_rows(self, q: np.ndarray, count: int) -> np.ndarray:
        matches = self.ann.search(q, count, threads=1)
        keys = np.asarray(matches.keys, dtype=np.uint64)
        rows = [self.row_of_key.get(int(k), -1) for k in keys]
        return np.array([r for r in rows if r >= 0], dtype=np.int64)

    # ---------------------------------------------------------------- search
    def column(self, field: str) -> Column:
        if field not in self.columns:
            self.columns[field] = build_column(self.metadata, field)
        return self.columns[field]

    def mask(self, flt: Filter) -> np.ndarray:
        return flt.mask(self.column, self.n)

    def top_k(self, rows: np.ndarray | None, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Exact top ``k`` of ``rows`` (all rows when ``None``), best first, ties by row."""
        if rows is None:
            scores = _matvec(self.vectors[: self.n], q)
        elif len(rows) * 3 > self.n:  # a wide subset: one contiguous matvec beats gathering rows
            scores = _matvec(self.vectors[: self.n], q)[rows]
        else:
            scores = _matvec(self.vectors[rows], q)
        if len(scores) == 0:
            return []
        if k < len(scores):
            part = np.argpartition(-scores, k - 1)[:k]
        else:
            part = np.arange(len(scores))
        row_ids = part if rows is None else rows[part]
        order = np.lexsort((row_ids, -scores[part]))
        return [(int(row_ids[o]), float(scores[part][o])) for o in order]


# ---------------------------------------------------------------------------- index
class VectorIndex:
    """An in-memory vector index partitioned by namespace; see the module docstring for the design.

    Args:
        dim (`int`, *optional*): vector dimension; fixed by the first ``add`` when not given.
        backend (`str`): ``"auto"`` (HNSW from ``usearch`` above ``ann_threshold`` when installed,
            exact below), ``"exact"`` (always numpy), or ``"usearch"`` (HNSW at any size; raises
            :class:`~memory.errors.ValidationError` when usearch is missing).
        ann_threshold (`int`): vectors per namespace from which ``"auto"`` uses HNSW; also the size
            up to which a filtered subset is scanned exactly rather than searched in the graph.
        ann_params (`AnnParams`): HNSW parameters.
        threads (`int`): threads for bulk HNSW inserts (0 = all cores). Queries use one thread.
        model (`str`, *optional*): name of the embedder that made the vectors (``Embedder.name``); kept
            and saved with the index so that a caller can refuse to mix vectors of two models.

    >>> import numpy as np
    >>> idx = VectorIndex(backend="exact")
    >>> idx.add(["x"], np.ones((1, 4), dtype=np.float32), [{"lang": "en"}])
    >>> idx.search(np.ones(4, dtype=np.float32), k=3, filter={"lang": {"$in": ["en", "fr"]}})[0].id
    'x'
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        backend: Backend = "auto",
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
        ann_params: AnnParams | None = None,
        threads: int = 1,
        model: str | None = None,
    ) -> None:
        if backend not in ("auto", "exact", "usearch"):
            raise ValidationError(f"backend must be 'auto', 'exact' or 'usearch', got {backend!r}")
        if backend == "usearch" and not usearch_available():
            raise ValidationError("backend='usearch' needs the usearch package: pip install usearch")
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValidationError(f"dim must be a positive int, got {dim!r}")
        if ann_threshold < 1:
            raise ValidationError(f"ann_threshold must be >= 1, got {ann_threshold!r}")
        self.dim = dim
        self.backend: Backend = backend
        self.ann_threshold = ann_threshold
        self.ann_params = ann_params or AnnParams()
        self.threads = threads
        self.model = model
        self._parts: dict[str, _Partition] = {}
        self.extra: dict[str, Any] = {}  # what the caller saved with the index (:meth:`save`), read by :meth:`load`
        self._lock = threading.RLock()
        self._has_usearch = backend != "exact" and usearch_available()

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        with self._lock:
            return sum(p.n for p in self._parts.values())

    def __repr__(self) -> str:
        return (
            f"VectorIndex(dim={self.dim}, model={self.model!r}, backend={self.backend!r}, "
            f"namespaces={len(self._parts)}, vectors={len(self)})"
        )

    @property
    def expansion_search(self) -> int:
        """HNSW candidate list at query time (``ef``): higher finds more of the true neighbours, slower."""
        return self.ann_params.expansion_search

    @expansion_search.setter
    def expansion_search(self, ef: int) -> None:
        if not isinstance(ef, int) or isinstance(ef, bool) or ef < 1:
            raise ValidationError(f"expansion_search must be a positive int, got {ef!r}")
        with self._lock:
            self.ann_params = replace(self.ann_params, expansion_search=ef)
            for part in self._parts.values():
                if part.ann is not None:
                    part.ann.expansion_search = ef

    def count(self, namespace: str = DEFAULT_NAMESPACE) -> int:
        """Number of vectors in ``namespace`` (0 for an unknown namespace).

        >>> VectorIndex(dim=2).count("nobody")
        0
        """
        _check_namespace(namespace)
        with self._lock:
            part = self._parts.get(namespace)
            return part.n if part else 0

    def namespaces(self) -> list[str]:
        """The namespaces holding at least one vector, sorted.

        >>> VectorIndex(dim=2).namespaces()
        []
        """
        with self._lock:
            return sorted(ns for ns, p in self._parts.items() if p.n)

    def contains(self, id: str, namespace: str = DEFAULT_NAMESPACE) -> bool:
        """Whether ``id`` is stored in ``namespace``.

        >>> VectorIndex(dim=2).contains("a")
        False
        """
        _check_namespace(namespace)
        with self._lock:
            part = self._parts.get(namespace)
            return part is not None and id in part.row_of

    def ids(self, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
        """All ids stored in ``namespace`` (in storage order).

        >>> VectorIndex(dim=2).ids()
        []
        """
        _check_namespace(namespace)
        with self._lock:
            part = self._parts.get(namespace)
            return list(part.ids) if part else []

    def get_metadata(self, id: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """A copy of the metadata of ``id``; raises :class:`~memory.errors.NotFoundError` if absent.

        >>> idx = VectorIndex(dim=1); idx.add(["a"], np.ones((1, 1), np.float32), [{"p": 3}])
        >>> idx.get_metadata("a")
        {'p': 3}
        """
        _check_namespace(namespace)
        with self._lock:
            part = self._parts.get(namespace)
            row = part.row_of.get(id) if part else None
            if part is None or row is None:
                raise NotFoundError(f"id {id!r} is not in namespace {namespace!r}")
            return copy.deepcopy(part.metadata[row])

    # ------------------------------------------------------------------ writes
    def add(
        self,
        ids: Sequence[str],
        vectors: Any,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        """Insert or replace (by id) ``len(ids)`` vectors with their metadata in ``namespace``.

        ``vectors`` is anything ``np.asarray`` turns into ``[n, dim]`` finite numbers; it is copied and
        L2-normalised. ``metadata`` dicts must have string keys and JSON values; they are deep-copied.
        Within one call a repeated id keeps its last occurrence. Everything is validated before the
        index changes.

        >>> idx = VectorIndex(dim=2)
        >>> idx.add(["a"], [[3.0, 4.0]], [{"src": "x.md"}], namespace="team")
        >>> idx.count("team")
        1
        """
        _check_namespace(namespace)
        ids = _check_ids(ids)
        mat = _as_matrix(vectors, len(ids), self.dim)
        metas = _check_metadata(metadata, len(ids))
        if not ids:
            return
        if len(set(ids)) != len(ids):  # last occurrence wins
            last = {id_: i for i, id_ in enumerate(ids)}
            keep = sorted(last.values())
            ids, mat, metas = [ids[i] for i in keep], mat[keep], [metas[i] for i in keep]
        with self._lock:
            if self.dim is None:
                self.dim = mat.shape[1]
            elif mat.shape[1] != self.dim:
                raise ValidationError(f"vectors have dimension {mat.shape[1]}, this index holds dimension {self.dim}")
            part = self._parts.get(namespace)
            if part is None:
                part = self._parts[namespace] = _Partition(self.dim)
            part.upsert(ids, mat, metas, self.threads)

    def delete(self, ids: Sequence[str] | None, namespace: str = DEFAULT_NAMESPACE) -> int:
        """Delete ``ids`` from ``namespace`` (all of it when ``ids`` is None); return how many were removed.

        Ids that are not there are ignored.

        >>> idx = VectorIndex(dim=1); idx.add(["a", "b"], [[1.0], [2.0]])
        >>> idx.delete(["a", "zzz"]), len(idx)
        (1, 1)
        """
        _check_namespace(namespace)
        if ids is not None:
            ids = _check_ids(ids)
        with self._lock:
            part = self._parts.get(namespace)
            if part is None:
                return 0
            if ids is None:
                removed = part.n
                del self._parts[namespace]
                return removed
            removed = part.delete(ids)
            if part.n == 0:
                del self._parts[namespace]
            return removed

    # ------------------------------------------------------------------ search
    def search(
        self,
        query_vector: Any,
        k: int = 4,
        namespace: str = DEFAULT_NAMESPACE,
        filter: Mapping[str, Any] | None = None,
        *,
        exact: bool = False,
    ) -> list[Hit]:
        """The ``k`` vectors of ``namespace`` most cosine-similar to ``query_vector`` that match ``filter``.

        Hits come best first (ties broken deterministically). A malformed filter raises
        :class:`~memory.errors.ValidationError` before anything is read; an unknown namespace gives
        ``[]``. ``exact=True`` skips the ANN graph.

        >>> idx = VectorIndex(dim=2); idx.add(["a", "b"], [[1.0, 0.0], [0.0, 1.0]], [{"y": 1}, {"y": 2}])
        >>> [(h.id, round(h.score, 2)) for h in idx.search([1.0, 1.0], k=2, filter={"y": {"$gt": 1}})]
        [('b', 0.71)]
        """
        pred = compile_filter(filter)
        _check_namespace(namespace)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValidationError(f"k must be a non-negative int, got {k!r}")
        k = int(k)
        with self._lock:
            part = self._parts.get(namespace)
            if part is None or part.n == 0 or k == 0:
                return []
            q = _as_query(query_vector, part.dim)
            use_ann = not exact and self._use_ann(part)
            found = None
            if pred is None:
                if use_ann:
                    found = self._ann_search(part, q, k, None, part.n)
                if found is None:
                    found = part.top_k(None, q, k)
            else:
                mask = part.mask(pred)  # vectorised over cached columns: ~1 ms per 100k rows
                matching = int(mask.sum())
                if use_ann and matching > self.ann_threshold:
                    found = self._ann_search(part, q, k, mask, matching)
                if found is None:
                    found = part.top_k(np.flatnonzero(mask), q, k)
            return [Hit(part.ids[r], s, copy.deepcopy(part.metadata[r])) for r, s in found]

    def prepare(self, namespace: str | None = None) -> list[str]:
        """Build now the HNSW graphs that the first search would otherwise build (seconds per 10k vectors).

        Call it after a bulk load, off the query path. Returns the namespaces whose graph is ready.

        >>> VectorIndex(dim=2).prepare()
        []
        """
        if namespace is not None:
            _check_namespace(namespace)
        with self._lock:
            names = [namespace] if namespace is not None else sorted(self._parts)
            return [ns for ns in names if ns in self._parts and self._use_ann(self._parts[ns])]

    def _use_ann(self, part: _Partition) -> bool:
        if not self._has_usearch:
            return False
        if part.ann is not None and part.ann_removed > max(1_000, part.n):
            part.ann = None  # mostly tombstones: rebuild from the live rows
        if part.ann is None:
            if self.backend == "auto" and part.n < self.ann_threshold:
                return False
            part.build_ann(self.ann_params, self.threads)
        return True

    def _ann_search(
        self, part: _Partition, q: np.ndarray, k: int, mask: np.ndarray | None, matching: int
    ) -> list[tuple[int, float]] | None:
        """Top ``k`` via the graph (rescored exactly), or ``None`` to ask for an exact scan.

        With a filter (``mask``, ``matching`` rows pass), ask for ``k * overfetch / selectivity``
        candidates, then 8x more; give up (exact scan of the subset) when that is still short.
        """
        want = min(k, matching)
        # 2k candidates even without a filter: the exact rescoring then repairs the graph's coarse order
        fetch = 2 * k if mask is None else -(-k * self.ann_params.overfetch * part.n // max(1, matching))
        for _round in range(2):
            if fetch * 2 >= part.n:  # a scan is as cheap as such a big graph walk, and exact
                return None
            rows = part.ann_rows(q, fetch)
            if mask is not None and len(rows):
                rows = rows[mask[rows]]
            if len(rows) >= want:
                return part.top_k(rows, q, k)
            fetch *= 8
        log.debug("the graph gave fewer than %d matching hits; exact scan of the filtered subset", want)
        return None

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> None:
        """Write the whole index to one file atomically (temporary file + fsync + rename), with ``extra``: data
        of the caller's (JSON) that describes this very content, read back as :attr:`extra` by :meth:`load`.

        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "idx.npz")
        >>> idx = VectorIndex(dim=1); idx.add(["a"], [[1.0]]); idx.save(p, extra={"synced": 7})
        >>> loaded = VectorIndex.load(p)
        >>> len(loaded), loaded.extra
        (1, {'synced': 7})
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            arrays: dict[str, np.ndarray] = {}
            spaces = []
            for i, (ns, part) in enumerate(sorted(self._parts.items())):
                arrays[f"v{i}"] = part.vectors[: part.n]
                arrays[f"k{i}"] = part.keys[: part.n]
                has_ann = part.ann is not None
                if has_ann:
                    arrays[f"a{i}"] = np.frombuffer(bytes(part.ann.save()), dtype=np.uint8)
                spaces.append(
                    {
                        "namespace": ns,
                        "ids": part.ids,
                        "metadata": part.metadata,
                        "next_key": part.next_key,
                        "ann": has_ann,
                    }
                )
            header = {
                "format": "pmem-vector-index",
                "version": FORMAT_VERSION,
                "dim": self.dim,
                "model": self.model,
                "backend": self.backend,
                "ann_threshold": self.ann_threshold,
                "ann_params": self.ann_params.__dict__,
                "namespaces": spaces,
                "extra": dict(extra or {}),
            }
            arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub sends **kwds to allow_pickle
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)
        log.debug("saved %r to %s", self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threads: int = 1) -> VectorIndex:
        """Read an index written by :meth:`save`.

        Raises :class:`~memory.errors.NotFoundError` if the file is missing and
        :class:`~memory.errors.IntegrityError` if it is corrupt. Saved HNSW graphs are restored when
        ``usearch`` is installed, dropped (exact search) otherwise.

        >>> VectorIndex.load("/nonexistent/idx.npz")
        Traceback (most recent call last):
        ...
        memory.errors.NotFoundError: no vector index file at /nonexistent/idx.npz
        """
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"no vector index file at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode("utf-8"))
                if header.get("format") != "pmem-vector-index" or header.get("version") != FORMAT_VERSION:
                    raise IntegrityError(f"{path} is not a version-{FORMAT_VERSION} vector index file")
                idx = cls(
                    header["dim"],
                    backend=header["backend"] if header["backend"] == "exact" or usearch_available() else "exact",
                    ann_threshold=header["ann_threshold"],
                    ann_params=AnnParams(**header["ann_params"]),
                    threads=threads,
                    model=header.get("model"),
                )
                idx.extra = dict(header.get("extra") or {})
                for i, space in enumerate(header["namespaces"]):
                    part = _Partition(idx.dim or 1)
                    ids, metas = list(space["ids"]), list(space["metadata"])
                    room = max(64, len(ids) // LOAD_ROOM)
                    vectors, keys = _read_rows(data, f"v{i}", room), _read_rows(data, f"k{i}", room)
                    n = len(vectors) - room
                    if not (n == len(keys) - room == len(ids) == len(metas)) or vectors.shape[1:] != (part.dim,):
                        raise IntegrityError(f"{path}: namespace {space['namespace']!r} has inconsistent arrays")
                    part.vectors = vectors.astype(np.float32, copy=False)
                    part.keys = keys.astype(np.uint64, copy=False)
                    part.n, part.ids, part.metadata = n, ids, metas
                    part.row_of = {id_: r for r, id_ in enumerate(ids)}
                    part.row_of_key = {int(key): r for r, key in enumerate(part.keys[:n])}  # not the spare rows
                    part.next_key = int(space["next_key"])
                    if space["ann"] and idx._has_usearch:
                        part.ann = _restore_graph(bytes(data[f"a{i}"]), part.n, idx.ann_params)
                    idx._parts[space["namespace"]] = part
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, EOFError) as e:
            raise IntegrityError(
                f"vector index file {path} is corrupt or truncated ({e}); rebuild it from the database"
            ) from e
        return idx


def _read_rows(data: Any, name: str, room: int) -> np.ndarray:
    """The array ``name`` of an open ``.npz`` in a new array with ``room`` more rows at the end (uninitialised),
    read a block at a time: no second full-size copy while loading, and no copy of every row on the first add."""
    with data.zip.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran or not shape or dtype.hasobject:
            raise ValueError(f"{name}: not a C-ordered array of numbers")
        out = np.empty((shape[0] + room, *shape[1:]), dtype=dtype)
        flat = out[: shape[0]].reshape(-1).view(np.uint8)
        done = 0
        while done < len(flat):
            block = fh.read(min(_READ_BLOCK, len(flat) - done))
            if not block:
                raise EOFError(f"{name}: truncated")
            flat[done : done + len(block)] = np.frombuffer(block, dtype=np.uint8)
            done += len(block)
    return out


def _restore_graph(blob: bytes, n: int, params: AnnParams) -> Any:
    """A saved HNSW graph, or ``None`` (rebuilt from the vectors on first search) if it is unreadable.

    usearch's file keeps the graph, not the expansion factors (a restored graph searches with usearch's default
    ef of 64): they are set again from the saved ``params``."""
    from usearch.index import Index

    try:
        ann = Index.restore(blob)
    except (RuntimeError, ValueError) as e:
        log.warning("saved HNSW graph is unreadable (%s); it will be rebuilt", e)
        return None
    if ann is None or len(ann) != n:
        log.warning("saved HNSW graph does not match the saved vectors; it will be rebuilt")
        return None
    # usearch defines these setters apart from their getters, which hides them from type checkers
    ann.expansion_search = params.expansion_search  # type: ignore[misc]
    ann.expansion_add = params.expansion_add  # type: ignore[misc]
    return ann


# ---------------------------------------------------------------------------- validation
def _check_namespace(namespace: Any) -> None:
    if not isinstance(namespace, str) or not namespace:
        raise ValidationError(f"namespace must be a non-empty string, got {namespace!r}")


def _check_ids(ids: Any) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise ValidationError(f"ids must be a list of strings, not a single {type(ids).__name__}")
    out = list(ids)
    for id_ in out:
        if not isinstance(id_, str) or not id_:
            raise ValidationError(f"every id must be a non-empty string, got {id_!r}")
    return out


def _as_matrix(vectors: Any, n: int, dim: int | None) -> np.ndarray:
    try:
        mat = np.array(vectors, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"vectors must be a [n, dim] array of numbers: {e}") from e
    if n == 0 and mat.size == 0:
        return mat.reshape(0, dim or 0)
    if mat.ndim != 2 or mat.shape[0] != n:
        raise ValidationError(f"expected vectors of shape [{n}, dim] for {n} ids, got {mat.shape}")
    if mat.shape[1] == 0:
        raise ValidationError("vectors have dimension 0")
    if not np.isfinite(mat).all():
        raise ValidationError("vectors contain NaN or infinity")
    return _normalise(mat)


def _as_query(vector: Any, dim: int) -> np.ndarray:
    try:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"query vector must be a 1-d array of numbers: {e}") from e
    if q.shape != (dim,):
        raise ValidationError(f"query vector has shape {q.shape}, this index holds dimension {dim}")
    if not np.isfinite(q).all():
        raise ValidationError("query vector contains NaN or infinity")
    return _normalise(q[None, :])[0]


def _normalise(mat: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # a zero vector stays zero: cosine 0 with everything
    return np.ascontiguousarray(mat / norms, dtype=np.float32)


def _check_metadata(metadata: Sequence[Mapping[str, Any]] | None, n: int) -> list[dict[str, Any]]:
    if metadata is None:
        return [{} for _ in range(n)]
    metas = list(metadata)
    if len(metas) != n:
        raise ValidationError(f"got {len(metas)} metadata dicts for {n} ids")
    out = []
    for md in metas:
        if md is None:
            md = {}
        if not isinstance(md, Mapping) or not all(isinstance(key, str) for key in md):
            raise ValidationError(f"metadata must be a dict with string keys, got {md!r}")
        try:  # JSON round trip: a deep copy that also proves the index can be saved
            out.append(json.loads(json.dumps(md, allow_nan=False)))
        except (TypeError, ValueError) as e:
            raise ValidationError(f"metadata must hold JSON values (str, number, bool, None, list, dict): {e}") from e
    return out


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["AnnParams", "Hit", "VectorIndex", "usearch_available"]
