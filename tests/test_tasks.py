"""The T2L task library: families, checkers, composition, determinism and the three held-out splits.

Run: .venv/bin/python -m pytest tests/test_tasks.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from memory.errors import NotFoundError
from memory.training.tasks import (
    EVAL_SEED_START,
    FAMILIES,
    SPLITS,
    UNSEEN_FAMILIES,
    Task,
    get_task,
    heldout_tasks,
    library,
    normalise_answer,
    paraphrase,
    sample,
    train_tasks,
)
from memory.training.tasks.base import MAX_INPUT_CHARS, MAX_OUTPUT_CHARS, Typed, check, first_line

LIB = library()
SINGLES = [Task(((f, p),)) for f in FAMILIES for p in (*f.params, *f.heldout)]


def test_families_are_parameterized_and_worded() -> None:
    """>= 40 families; >= 4 wordings each (one reserved); every setting worded differently; settings unique."""
    assert len(FAMILIES) >= 40
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    assert set(UNSEEN_FAMILIES) <= {f.name for f in FAMILIES}
    multi = 0
    for f in FAMILIES:
        settings = [*f.params, *f.heldout]
        assert len(f.templates) >= 4, f.name
        assert len({p.id for p in settings}) == len(settings), f.name
        multi += len(settings) >= 3
        for p in settings:
            train, [ev] = f.wordings(p), f.wordings(p, evaluation=True)
            assert len(train) >= 3 and len(set(train)) == len(train) and ev not in train, (f.name, p.id)
        # a description names its setting: no two settings share a wording
        every = [w for p in settings for w in f.wordings(p) + f.wordings(p, evaluation=True)]
        assert len(set(every)) == len(every), f.name
    assert multi >= 40  # most families have three or more settings


def test_library_size_and_split_counts() -> None:
    """Hundreds to thousands of distinct tasks; every split is populated; chains of two and three steps."""
    counts = LIB.counts()
    assert counts["train"] >= 1000
    assert counts["interpolation"] >= 40 and counts["composition"] >= 100 and counts["unseen_family"] >= 25
    names = [t.name for s in ("train", *SPLITS) for t in LIB.split(s)]
    assert len(names) == len(set(names))  # no task in two splits, none twice
    lengths = {len(t.steps) for t in LIB.train}
    assert lengths == {1, 2, 3} and {len(t.steps) for t in LIB.composition} == {2, 3}
    assert len({t.family for t in LIB.train if len(t.steps) == 1}) == len(FAMILIES) - len(UNSEEN_FAMILIES)


@pytest.mark.parametrize("task", SINGLES, ids=lambda t: t.name)
def test_checker_accepts_reference_and_rejects_perturbed(task: Task) -> None:
    """Each family's checker accepts its gold outputs and rejects perturbed ones (cut, extended, case-flipped,
    another example's answer, empty)."""
    examples = task.examples(12)
    golds = {normalise_answer(e.output) for e in examples}
    for e in examples:
        assert task.check_output(e, e.output) and task.check_output(e, e.output + "\n"), (e, "gold rejected")
        assert 0 < len(e.input) <= MAX_INPUT_CHARS and 0 < len(e.output) <= MAX_OUTPUT_CHARS
        perturbed = ["", e.output + " x", "x " + e.output]
        if len(e.output) > 1:
            perturbed.append(e.output[:-1])
        if task.check_mode != "ci" and any(c.isalpha() for c in e.output):
            i = next(i for i, c in enumerate(e.output) if c.isalpha())
            perturbed.append(e.output[:i] + e.output[i].swapcase() + e.output[i + 1 :])
        if task.check_mode == "number":
            perturbed.append(str(Decimal(e.output) + 1))
        perturbed += [x.output for x in examples if normalise_answer(x.output) != normalise_answer(e.output)][:3]
        for wrong in perturbed:
            assert not task.check_output(e, wrong), (e, wrong)
    assert len(golds) > 1  # the answers vary


def test_check_modes() -> None:
    assert check("number", "12", "12.0") and not check("number", "12", "12 apples")
    assert check("json", '{"a": [1, "b"]}', '{"a":[1,"b"]} ') and not check("json", '{"a": 1}', '{"a": "1"}')
    assert check("raw", "[x]", " [x] \nmore") and not check("raw", "x!", "x")
    assert check("exact", "apple", "Answer: apple.") and not check("exact", "apple", "Apple")
    assert check("ci", "yes", "Yes") and first_line("\n\n a \n b") == "a"


def test_compositions_apply_in_order() -> None:
    """A chain applies its steps left to right; the order changes the answer."""
    a, b = get_task("add_const.p10+multiply_const.x2"), get_task("multiply_const.x2+add_const.p10")
    assert a.run(5) == 30 and b.run(5) == 20
    t = get_task("sort_words.alpha+case.upper+take_nth.n2")
    assert t.run(["pear", "apple", "fig"]) == "FIG"
    for task in sample([x for x in LIB.train if len(x.steps) > 1], 60, seed=1):
        first, p = task.steps[0]
        value = first.source(__import__("random").Random(0), p.kw)
        try:
            out = task.run(value)
        except Exception:  # noqa: BLE001 - a draw the chain rejects; the next test covers valid ones
            continue
        typ, v = first.in_type, value
        if typ == "any":
            v, typ = v.value, v.type
        for fam, q in task.steps:
            v = fam.apply(Typed(v, typ) if fam.in_type == "any" else v, q.kw)
            typ = fam.output_type(q)
        assert v == out, task.name
    # the gold of a chain is the gold of its last step applied to the previous steps' result
    j = get_task("sort_words.alpha+join.comma")
    ex = j.example(3)
    assert ex.output == ", ".join(sorted(ex.input.split()))


