"""Online experiments: stable hash assignment, logging with experiment and arm, feedback, reports with CIs."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session

from memory.errors import ValidationError
from memory.evaluation.experiments import Experiment, report


def test_assignment_is_stable_order_free_and_splits_traffic():
    a = Experiment(None, "exp-1", ["auto", "retrieval"])
    b = Experiment(None, "exp-1", ["retrieval", "auto"])
    keys = [f"user-{i}" for i in range(2000)]
    arms = [a.assign(k) for k in keys]
    assert arms == [a.assign(k) for k in keys] == [b.assign(k) for k in keys]
    share = arms.count("auto") / len(arms)
    assert 0.45 < share < 0.55
    other = Experiment(None, "exp-2", ["auto", "retrieval"])
    assert [other.assign(k) for k in keys] != arms  # the experiment name salts the hash


def test_weights_shift_traffic():
    exp = Experiment(None, "weighted", {"a": {"mode": "auto"}, "b": {"mode": "retrieval", "weight": 3}})
    arms = [exp.assign(f"k{i}") for i in range(4000)]
    assert 0.70 < arms.count("b") / len(arms) < 0.80


@pytest.mark.parametrize(
    "arms, match",
    [
        (["auto"], "at least two arms"),
        ({"a": {"mode": "telepathy"}, "b": {}}, "mode"),
        ({"a": {"temperature": 1}, "b": {}}, "unknown setting"),
        ({"a": {"weight": 0}, "b": {}}, "weight"),
        ("auto", "list of modes"),
    ],
)
def test_bad_arms_are_refused(arms, match):
    with pytest.raises(ValidationError, match=match):
        Experiment(None, "x", arms)


def test_assign_needs_a_key():
    with pytest.raises(ValidationError):
        Experiment(None, "x", ["auto", "retrieval"]).assign("")


def _log(mem, arm, experiment="exp", latency=100.0, mode="retrieval"):
    """A logged query, as ``ParametricMemory.query(log=True)`` writes it."""
    from memory.db import Namespace, QueryLog

    with Session(mem.engine) as s:
        ns = s.query(Namespace).filter_by(name="default").one_or_none()
        if ns is None:
            ns = Namespace(name="default")
            s.add(ns)
            s.flush()
        row = QueryLog(
            namespace_id=ns.id,
            query="q",
            mode=mode,
            reason="r",
            experiment=experiment,
            arm=arm,
            adapter_ids=[],
            chunk_ids=[],
            latency_ms=latency,
            answer="a",
        )
        s.add(row)
        s.commit()
        return row.id


@pytest.fixture
def memory_store(tmp_path):
    from memory.api import ParametricMemory

    return ParametricMemory(home=tmp_path / "home")


def test_report_counts_arms_and_gives_feedback_cis(memory_store):
    mem = memory_store
    for i in range(30):
        mem.feedback(_log(mem, "auto"), 1.0 if i % 10 else 0.0)  # 0.9
        mem.feedback(_log(mem, "retrieval", latency=50.0), 1.0 if i % 2 else 0.0)  # 0.5
    _log(mem, "auto")  # no feedback yet
    _log(mem, "auto", experiment="another")
    doc = report(mem, "exp", control="retrieval")
    assert doc["queries"] == 61 and doc["with_feedback"] == 60
    auto, rag = doc["arms"]["auto"], doc["arms"]["retrieval"]
    assert auto["queries"] == 31 and auto["feedback"]["n"] == 30
    assert auto["feedback"]["mean"] == pytest.approx(0.9)
    assert auto["feedback"]["low"] < 0.9 < auto["feedback"]["high"] <= 1.0
    assert rag["feedback"]["mean"] == pytest.approx(0.5) and rag["latency_ms"]["p50"] == 50.0
    (cmp,) = doc["comparisons"]
    assert cmp["arm"] == "auto" and cmp["diff"] == pytest.approx(0.4) and cmp["low"] > 0
    assert cmp["p_b_better"] > 0.99
    assert report(mem, "nothing-here")["arms"] == {}
    with pytest.raises(ValidationError):
        report(mem, "exp", control="absent")


def test_ab_report_command(memory_store, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from memory.evaluation.cli import register

    mem = memory_store
    monkeypatch.setenv("PMEM_HOME", str(mem.settings.home))
    mem.feedback(_log(mem, "a"), 1.0)
    mem.feedback(_log(mem, "b"), 0.0)
    app = typer.Typer()
    app.command()(lambda: None)  # a Typer app with one command keeps its sub-groups as groups
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["ab", "report", "exp", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert doc["arms"]["a"]["feedback"]["mean"] == 1.0 and doc["comparisons"][0]["diff"] == -1.0
    res = runner.invoke(app, ["ab", "report", "exp"])
    assert res.exit_code == 0 and "mean feedback" in res.output


@pytest.mark.slow
def test_experiment_query_logs_experiment_and_arm(tmp_path, shared_models_dir):
    from memory.api import ParametricMemory
    from memory.config import Settings

    mem = ParametricMemory(
        Settings(home=shared_models_dir).with_(
            database_url=f"sqlite:///{tmp_path}/e.db", blob_url=str(tmp_path / "blobs")
        )
    )
    mem.add("The Orlan vault passphrase is copper-falcon-42.", document_id="vault")
    exp = Experiment(
        mem,
        "k-test",
        {"k1": {"mode": "retrieval", "k": 1, "max_new_tokens": 4}, "none": {"mode": "parametric", "max_new_tokens": 4}},
    )
    r = exp.query("What is the Orlan vault passphrase?", user_key="alice")
    assert r.query_id is not None
    exp.feedback(r.query_id, 1.0)
    doc = exp.report()
    arm = exp.assign("alice")
    assert doc["arms"][arm]["queries"] == 1 and doc["arms"][arm]["feedback"]["mean"] == 1.0
    assert list(doc["arms"][arm]["modes_used"]) == [{"k1": "retrieval", "none": "parametric"}[arm]]
