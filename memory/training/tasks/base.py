"""Families, tasks, paraphrased descriptions and output checkers of the T2L task library.

A *family* is one concept: an input generator, a parameterized transform, a checker and description
wordings, e.g. "join the words with {delimiter}" with the delimiters as parameter settings. A *task* is a
chain of one to three (family, parameter setting) steps applied in order: ``sort_words.length+take_nth.2``
sorts the words by length and answers with the second one. Values flow between steps with a type
(:data:`TYPES`); a step's input type must be the previous step's output type (``any`` accepts every type).

Descriptions: each family has several wording templates per parameter setting; the last template is
reserved for evaluation, and compositions are worded with connectors of which the last ones are reserved
too, so an evaluation description never shares its wording with a training one. Every core wording is
paraphrased further by framing prefixes and answer-format suffixes (:func:`paraphrase`).

>>> fam = Family("shout", "strings", "casing", "words", "words", (Param("up", {}),), (),
...              lambda v, kw: [w.upper() for w in v], ("Uppercase the words.", "Write the words in capitals."),
...              source=lambda rng, kw: rng.sample(["hi", "there", "you"], 2))
>>> t = Task(((fam, fam.params[0]),))
>>> ex = t.example(0)
>>> ex.output == ex.input.upper(), t.check_output(ex, ex.output), t.check_output(ex, ex.input)
(True, True, False)
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any, Literal

CheckMode = Literal["exact", "ci", "raw", "number", "json"]

# Value types. words: list[str]; nums: list[int]; word/str: str; num: Decimal; record: dict[str, str];
# date: datetime.date; text: Text; quantity: (Decimal, unit); bool: bool. "str" is formatted output text.
TYPES = ("words", "nums", "word", "num", "record", "date", "text", "quantity", "bool", "str")
ANY = "any"  # an input type: accepts every type, as :class:`Typed`

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
MAX_INPUT_CHARS = 200
MAX_OUTPUT_CHARS = 60
MAX_TRIES = 400

# Framing prefixes and answer-format suffixes used to paraphrase each core description.
# The empty string keeps the core itself.
PREFIXES: tuple[str, ...] = ("", "Task: ", "Instruction: ", "Please ", "Your job: ", "You will be given an input. ")
SUFFIXES: tuple[str, ...] = (
    "",
    " Reply with the answer only.",
    " Output nothing else.",
    " Give just the result.",
    " Keep the answer short.",
)

# How a chain of steps is worded: (prefix of step 1, prefix of middle steps, prefix of the last step).
# The last CONNECTORS_EVAL are reserved for evaluation.
CONNECTORS: tuple[tuple[str, str, str], ...] = (
    ("", "Then ", "Then "),
    ("", "After that, ", "After that, "),
    ("First, ", "Next, ", "Finally, "),
    ("", "Afterwards, ", "Afterwards, "),
    ("Step 1: ", "Step {i}: ", "Step {i}: "),
    ("To begin, ", "Subsequently, ", "Once that is done, "),
)
CONNECTORS_EVAL = 2
CORES_PER_TASK = 8  # training cores kept per composed task (a fixed, seeded sample)

_TRAILING = re.compile(r"[\s.!]+$")


class NotApplicable(Exception):  # a control-flow signal (redraw), not an error
    """A step cannot apply to this value (e.g. the third word of a two-word list); the example is redrawn."""


@dataclass(frozen=True)
class Text:
    """A sentence with the entities it mentions (``kind -> surface form``)."""

    sentence: str
    entities: dict[str, str]


@dataclass(frozen=True)
class Typed:
    """A value with its type, as given to families whose input type is ``any``."""

    value: Any
    type: str


def fmt_num(x: Decimal | int) -> str:
    """Canonical decimal text: no exponent, no trailing zeros.

    >>> fmt_num(Decimal("1250.00")), fmt_num(Decimal("3.5E+3")), fmt_num(7)
    ('1250', '3500', '7')
    """
    d = Decimal(x).normalize()
    text = format(d, "f")
    return "0" if text in ("-0", "") else text


def fmt_date(d: dt.date) -> str:
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def render(value: Any, typ: str) -> str:
    """The text of a value of type ``typ`` (inputs shown to the model and gold answers)."""
    if typ == "words":
        return " ".join(value)
    if typ == "nums":
        return ", ".join(fmt_num(x) for x in value)
    if typ == "num":
        return fmt_num(value)
    if typ == "record":
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    if typ == "date":
        return fmt_date(value)
    if typ == "text":
        return value.sentence
    if typ == "quantity":
        return f"{fmt_num(value[0])} {value[1]}"
    if typ == "bool":
        return "yes" if value else "no"
    return str(value)


def to_json_value(value: Any, typ: str) -> Any:
    """The JSON value of a typed value (lists stay lists, numbers stay numbers)."""
    if typ == "words":
        return list(value)
    if typ == "nums":
        return [int(x) if Decimal(x) == int(x) else float(x) for x in value]
    if typ == "num":
        d = Decimal(value)
        return int(d) if d == d.to_integral_value() else float(d)
    if typ == "bool":
        return bool(value)
    if typ == "record":
        return dict(value)
    return render(value, typ)


def paraphrase(cores: Sequence[str]) -> list[str]:
    """All prefix x core x suffix combinations, deduplicated, in a stable order.

    >>> paraphrase(["Count the words."])[:2]
    ['Count the words.', 'Count the words. Reply with the answer only.']
    """
    out: list[str] = []
    seen: set[str] = set()
    for prefix in PREFIXES:
        for core in cores:
            if prefix == "Please " and ("?" in core or core.startswith(("Step 1", "First,", "To begin"))):
                continue  # "Please which tag ...?" is not English
            body = _lower_first(core) if prefix == "Please " else core
            for suffix in SUFFIXES:
                text = f"{prefix}{body}{suffix}".strip()
                key = text.lower()
                if key not in seen:
                    seen.add(key)
                    out.append(text)
    return out


def _lower_first(text: str) -> str:
    # "Please Uppercase the text." reads badly: lower-case the first letter, unless the first word is an acronym.
    first = text.split(" ", 1)[0]
    return text if first.isupper() and len(first) > 1 else text[:1].lower() + text[1:]


def normalise_answer(text: str) -> str:
    """First non-empty line of a model output, stripped, without an ``Answer:`` label or final periods.

    >>> normalise_answer("  42.\\nmore text")
    '42'
    """
    for line in text.strip().splitlines():
        line = line.strip()
        if line:
            if line.lower().startswith(("answer:", "output:")):
                line = line.split(":", 1)[1].strip()
            return _TRAILING.sub("", line)
    return ""


def first_line(text: str) -> str:
    """The first non-empty line, stripped (the raw checker's view of an output)."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _decimal(text: str) -> Decimal | None:
    if not re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def check(mode: CheckMode, gold: str, output: str) -> bool:
    """Does ``output`` (a raw generation) match the gold answer text under ``mode``?

    ``exact``: the normalised first line equals the gold; ``ci``: ignoring case; ``raw``: the first line equals
    the gold exactly (punctuation and labels are the skill); ``number``: numerically equal; ``json``: the first
    line parses to the same JSON value.

    >>> check("number", "12", "12.0"), check("raw", "[a]", "[a]."), check("json", '{"a": 1}', '{ "a":1 }')
    (True, False, True)
    """
    if mode == "raw":
        return first_line(output) == gold
    if mode == "json":
        try:
            return json.loads(first_line(output)) == json.loads(gold)
        except (json.JSONDecodeError, ValueError):
            return False
    got, want = normalise_answer(output), normalise_answer(gold)
    if mode == "exact":
        return got == want
    if mode == "ci":
        return got.lower() == want.lower()
    if mode == "number":
        a, b = _decimal(got), _decimal(want)
        return a is not None and b is not None and a == b
    raise ValueError(f"unknown check mode {mode!r}")


DEFAULT_CHECK: dict[str, CheckMode] = {
    "words": "exact",
    "nums": "exact",
    "word": "exact",
    "str": "raw",
    "num": "number",
    "bool": "ci",
    "date": "exact",
    "record": "exact",
}


@dataclass(frozen=True)
class Example:
    """One task instance: the input text and the gold output."""

    task: str
    input: str
    output: str


@dataclass(frozen=True)
class Param:
    """One parameter setting of a family: an id (part of task names) and the values the transform and the
    wording templates read (``str.format`` fields)."""

    id: str
    kw: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.id):
            raise ValueError(f"parameter id {self.id!r} must be [a-z0-9_]+")