def test_determinism_by_seed_across_processes() -> None:
    """Same seed, same example; the library and its examples are identical in a fresh process with another
    hash seed."""
    t = get_task("filter_longer.n4+join.pipe")
    assert t.example(5) == t.example(5) and t.example(5) != t.example(6)
    code = (
        "import json; from memory.training.tasks import library\n"
        "lib = library()\n"
        "print(json.dumps({s: [t.name for t in lib.split(s)] for s in ('train', 'interpolation', 'composition', "
        "'unseen_family')} | {'ex': [t.example(1000001).output for t in lib.composition[:30]]}))"
    )
    here = {s: [t.name for t in LIB.split(s)] for s in ("train", *SPLITS)}
    here["ex"] = [t.example(1_000_001).output for t in LIB.composition[:30]]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def _steps(t: Task) -> set[tuple[str, str]]:
    return {(f.name, p.id) for f, p in t.steps}


def _pairs(t: Task) -> set[tuple[str, str]]:
    return set(zip(t.families, t.families[1:], strict=False))


def test_splits_are_disjoint_in_their_stated_sense() -> None:
    train_steps = set().union(*(_steps(t) for t in LIB.train))
    train_families = {f for t in LIB.train for f in t.families}
    train_pairs = set().union(*(_pairs(t) for t in LIB.train))
    # interpolation: seen families, settings never trained (alone or in any chain)
    for t in LIB.interpolation:
        [(f, p)] = t.steps
        assert f.name in train_families and p in f.heldout and (f.name, p.id) not in train_steps
    assert not {(f.name, p.id) for f in FAMILIES for p in f.heldout} & train_steps
    # composition: every family and setting trained; at least one adjacent pair never chained in training
    for t in LIB.composition:
        assert _steps(t) <= train_steps, t.name
        assert _pairs(t) - train_pairs, t.name
        assert _pairs(t) & LIB.heldout_pairs
    assert not LIB.heldout_pairs & train_pairs
    # unseen families: never in a training task
    assert {f for t in LIB.unseen_family for f in t.families} == set(UNSEEN_FAMILIES)
    assert not train_families & set(UNSEEN_FAMILIES)


def test_evaluation_wordings_never_used_in_training() -> None:
    """No evaluation description of a held-out task is a training description of any training task, and no
    reserved core wording appears among training cores."""
    train_desc = {d.lower() for t in LIB.train for d in t.train_descriptions}
    train_cores = {c for t in LIB.train for c in t.cores()}
    for t in heldout_tasks():
        ev = t.eval_descriptions
        assert len(ev) >= 10, t.name
        assert not {d.lower() for d in ev} & train_desc, t.name
        assert not set(t.cores(evaluation=True)) & train_cores, t.name
    for t in LIB.train[:50]:
        assert not {d.lower() for d in t.eval_descriptions} & {d.lower() for d in t.train_descriptions}


def test_held_out_examples_generate_at_evaluation_seeds() -> None:
    for t in heldout_tasks():
        for e in t.examples(3, start=EVAL_SEED_START):
            assert t.check_output(e, e.output) and "\n" not in e.output
    t = get_task("add_each.k1")
    assert {e.input for e in t.examples(30)} != {e.input for e in t.examples(30, start=EVAL_SEED_START)}


def test_sample_spreads_over_families() -> None:
    s = sample(LIB.interpolation, 20, seed=0)
    assert len(s) == 20 and len({t.family for t in s}) == 20
    assert sample(LIB.interpolation, 20, seed=0) == s and sample(LIB.interpolation, 20, seed=1) != s
    assert len(sample(LIB.unseen_family, 10_000)) == len(LIB.unseen_family)


def test_lookup_errors_and_train_list() -> None:
    with pytest.raises(NotFoundError):
        get_task("no_such_family.x")
    with pytest.raises(NotFoundError):
        get_task("join.no_such_setting")
    with pytest.raises(NotFoundError):
        get_task("join.comma+take_nth.n1")  # take_nth takes words, join gives text
    assert train_tasks()[0] in LIB.train and get_task(LIB.composition[0].name) == LIB.composition[0]


def test_paraphrase_and_normalise() -> None:
    out = paraphrase(["Count the words.", "Count the words."])
    assert len(out) == len(set(out)) and "Count the words." in out
    assert not any(
        d.startswith(("Please which", "Please step")) for d in paraphrase(["Which is it?", "Step 1: do it."])
    )
    assert normalise_answer("Answer: 42.\nbla") == "42"
    assert normalise_answer("\n\n  yes  ") == "yes"
    assert normalise_answer("") == ""
