"""Task, Example, paraphrased descriptions and output checkers of the T2L task library.

A task is a short skill whose answer a program can check: an input generator (seeded), a gold answer and a
checker. Descriptions are paraphrased combinatorially: a few hand-written *cores* times framing prefixes and
answer-format suffixes, deduplicated. The last core of every task is reserved for evaluation, so an evaluation
description never shares its wording with a training one.

>>> t = Task("shout", "rewriting", ("Uppercase the text.", "Write the text in capitals."),
...          lambda rng: ("hi there", "HI THERE"), check="exact")
>>> t.check_output(t.example(0), "HI THERE")
True
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Literal

CheckMode = Literal["exact", "exact_ci", "number", "words_ci"]

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

_TRAILING = re.compile(r"[\s.!]+$")


def _lower_first(text: str) -> str:
    # "Please Uppercase the text." reads badly: lower-case the first letter, unless the first word is an acronym.
    first = text.split(" ", 1)[0]
    return text if first.isupper() and len(first) > 1 else text[:1].lower() + text[1:]


def paraphrase(cores: tuple[str, ...] | list[str]) -> list[str]:
    """All prefix x core x suffix combinations, deduplicated, in a stable order.

    >>> paraphrase(["Count the words."])[:2]
    ['Count the words.', 'Count the words. Reply with the answer only.']
    """
    out: list[str] = []
    seen: set[str] = set()
    for prefix in PREFIXES:
        for core in cores:
            if prefix == "Please " and "?" in core:
                continue  # "Please which tag ...?" is not English
            body = _lower_first(core) if prefix == "Please " else core
            for suffix in SUFFIXES:
                text = f"{prefix}{body}{suffix}".strip()
                key = text.lower()
                if key not in seen:
                    seen.add(key)
                    out.append(text)
    return out


def normalise_answer(text: str) -> str:
    """First non-empty line of a model output, stripped of surrounding quotes-free whitespace and final periods.

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


@dataclass(frozen=True)
class Example:
    """One task instance: the input text and the gold output."""

    task: str
    input: str
    output: str


@dataclass(frozen=True)
class Task:
    """A checkable skill with paraphrased descriptions and a seeded example generator.

    Args:
        name: unique snake_case id.
        family: coarse group (formats, extraction, classification, rewriting, style, arithmetic).
        cores: hand-written descriptions; the last one is reserved for evaluation.
        make: ``rng -> (input, gold_output)``.
        check: how an output is compared with the gold answer (after :func:`normalise_answer`):
            ``exact`` (case-sensitive), ``exact_ci``, ``number`` (numeric equality), ``words_ci``
            (same words ignoring case and punctuation). A callable ``(example, output) -> bool`` overrides it.
    """

    name: str
    family: str
    cores: tuple[str, ...]
    make: Callable[[random.Random], tuple[str, str]] = field(repr=False)
    check: CheckMode | Callable[[Example, str], bool] = "exact_ci"

    # ------------------------------------------------------------ descriptions
    @property
    def descriptions(self) -> list[str]:
        """Every paraphrase of every core."""
        return paraphrase(self.cores)

    @property
    def train_descriptions(self) -> list[str]:
        """Paraphrases of all cores but the last."""
        return paraphrase(self.cores[:-1])

    @property
    def eval_descriptions(self) -> list[str]:
        """Paraphrases of the last core, never seen in training (minus any collision with a training one)."""
        train = {d.lower() for d in self.train_descriptions}
        return [d for d in paraphrase(self.cores[-1:]) if d.lower() not in train]

    # ---------------------------------------------------------------- examples
    def example(self, seed: int) -> Example:
        """The example for ``seed`` (deterministic across runs and machines).

        >>> from memory.training.tasks import get_task
        >>> get_task("uppercase").example(3) == get_task("uppercase").example(3)
        True
        """
        rng = random.Random(f"{self.name}:{seed}")
        inp, out = self.make(rng)
        return Example(self.name, inp, out)

    def examples(self, n: int, *, start: int = 0) -> list[Example]:
        """``n`` examples from seeds ``start .. start+n-1``."""
        return [self.example(s) for s in range(start, start + n)]

    # ------------------------------------------------------------------ checks
    def check_output(self, example: Example, output: str) -> bool:
        """True when ``output`` (a raw model generation) answers ``example`` correctly."""
        if callable(self.check):
            return bool(self.check(example, output))
        got, gold = normalise_answer(output), normalise_answer(example.output)
        if self.check == "exact":
            return got == gold
        if self.check == "exact_ci":
            return got.lower() == gold.lower()
        if self.check == "number":
            try:
                return float(got.replace(",", "")) == float(gold)
            except ValueError:
                return False
        if self.check == "words_ci":
            return _words(got) == _words(gold)
        raise ValueError(f"unknown check mode {self.check!r}")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())
