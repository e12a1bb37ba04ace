"""Bounded inputs on every backend and in the CLI (issue 22): what a careless or hostile caller sends is refused
with a clear error before any SQL runs, the same way on SQLite, PostgreSQL and pgvector.

    .venv/bin/python -m pytest tests/test_hardening.py -q
"""

from __future__ import annotations

import json

import pytest
from _embedders import BagOfWords

from memory.api import ParametricMemory
from memory.errors import ValidationError
from memory.retrieval.filters import MAX_CLAUSES
from memory.services.query import MAX_QUESTION_CHARS
from memory.services.records import MAX_INT


@pytest.fixture
def mem(retrieval_settings):
    return ParametricMemory(retrieval_settings, embedder=BagOfWords())


def test_nul_in_metadata_is_refused_everywhere_and_filtered_search_keeps_working(mem):
    """pgvector stored metadata holding "\\u0000", and every metadata-filtered search of the namespace then
    failed (jsonb refuses it): one write key broke reads for everyone."""
    mem.add("leave policy twenty days", document_id="leave", metadata={"dept": "hr"})
    for metadata in ({"dept": "h\x00r"}, {"d\x00ept": "hr"}, {"tags": ["a", "b\x00"]}, {"x": {"y": "\x00"}}):
        with pytest.raises(ValidationError, match="NUL"):
            mem.add("another text", document_id="bad", metadata=metadata)
    with pytest.raises(ValidationError, match="NUL"):
        mem.add("another text", document_id="bad", title="a\x00b")
    with pytest.raises(ValidationError, match="NUL"):
        mem.add("text " * 20_000 + "\x00", document_id="bad")  # past the first 64 KiB too
    assert [h.document_id for h in mem.search("leave policy", filter={"dept": "hr"})] == ["leave"]
    assert [d.id for d in mem.list()] == ["leave"]


def test_nul_in_filters_prefixes_and_queries_is_an_input_error(mem):
    mem.add("leave policy twenty days", document_id="leave", metadata={"dept": "hr"})
    for flt in ({"dept": "h\x00r"}, {"de\x00pt": "hr"}, {"dept": {"$in": ["hr", "\x00"]}}, {"dept": {"$gt": "\x00"}}):
        with pytest.raises(ValidationError, match="NUL"):
            mem.search("leave", filter=flt)
    with pytest.raises(ValidationError, match="NUL"):
        mem.list(prefix="le\x00")
    with pytest.raises(ValidationError, match="NUL"):
        mem.search("leave\x00policy")


def test_filters_have_the_same_clause_bound_on_every_backend(mem):
    """pgvector took 15-18 s over 33,000 $or clauses and then failed (65,535 bound parameters at most), where
    the in-process backend answered: now every backend refuses more than MAX_CLAUSES alike."""
    mem.add("leave policy twenty days", document_id="leave", metadata={"n": 7})
    at_bound = {"$or": [{"n": i} for i in range(MAX_CLAUSES)]}
    assert [h.document_id for h in mem.search("leave", filter=at_bound)] == ["leave"]
    for over in (
        {"$or": [{"n": i} for i in range(33_000)]},
        {"$and": [{"n": {"$gte": 0, "$lte": 10}} for _ in range(MAX_CLAUSES // 2 + 1)]},
        {"$not": {"$or": [{"n": i} for i in range(MAX_CLAUSES + 1)]}},
    ):
        with pytest.raises(ValidationError, match=f"more than {MAX_CLAUSES:,} conditions"):
            mem.search("leave", filter=over)
    assert len(mem.document_ids_matching(at_bound)) == 1
    with pytest.raises(ValidationError, match="conditions"):
        mem.document_ids_matching({"$or": [{"n": i} for i in range(MAX_CLAUSES + 1)]})


def test_numbers_beyond_the_columns_and_long_queries_are_input_errors(mem):
    mem.add("leave policy twenty days", document_id="leave")
    huge = 2**70
    for call in (
        lambda: mem.get("leave", version=huge),
        lambda: mem.get("leave", version=MAX_INT + 1),
        lambda: mem.chunks("leave", version=huge),
        lambda: mem.diff("leave", huge),
        lambda: mem.rollback("leave", huge),
        lambda: mem.list(offset=huge),
        lambda: mem.list(limit=huge),
        lambda: mem.feedback(huge, 1.0),
    ):
        with pytest.raises(ValidationError, match="integer from"):
            call()
    with pytest.raises(ValidationError, match="over the limit"):
        mem.search("leave " * (MAX_QUESTION_CHARS // 6 + 1))
    assert mem.search("leave " * (MAX_QUESTION_CHARS // 6 - 1))[0].document_id == "leave"


def test_experiment_arms_must_be_numbers(mem):
    from memory.evaluation.experiments import Experiment

    for arms in (
        {"a": {"k": "many"}, "b": {}},
        {"a": {"max_new_tokens": "x"}, "b": {}},
        {"a": {"k": True}, "b": {}},
        {"a": {"k": 2**70}, "b": {}},
        {"a": {"document_ids": 5}, "b": {}},
        {"a\x00": {}, "b": {}},
    ):
        with pytest.raises(ValidationError):
            Experiment(mem, "exp", arms)


# ============================================================================ CLI
@pytest.mark.parametrize(
    "args",
    [
        ["show", "no-such-doc"],
        ["history", "no-such-doc"],
        ["ls", "-n", "Bad Namespace!"],
        ["search", "   "],
        ["rm", "no-such-doc"],
        ["rollback", "no-such-doc", "1"],
        ["adapters", "--status", "odd"],
    ],
)
def test_read_commands_print_a_json_error(args, tmp_path, monkeypatch):
    """README: with --json every read command prints an {"error", "type"} object on error (exit code 2)."""
    from typer.testing import CliRunner

    from memory.cli import app

    monkeypatch.setenv("PMEM_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 2, r.output
    err = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(err) == {"error", "type"} and err["type"] in ("NotFoundError", "ValidationError"), err
    assert err["error"]


def test_keys_commands_print_a_json_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from memory.cli import app

    monkeypatch.setenv("PMEM_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(app, ["keys", "revoke", "ffffffffffff", "--json"])
    assert r.exit_code == 2
    assert json.loads(r.stdout.strip().splitlines()[-1])["type"] == "NotFoundError"


# ============================================================================ first model load
_FIRST_LOAD = """
import json, sys, threading
from memory.config import Settings
from memory.models import load_base_model
from memory.retrieval.embeddings import MiniLMEmbedder

settings = Settings.from_env(home=sys.argv[1])
errors = []

def run(fn):
    try:
        fn()
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")

jobs = [lambda: load_base_model(settings=settings), lambda: MiniLMEmbedder().embed_query("hello")]
threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(errors))
"""


@pytest.mark.slow  # converts the base model from GGUF (~15 s) in a fresh process
def test_first_model_load_beside_the_embedder_load(tmp_path):
    """On a fresh deployment the first query converted the base model while a search loaded the embedder:
    transformers was imported in two threads at once and one request got 500 ("cannot import name
    'AutoModelForCausalLM'"). A fresh process (transformers not imported yet) does both at once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMEM_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(repo))
    proc = subprocess.run(
        [sys.executable, "-c", _FIRST_LOAD, str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=repo,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