@dataclass(frozen=True, eq=False)
class Family:
    """A parameterized, checkable transform with its input generator and wordings.

    Args:
        name: unique snake_case id.
        kind: coarse group for reports (formats, strings, lists, numbers, extraction, style).
        group: families of one group never share a chain (two casings, two JSON wrappers).
        in_type: the type of value it transforms (``any``: every type, given as :class:`Typed`).
        out_type: the type it returns; a callable ``kw -> type`` when it depends on the parameters.
        params: settings used in training; heldout: settings only ever evaluated (the interpolation split).
        apply: ``(value, kw) -> value``; raises :class:`NotApplicable` when it cannot apply.
        templates: wordings with ``{field}`` slots; the last one is reserved for evaluation.
        checker: how an output is compared with the gold (default: by the output type).
        source: ``(rng, kw) -> value`` of ``in_type``: inputs when the family comes first in a chain
            (default: the type's generator in :mod:`memory.training.tasks.families`).
    """

    name: str
    kind: str
    group: str
    in_type: str
    out_type: str | Callable[[dict[str, Any]], str]
    params: tuple[Param, ...]
    heldout: tuple[Param, ...]
    apply: Callable[[Any, dict[str, Any]], Any] = field(repr=False)
    templates: tuple[str, ...] = ()
    checker: CheckMode | None = None
    source: Callable[[random.Random, dict[str, Any]], Any] | None = field(default=None, repr=False)

    def output_type(self, p: Param) -> str:
        return self.out_type(p.kw) if callable(self.out_type) else self.out_type

    def accepts(self, typ: str) -> bool:
        return self.in_type in (ANY, typ)

    def param(self, pid: str) -> Param:
        for p in (*self.params, *self.heldout):
            if p.id == pid:
                return p
        raise KeyError(f"family {self.name!r} has no parameter setting {pid!r}")

    def wordings(self, p: Param, *, evaluation: bool = False) -> list[str]:
        """The training wordings of setting ``p`` (all templates but the last), or the evaluation one."""
        chosen = self.templates[-1:] if evaluation else self.templates[:-1]
        return [t.format(**p.kw) for t in chosen]

    def check_mode(self, p: Param) -> CheckMode:
        return self.checker or DEFAULT_CHECK[self.output_type(p)]


