"""``pmem bench do_no_harm``: does a namespace's memory leave questions about something else alone?

A namespace holds held-out real-prose paragraphs (``bench/data/realprose``, test split) internalized with the
quality tier (self-study). General questions unrelated to them (``bench/data/unrelated_questions.json``) are
asked in ``auto`` mode, and each answer is compared with the bare base model's own greedy answer (no adapter,
no passage, the same prompt format). Two settings:

- ``abstention off`` (``abstain_threshold=0``): the router alone decides; ``same_as_base`` is the share of
  answers identical to the base model's, ``untouched`` the share answered with no adapter and no passage;
- ``abstention on`` (the default threshold): ``abstained`` is the share answered "I don't know" (the memory
  knows nothing about them), and ``same_or_abstained`` adds those to the answers identical to the base's.

Goal (issue 21): ``same_as_base`` >= 0.95 with abstention off.

>>> result = run(quick=True)  # doctest: +SKIP
>>> result["abstention_off"]["same_as_base"] >= 0.95  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
NS = "harm"
MAX_NEW_TOKENS = 48


def run(quick: bool = False) -> dict[str, Any]:
    from memory import prompts
    from memory.api import ParametricMemory
    from memory.evaluation.progress import ProgressBar

    questions = json.loads((DATA / "unrelated_questions.json").read_text())["questions"]
    paragraphs = [json.loads(line) for line in (DATA / "realprose" / "test_paragraphs.jsonl").read_text().splitlines()]
    n_docs, n_q = (2, 10) if quick else (4, len(questions))
    questions = questions[:n_q]
    mem = ParametricMemory(home=tempfile.mkdtemp(prefix="pmem-bench-harm-"))
    internalize_s = []
    with ProgressBar("do-no-harm: internalize (self-study)", n_docs) as bar:
        for item in paragraphs[:n_docs]:
            mem.add(item["documents"][0], document_id=item["id"], namespace=NS, on_add="none")
            info = mem.internalize(item["id"], namespace=NS, tier="full")
            internalize_s.append(float(info.provenance.get("seconds", 0.0)))
            bar.advance(1, "documents")
    base = mem.base_model

    def bare(question: str) -> str:
        ids = base.chat_ids(prompts.parametric_prompt(question), system=prompts.QA_SYSTEM)
        return base.generate([ids], max_new_tokens=MAX_NEW_TOKENS)[0].text.strip()

    engine = mem.query_engine
    rows = []
    with ProgressBar("do-no-harm: unrelated questions", len(questions)) as bar:
        for q in questions:
            want = bare(q)
            engine.abstain_threshold_setting = 0.0
            off = mem.query(q, namespace=NS, mode="auto", max_new_tokens=MAX_NEW_TOKENS, log=False)
            engine.abstain_threshold_setting = None
            on = mem.query(q, namespace=NS, mode="auto", max_new_tokens=MAX_NEW_TOKENS, log=False)
            rows.append(
                {
                    "question": q,
                    "base": want,
                    "off": {
                        "answer": off.answer,
                        "mode": off.mode,
                        "adapters": len(off.adapters),
                        "chunks": len(off.chunks),
                    },
                    "on": {"answer": on.answer, "mode": on.mode},
                }
            )
            bar.advance(1, "questions")
    n = len(rows)
    same_off = sum(r["off"]["answer"] == r["base"] for r in rows)
    untouched = sum(r["off"]["adapters"] == 0 and r["off"]["chunks"] == 0 for r in rows)
    abstained = sum(r["on"]["mode"] == "abstain" for r in rows)
    same_on = sum(r["on"]["answer"] == r["base"] for r in rows)
    return {
        "documents": n_docs,
        "questions": n,
        "internalize_s_mean": round(sum(internalize_s) / len(internalize_s), 1) if internalize_s else None,
        "abstention_off": {
            "same_as_base": round(same_off / n, 3),
            "untouched": round(untouched / n, 3),
            "modes": _count(r["off"]["mode"] for r in rows),
        },
        "abstention_on": {
            "abstained": round(abstained / n, 3),
            "same_or_abstained": round((abstained + same_on) / n, 3),
            "modes": _count(r["on"]["mode"] for r in rows),
        },
        "goal_same_as_base_ge_0_95": same_off / n >= 0.95,
        "rows": rows,
    }


def _count(modes: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in modes:
        out[m] = out.get(m, 0) + 1
    return out


if __name__ == "__main__":
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
