"""The task library: training tasks and three held-out splits, built from :mod:`.families` by a fixed seed.

- ``train``: single families with their training parameter settings, and chains of two and three families
  whose every adjacent pair is a training pair.
- ``interpolation``: seen families with parameter settings never trained on (``shift_letters.k4`` when
  training saw k = 1, 2, 3, 5).
- ``composition``: chains with at least one adjacent family pair never chained in training; every family
  and setting in them is trained on (alone and in other chains).
- ``unseen_family``: families never trained on at all (:data:`~.families.UNSEEN_FAMILIES`).

Evaluation describes every task with the reserved wordings (see :mod:`.base`), so no evaluation description
is a training one. A chain is kept only when its examples are easy to draw (most random inputs give a valid,
short example), which also drops chains whose steps cannot meet (a yes/no answer style after a word list).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

from memory.errors import NotFoundError
from memory.training.tasks.base import ANY, Family, Param, Task
from memory.training.tasks.families import FAMILIES, UNSEEN_FAMILIES

SPLIT_SEED = 17
HELDOUT_PAIR_SHARE = 0.15  # share of the chainable family pairs kept for the composition split
COMBOS_PER_PAIR = 3  # training chains per family pair (parameter settings drawn at random)
EVAL_COMBOS_PER_PAIR = 2
TRAIN_TRIPLES = 600
EVAL_TRIPLES = 60
MIN_ACCEPTANCE = 0.2
SPLITS = ("interpolation", "composition", "unseen_family")

_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}
Pair = tuple[str, str]


@dataclass(frozen=True)
class Library:
    """Training tasks and the three held-out splits."""

    train: tuple[Task, ...]
    interpolation: tuple[Task, ...]
    composition: tuple[Task, ...]
    unseen_family: tuple[Task, ...]
    heldout_pairs: frozenset[tuple[str, str]]

    def split(self, name: str) -> tuple[Task, ...]:
        if name not in ("train", *SPLITS):
            raise NotFoundError(f"no split {name!r}; splits: train, {', '.join(SPLITS)}")
        return getattr(self, name)

    def counts(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in ("train", *SPLITS)}


def family(name: str) -> Family:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise NotFoundError(f"no task family {name!r}; known: {sorted(_BY_NAME)}") from None


def parse_task(name: str) -> Task:
    """The task named ``family.param+family.param...`` (any valid chain, in the library or not).

    >>> parse_task("sort_words.length+take_nth.n2").families
    ('sort_words', 'take_nth')
    """
    steps = []
    for part in name.split("+"):
        fam_name, _, pid = part.partition(".")
        fam = family(fam_name)
        try:
            steps.append((fam, fam.param(pid)))
        except KeyError as e:
            raise NotFoundError(str(e)) from None
    try:
        return Task(steps)
    except ValueError as e:
        raise NotFoundError(f"{name!r} is not a valid chain: {e}") from None


def _chains(first: Family, second: Family, params: str = "params") -> list[tuple[Param, Param]]:
    """Parameter pairs under which ``second`` can take what ``first`` gives."""
    return [
        (p, q) for p in getattr(first, params) for q in getattr(second, params) if second.accepts(first.output_type(p))
    ]


def _viable(task: Task) -> bool:
    return task.viable(MIN_ACCEPTANCE)


def _chainable(f: Family, g: Family) -> bool:
    return (
        f is not g and f.group != g.group and (g.in_type == ANY or any(g.accepts(f.output_type(p)) for p in f.params))
    )


@lru_cache(maxsize=1)
def library() -> Library:
    """The library (built once per process, deterministic)."""
    rng = random.Random(SPLIT_SEED)
    seen = [f for f in FAMILIES if f.name not in UNSEEN_FAMILIES]
    unseen = [f for f in FAMILIES if f.name in UNSEEN_FAMILIES]

    singles = [t for f in seen for p in f.params if _viable(t := Task(((f, p),)))]
    interpolation = [t for f in seen for p in f.heldout if _viable(t := Task(((f, p),)))]
    unseen_family = [t for f in unseen for p in (*f.params, *f.heldout) if _viable(t := Task(((f, p),)))]

    # Family pairs that chain, each with its viable parameter combinations (shuffled).
    pair_tasks: dict[tuple[str, str], list[Task]] = {}
    for f, g in product(seen, seen):
        if not _chainable(f, g):
            continue
        combos = _chains(f, g)
        rng.shuffle(combos)
        ok = []
        for p, q in combos:
            t = Task(((f, p), (g, q)))
            if _viable(t):
                ok.append(t)
            if len(ok) >= COMBOS_PER_PAIR:
                break
        if ok:
            pair_tasks[(f.name, g.name)] = ok
    pairs = sorted(pair_tasks)
    rng.shuffle(pairs)
    n_held = round(len(pairs) * HELDOUT_PAIR_SHARE)
    held_pairs, train_pairs = set(pairs[:n_held]), set(pairs[n_held:])
    train_chains = [t for pr in sorted(train_pairs) for t in pair_tasks[pr]]
    comp_chains = [t for pr in sorted(held_pairs) for t in pair_tasks[pr][:EVAL_COMBOS_PER_PAIR]]

    after: dict[str, list[str]] = {}
    for a, b in sorted(pair_tasks):
        after.setdefault(a, []).append(b)

    # Triples: training ones chain two training pairs; held-out ones include at least one held-out pair.
    def triples(want: int, accept: Callable[[Pair, Pair], bool]) -> list[Task]:
        cands = [
            (a, b, c)
            for (a, b) in sorted(pair_tasks)
            for c in after.get(b, ())
            if c != a and len({family(a).group, family(b).group, family(c).group}) == 3 and accept((a, b), (b, c))
        ]
        rng.shuffle(cands)
        out: list[Task] = []
        for a, b, c in cands:
            fa, fb, fc = family(a), family(b), family(c)
            options = [
                (p, q, r)
                for p in fa.params
                for q in fb.params
                for r in fc.params
                if fb.accepts(fa.output_type(p)) and fc.accepts(fb.output_type(q))
            ]
            p, q, r = rng.choice(options)
            t = Task(((fa, p), (fb, q), (fc, r)))
            if _viable(t):
                out.append(t)
            if len(out) >= want:
                break
        return out

    train_triples = triples(TRAIN_TRIPLES, lambda x, y: x in train_pairs and y in train_pairs)
    comp_triples = triples(EVAL_TRIPLES, lambda x, y: x in held_pairs or y in held_pairs)
    return Library(
        train=tuple(singles + train_chains + train_triples),
        interpolation=tuple(interpolation),
        composition=tuple(comp_chains + comp_triples),
        unseen_family=tuple(unseen_family),
        heldout_pairs=frozenset(held_pairs),
    )


def sample(tasks: tuple[Task, ...] | list[Task], n: int, seed: int = 0) -> list[Task]:
    """``n`` tasks spread over families: round-robin over last-step families in a seeded order."""
    rng = random.Random(f"sample:{seed}")
    by_family: dict[str, list[Task]] = {}
    for t in tasks:
        by_family.setdefault(t.family, []).append(t)
    groups = sorted(by_family)
    rng.shuffle(groups)
    for g in groups:
        rng.shuffle(by_family[g])
    out: list[Task] = []
    while len(out) < min(n, len(tasks)):
        for g in groups:
            if by_family[g] and len(out) < n:
                out.append(by_family[g].pop())
    return out


__all__ = ["SPLITS", "Library", "family", "library", "parse_task", "sample"]
