"""The QA harness: metrics, bootstrap intervals, JSONL loading, and one real run over every arm."""

from __future__ import annotations

import json

import numpy as np
import pytest

from memory.errors import ValidationError
from memory.evaluation import metrics, suites


# ---------------------------------------------------------------------------- metrics
@pytest.mark.parametrize(
    "pred, answers, em, contains",
    [
        ("The Eiffel Tower.", ["Eiffel Tower"], 1.0, 1.0),
        ("It is the Eiffel Tower in Paris", ["Eiffel Tower"], 0.0, 1.0),
        ("Eiffel", ["Eiffel Tower"], 0.0, 0.0),
        ("jade-famo-70", ["jade famo 70"], 1.0, 1.0),
        ("", ["x"], 0.0, 0.0),
    ],
)
def test_exact_match_and_contains(pred, answers, em, contains):
    assert metrics.exact_match(pred, answers) == em
    assert metrics.contains_answer(pred, answers) == contains


def test_contains_respects_word_boundaries():
    assert metrics.contains_answer("in 18735", ["1873"]) == 0.0
    assert metrics.contains_answer("in 1873.", ["1873"]) == 1.0


def test_token_f1_partial_and_best_of_answers():
    assert metrics.token_f1("Melka Trunn", ["Melka Trunn"]) == 1.0
    f1 = metrics.token_f1("founded by Melka", ["Melka Trunn"])  # p = 1/3, r = 1/2
    assert f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert metrics.token_f1("Trunn", ["nobody", "Melka Trunn"]) == pytest.approx(2 / 3)
    assert metrics.token_f1("nothing alike", ["Melka Trunn"]) == 0.0


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 2, 20).astype(float)
    large = rng.integers(0, 2, 2000).astype(float)
    m1, lo1, hi1 = metrics.bootstrap_ci(small)
    m2, lo2, hi2 = metrics.bootstrap_ci(large)
    assert lo1 <= m1 <= hi1 and lo2 <= m2 <= hi2
    assert (hi2 - lo2) < (hi1 - lo1) / 3
    assert metrics.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert all(np.isnan(v) for v in metrics.bootstrap_ci([]))


def test_paired_bootstrap_sees_a_consistent_gain_and_no_gain():
    a = [0.0] * 15 + [1.0] * 15
    better = metrics.paired_bootstrap(a, [1.0] * 30)
    assert better["diff"] == pytest.approx(0.5) and better["low"] > 0 and better["p_b_better"] > 0.99
    same = metrics.paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["low"] == 0 == same["high"] and same["p_b_better"] == 0.5
    with pytest.raises(ValueError, match="same length"):
        metrics.paired_bootstrap([1, 0], [1])


def test_unpaired_bootstrap_sign_follows_b_minus_a():
    d = metrics.unpaired_bootstrap([0.0] * 40, [1.0] * 40)
    assert d["diff"] == 1.0 and d["low"] == 1.0 and d["p_b_better"] == 1.0
    assert metrics.unpaired_bootstrap([1.0] * 40, [0.0] * 40)["diff"] == -1.0


# ---------------------------------------------------------------------------- items
def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_lines_are_reported_with_their_number_and_the_rest_loads(tmp_path):
    good = {
        "document": "The Beves vault code is jade-famo-70.",
        "question": "What is the code?",
        "answers": ["jade-famo-70"],
    }
    path = _write(
        tmp_path / "qa.jsonl",
        [
            json.dumps(good),
            "{not json",
            json.dumps({"question": "no documents", "answers": ["x"]}),
            "",
            json.dumps({"documents": ["a", "b"], "question": "q?", "answers": "single answer", "id": "two"}),
            json.dumps({"document": "text", "question": "", "answers": ["x"]}),
            json.dumps([1, 2]),
        ],
    )
    loaded = suites.load_jsonl(path)
    assert [i.id for i in loaded.items] == ["line1", "two"]
    assert loaded.items[1].documents == ["a", "b"] and loaded.items[1].answers == ["single answer"]
    assert [e["line"] for e in loaded.errors] == [2, 3, 6, 7]
    assert "invalid JSON" in loaded.errors[0]["error"]
    assert "documents" in loaded.errors[1]["error"] and "question" in loaded.errors[2]["error"]


def test_missing_data_file_is_a_validation_error(tmp_path):
    with pytest.raises(ValidationError, match="no such data file"):
        suites.load_jsonl(tmp_path / "nope.jsonl")


def test_builtin_suites_are_deterministic_and_answerable_from_the_document():
    a, b = suites.builtin(quick=True), suites.builtin(quick=True)
    assert [i.question for i in a] == [i.question for i in b]
    assert {i.meta["suite"] for i in a} == {"facts", "needle"}
    for item in a:
        assert any(ans in item.documents[0] for ans in item.answers), item
    needles = suites.needle_in_haystack(3, haystack_tokens=600)
    depths = [n.documents[0].index(n.answers[0]) / len(n.documents[0]) for n in needles]
    assert depths[0] < depths[1] < depths[2]
    with pytest.raises(ValidationError):
        suites.builtin(quick=True, suite="nope")


