"""``bench.router_sweep`` (choosing auto's rules on the dev split): which items it asks, how it sums up, and that
it refuses the test split. The sweep itself trains self-study adapters (minutes each) and is run by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import router_sweep

DEV = Path(router_sweep.__file__).resolve().parent / "data" / "realprose"


def test_limit_counts_documents_and_items_filters_ids():
    docs = router_sweep._items([DEV / "dev_documents.jsonl"], limit=2)
    assert {router_sweep._doc_id(r) for r in docs} == {"devdoc1", "devdoc2"} and len(docs) == 20
    four = router_sweep._items([DEV / "dev_documents.jsonl"], None, "devdoc4-*")
    assert [r["id"] for r in four] == [f"devdoc4-q{i:02d}" for i in range(1, 11)]
    paras = router_sweep._items([DEV / "dev_paragraphs.jsonl"], limit=3)
    assert [router_sweep._doc_id(r) for r in paras] == ["devpara01", "devpara02", "devpara03"]


def test_summary_splits_paragraphs_from_documents_and_counts_modes():
    def row(doc: str, chunks: int, rag: bool, hybrid: bool, auto: list[tuple[str, bool]]) -> dict:
        return {
            "document": doc,
            "chunks": chunks,
            "retrieval": {"contains": rag},
            "hybrid": {"contains": hybrid},
            "parametric": {"contains": False},
            "auto": [{"mode": m, "contains": c} for m, c in auto],
        }

    rows = [
        row("p", 1, False, True, [("hybrid", True), ("hybrid", True)]),
        row("d", 5, True, False, [("retrieval", True), ("hybrid", False)]),
        row("d", 5, True, True, [("retrieval", True), ("hybrid", True)]),
    ]
    summary = router_sweep._summary(rows, [{}, {"hybrid_max_chunks": None}])
    by = {(s["arm"], json.dumps(s.get("rule"))): s for s in summary}
    assert by[("retrieval", "null")]["documents"] == 1.0 and by[("retrieval", "null")]["paragraphs"] == 0.0
    assert by[("hybrid", "null")]["documents"] == 0.5
    assert by[("auto", "{}")]["all"] == 1.0 and by[("auto", "{}")]["modes"] == {"hybrid": 1, "retrieval": 2}
    assert by[("auto", '{"hybrid_max_chunks": null}')]["documents"] == 0.5


def test_the_test_split_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        router_sweep.main(["--data", str(DEV / "test_documents.jsonl"), "--home", str(tmp_path)])
    assert "dev split only" in capsys.readouterr().err


def test_the_shipped_rule_is_the_first_compared():
    from memory.router import RouterConfig

    assert RouterConfig(**router_sweep.RULES[0]) == RouterConfig()


def test_one_store_holds_the_adapters_of_one_recipe(tmp_path):
    """A second run under the same --home with another recipe would reuse adapters it did not ask for: refused."""
    router_sweep.run([DEV / "dev_documents.jsonl"], tmp_path, [], items="nothing-*", self_study={"seed": 3})
    assert json.loads((tmp_path / "self-study.json").read_text()) == {"seed": 3}
    with pytest.raises(SystemExit, match="another self-study recipe"):
        router_sweep.run([DEV / "dev_documents.jsonl"], tmp_path, [], items="nothing-*", self_study={})
    with pytest.raises(TypeError):
        router_sweep.run([DEV / "dev_documents.jsonl"], tmp_path, [], items="nothing-*", self_study={"sed": 3})
