"""The T2L task library: parameterized, composable families of program-checkable skills.

A family (:mod:`.families`) is an input generator, a parameterized transform, a checker and description
wordings; a task (:class:`Task`) chains one to three (family, setting) steps. :func:`library` builds the
training tasks and the three held-out splits (new settings, new chains, new families; see :mod:`.library`).

>>> from memory.training.tasks import get_task, train_tasks, heldout_tasks
>>> len(train_tasks()) > 500 and {t.name for t in train_tasks()}.isdisjoint(t.name for t in heldout_tasks())
True
>>> t = get_task("sort_words.length+take_nth.n2")
>>> ex = t.example(0)
>>> t.check_output(ex, ex.output)
True
"""

from __future__ import annotations

from memory.training.tasks.base import Example, Family, Param, Task, normalise_answer, paraphrase
from memory.training.tasks.families import FAMILIES, UNSEEN_FAMILIES
from memory.training.tasks.library import SPLITS, Library, family, library, parse_task, sample

# Example seeds: training draws from [0, EVAL_SEED_START); evaluation from EVAL_SEED_START upwards.
EVAL_SEED_START = 1_000_000


def get_task(name: str) -> Task:
    """The task called ``name`` (``family.setting`` joined by ``+``); raises NotFoundError when unknown.

    >>> get_task("join.comma").family
    'join'
    """
    return parse_task(name)


def train_tasks() -> list[Task]:
    """Tasks used for meta-training (and for the multi-task LoRA)."""
    return list(library().train)


def heldout_tasks(split: str | None = None) -> list[Task]:
    """Tasks never trained on: one split (``interpolation``, ``composition``, ``unseen_family``) or all."""
    lib = library()
    return list(lib.split(split)) if split else [t for s in SPLITS for t in lib.split(s)]


def all_tasks() -> list[Task]:
    """Training tasks, then every held-out split."""
    return train_tasks() + heldout_tasks()


__all__ = [
    "EVAL_SEED_START",
    "FAMILIES",
    "SPLITS",
    "UNSEEN_FAMILIES",
    "Example",
    "Family",
    "Library",
    "Param",
    "Task",
    "all_tasks",
    "family",
    "get_task",
    "heldout_tasks",
    "library",
    "normalise_answer",
    "paraphrase",
    "sample",
    "train_tasks",
]
