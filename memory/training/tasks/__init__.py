"""The T2L task library: short, program-checkable skills with paraphrased descriptions.

>>> from memory.training.tasks import get_task, train_tasks, heldout_tasks
>>> len(train_tasks()) + len(heldout_tasks()) >= 60
True
>>> ex = get_task("uppercase").example(0)
>>> get_task("uppercase").check_output(ex, ex.output)
True
"""

from __future__ import annotations

from memory.errors import NotFoundError
from memory.training.tasks.base import Example, Task, normalise_answer, paraphrase
from memory.training.tasks.library import HELD_OUT, TASKS

_BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}


def all_tasks() -> list[Task]:
    """Every task, in library order."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``.

    >>> get_task("add").family
    'arithmetic'
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise NotFoundError(f"no task {name!r}; known tasks: {sorted(_BY_NAME)}") from None


def train_tasks() -> list[Task]:
    """Tasks used for meta-training (all but :data:`HELD_OUT`)."""
    return [t for t in TASKS if t.name not in HELD_OUT]


def heldout_tasks() -> list[Task]:
    """Whole tasks never seen in training (zero-shot evaluation)."""
    return [_BY_NAME[n] for n in HELD_OUT]


# Example seeds: training draws from [0, EVAL_SEED_START); evaluation from EVAL_SEED_START upwards.
EVAL_SEED_START = 1_000_000

__all__ = [
    "EVAL_SEED_START",
    "Example",
    "HELD_OUT",
    "Task",
    "all_tasks",
    "get_task",
    "heldout_tasks",
    "normalise_answer",
    "paraphrase",
    "train_tasks",
]
