"""``pmem bench abstention``: the relevance behind ``query``'s "I don't know" on questions a corpus answers and
questions it does not, and what the threshold makes of them.

Relevance is :func:`memory.services.query.passage_relevance` over the top passages of the search that ``query``
runs (the embedded MiniLM). Groups: the 7 in-corpus and 5 out-of-corpus questions of the 4-file policy corpus
in ``tests/data/firsthour``, and the built-in ``pmem eval qa`` items (each answered by its own document; the
default items and, unless ``quick``, those of seed 3), all in one namespace per group. No generation.

>>> result = run(quick=True)  # doctest: +SKIP
>>> result["groups"]["out_of_corpus"]["abstained"]  # doctest: +SKIP
5
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "firsthour"


def run(quick: bool = False) -> dict[str, Any]:
    from memory.api import ParametricMemory
    from memory.evaluation import suites

    mem = ParametricMemory(home=tempfile.mkdtemp(prefix="pmem-bench-abstention-"))
    engine = mem.query_engine
    questions = json.loads((CORPUS / "questions.json").read_text())
    mem.add_source(str(CORPUS / "policies"), namespace="policies", on_add="none")
    items = suites.builtin(quick) + ([] if quick else suites.builtin(False, seed=3))
    for item in items:
        for j, text in enumerate(item.documents):
            mem.add(text, document_id=f"{item.id}.d{j}", namespace="qa", on_add="none")
    groups = {
        "in_corpus": [("policies", q["question"]) for q in questions["in_corpus"]],
        "out_of_corpus": [("policies", q["question"]) for q in questions["out_of_corpus"]],
        "builtin_qa": [("qa", item.question) for item in items],
    }
    threshold = engine.abstain_threshold
    out: dict[str, Any] = {}
    for name, asked in groups.items():
        rows = []
        for ns, question in asked:
            hits = mem.search(question, k=8, namespace=ns)  # as query searches
            relevance = engine.relevance(question, hits)
            rows.append(
                {"question": question, "relevance": round(relevance, 3), "chunk_score": round(hits[0].score, 3)}
            )
        scores = [r["relevance"] for r in rows]
        out[name] = {
            "n": len(rows),
            "min": min(scores),
            "max": max(scores),
            "abstained": sum(s < threshold for s in scores),
            "questions": rows if name != "builtin_qa" else [],
        }
    return {"embedder": engine.embedder.name, "threshold": threshold, "groups": out}
