"""``python -m bench.router_sweep``: ``auto``'s rules for self-study adapters compared on the dev split.

How :class:`memory.router.RouterConfig`'s choices for self-study adapters are made: every distinct document of
the dev items (``bench/data/realprose``, manual pages: never the test split or the ``pmem eval qa`` suites) is
stored and internalized with self-study *once*, in a store under ``--home`` that a second run reuses (a killed
run resumes with the documents it had finished), then every question is asked in ``retrieval``, ``hybrid`` and
``parametric``, and in ``auto`` under each rule (a set of ``RouterConfig`` overrides). Generation is greedy, so
a rule's answer to a question is the answer of the mode it chose.

Reported per rule: ``contains`` over all questions, over paragraph items and over document items, and the modes
it chose; per question, every answer, whether the retrieved passages held an accepted answer, and the adapter's
chunk count and fidelity. ``--limit`` caps the documents per data file (all the questions of each are asked);
``--items`` keeps the items whose id matches a pattern (``devdoc4-*``), so a long sweep can run in parts;
``--self-study`` changes the recipe (``SelfStudyConfig`` fields; one recipe per ``--home``).

    OMP_NUM_THREADS=1 python -m bench.router_sweep --data bench/data/realprose/dev_documents.jsonl \\
        --data bench/data/realprose/dev_paragraphs.jsonl --limit 8 --home /tmp/router-sweep \\
        --rules '[{}, {"hybrid_max_chunks": null}]' -o router-sweep.json

>>> RULES[0] == {"hybrid_max_chunks": 1, "over_chunks": "retrieval"}  # the shipped RouterConfig's
True
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "realprose"
RULES: list[dict[str, Any]] = [  # the shipped rule first, then the ones it was chosen against
    {"hybrid_max_chunks": 1, "over_chunks": "retrieval"},
    {"hybrid_max_chunks": None},
    {"hybrid_max_chunks": 1, "over_chunks": "parametric"},
    {"hybrid_max_chunks": None, "check_hybrid": True},
]
MAX_NEW_TOKENS = 32
K = 2
NAMESPACE = "router-sweep"


def _items(files: list[Path], limit: int | None, pattern: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in files:
        rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [r for r in rows if pattern is None or fnmatch.fnmatchcase(r["id"], pattern)]
        keep = list(dict.fromkeys(_doc_id(r) for r in rows))[:limit] if limit else None
        out += [r for r in rows if keep is None or _doc_id(r) in keep]
    return out


def _doc_id(item: dict[str, Any]) -> str:
    """One document per item family: ``devdoc1-q03`` -> ``devdoc1``, ``devpara04`` -> ``devpara04``."""
    return item["id"].split("-q")[0]


def run(
    data: list[Path],
    home: Path,
    rules: list[dict[str, Any]] | None = None,
    limit: int | None = None,
    items: str | None = None,
    self_study: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from memory.api import ParametricMemory
    from memory.config import Settings
    from memory.evaluation.metrics import contains_answer
    from memory.evaluation.progress import ProgressBar
    from memory.router import RouterConfig
    from memory.self_study import SelfStudyConfig

    rules = rules if rules is not None else RULES
    configs = [RouterConfig(**r) for r in rules]  # a misspelled option fails before any model loads
    chosen = _items(data, limit, items)
    home.mkdir(parents=True, exist_ok=True)
    mem = ParametricMemory(
        Settings.from_env().with_(home=home, database_url=f"sqlite:///{home}/sweep.db", blob_url=f"{home}/blobs")
    )
    recipe = dict(self_study or {})
    SelfStudyConfig(**recipe)  # a misspelled option fails before any model loads
    made_with = home / "self-study.json"  # the recipe of the adapters already in the store
    if made_with.exists() and json.loads(made_with.read_text(encoding="utf-8")) != recipe:
        raise SystemExit(f"{home} holds adapters of another self-study recipe ({made_with}); use another --home")
    made_with.write_text(json.dumps(recipe, sort_keys=True) + "\n", encoding="utf-8")
    docs: dict[str, str] = {}
    for it in chosen:
        docs.setdefault(_doc_id(it), it["documents"][0])
    if recipe and docs:
        mem.configure_internalizer("self-study", **recipe)  # (loads the base model)
    internalized: dict[str, dict[str, Any]] = {}
    with ProgressBar("self-study", len(docs)) as bar:
        for doc_id, text in docs.items():
            if not _exists(mem, doc_id):
                mem.add(text, document_id=doc_id, namespace=NAMESPACE)
            made = [
                a
                for a in mem.adapters(namespace=NAMESPACE, document_id=doc_id, status="ready")
                if a.method == "self-study"
            ]
            info = made[-1] if made else None
            t0 = time.perf_counter()
            if info is None:
                info = mem.internalize(doc_id, namespace=NAMESPACE, method="self-study")
                seconds: float | None = time.perf_counter() - t0
            else:
                seconds = None  # made by an earlier run
            counts = (info.provenance or {}).get("synthetic_counts") or {}
            internalized[doc_id] = {
                "chunks": counts.get("chunks"),
                "fidelity": info.fidelity,
                "tokens": mem.base_model.count_tokens(text),
                "seconds": seconds,
            }
            bar.advance()
    engine = mem.query_engine
    rows = []
    with ProgressBar("questions", len(chosen)) as bar:
        for it in chosen:
            q, answers, doc_id = it["question"], it["answers"], _doc_id(it)
            row: dict[str, Any] = {"id": it["id"], "document": doc_id, **internalized[doc_id]}
            for mode in ("retrieval", "hybrid", "parametric"):
                r = mem.query(
                    q,
                    namespace=NAMESPACE,
                    mode=mode,
                    k=K,
                    max_new_tokens=MAX_NEW_TOKENS,
                    log=False,
                    document_ids=None if mode == "retrieval" else [doc_id],
                )
                row[mode] = {"answer": r.answer, "contains": contains_answer(r.answer, answers)}
                if mode == "retrieval":
                    row["passages_hold_answer"] = any(contains_answer(c.text, answers) for c in r.chunks)
            row["auto"] = []
            for cfg in configs:
                engine.router_config = cfg
                r = mem.query(q, namespace=NAMESPACE, mode="auto", k=K, max_new_tokens=MAX_NEW_TOKENS, log=False)
                row["auto"].append(
                    {
                        "mode": r.mode,
                        "contains": contains_answer(r.answer, answers),
                        "answer": r.answer,
                        "reason": r.reason,
                    }
                )
            engine.router_config = RouterConfig()
            rows.append(row)
            bar.advance()
    return {
        "rules": rules,
        "self_study": recipe,
        "summary": _summary(rows, rules),
        "documents": internalized,
        "rows": rows,
    }


def _exists(mem: Any, doc_id: str) -> bool:
    from memory.errors import NotFoundError

    try:
        mem.get(doc_id, namespace=NAMESPACE)
    except NotFoundError:
        return False
    return True


def _summary(rows: list[dict[str, Any]], rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 3) if values else None

    groups = {
        "all": rows,
        "paragraphs": [r for r in rows if (r["chunks"] or 0) <= 1],
        "documents": [r for r in rows if (r["chunks"] or 0) > 1],
    }
    out: list[dict[str, Any]] = [
        {"arm": name, **{g: mean([float(r[name]["contains"]) for r in rs]) for g, rs in groups.items()}}
        for name in ("retrieval", "hybrid", "parametric")
    ]
    for i, rule in enumerate(rules):
        modes: dict[str, int] = {}
        for r in rows:
            modes[r["auto"][i]["mode"]] = modes.get(r["auto"][i]["mode"], 0) + 1
        out.append(
            {
                "arm": "auto",
                "rule": rule,
                "modes": modes,
                **{g: mean([float(r["auto"][i]["contains"]) for r in rs]) for g, rs in groups.items()},
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.router_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", type=Path, help="dev JSONL file(s) (default: the dev documents)")
    p.add_argument("--home", type=Path, required=True, help="the sweep's store (reused by a later run)")
    p.add_argument("--rules", type=json.loads, help="JSON list of RouterConfig overrides")
    p.add_argument("--limit", type=int, help="documents per data file")
    p.add_argument("--items", help="only the items whose id matches this pattern (devdoc4-*)")
    p.add_argument("--self-study", type=json.loads, help="JSON object of SelfStudyConfig overrides (the recipe)")
    p.add_argument("-o", "--output", type=Path, help="write the JSON here too")
    a = p.parse_args(argv)
    for f in a.data or []:
        if "test" in f.name:
            p.error(f"{f}: rules are chosen on the dev split only")
    result = run(a.data or [DATA / "dev_documents.jsonl"], a.home, a.rules, a.limit, a.items, a.self_study)
    text = json.dumps(result, indent=2, default=str)
    if a.output:
        a.output.write_text(text + "\n", encoding="utf-8")
    json.dump(result["summary"], sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