def test_a_seed_draws_a_fresh_builtin_set():
    """``pmem eval qa --seed N``: the same kinds and sizes, other entities and answers, reproducible."""
    default, fresh = suites.builtin(quick=False), suites.builtin(quick=False, seed=2026)
    assert len(fresh) == len(default) == 36 and fresh == suites.builtin(quick=False, seed=2026)
    assert [i.meta["suite"] for i in fresh] == [i.meta["suite"] for i in default]
    assert not {a for i in fresh for a in i.answers} & {a for i in default for a in i.answers if len(a) > 4}
    assert all(i.id.startswith("s2026-") for i in fresh) and len({i.id for i in fresh}) == 36
    for item in fresh:
        assert any(ans in item.documents[0] for ans in item.answers), item


def test_unknown_arm_is_refused():
    from memory.evaluation import qa

    with pytest.raises(ValidationError, match="unknown arm"):
        qa.run(quick=True, arms=["none", "telepathy"])


# ---------------------------------------------------------------------------- a real run
@pytest.mark.slow
def test_eval_qa_on_a_jsonl_file_runs_every_arm_and_writes_the_report(tmp_path, shared_models_dir, capsys):
    from memory.config import Settings
    from memory.evaluation import qa

    data = _write(
        tmp_path / "qa.jsonl",
        [
            json.dumps(
                {
                    "document": "The Koufeth Library was founded in 1970 by Trandma Zounend.",
                    "question": "Who founded the Koufeth Library?",
                    "answers": ["Trandma Zounend"],
                }
            ),
            '{"document": "broken line", ',
        ],
    )
    out = tmp_path / "report"
    result = qa.run(
        quick=True,
        data=str(data),
        output=str(out),
        max_new_tokens=8,
        cd_steps=2,
        settings=Settings(home=shared_models_dir),
    )
    assert result["errors"] == [{"line": 2, "error": result["errors"][0]["error"]}]
    assert set(result["arms"]) == set(qa.ARMS)
    for arm, s in result["arms"].items():
        if not s["available"]:  # only a missing Doc-to-LoRA checkpoint may stop an arm, and it says so
            assert arm == "d2l" and "checkpoint" in s["reason"], (arm, s)
            continue
        assert s["n"] == 1
        assert 0 <= s["contains"]["mean"] <= 1 and s["total_ms"]["mean"] > 0 and s["prompt_tokens"]["mean"] > 0
    assert result["arms"]["cd"]["available"], result["arms"]["cd"]
    assert result["arms"]["cd"]["internalize_ms_per_document"] > 0
    assert result["arms"]["cd"]["bytes_stored_per_document"] > 0
    # the adapter arm answers from a question-only prompt; the context arm reads the document
    assert result["arms"]["cd"]["prompt_tokens"]["mean"] < result["arms"]["context"]["prompt_tokens"]["mean"]
    assert result["arms"]["none"]["bytes_stored_per_document"] == 0
    assert result["arms"]["rag"]["modes_used"] == {"retrieval": 1}
    report = (out / "report.md").read_text()
    assert "| context |" in report and "line 2" in report
    assert (out / "accuracy.png").stat().st_size > 1000
    rows = json.loads((out / "qa.json").read_text())["rows"]
    assert {r["arm"] for r in rows} == {a for a, s in result["arms"].items() if s["available"]}
    assert "qa eval: items 1/1 (100%)" in capsys.readouterr().err  # progress shows off a terminal too


def test_progress_off_a_terminal_is_a_line_per_tenth_or_minute(monkeypatch):
    import io

    from memory.evaluation import progress

    err = io.StringIO()
    with progress.ProgressBar("eval", 50, stream=err) as bar:
        for _ in range(50):
            bar.advance(1, "items")
    lines = err.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == [f"eval: items {5 * i}/50 ({10 * i}%)" for i in range(1, 11)]

    clock = iter(range(0, 10_000, 61))  # every call a minute later
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    err = io.StringIO()
    bar = progress.ProgressBar("slow", 1000, stream=err)
    for _ in range(3):
        bar.advance(1)
    assert [line.split(" in ")[0] for line in err.getvalue().splitlines()] == [
        "slow 1/1000 (0%)",
        "slow 2/1000 (0%)",
        "slow 3/1000 (0%)",
    ]
    quiet = io.StringIO()
    with progress.ProgressBar("off", 3, enabled=False, stream=quiet) as bar:
        bar.advance(3)
    assert quiet.getvalue() == ""


# ---------------------------------------------------------------------------- bench helpers
def test_context_bench_finds_where_the_lines_cross():
    from bench.context import crossing

    xs = [256, 512, 1024, 2048]
    assert crossing(xs, [1, 2, 4, 8], [3, 3, 3, 3])["at"] == pytest.approx(512 + 512 * (1 / 2))
    above = crossing(xs, [1 + x / 256 for x in xs], [1.5] * 4)  # meets the flat line at 128 tokens
    assert above["at"] is None and above["summary"].startswith("context costs more at every length")
    assert above["extrapolated_at"] == pytest.approx(128)
    assert crossing(xs, [0, 0, 0, 0], [1, 1, 1, 1])["summary"].startswith("context costs less")
    # a super-linear context line above a flat one: a straight-line fit would "meet" it inside the grid
    # (the measured TTFT of bench/results/context.json: a straight-line fit meets the flat line at ~2,300 tokens)
    long_xs = [256 * 2**i for i in range(8)]
    curved = crossing(long_xs, [0.19, 0.32, 0.64, 1.56, 4.6, 15.8, 56.8, 206.7], [0.07] * 8)
    assert curved["at"] is None and curved["extrapolated_at"] is None and "do not meet outside" in curved["summary"]


