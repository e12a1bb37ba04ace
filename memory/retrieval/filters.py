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

Semantics: equality is type-aware (``True`` never equals ``1``; ``1`` equals ``1.0``). Comparisons between
a number and a string are false, not errors, and so is any comparison against a missing field. Field
names are matched literally (no dotted paths).

The namespace is NOT metadata: namespaces are hard partitions chosen by the ``namespace`` argument of a
search, so a filter that names ``namespace`` (in any case, with any leading ``_`` or ``$``) is rejected,
and so is every unknown operator, wrongly typed operand or over-deep filter, with a
:class:`~memory.errors.ValidationError` that says what to write instead.

>>> pred = compile_filter({"lang": "en", "year": {"$gte": 2020}})
>>> pred({"lang": "en", "year": 2024}), pred({"lang": "fr", "year": 2024})
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from memory.errors import ValidationError

Predicate = Callable[[Mapping[str, Any]], bool]

#: Field names a filter may not use, compared after stripping leading ``_``/``$`` and lower-casing.
RESERVED_FIELDS = frozenset({"namespace", "ns", "namespace_id"})
MAX_DEPTH = 32
MAX_IN_LIST = 10_000

_MISSING = object()
_SCALARS = (str, int, float, bool, type(None))
_FIELD_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains", "$exists")
_LOGIC_OPS = ("$and", "$or", "$not")


def compile_filter(flt: Mapping[str, Any] | None) -> Predicate | None:
    """Validate ``flt`` and return a predicate over a metadata dict (``None`` for no filter).

    Raises :class:`~memory.errors.ValidationError` for a malformed filter, before any data is read.

    >>> compile_filter({"$or": [{"a": 1}, {"b": {"$in": ["x", "y"]}}]})({"b": "y"})
    True
    """
    if flt is None:
        return None
    return _compile(flt, "filter", 0)


def validate_filter(flt: Mapping[str, Any] | None) -> None:
    """Raise :class:`~memory.errors.ValidationError` if ``flt`` is malformed; return ``None`` otherwise.

    >>> validate_filter({"year": {"$lt": 2000}})
    """
    compile_filter(flt)


# ------------------------------------------------------------------ compilation
def _fail(where: str, message: str) -> ValidationError:
    return ValidationError(f"invalid metadata filter at {where}: {message}. Filter syntax: see memory.retrieval.filters")


