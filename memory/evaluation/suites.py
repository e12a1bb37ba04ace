"""Question-answering items: the user's JSONL file, and two built-in suites that no model has seen.

A JSONL line is one item::

    {"documents": ["text", ...] or "document": "text", "question": "...", "answers": ["...", ...], "id": "opt"}

``made-up facts``: short documents about invented entities (names built from random syllables), so a
model can only answer from the document. ``needle``: one invented fact hidden at a chosen depth in a
haystack of plain filler sentences.

>>> items = made_up_facts(2)
>>> len(items), len(items[0].documents), bool(items[0].answers)
(2, 1, True)
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memory.errors import ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One question over one or more documents, with its accepted answers."""

    id: str
    documents: list[str]
    question: str
    answers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    items: list[Item]
    errors: list[dict[str, Any]]  # {"line": n, "error": "..."}


def parse_item(obj: Any, default_id: str) -> Item:
    """Validate one decoded JSON object as an :class:`Item` (raises ``ValidationError`` saying what is wrong)."""
    if not isinstance(obj, dict):
        raise ValidationError(f"expected a JSON object, got {type(obj).__name__}")
    if "documents" in obj:
        docs = obj["documents"]
        if isinstance(docs, str):
            docs = [docs]
    elif "document" in obj:
        docs = [obj["document"]]
    else:
        raise ValidationError("missing 'documents' (a list of texts) or 'document' (one text)")
    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) and d.strip() for d in docs):
        raise ValidationError("'documents' must be a non-empty list of non-empty strings")
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValidationError("missing or empty 'question'")
    answers = obj.get("answers", obj.get("answer"))
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValidationError("'answers' must be a non-empty list of strings")
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    return Item(id=str(obj.get("id", default_id)), documents=docs, question=question, answers=answers, meta=meta)


def load_jsonl(path: str | Path) -> LoadResult:
    """Read items from a JSONL file; a bad line is recorded with its 1-based number and skipped.

    >>> load_jsonl("qa.jsonl").errors  # doctest: +SKIP
    [{'line': 3, 'error': "invalid JSON: Expecting ',' delimiter (column 17)"}]
    """
    p = Path(path)
    if not p.is_file():
        raise ValidationError(f"no such data file: {p}")
    items: list[Item] = []
    errors: list[dict[str, Any]] = []
    with p.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append({"line": n, "error": f"invalid JSON: {e.msg} (column {e.colno})"})
                log.warning("%s line %d: invalid JSON: %s", p, n, e.msg)
                continue
            try:
                items.append(parse_item(obj, default_id=f"line{n}"))
            except ValidationError as e:
                errors.append({"line": n, "error": str(e)})
                log.warning("%s line %d: %s", p, n, e)
    return LoadResult(items, errors)


# ---------------------------------------------------------------------------- built-in suites
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "st", "tr", "vr"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "ei"]
_CODAS = ["", "", "n", "r", "s", "th", "l", "x", "nd"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def invented_name(rng: random.Random, syllables: int = 2) -> str:
    """A pronounceable name that is (almost surely) no real word: ``'Draethvor'``."""
    return _word(rng, syllables).capitalize()


_KINDS = ["institute", "river", "company", "festival", "mountain", "library", "guild", "observatory"]
_COLOURS = ["crimson", "teal", "amber", "violet", "silver", "ochre", "jade", "cobalt"]


def made_up_facts(n: int, *, seed: int = 7) -> list[Item]:
    """``n`` items, each a three-fact document about an invented entity and a question on one fact."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        kind = rng.choice(_KINDS)
        entity = f"the {invented_name(rng)} {kind.capitalize()}"
        founder = f"{invented_name(rng)} {invented_name(rng)}"
        city = invented_name(rng, 3)
        year = str(rng.randint(1400, 1990))
        colour = rng.choice(_COLOURS)
        doc = (
            f"{entity[0].upper()}{entity[1:]} was founded in {year} by {founder}. "
            f"It is located in the town of {city}. Its official colour is {colour}."
        )
        which = i % 3
        if which == 0:
            q, a = f"Who founded {entity}?", [founder]
        elif which == 1:
            q, a = f"In which town is {entity} located?", [city]
        else:
            q, a = f"In what year was {entity} founded?", [year]
        items.append(Item(id=f"fact{i:03d}", documents=[doc], question=q, answers=a, meta={"suite": "facts"}))
    return items


_FILLER = [
    "The morning train left the station on time and the platform slowly emptied.",
    "A gardener watered the tomatoes before the afternoon heat arrived.",
    "The committee reviewed last year's budget and approved minor changes.",
    "Rain is expected later in the week, with clear skies on the weekend.",
    "The bakery on the corner sells bread, rolls and a few kinds of cake.",
    "Students gathered in the library to prepare for their final examinations.",
    "The old bridge was repainted last spring after a long public debate.",
    "A cat slept on the warm windowsill for most of the afternoon.",
    "Engineers inspected the pumps at the water plant as part of routine maintenance.",
    "The museum extended its opening hours during the summer holidays.",
]


def needle_in_haystack(
    n: int, *, haystack_tokens: int = 400, seed: int = 11, depths: tuple[float, ...] = (0.1, 0.5, 0.9)
) -> list[Item]:
    """``n`` items: one invented fact (the needle) at a depth of ``depths`` in ~``haystack_tokens`` of filler."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        sentences = []
        approx = 0
        while approx < haystack_tokens:
            s = rng.choice(_FILLER)
            sentences.append(s)
            approx += len(s.split()) * 4 // 3  # ~1.3 tokens per English word
        vault = invented_name(rng)
        code = f"{rng.choice(_COLOURS)}-{invented_name(rng).lower()}-{rng.randint(10, 99)}"
        needle = f"The secret passphrase for the {vault} vault is {code}."
        depth = depths[i % len(depths)]
        sentences.insert(int(depth * len(sentences)), needle)
        items.append(
            Item(
                id=f"needle{i:03d}",
                documents=[" ".join(sentences)],
                question=f"What is the secret passphrase for the {vault} vault?",
                answers=[code],
                meta={"suite": "needle", "depth": depth, "haystack_tokens": haystack_tokens},
            )
        )
    return items


SUITES = ("facts", "needle", "builtin")


def builtin(quick: bool, suite: str = "builtin", seed: int | None = None) -> list[Item]:
    """The built-in items: made-up facts plus needles (``quick``: 3 + 2).

    ``seed`` draws another set of the same kind (facts from ``seed``, needles from ``seed + 1``), fresh to
    anything tuned on the default set; their ids start with ``s<seed>-``.

    >>> [i.id for i in builtin(True)][:2], builtin(True, seed=5)[0].id
    (['fact000', 'fact001'], 's5-fact000')
    """
    if suite not in SUITES:
        raise ValidationError(f"suite must be one of {SUITES}, got {suite!r}")
    n_facts, n_needle = (3, 2) if quick else (24, 12)
    out: list[Item] = []
    if suite in ("facts", "builtin"):
        out += made_up_facts(n_facts) if seed is None else made_up_facts(n_facts, seed=seed)
    if suite in ("needle", "builtin"):
        haystack_tokens = 300 if quick else 1500
        out += (
            needle_in_haystack(n_needle, haystack_tokens=haystack_tokens)
            if seed is None
            else needle_in_haystack(n_needle, haystack_tokens=haystack_tokens, seed=seed + 1)
        )
    if seed is not None:
        out = [replace(i, id=f"s{seed}-{i.id}") for i in out]
    return out
