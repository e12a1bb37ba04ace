"""Metadata filters: a small Mongo-style language, validated up front and compiled to a predicate.

Grammar (a *filter* is a dict; several keys in one dict are AND-ed):

- ``{"field": value}``: equality. ``value`` is a scalar: ``str``, ``int``, ``float``, ``bool`` or ``None``.
- ``{"field": {"$op": operand, ...}}``: several operators on one field are AND-ed.

  ============  ==============================================  =======================================
  operator      operand                                         matches when the metadata value ...
  ============  ==============================================  =======================================
  ``$eq``       scalar                                          equals the operand
  ``$ne``       scalar                                          is missing or differs
  ``$gt``       number or str                                   is of the same kind and ``>`` operand
  ``$gte``      number or str                                   ... ``>=``
  ``$lt``       number or str                                   ... ``<``
  ``$lte``      number or str                                   ... ``<=``
  ``$in``       list of scalars                                 equals one of them
  ``$nin``      list of scalars                                 is missing or equals none of them
  ``$contains`` scalar                                          is a list holding the operand
  ``$exists``   bool                                            is present (``True``) / absent (``False``)
  ============  ==============================================  =======================================

- ``{"$and": [filter, ...]}``, ``{"$or": [filter, ...]}`` (non-empty lists), ``{"$not": filter}``.

Evaluation: a compiled :class:`Filter` is a predicate over one metadata dict (used on ANN candidates)
and also evaluates column-wise over a whole namespace with numpy (:meth:`Filter.mask`), so an exact
filtered scan of 100k chunks costs milliseconds, not a Python loop per row.

Semantics: equality is type-aware (``True`` never equals ``1``; ``1`` equals ``1.0``). Comparisons between
a number and a string are false, not errors, and so is any comparison against a missing field. Field
names are matched literally (no dotted paths).

The namespace is NOT metadata: namespaces are hard partitions chosen by the ``namespace`` argument of a
search, so a filter that names ``namespace`` (in any case, with any leading ``_`` or ``$``) is rejected,
and so is every unknown operator, wrongly typed operand, over-deep filter, filter of more than
:data:`MAX_CLAUSES` conditions or string holding a NUL character (which PostgreSQL cannot store or compare),
on every backend alike, with a :class:`~memory.errors.ValidationError` that says what to write instead.

>>> pred = compile_filter({"lang": "en", "year": {"$gte": 2020}})
>>> pred({"lang": "en", "year": 2024}), pred({"lang": "fr", "year": 2024})
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from memory.errors import ValidationError

#: Field names a filter may not use, compared after stripping leading ``_``/``$`` and lower-casing.
RESERVED_FIELDS = frozenset({"namespace", "ns", "namespace_id"})
MAX_DEPTH = 32
MAX_IN_LIST = 10_000
#: Field conditions in one filter, all levels together: a PostgreSQL statement takes at most 65,535 bound
#: parameters, and a filter with thousands of ``$or`` branches costs seconds to plan while no real query needs it.
MAX_CLAUSES = 1_000

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "<missing>"})()
_SCALARS = (str, int, float, bool, type(None))
_FIELD_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains", "$exists")
_LOGIC_OPS = ("$and", "$or", "$not")
_EXACT_FLOAT = float(2**53)

# Value kinds: equality and ordering only hold within one kind (so True != 1, and 2 < "3" is false).
K_MISSING, K_NONE, K_BOOL, K_NUM, K_STR, K_OTHER = range(6)


class Column(NamedTuple):
    """One metadata field over all rows of a namespace, prepared for vectorised filtering."""

    values: np.ndarray  # object [n]: each row's value, MISSING when absent
    kinds: np.ndarray  # int8 [n]: kind_of(value)
    codes: np.ndarray  # int64 [n]: id of (kind, value) in vocab; -1 for missing, NaN and lists/dicts
    vocab: dict[tuple[int, Any], int]
    numbers: np.ndarray  # float64 [n]: numeric values, NaN elsewhere (exact below 2**53 in magnitude)


#: ``column(field) -> Column``, cached by the caller between writes.
ColumnSource = Callable[[str], Column]


def kind_of(value: Any) -> int:
    """The kind code of a metadata value (``K_*`` constants).

    >>> kind_of(True) == K_BOOL, kind_of(2.5) == K_NUM
    (True, True)
    """
    if value is MISSING:
        return K_MISSING
    if value is None:
        return K_NONE
    if isinstance(value, bool):
        return K_BOOL
    if isinstance(value, (int, float)):
        return K_NUM
    if isinstance(value, str):
        return K_STR
    return K_OTHER


def build_column(metadata: Sequence[Mapping[str, Any]], field: str) -> Column:
    """The :class:`Column` of ``field`` over a list of metadata dicts.

    >>> build_column([{"a": 1}, {}, {"a": 1.0}], "a").codes.tolist()
    [0, -1, 0]
    """
    n = len(metadata)
    values = np.fromiter((md.get(field, MISSING) for md in metadata), dtype=object, count=n)
    kinds = np.fromiter((kind_of(v) for v in values), dtype=np.int8, count=n)
    vocab: dict[tuple[int, Any], int] = {}

    def code(value: Any, kind: int) -> int:
        if kind in (K_MISSING, K_OTHER) or (kind == K_NUM and value != value):  # value != value: NaN
            return -1
        return vocab.setdefault((kind, value), len(vocab))

    codes = np.fromiter((code(v, k) for v, k in zip(values, kinds.tolist(), strict=True)), dtype=np.int64, count=n)
    numbers = np.full(n, np.nan)
    is_num = kinds == K_NUM
    if is_num.any():
        numbers[is_num] = [_to_float(v) for v in values[is_num]]
    return Column(values, kinds, codes, vocab, numbers)


class Filter:
    """A validated, compiled filter: call it on one metadata dict, or :meth:`mask` a whole column source."""

    def __call__(self, md: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def mask(self, column: ColumnSource, n: int) -> np.ndarray:
        """Boolean array: which of the ``n`` rows served by ``column`` match."""
        raise NotImplementedError

    def fields(self) -> set[str]:
        """The metadata fields this filter reads."""
        raise NotImplementedError


def filter_fields(metadata: Mapping[str, Any] | None, document_id: str, version: int | None) -> dict[str, Any]:
    """What a filter sees for a document (or any chunk of it): its metadata plus ``document_id`` and ``version``.

    ``document_id`` and ``version`` always mean the document's id and the number of the version in
    question (its current one), whatever the metadata holds under those names; a document without a
    current version has no ``version``. Every path that filters (search, get, delete, the parametric path,
    both integrations, both retrieval backends) uses this view.

    >>> filter_fields({"lang": "en", "version": "draft"}, "faq", 3)
    {'lang': 'en', 'version': 3, 'document_id': 'faq'}
    """
    out = {**(metadata or {}), "document_id": document_id, "version": version}
    if version is None:
        del out["version"]
    return out


def compile_filter(flt: Mapping[str, Any] | None) -> Filter | None:
    """Validate ``flt`` and return a compiled :class:`Filter` (``None`` for no filter).

    Raises :class:`~memory.errors.ValidationError` for a malformed filter, before any data is read.

    >>> compile_filter({"$or": [{"a": 1}, {"b": {"$in": ["x", "y"]}}]})({"b": "y"})
    True
    """
    if flt is None:
        return None
    return _compile(flt, "filter", 0, [0])


def validate_filter(flt: Mapping[str, Any] | None) -> None:
    """Raise :class:`~memory.errors.ValidationError` if ``flt`` is malformed; return ``None`` otherwise.

    >>> validate_filter({"year": {"$lt": 2000}})
    """
    compile_filter(flt)


# ------------------------------------------------------------------ filter nodes
class _And(Filter):
    def __init__(self, parts: list[Filter]) -> None:
        self.parts = parts

    def __call__(self, md: Mapping[str, Any]) -> bool:
        return all(p(md) for p in self.parts)

    def mask(self, column: ColumnSource, n: int) -> np.ndarray:
        out = np.ones(n, dtype=bool)
        for p in self.parts:
            out &= p.mask(column, n)
        return out

    def fields(self) -> set[str]:
        return set().union(*(p.fields() for p in self.parts))


class _Or(_And):
    def __call__(self, md: Mapping[str, Any]) -> bool:
        return any(p(md) for p in self.parts)

    def mask(self, column: ColumnSource, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        for p in self.parts:
            out |= p.mask(column, n)
        return out


class _Not(Filter):
    def __init__(self, inner: Filter) -> None:
        self.inner = inner

    def __call__(self, md: Mapping[str, Any]) -> bool:
        return not self.inner(md)

    def mask(self, column: ColumnSource, n: int) -> np.ndarray:
        return ~self.inner.mask(column, n)

    def fields(self) -> set[str]:
        return self.inner.fields()


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


class _Op(Filter):
    """One field operator; ``$ne`` and ``$nin`` are stored as negated ``$eq`` / ``$in``."""

    def __init__(self, field: str, op: str, arg: Any) -> None:
        self.field, self.op, self.arg = field, op, arg
        if op in ("$eq", "$ne", "$contains"):
            self.keys = {(kind_of(arg), arg)}
        elif op in ("$in", "$nin"):
            self.keys = {(kind_of(a), a) for a in arg}

    # row evaluation
    def __call__(self, md: Mapping[str, Any]) -> bool:
        v = md.get(self.field, MISSING)
        op = self.op
        if op in ("$eq", "$in"):
            return _key_in(v, self.keys)
        if op in ("$ne", "$nin"):
            return not _key_in(v, self.keys)
        if op == "$exists":
            return (v is not MISSING) == self.arg
        if op == "$contains":
            return isinstance(v, (list, tuple)) and any(_key_in(x, self.keys) for x in v)
        kind = kind_of(v)
        return kind == kind_of(self.arg) and kind in (K_NUM, K_STR) and bool(_COMPARE[op](v, self.arg))

    # column evaluation
    def mask(self, column: ColumnSource, n: int) -> np.ndarray:
        col = column(self.field)
        op = self.op
        if op == "$exists":
            return (col.kinds != K_MISSING) if self.arg else (col.kinds == K_MISSING)
        if op in ("$eq", "$ne", "$in", "$nin"):
            wanted = [col.vocab[key] for key in self.keys if key in col.vocab]
            out = np.isin(col.codes, wanted) if len(wanted) > 1 else col.codes == (wanted[0] if wanted else -2)
            return ~out if op in ("$ne", "$nin") else out
        out = np.zeros(n, dtype=bool)
        if op == "$contains":
            for row in np.flatnonzero(col.kinds == K_OTHER):
                out[row] = self({self.field: col.values[row]})
            return out
        compare = _COMPARE[op]
        sel = col.kinds == kind_of(self.arg)
        if isinstance(self.arg, str):
            if sel.any():
                out[sel] = np.asarray(compare(col.values[sel], self.arg), dtype=bool)
            return out
        # numbers: float64 is exact below 2**53; bigger ints (ns timestamps) are compared as Python objects
        with np.errstate(invalid="ignore"):  # NaN compares false, silently
            big = sel & ~(np.abs(col.numbers) < _EXACT_FLOAT)
            out[sel] = compare(col.numbers[sel], _to_float(self.arg))
            if big.any():
                out[big] = np.asarray(compare(col.values[big], self.arg), dtype=bool)
        return out

    def fields(self) -> set[str]:
        return {self.field}


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range; compared exactly as a Python int
        return math.inf if value > 0 else -math.inf


def _key_in(value: Any, keys: set[tuple[int, Any]]) -> bool:
    kind = kind_of(value)
    if kind in (K_MISSING, K_OTHER):
        return False
    if kind == K_NUM and isinstance(value, float) and math.isnan(value):
        return False
    return (kind, value) in keys


# ------------------------------------------------------------------ compilation
def _fail(where: str, message: str) -> ValidationError:
    return ValidationError(
        f"invalid metadata filter at {where}: {message}. Filter syntax: see memory.retrieval.filters"
    )


def _compile(flt: Any, where: str, depth: int, count: list[int]) -> Filter:
    """``count[0]``: the field conditions compiled so far, over the whole filter (at most :data:`MAX_CLAUSES`)."""
    if depth > MAX_DEPTH:
        raise _fail(where, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(flt, Mapping):
        raise _fail(where, f"expected a dict, got {type(flt).__name__} {flt!r}")
    if not flt:
        raise _fail(where, "empty dict; pass None for no filter")
    parts: list[Filter] = []
    for key, value in flt.items():
        if not isinstance(key, str) or not key:
            raise _fail(where, f"keys must be non-empty strings, got {key!r}")
        _check_field_name(key, where)
        if key.startswith("$"):
            parts.append(_compile_logic(key, value, f"{where}.{key}", depth, count))
        else:
            parts.append(_compile_field(key, value, f"{where}.{key}", count))
    return parts[0] if len(parts) == 1 else _And(parts)


def _check_field_name(key: str, where: str) -> None:
    if "\x00" in key:
        raise _fail(where, f"field name {key!r} contains a NUL character")
    if key.lstrip("_$").lower() in RESERVED_FIELDS:
        raise _fail(
            where,
            f"field {key!r} is not allowed: namespaces are hard partitions, not metadata; "
            "pass namespace= to the search instead",
        )


def _compile_logic(op: str, value: Any, where: str, depth: int, count: list[int]) -> Filter:
    if op == "$not":
        return _Not(_compile(value, where, depth + 1, count))
    if op in ("$and", "$or"):
        if not isinstance(value, list) or not value:
            raise _fail(where, f"{op} takes a non-empty list of filters, got {value!r}")
        subs = [_compile(v, f"{where}[{i}]", depth + 1, count) for i, v in enumerate(value)]
        if len(subs) == 1:
            return subs[0]
        return _And(subs) if op == "$and" else _Or(subs)
    if op in _FIELD_OPS:
        raise _fail(where, f"operator {op} must be applied to a field, as in {{'field': {{'{op}': ...}}}}")
    raise _fail(where, f"unknown operator {op!r}; logical operators are {', '.join(_LOGIC_OPS)}")


def _compile_field(field: str, spec: Any, where: str, count: list[int]) -> Filter:
    if isinstance(spec, Mapping):
        if not spec:
            raise _fail(where, "empty operator dict")
        if any(isinstance(k, str) and k.startswith("$") for k in spec):
            _count(count, len(spec), where)
            ops = [_compile_op(field, op, arg, f"{where}.{op}") for op, arg in spec.items()]
            return ops[0] if len(ops) == 1 else _And(ops)
        raise _fail(
            where, f"equality against a dict is not supported; use operators such as {{'$eq': ...}}, got {spec!r}"
        )
    _count(count, 1, where)
    _check_scalar(spec, where)
    return _Op(field, "$eq", spec)


def _count(count: list[int], n: int, where: str) -> None:
    count[0] += n
    if count[0] > MAX_CLAUSES:
        raise _fail(where, f"more than {MAX_CLAUSES:,} conditions in one filter; use $in with a list, not many $or")


def _compile_op(field: str, op: Any, arg: Any, where: str) -> Filter:
    if not isinstance(op, str) or op not in _FIELD_OPS:
        raise _fail(where, f"unknown operator {op!r}; field operators are {', '.join(_FIELD_OPS)}")
    if op in ("$eq", "$ne", "$contains"):
        _check_scalar(arg, where)
    elif op in _COMPARE:
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str)):
            raise _fail(where, f"{op} takes a number or a string, got {type(arg).__name__} {arg!r}")
        if isinstance(arg, float) and math.isnan(arg):
            raise _fail(where, f"{op} cannot compare against NaN")
        if isinstance(arg, str):
            _check_scalar(arg, where)
    elif op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple)):
            raise _fail(where, f"{op} takes a list of scalars, got {type(arg).__name__} {arg!r}")
        if len(arg) > MAX_IN_LIST:
            raise _fail(where, f"{op} list has {len(arg)} items; at most {MAX_IN_LIST} are allowed")
        for i, item in enumerate(arg):
            _check_scalar(item, f"{where}[{i}]")
    elif op == "$exists" and not isinstance(arg, bool):
        raise _fail(where, f"$exists takes true or false, got {arg!r}")
    return _Op(field, op, arg)


def _check_scalar(value: Any, where: str) -> None:
    if not isinstance(value, _SCALARS):
        raise _fail(where, f"expected a str, number, bool or None, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise _fail(where, "NaN never equals anything; use $exists or a range instead")
    if isinstance(value, str) and "\x00" in value:
        raise _fail(where, "a string holding a NUL character (\\x00) cannot be stored, so it never matches")


__all__ = [
    "MAX_CLAUSES",
    "MISSING",
    "RESERVED_FIELDS",
    "Column",
    "ColumnSource",
    "Filter",
    "build_column",
    "compile_filter",
    "filter_fields",
    "kind_of",
    "validate_filter",
]