def _compile(flt: Any, where: str, depth: int) -> Predicate:
    if depth > MAX_DEPTH:
        raise _fail(where, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(flt, Mapping):
        raise _fail(where, f"expected a dict, got {type(flt).__name__} {flt!r}")
    if not flt:
        raise _fail(where, "empty dict; pass None for no filter")
    parts: list[Predicate] = []
    for key, value in flt.items():
        if not isinstance(key, str) or not key:
            raise _fail(where, f"keys must be non-empty strings, got {key!r}")
        _check_field_name(key, where)
        if key.startswith("$"):
            parts.append(_compile_logic(key, value, f"{where}.{key}", depth))
        else:
            parts.append(_compile_field(key, value, f"{where}.{key}"))
    return _all(parts)


def _check_field_name(key: str, where: str) -> None:
    if key.lstrip("_$").lower() in RESERVED_FIELDS:
        raise _fail(
            where,
            f"field {key!r} is not allowed: namespaces are hard partitions, not metadata; "
            "pass namespace= to the search instead",
        )


def _compile_logic(op: str, value: Any, where: str, depth: int) -> Predicate:
    if op == "$not":
        inner = _compile(value, where, depth + 1)
        return lambda md: not inner(md)
    if op in ("$and", "$or"):
        if not isinstance(value, list) or not value:
            raise _fail(where, f"{op} takes a non-empty list of filters, got {value!r}")
        subs = [_compile(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return _all(subs) if op == "$and" else _any(subs)
    if op in _FIELD_OPS:
        raise _fail(where, f"operator {op} must be applied to a field, as in {{'field': {{'{op}': ...}}}}")
    raise _fail(where, f"unknown operator {op!r}; logical operators are {', '.join(_LOGIC_OPS)}")


def _compile_field(field: str, spec: Any, where: str) -> Predicate:
    if isinstance(spec, Mapping):
        if not spec:
            raise _fail(where, "empty operator dict")
        if any(isinstance(k, str) and k.startswith("$") for k in spec):
            return _all([_compile_op(field, op, arg, f"{where}.{op}") for op, arg in spec.items()])
        raise _fail(where, f"equality against a dict is not supported; use operators such as {{'$eq': ...}}, got {spec!r}")
    _check_scalar(spec, where)
    return _make_op(field, "$eq", spec)


def _compile_op(field: str, op: Any, arg: Any, where: str) -> Predicate:
    if not isinstance(op, str) or op not in _FIELD_OPS:
        raise _fail(where, f"unknown operator {op!r}; field operators are {', '.join(_FIELD_OPS)}")
    if op in ("$eq", "$ne", "$contains"):
        _check_scalar(arg, where)
    elif op in ("$gt", "$gte", "$lt", "$lte"):
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str)):
            raise _fail(where, f"{op} takes a number or a string, got {type(arg).__name__} {arg!r}")
        if isinstance(arg, float) and math.isnan(arg):
            raise _fail(where, f"{op} cannot compare against NaN")
    elif op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple)):
            raise _fail(where, f"{op} takes a list of scalars, got {type(arg).__name__} {arg!r}")
        if len(arg) > MAX_IN_LIST:
            raise _fail(where, f"{op} list has {len(arg)} items; at most {MAX_IN_LIST} are allowed")
        for i, item in enumerate(arg):
            _check_scalar(item, f"{where}[{i}]")
    elif op == "$exists":
        if not isinstance(arg, bool):
            raise _fail(where, f"$exists takes true or false, got {arg!r}")
    return _make_op(field, op, arg)


def _check_scalar(value: Any, where: str) -> None:
    if not isinstance(value, _SCALARS):
        raise _fail(where, f"expected a str, number, bool or None, got {type(value).__name__} {value!r}")


# ------------------------------------------------------------------ evaluation
def _eq(a: Any, b: Any) -> bool:
    """Type-aware equality: bools only equal bools; ints and floats compare by value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _cmp_ok(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are of one orderable kind (numbers, or strings)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return not (isinstance(a, float) and math.isnan(a))
    return isinstance(a, str) and isinstance(b, str)


def _make_op(field: str, op: str, arg: Any) -> Predicate:
    if op == "$eq":
        return lambda md: _eq(md.get(field, _MISSING), arg)
    if op == "$ne":
        return lambda md: not _eq(md.get(field, _MISSING), arg)
    if op == "$in":
        items = tuple(arg)
        return lambda md: any(_eq(md.get(field, _MISSING), x) for x in items)
    if op == "$nin":
        items = tuple(arg)
        return lambda md: not any(_eq(md.get(field, _MISSING), x) for x in items)
    if op == "$contains":

        def contains(md: Mapping[str, Any]) -> bool:
            v = md.get(field, _MISSING)
            return isinstance(v, (list, tuple)) and any(_eq(x, arg) for x in v)

        return contains
    if op == "$exists":
        return lambda md: (field in md) == arg
    compare: Callable[[Any, Any], bool] = {
        "$gt": lambda a, b: a > b,
        "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b,
        "$lte": lambda a, b: a <= b,
    }[op]

    def ordered(md: Mapping[str, Any]) -> bool:
        v = md.get(field, _MISSING)
        return _cmp_ok(v, arg) and compare(v, arg)

    return ordered


def _all(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    return lambda md: all(p(md) for p in preds)


def _any(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    return lambda md: any(p(md) for p in preds)


__all__ = ["Predicate", "RESERVED_FIELDS", "compile_filter", "validate_filter"]
