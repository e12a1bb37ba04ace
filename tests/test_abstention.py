"""Abstention: a question nothing stored is about gets a plain "I don't know" in every mode, with the reason, and
asking never creates a namespace (issue 25; issue 22, defect 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _embedders import BagOfWords

from memory.api import ParametricMemory
from memory.config import Settings
from memory.errors import ConfigError

CORPUS = Path(__file__).parent / "data" / "firsthour"
MODES = ("auto", "retrieval", "parametric", "hybrid")


@pytest.fixture
def tiny_mem(backend_settings):
    """A memory with the bag-of-words embedder and a tiny random base model (generation in milliseconds)."""
    from _fixtures_models import tiny_base

    mem = ParametricMemory(backend_settings.with_(abstain_threshold=0.5), embedder=BagOfWords())
    mem.runtime._base_model = base = tiny_base()
    base.model.config.max_position_embeddings = 4096  # one token per character: room for a passage
    return mem


def test_asking_in_a_missing_or_empty_namespace_abstains_and_creates_nothing(tiny_mem):
    mem = tiny_mem
    mem.add("The vault code is 7342.", document_id="vault", namespace="hr")
    for mode in MODES:
        r = mem.query("What is the vault code?", namespace="hrr", mode=mode)
        assert r.mode == "abstain" and r.answer.startswith("I don't know"), r
        assert "namespace 'hrr' does not exist" in r.reason and r.chunks == [] and r.adapters == []
        assert r.query_id is None and r.prompt_tokens == 0  # nothing logged, the model never asked
    assert mem.namespaces() == ["hr"]  # the mistyped namespace was not created
    assert mem.search("vault code", namespace="hrr") == [] and mem.namespaces() == ["hr"]

    mem.add("A note.", document_id="note", namespace="empty")
    mem.delete("note", namespace="empty")
    r = mem.query("What is the vault code?", namespace="empty")
    assert r.mode == "abstain" and "holds no documents" in r.reason and r.query_id is not None
    r = mem.query("What is the vault code?", namespace="hr", filter={"document_id": "nothing-like-it"})
    assert r.mode == "abstain" and "no document matches the filter" in r.reason


def test_a_question_nothing_is_about_abstains_in_every_mode_and_says_why(tiny_mem):
    mem = tiny_mem
    mem.add("The vault code is 7342. The vault opens at noon.", document_id="vault")
    for mode in MODES:
        pieces: list[str] = []
        r = mem.query("Who won the football world cup?", mode=mode, on_token=pieces.append)
        assert (r.mode, r.answer) == ("abstain", "I don't know: nothing in namespace 'default' is about this."), r
        assert f"{r.relevance:.2f} < 0.50" in r.reason and "PMEM_ABSTAIN_THRESHOLD" in r.reason and r.relevance < 0.5
        assert "".join(pieces) == r.answer  # a stream gets the abstention too
    answered = mem.query("What is the vault code?", mode="retrieval", max_new_tokens=2)
    assert answered.mode == "retrieval" and answered.relevance is not None and answered.relevance >= 0.5
    assert [c.document_id for c in answered.chunks] == ["vault"]
    # documents named by the caller count as relevant: no abstention
    named = mem.query("Who won the football world cup?", mode="retrieval", document_ids=["vault"], max_new_tokens=2)
    assert named.mode == "retrieval" and named.relevance is None
    # abstentions are logged like answers (for A/B reports), with their mode
    from sqlalchemy import select

    from memory.db import QueryLog, session_factory

    with session_factory(mem.engine)() as s:
        modes = list(s.scalars(select(QueryLog.mode).order_by(QueryLog.id)))
    assert modes == ["abstain"] * 4 + ["retrieval", "retrieval"]


def test_the_threshold_is_a_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("PMEM_ABSTAIN_THRESHOLD", "0.3")
    assert Settings.from_env().abstain_threshold == 0.3
    for bad in ("1.5", "-0.1", "nan", "high"):
        monkeypatch.setenv("PMEM_ABSTAIN_THRESHOLD", bad)
        with pytest.raises(ConfigError, match=r"abstain_threshold|ABSTAIN_THRESHOLD"):
            Settings.from_env()
    monkeypatch.delenv("PMEM_ABSTAIN_THRESHOLD")
    mem = ParametricMemory(home=tmp_path / "h", embedder=BagOfWords())
    assert mem.query_engine.abstain_threshold == 0.0  # no measured value for this embedder: only empty namespaces
    assert ParametricMemory(home=tmp_path / "h", abstain_threshold=0).query_engine.abstain_threshold == 0.0


@pytest.mark.slow
def test_the_policy_corpus_abstains_out_of_corpus_and_answers_in_corpus(tmp_path):
    """The measured default on a 4-file corpus (markdown, text, HTML): every out-of-corpus question abstains in
    every mode, and no in-corpus question does (so no answer retrieval would give is lost)."""
    mem = ParametricMemory(home=tmp_path / "h")  # the embedded MiniLM and base model
    assert {r.status for r in mem.add_source(str(CORPUS / "policies"), namespace="pol")} == {"created"}
    questions = json.loads((CORPUS / "questions.json").read_text())
    for item in questions["out_of_corpus"]:
        for mode in MODES:
            r = mem.query(item["question"], namespace="pol", mode=mode)
            assert r.mode == "abstain" and r.answer.startswith("I don't know"), (item, r)
            assert r.relevance is not None and r.relevance < mem.query_engine.abstain_threshold
    for item in questions["in_corpus"]:
        r = mem.query(item["question"], namespace="pol", mode="auto", max_new_tokens=1, log=False)
        assert r.mode == "retrieval" and r.relevance >= mem.query_engine.abstain_threshold, (item, r)
        assert r.chunks[0].document_id == item["document"]  # the passage that answers it is in the prompt


def test_pmem_ask_in_a_mistyped_namespace_exits_1_and_creates_nothing() -> None:
    from typer.testing import CliRunner

    from memory.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["add", "-", "--id", "vault", "-n", "hr"], input="The vault code is 7342.").exit_code == 0
    r = runner.invoke(app, ["ask", "What is the vault code?", "-n", "hrr", "--json"])
    assert r.exit_code == 1, r.output
    answer = json.loads(r.stdout.splitlines()[-1])
    assert answer["mode"] == "abstain" and "does not exist" in answer["reason"] and "namespaces: hr" in r.stderr
    r = runner.invoke(app, ["namespaces", "--json"])
    assert [n["name"] for n in json.loads(r.stdout.splitlines()[-1])] == ["hr"]
