"""Retrieval inside PostgreSQL with pgvector: one index shared by every process, filters evaluated in SQL.

Embeddings live in the side table ``chunk_vectors`` (``chunk_id``, ``model``, ``dim``, ``embedding vector``)
created by migration 0004 when the ``vector`` extension is available, with an HNSW cosine index per
dimension (``ix_chunk_vectors_hnsw_<dim>``, a partial expression index over ``embedding::vector(dim)``;
384 is created by the migration, other dimensions on first use).

:func:`sql_filter` compiles the filter language of :mod:`memory.retrieval.filters` to a SQLAlchemy
boolean expression over ``jsonb`` values with every operand a bound parameter, keeping the in-process
semantics: type-aware equality (``true`` never equals ``1``, ``1`` equals ``1.0``), comparisons only
within a kind, a missing field fails every test but ``$ne``/``$nin``/``$exists: false``, strings ordered
by code point (``COLLATE "C"``). ``document_id`` and ``version`` are the document's id and version number
(:func:`~memory.retrieval.filters.filter_fields`).

>>> from sqlalchemy.dialects import postgresql
>>> expr = sql_filter({"lang": "en"}, lambda f: sa.literal_column("m").op("->")(f))
>>> "CAST(%(" in str(expr.compile(dialect=postgresql.dialect()))
True
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Engine

from memory.retrieval.filters import Filter, _And, _Not, _Op, _Or, compile_filter

log = logging.getLogger(__name__)

TABLE = "chunk_vectors"
EF_SEARCH = 100  # HNSW candidate list at query time (pgvector's default is 40); see bench/retrieval.py
MAX_EF_SEARCH = 1_000  # pgvector's limit: a graph walk returns at most this many rows

ValueOf = Callable[[str], sa.ColumnElement[Any]]


# ---------------------------------------------------------------------------- filters
def sql_filter(flt: Mapping[str, Any] | Filter | None, value_of: ValueOf) -> sa.ColumnElement[bool] | None:
    """A SQL boolean for ``flt`` (validated first); ``value_of(field)`` gives the field's ``jsonb`` value,
    SQL NULL when the field is missing. ``None`` for no filter."""
    node = flt if isinstance(flt, Filter) or flt is None else compile_filter(flt)
    return None if node is None else _sql(node, value_of)


def _sql(node: Filter, value_of: ValueOf) -> sa.ColumnElement[bool]:
    if isinstance(node, _Or):  # before _And: _Or subclasses it
        return sa.or_(*(_sql(p, value_of) for p in node.parts))
    if isinstance(node, _And):
        return sa.and_(*(_sql(p, value_of) for p in node.parts))
    if isinstance(node, _Not):
        return sa.not_(_sql(node.inner, value_of))
    assert isinstance(node, _Op), node
    return _op(node, value_of(node.field))


def _json(value: Any) -> sa.ColumnElement[Any]:
    return sa.cast(sa.bindparam(None, json.dumps(value), type_=sa.Text), JSONB)


def _true(expr: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """NULL (a missing field) counts as false, so that ``$not`` of it is true, as in Python."""
    return sa.func.coalesce(expr, sa.false())


def _op(node: _Op, v: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    op, arg = node.op, node.arg
    if op == "$exists":
        return v.is_not(None) if arg else v.is_(None)
    if op in ("$eq", "$ne"):
        eq = _true(v == _json(arg))
        return sa.not_(eq) if op == "$ne" else eq
    if op in ("$in", "$nin"):
        options = sa.cast(sa.bindparam(None, [json.dumps(a) for a in arg], type_=ARRAY(sa.Text)), ARRAY(JSONB))
        found = _true(v == sa.any_(options))  # one bound array, however long the list
        return sa.not_(found) if op == "$nin" else found
    if op == "$contains":
        return _true(sa.and_(sa.func.jsonb_typeof(v) == "array", v.op("@>")(sa.func.jsonb_build_array(_json(arg)))))
    compare = {"$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__", "$lte": "__le__"}[op]
    if isinstance(arg, str):
        text = sa.func.jsonb_build_array(v).op("->>")(sa.literal(0)).collate("C")  # the string, unquoted
        return _true(sa.and_(sa.func.jsonb_typeof(v) == "string", getattr(text, compare)(arg)))
    is_number = sa.func.jsonb_typeof(v) == "number"
    if math.isinf(arg):  # every finite number is below +inf and above -inf
        holds = getattr(0.0, compare)(arg)
        return _true(sa.and_(is_number, sa.true() if holds else sa.false()))
    return _true(sa.and_(is_number, getattr(v, compare)(_json(arg))))


# ---------------------------------------------------------------------------- store
def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form of a vector.

    >>> vector_literal(np.array([0.5, -1.0], dtype=np.float32))
    '[0.5,-1.0]'
    """
    return "[" + ",".join(map(str, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def available(engine: Engine) -> bool:
    """Whether ``engine`` is PostgreSQL with the ``chunk_vectors`` table (migration 0004 with pgvector)."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": TABLE}).scalar_one()


def ensure_dim_index(engine: Engine, dim: int) -> None:
    """Create the HNSW index for ``dim``-dimensional vectors if it is missing (384 comes with the migration)."""
    dim = int(dim)
    name = f"ix_chunk_vectors_hnsw_{dim}"
    with engine.begin() as conn:
        if conn.execute(sa.text("SELECT to_regclass(:i) IS NOT NULL"), {"i": name}).scalar_one():
            return
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.text(
                        f"CREATE INDEX IF NOT EXISTS {name} ON {TABLE} USING hnsw "
                        f"((embedding::vector({dim})) vector_cosine_ops) WHERE dim = {dim}"
                    )
                )
        except sa.exc.DBAPIError as e:  # no privilege: exact scans, still correct
            log.warning("could not create the HNSW index for %d-d vectors (%s); searches scan exactly", dim, e)


chunk_vectors = sa.table(
    TABLE,
    sa.column("chunk_id", sa.Integer),
    sa.column("model", sa.String),
    sa.column("dim", sa.Integer),
)


def upsert_statement() -> sa.TextClause:
    return sa.text(
        f"INSERT INTO {TABLE} (chunk_id, model, dim, embedding) "
        "VALUES (:chunk_id, :model, :dim, CAST(:embedding AS vector)) ON CONFLICT (chunk_id) "
        "DO UPDATE SET model = EXCLUDED.model, dim = EXCLUDED.dim, embedding = EXCLUDED.embedding"
    )


def distance(dim: int, query: np.ndarray) -> sa.ColumnElement[float]:
    """Cosine distance between a row's embedding and ``query``, in the form the HNSW index of ``dim`` serves."""
    dim = int(dim)
    emb: sa.ColumnElement[Any] = sa.literal_column(f"({TABLE}.embedding::vector({dim}))")
    q = sa.cast(sa.bindparam(None, vector_literal(query), type_=sa.Text), _Vector(dim))
    return emb.op("<=>", return_type=sa.Float)(q)


class _Vector(sa.types.UserDefinedType):
    cache_ok = True

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return f"vector({self.dim})"


def version(engine: Engine) -> tuple[int, ...]:
    """The installed pgvector version, e.g. ``(0, 8, 0)``."""
    with engine.connect() as conn:
        v = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar_one()
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def session_settings(
    conn: sa.Connection, k: int, *, ef_search: int = EF_SEARCH, iterative: bool, exact: bool = False
) -> None:
    """Per-transaction settings: an HNSW candidate list of ``ef_search``, at least ``k``, and, on pgvector 0.8
    and later, iterative scans so that a filter rarely leaves fewer than ``k`` hits; ``exact`` turns index scans off
    (what a caller does when the graph still gave fewer than ``k`` rows)."""
    conn.execute(sa.text(f"SET LOCAL hnsw.ef_search = {min(MAX_EF_SEARCH, max(int(ef_search), int(k)))}"))
    if iterative:
        conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    if exact:
        conn.execute(sa.text("SET LOCAL enable_indexscan = off"))


__all__ = [
    "EF_SEARCH",
    "MAX_EF_SEARCH",
    "TABLE",
    "available",
    "distance",
    "ensure_dim_index",
    "sql_filter",
    "vector_literal",
    "version",
]
