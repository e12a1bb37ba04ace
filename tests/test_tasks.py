"""The T2L task library: counts, split, determinism, checkers.

Run: .venv/bin/python -m pytest tests/test_tasks.py -q
"""

from __future__ import annotations

import pytest

from memory.errors import NotFoundError
from memory.training.tasks import (
    EVAL_SEED_START,
    HELD_OUT,
    all_tasks,
    get_task,
    heldout_tasks,
    normalise_answer,
    paraphrase,
    train_tasks,
)

TASKS = all_tasks()


def test_library_size_and_split() -> None:
    """At least 60 tasks, at least 15 whole tasks held out, train and held-out disjoint and covering all."""
    assert len(TASKS) >= 60
    assert len({t.name for t in TASKS}) == len(TASKS)
    train, held = {t.name for t in train_tasks()}, {t.name for t in heldout_tasks()}
    assert len(held) >= 15 and held == set(HELD_OUT)
    assert not train & held
    assert train | held == {t.name for t in TASKS}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_descriptions(task) -> None:  # noqa: ANN001
    """>= 20 distinct paraphrases; evaluation descriptions never appear among training ones."""
    assert len(task.descriptions) >= 20
    assert len(set(d.lower() for d in task.descriptions)) == len(task.descriptions)
    assert len(task.train_descriptions) >= 20 and len(task.eval_descriptions) >= 20
    assert not {d.lower() for d in task.train_descriptions} & {d.lower() for d in task.eval_descriptions}
    assert all(d.strip() == d and d for d in task.descriptions)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_examples_deterministic_and_short(task) -> None:  # noqa: ANN001
    """Same seed -> same example; different seeds vary; inputs and answers stay short."""
    assert task.example(7) == task.example(7)
    assert task.example(EVAL_SEED_START + 3) == task.example(EVAL_SEED_START + 3)
    examples = task.examples(40)
    assert len({e.input for e in examples}) > 3
    for e in examples:
        assert 0 < len(e.input) <= 200 and len(e.input.split()) <= 40
        assert 0 < len(e.output) <= 60
        assert e.task == task.name


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_checker_accepts_gold_rejects_wrong(task) -> None:  # noqa: ANN001
    """The checker accepts every gold answer (also with a trailing newline) and rejects another example's answer."""
    examples = task.examples(30)
    for e in examples:
        assert task.check_output(e, e.output), (e, "gold rejected")
        assert task.check_output(e, e.output + "\n"), (e, "gold + newline rejected")
        assert not task.check_output(e, ""), (e, "empty accepted")
    e = examples[0]
    wrong = next(x.output for x in examples[1:] if normalise_answer(x.output).lower() != normalise_answer(e.output).lower())
    assert not task.check_output(e, wrong)


def test_split_examples_differ() -> None:
    """Training seeds and evaluation seeds give different examples."""
    t = get_task("add")
    assert {e.input for e in t.examples(50)} != {e.input for e in t.examples(50, start=EVAL_SEED_START)}


def test_paraphrase_and_lookup() -> None:
    """Paraphrases are deduplicated combinations; unknown names raise NotFoundError."""
    out = paraphrase(["Count the words.", "Count the words."])
    assert len(out) == len(set(out)) and "Count the words." in out
    assert not any(d.startswith("Please which") for t in TASKS for d in t.descriptions)
    with pytest.raises(NotFoundError):
        get_task("no_such_task")


def test_normalise_answer() -> None:
    assert normalise_answer("Answer: 42.\nbla") == "42"
    assert normalise_answer("\n\n  yes  ") == "yes"
    assert normalise_answer("") == ""