@pytest.mark.slow
def test_eval_qa_checkpoint_option_uses_that_checkpoint(tmp_path, shared_models_dir):
    """``pmem eval qa --checkpoint DIR``: every D2L internalization of the run uses DIR. A checkpoint with the
    shipped shapes but untrained (exactly zero adapters) must answer as the base model alone does."""
    from memory.config import Settings
    from memory.evaluation import qa
    from memory.hyper.d2l import DEFAULT_CHECKPOINT, D2LHypernetwork, load_checkpoint, save_checkpoint

    zero = tmp_path / "zero-ckpt"
    save_checkpoint(D2LHypernetwork(load_checkpoint(DEFAULT_CHECKPOINT).config), zero)
    data = _write(
        tmp_path / "qa.jsonl",
        [
            json.dumps(
                {
                    "document": "The Quoamsh pump station is run by Ilse Varga.",
                    "question": "Who runs the Quoamsh pump station?",
                    "answers": ["Ilse Varga"],
                }
            )
        ],
    )
    result = qa.run(
        quick=True,
        data=str(data),
        output=str(tmp_path / "r"),
        arms="none,d2l",
        max_new_tokens=8,
        checkpoint=str(zero),
        settings=Settings(home=shared_models_dir),
    )
    assert result["arms"]["d2l"]["available"], result["arms"]["d2l"]
    assert result["config"]["checkpoint"] == str(zero)
    rows = {r["arm"]: r for r in json.loads((tmp_path / "r" / "qa.json").read_text())["rows"]}
    assert rows["d2l"]["prediction"] == rows["none"]["prediction"]
    missing = qa.run(
        quick=True,
        data=str(data),
        output=str(tmp_path / "r2"),
        arms="d2l",
        checkpoint=str(tmp_path / "nope"),
        settings=Settings(home=shared_models_dir),
    )
    assert not missing["arms"]["d2l"]["available"] and "nope" in missing["arms"]["d2l"]["reason"]


def test_eval_qa_items_pattern_picks_items_by_id_before_limit(tmp_path):
    """``pmem eval qa --items 'doc2-*'``: only the matching items run (one long document's questions, say), and
    ``limit`` counts among them; a pattern nothing matches is a clear error naming it, before any model loads."""
    from memory.evaluation import qa

    lines = [
        json.dumps({"id": f"doc{d}-q{q}", "document": f"Room {d} is blue.", "question": "Colour?", "answers": ["blue"]})
        for d in (1, 2)
        for q in (1, 2, 3)
    ]
    data = _write(tmp_path / "qa.jsonl", lines)
    items = suites.load_jsonl(data).items
    assert [it.id for it in qa.select(items, "doc2-*", limit=2)] == ["doc2-q1", "doc2-q2"]
    assert [it.id for it in qa.select(items, "*-q3")] == ["doc1-q3", "doc2-q3"]
    assert qa.select(items, limit=1) == items[:1] and qa.select(items) == items
    with pytest.raises(ValidationError, match=r"doc9-\*"):
        qa.run(data=str(data), output=str(tmp_path / "r"), arms="none", items="doc9-*")


@pytest.mark.parametrize(
    "options, message", [('{"adapters": "x"}', "per-chunk"), ("{nope", "not JSON"), ('{"rnak": 4}', "unknown")]
)
def test_eval_qa_self_study_options_are_checked_before_any_model_loads(tmp_path, options, message):
    """``pmem eval qa --self-study JSON``: a bad recipe is a clear error naming what is wrong, at once."""
    from memory.evaluation import qa

    data = _write(tmp_path / "qa.jsonl", [json.dumps({"document": "d", "question": "q", "answers": ["a"]})])
    with pytest.raises(ValidationError, match=message):
        qa.run(data=str(data), output=str(tmp_path / "r"), arms="self-study", self_study=options)


@pytest.mark.parametrize(
    "options, message", [('{"min_fidelty": 0.6}', "unknown router option"), ("[1]", "JSON object"), ("{", "not JSON")]
)
def test_eval_qa_router_options_are_checked_before_any_model_loads(tmp_path, options, message):
    """``pmem eval qa --router JSON``: the auto router's options of the run, refused at once when wrong."""
    from memory.evaluation import qa

    data = _write(tmp_path / "qa.jsonl", [json.dumps({"document": "d", "question": "q", "answers": ["a"]})])
    with pytest.raises(ValidationError, match=message):
        qa.run(data=str(data), output=str(tmp_path / "r"), arms="auto", router=options)
    assert qa._router('{"hybrid_max_chunks": 1, "over_chunks": "retrieval"}').over_chunks == "retrieval"
