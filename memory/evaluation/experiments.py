"""Online A/B experiments: each query goes to an arm chosen by a stable hash, is logged, and can get feedback.

An arm is a set of ``ParametricMemory.query`` settings (``mode``, ``k``, ``max_new_tokens``,
``document_ids``) plus an optional ``weight`` (share of traffic, default 1). The same key (a user id, a
session id) always lands in the same arm, in every process, because the arm is picked from
``sha256(experiment name + key)``; nothing about assignment is stored but the ``QueryLog`` row.

>>> exp = Experiment(mem, "router-vs-rag", arms=["auto", "retrieval"])      # doctest: +SKIP
>>> r = exp.query("What is the refund window?", user_key="user-42")         # doctest: +SKIP
>>> mem.feedback(r.query_id, 1.0)                                           # doctest: +SKIP
>>> report(mem, "router-vs-rag")["arms"]["auto"]["feedback"]                 # doctest: +SKIP
{'n': 1, 'mean': 1.0, 'low': 1.0, 'high': 1.0}
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.errors import ValidationError
from memory.evaluation import metrics

log = logging.getLogger(__name__)

ARM_KEYS = ("mode", "k", "max_new_tokens", "document_ids", "weight")
_NAME_MAX, _ARM_MAX = 128, 64  # QueryLog.experiment / QueryLog.arm column widths


def _normalise_arms(arms: Mapping[str, Mapping[str, Any]] | Sequence[str]) -> dict[str, dict[str, Any]]:
    from memory.router import check_mode
    from memory.services.query import MAX_K, MAX_NEW_TOKENS
    from memory.services.records import check_count, check_text_field

    if isinstance(arms, str) or not isinstance(arms, (Mapping, Sequence)):
        raise ValidationError("arms must be a list of modes or a dict of arm name -> query settings")
    if not isinstance(arms, Mapping):
        arms = {str(m): {"mode": m} for m in arms}
    if len(arms) < 2:
        raise ValidationError(f"an experiment needs at least two arms, got {list(arms)}")
    out: dict[str, dict[str, Any]] = {}
    for name, cfg in arms.items():
        if not isinstance(name, str) or not name or len(name) > _ARM_MAX:
            raise ValidationError(f"arm names must be 1-{_ARM_MAX} characters, got {name!r}")
        check_text_field("arm name", name)
        if not isinstance(cfg, Mapping):
            raise ValidationError(f"arm {name!r}: settings must be a dict, got {type(cfg).__name__}")
        unknown = set(cfg) - set(ARM_KEYS)
        if unknown:
            raise ValidationError(f"arm {name!r}: unknown setting(s) {sorted(unknown)}; allowed: {list(ARM_KEYS)}")
        cfg = dict(cfg)
        check_mode(cfg.setdefault("mode", "auto"))
        for key, limit in (("k", MAX_K), ("max_new_tokens", MAX_NEW_TOKENS)):  # checked here, not at query time
            if key in cfg:
                check_count(f"arm {name!r}: {key}", cfg[key], limit)
        ids = cfg.get("document_ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(d, str) for d in ids)):
            raise ValidationError(f"arm {name!r}: document_ids must be a list of document ids, got {ids!r}")
        weight = cfg.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise ValidationError(f"arm {name!r}: weight must be a positive number, got {weight!r}")
        out[name] = cfg
    return out


def _bucket(name: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by the experiment name and the key."""
    digest = hashlib.sha256(f"{name}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Experiment:
    """An online A/B (or A/B/n) test over query settings.

    Args:
        mem: the :class:`~memory.api.ParametricMemory` that answers.
        name: the experiment's name, stored in ``QueryLog.experiment`` (1-128 characters).
        arms: ``["auto", "retrieval"]`` (one arm per mode) or ``{"a": {"mode": "auto"}, "b": {"mode":
            "retrieval", "k": 8, "weight": 2}}``.
        namespace: where queries run and are logged (default: the memory's namespace).

    >>> arms = {"k2": {"mode": "retrieval", "k": 2}, "k8": {"mode": "retrieval", "k": 8}}
    >>> exp = Experiment(mem, "k-test", arms)  # doctest: +SKIP
    >>> exp.assign("alice") == exp.assign("alice")  # doctest: +SKIP
    True
    """

    def __init__(
        self, mem: Any, name: str, arms: Mapping[str, Mapping[str, Any]] | Sequence[str], namespace: str | None = None
    ) -> None:
        if not isinstance(name, str) or not name.strip() or len(name) > _NAME_MAX:
            raise ValidationError(f"experiment name must be 1-{_NAME_MAX} characters, got {name!r}")
        from memory.services.records import check_text_field

        check_text_field("experiment name", name)
        self.mem = mem
        self.name = name
        self.arms = _normalise_arms(arms)
        self.namespace = namespace
        self._order = sorted(self.arms)  # assignment does not depend on the order arms were given in
        weights = np.array([float(self.arms[a].get("weight", 1.0)) for a in self._order])
        self._edges = np.cumsum(weights) / weights.sum()

    def __repr__(self) -> str:
        return f"Experiment({self.name!r}, arms={self._order})"

    def assign(self, key: str) -> str:
        """The arm for ``key`` (stable across calls, processes and machines)."""
        if not isinstance(key, str) or not key:
            raise ValidationError(f"assignment key must be a non-empty string, got {key!r}")
        idx = int(np.searchsorted(self._edges, _bucket(self.name, key), side="right"))
        return self._order[min(idx, len(self._order) - 1)]

    def query(self, question: str, *, user_key: str | None = None, **overrides: Any) -> Any:
        """Answer ``question`` with the settings of the arm of ``user_key`` (default: the question itself).

        The query is logged with this experiment's name and the arm; pass ``result.query_id`` to
        ``mem.feedback`` (or :meth:`feedback`) when the user rates the answer.
        """
        arm = self.assign(user_key if user_key is not None else question)
        settings = {k: v for k, v in self.arms[arm].items() if k != "weight"}
        settings.update(overrides)
        for forbidden in ("log", "experiment", "arm"):
            settings.pop(forbidden, None)
        log.debug("experiment %s: %r -> arm %s", self.name, user_key, arm)
        return self.mem.query(question, namespace=self.namespace, log=True, experiment=self.name, arm=arm, **settings)

    def feedback(self, query_id: int, score: float) -> None:
        """Record a user score for a query of this experiment."""
        self.mem.feedback(query_id, score, namespace=self.namespace)

    def report(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`report` for this experiment."""
        return report(self.mem, self.name, self.namespace, **kwargs)


def _namespace(mem: Any, namespace: str | None) -> str:
    from memory.api import validate_namespace

    return validate_namespace(namespace if namespace is not None else mem.settings.namespace)


def _rows(mem: Any, ns: str, name: str) -> list[tuple[str, float | None, float | None, str]]:
    from memory.db import Namespace, QueryLog

    with Session(mem.engine) as s:
        q = (
            select(QueryLog.arm, QueryLog.feedback, QueryLog.latency_ms, QueryLog.mode)
            .join(Namespace, QueryLog.namespace_id == Namespace.id)
            .where(QueryLog.experiment == name, Namespace.name == ns)
            .order_by(QueryLog.id)
        )
        return [(r[0] or "?", r[1], r[2], r[3]) for r in s.execute(q)]


def report(
    mem: Any,
    name: str,
    namespace: str | None = None,
    *,
    control: str | None = None,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise an experiment from ``QueryLog``: per arm the query and feedback counts, the mean feedback
    with a bootstrap CI, latency, modes used; and each arm's difference from ``control`` (default: the
    first arm by name with feedback) with a bootstrap CI and the probability it is better.

    >>> report(mem, "router-vs-rag")["arms"].keys()   # doctest: +SKIP
    dict_keys(['auto', 'retrieval'])
    """
    from memory.services.records import check_text_field

    namespace = _namespace(mem, namespace)
    rows = _rows(mem, namespace, check_text_field("experiment name", name))
    arms: dict[str, dict[str, Any]] = {}
    scores: dict[str, list[float]] = {}
    for arm, fb, latency, mode in rows:
        a = arms.setdefault(arm, {"queries": 0, "latencies": [], "modes_used": {}})
        a["queries"] += 1
        if latency is not None:
            a["latencies"].append(latency)
        a["modes_used"][mode] = a["modes_used"].get(mode, 0) + 1
        if fb is not None:
            scores.setdefault(arm, []).append(float(fb))
    out_arms: dict[str, Any] = {}
    for arm in sorted(arms):
        a = arms[arm]
        arm_scores = scores.get(arm, [])
        mean, low, high = metrics.bootstrap_ci(arm_scores, confidence=confidence, n_boot=n_boot, seed=seed)
        lat = np.asarray(a["latencies"], dtype=float)
        out_arms[arm] = {
            "queries": a["queries"],
            "feedback": {
                "n": len(arm_scores),
                "mean": mean if arm_scores else None,
                "low": low if arm_scores else None,
                "high": high if arm_scores else None,
            },
            "latency_ms": {
                "mean": float(lat.mean()),
                "p50": float(np.median(lat)),
                "p95": float(np.quantile(lat, 0.95)),
            }
            if lat.size
            else None,
            "modes_used": a["modes_used"],
        }
    with_fb = [a for a in sorted(scores) if scores[a]]
    if control is None:
        control = with_fb[0] if with_fb else None
    elif control not in out_arms:
        raise ValidationError(f"control arm {control!r} has no queries in experiment {name!r}")
    comparisons = []
    if control is not None and scores.get(control):
        for arm in with_fb:
            if arm == control:
                continue
            d = metrics.unpaired_bootstrap(
                scores[control], scores[arm], confidence=confidence, n_boot=n_boot, seed=seed
            )
            comparisons.append({"arm": arm, "control": control, **d})
    return {
        "experiment": name,
        "namespace": namespace,
        "queries": len(rows),
        "with_feedback": sum(len(v) for v in scores.values()),
        "confidence": confidence,
        "arms": out_arms,
        "control": control,
        "comparisons": comparisons,
    }