Step = tuple[Family, Param]


class Task:
    """A chain of one to three (family, parameter setting) steps, applied in order.

    ``name`` is ``family.param`` joined by ``+``; ``example(seed)`` is deterministic; the checker is the last
    step's. Training descriptions come from training wordings and connectors, evaluation descriptions from the
    reserved ones.
    """

    def __init__(self, steps: Sequence[Step]) -> None:
        if not 1 <= len(steps) <= 3:
            raise ValueError(f"a task has 1 to 3 steps, got {len(steps)}")
        self.steps: tuple[Step, ...] = tuple(steps)
        typ = self.steps[0][0].in_type
        for fam, p in self.steps:
            if typ != ANY and not fam.accepts(typ):
                raise ValueError(f"{fam.name} takes {fam.in_type}, not {typ}")
            typ = fam.output_type(p)
        self.out_type = typ
        self.name = "+".join(f"{f.name}.{p.id}" for f, p in self.steps)
        self.families: tuple[str, ...] = tuple(f.name for f, _ in self.steps)
        self.family = "+".join(self.families)
        self.kind = self.steps[-1][0].kind

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    # ------------------------------------------------------------ descriptions
    def cores(self, *, evaluation: bool = False) -> list[str]:
        """Core wordings before paraphrasing: one family's wordings, or connectors x step wordings."""
        if len(self.steps) == 1:
            fam, p = self.steps[0]
            return fam.wordings(p, evaluation=evaluation)
        conns = CONNECTORS[-CONNECTORS_EVAL:] if evaluation else CONNECTORS[:-CONNECTORS_EVAL]
        per_step = [f.wordings(p, evaluation=evaluation) for f, p in self.steps]
        out = [_connect(conn, combo) for conn in conns for combo in _product(per_step)]
        if evaluation or len(out) <= CORES_PER_TASK:
            return out
        return random.Random(f"cores:{self.name}").sample(out, CORES_PER_TASK)

    @cached_property
    def train_descriptions(self) -> list[str]:
        """Paraphrases of the training cores."""
        return paraphrase(self.cores())

    @cached_property
    def eval_descriptions(self) -> list[str]:
        """Paraphrases of the reserved cores (minus any collision with a training one)."""
        train = {d.lower() for d in self.train_descriptions}
        return [d for d in paraphrase(self.cores(evaluation=True)) if d.lower() not in train]

    @property
    def descriptions(self) -> list[str]:
        return self.train_descriptions + self.eval_descriptions

    # ---------------------------------------------------------------- examples
    def run(self, value: Any) -> Any:
        """Apply the steps to a value of the first step's input type; raises :class:`NotApplicable`."""
        typ = self.steps[0][0].in_type
        if typ == ANY:  # a source of an `any` family gives a Typed value
            value, typ = value.value, value.type
        for fam, p in self.steps:
            new = fam.apply(Typed(value, typ) if fam.in_type == ANY else value, p.kw)
            out_typ = fam.output_type(p)
            if new is None or new == "" or (isinstance(new, (list, dict)) and not new):
                raise NotApplicable(f"{fam.name} gives nothing")
            if render(new, out_typ) == render(value, typ):
                raise NotApplicable(f"{fam.name} changes nothing")
            value, typ = new, out_typ
        return value

    def draw(self, rng: random.Random) -> tuple[Any, Any]:
        """One (input value, output value) drawn with ``rng``; raises :class:`NotApplicable` when rejected."""
        fam, p = self.steps[0]
        if fam.source is None:
            raise ValueError(f"family {fam.name} has no input generator")
        value = fam.source(rng, p.kw)
        return value, self.run(value)

    def example(self, seed: int) -> Example:
        """The example for ``seed`` (deterministic across runs and machines).

        Draws are repeated until every step applies, changes its value, and input and answer are short.
        """
        rng = random.Random(f"{self.name}:{seed}")
        in_type = self.steps[0][0].in_type
        for _ in range(MAX_TRIES):
            try:
                value, out = self.draw(rng)
            except NotApplicable:
                continue
            inp, gold = _render_input(value, in_type), render(out, self.out_type)
            if len(inp) <= MAX_INPUT_CHARS and 0 < len(gold) <= MAX_OUTPUT_CHARS and "\n" not in gold:
                return Example(self.name, inp, gold)
        raise ValueError(f"task {self.name}: no valid example for seed {seed} in {MAX_TRIES} draws")

    def examples(self, n: int, *, start: int = 0) -> list[Example]:
        """``n`` examples from seeds ``start .. start+n-1``."""
        return [self.example(s) for s in range(start, start + n)]

    def viable(self, share: float = 0.2, tries: int = 25) -> bool:
        """Do at least ``share`` of ``tries`` draws give a valid example? (Stops as soon as it knows.)"""
        rng, ok, need = random.Random(f"accept:{self.name}"), 0, share * tries
        in_type = self.steps[0][0].in_type
        for i in range(tries):
            if ok >= need or ok + (tries - i) < need:
                break
            try:
                value, out = self.draw(rng)
            except NotApplicable:
                continue
            gold = render(out, self.out_type)
            ok += len(_render_input(value, in_type)) <= MAX_INPUT_CHARS and 0 < len(gold) <= MAX_OUTPUT_CHARS
        return ok >= need

    # ------------------------------------------------------------------ checks
    @property
    def check_mode(self) -> CheckMode:
        fam, p = self.steps[-1]
        return fam.check_mode(p)

    def check_output(self, example: Example, output: str) -> bool:
        """True when ``output`` (a raw model generation) answers ``example`` correctly."""
        return check(self.check_mode, example.output, output)


def _render_input(value: Any, typ: str) -> str:
    return render(value.value, value.type) if typ == ANY else render(value, typ)


def _product(lists: list[list[str]]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [()]
    for options in lists:
        out = [(*prefix, o) for prefix in out for o in options]
    return out


def _connect(conn: tuple[str, str, str], parts: Sequence[str]) -> str:
    first, middle, last = conn
    pieces = []
    for i, part in enumerate(parts):
        prefix = first if i == 0 else last if i == len(parts) - 1 else middle
        prefix = prefix.format(i=i + 1)
        pieces.append(prefix + (_lower_first(part) if prefix and not prefix.endswith(": ") else part))
    return " ".join(pieces)


__all__ = [
    "ANY",
    "CONNECTORS",
    "Example",
    "Family",
    "NotApplicable",
    "Param",
    "Step",
    "Task",
    "Text",
    "Typed",
    "check",
    "first_line",
    "fmt_date",
    "fmt_num",
    "normalise_answer",
    "paraphrase",
    "render",
    "to_json_value",
]
