"""``pmem bench self_study_sweep``: self-study recipes compared on the dev split, quality against cost.

How the self-study recipe's defaults are chosen (``memory.self_study.SelfStudyConfig``): every recipe is a set
of overrides of the current defaults, run on the same dev paragraphs of ``bench/data/realprose`` (manual
pages: the test split and the ``pmem eval qa`` suites are never used here). Per recipe and paragraph: self-study
on the paragraph alone, then the paragraph's question asked without it (``parametric``: the adapter alone) and
with it in the prompt (``hybrid``: adapter and passage, which must not spoil the reading of the passage), and
without the adapter for reference (``none``, ``context``).

Reported per recipe: ``contains`` for both, the adapter's fidelity on its held-back probes (``agreement``: top-1
agreement with the teacher, teacher-forced, a finer signal than a handful of answers), and seconds per
paragraph (all, teacher, training). Quick mode: 2 paragraphs.

    OMP_NUM_THREADS=1 python -m bench.self_study_sweep --recipes '[{}, {"top_layers": 1.0}]' --limit 6

>>> run(quick=True)["recipes"][0]["overrides"]  # doctest: +SKIP
{}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "realprose" / "dev_paragraphs.jsonl"
DEFAULT_RECIPES: list[dict[str, Any]] = [{}, {"top_layers": 1.0}, {"top_layers": 2 / 3}]
MAX_NEW_TOKENS = 32


def _items(limit: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return rows[:limit]


def run(
    quick: bool = False,
    recipes: list[dict[str, Any]] | None = None,
    limit: int | None = None,
    rows_file: Path | None = None,
) -> dict[str, Any]:
    """Every recipe on the dev paragraphs; with ``rows_file`` each paragraph's row is appended there as it ends."""
    from memory.distill import student_prompt, teacher_prompt
    from memory.evaluation.metrics import contains_answer
    from memory.evaluation.progress import ProgressBar
    from memory.models import load_base_model
    from memory.self_study import SelfStudyConfig, self_study

    base = load_base_model()
    items = _items(2 if quick else (limit or 6))
    recipes = recipes if recipes is not None else DEFAULT_RECIPES
    out = []
    with ProgressBar("self-study sweep", len(items) * len(recipes)) as bar:
        for overrides in recipes:
            cfg = SelfStudyConfig(**overrides)
            rows = []
            for it in items:
                doc, question, answers = it["documents"][0], it["question"], it["answers"]
                t0 = time.perf_counter()
                res = self_study(base, doc, cfg)
                seconds = time.perf_counter() - t0
                gens = base.generate(
                    [student_prompt(base, question), teacher_prompt(base, doc, question)] * 2,
                    max_new_tokens=MAX_NEW_TOKENS,
                    adapters=[res.adapter, res.adapter, None, None],
                )
                rows.append(
                    {
                        "id": it["id"],
                        "parametric": contains_answer(gens[0].text, answers),
                        "hybrid": contains_answer(gens[1].text, answers),
                        "none": contains_answer(gens[2].text, answers),
                        "context": contains_answer(gens[3].text, answers),
                        "answer": gens[0].text,
                        "agreement": res.fidelity.get("agreement"),
                        "containment": res.fidelity.get("containment"),
                        "seconds": round(seconds, 2),
                        "teacher_seconds": round(res.teacher_seconds, 2),
                        "steps": res.steps,
                        "loss_last": round(res.loss_last, 4),
                    }
                )
                if rows_file is not None:
                    with rows_file.open("a") as f:
                        f.write(json.dumps({"overrides": overrides, **rows[-1]}, ensure_ascii=False) + "\n")
                bar.advance(1, "paragraphs")
            n = len(rows)

            def mean(key: str, rows: list[dict[str, Any]] = rows, n: int = n) -> float:
                vals = [r[key] for r in rows if r[key] is not None]
                return round(sum(vals) / len(vals), 4) if vals else float("nan")

            out.append(
                {
                    "overrides": overrides,
                    "items": n,
                    "parametric": mean("parametric"),
                    "hybrid": mean("hybrid"),
                    "none": mean("none"),
                    "context": mean("context"),
                    "agreement": mean("agreement"),
                    "containment": mean("containment"),
                    "seconds": mean("seconds"),
                    "teacher_seconds": mean("teacher_seconds"),
                    "train_seconds": round(mean("seconds") - mean("teacher_seconds"), 2),
                    "rows": rows,
                }
            )
    return {"bench": "self_study_sweep", "data": str(DATA.name), "recipes": out}


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", help="JSON list of SelfStudyConfig overrides", default=None)
    ap.add_argument("--limit", type=int, default=None, help="dev paragraphs per recipe (default 6)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args(argv)
    rows_file = args.output.with_suffix(".rows.jsonl") if args.output else None
    result = run(
        quick=args.quick,
        recipes=json.loads(args.recipes) if args.recipes else None,
        limit=args.limit,
        rows_file=rows_file,
    )
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
