"""Doc-to-LoRA training data: families, splits, prose questions, the mixture (fast, no model).

Run: .venv/bin/python -m pytest tests/test_d2l_data.py -q
"""

from __future__ import annotations

import random
import re

import pytest

from memory.evaluation import suites
from memory.training.d2l_families import FamilyGenerator, all_families, family_split
from memory.training.d2l_mix import KINDS, TrainingMix, heldout_suites, parse_weights
from memory.training.d2l_prose import (
    Passage,
    ProseGenerator,
    paragraphs,
    questions,
    source_split,
    wh_questions,
)


def _builtin_items() -> list[suites.Item]:
    return suites.builtin(False) + suites.builtin(False, seed=2026)


_ENGLISH = {"The", "Its", "What", "Who", "Which", "Rain", "Students", "Engineers", "When", "Where"}


def _builtin_entities_and_templates() -> tuple[set[str], list[str]]:
    """Invented names, places and codes of the built-in suites (numbers aside: they are not names)."""
    ents: set[str] = set()
    for it in _builtin_items():
        text = " ".join(it.documents) + " " + it.question
        ents.update(a for a in it.answers if not a.isdigit())
        ents.update(w for w in re.findall(r"[A-Z][a-z]{3,}", text) if w not in _ENGLISH)
    templates = ["was founded in", "is located in the town of", "official colour", "secret passphrase", *suites._FILLER]
    return ents, templates


def test_more_than_100_families_in_many_domains_split_by_family():
    fams = all_families()
    assert len(fams) >= 100
    assert len({f.split(".")[0] for f in fams}) >= 12
    held = [f for f in fams if family_split(f) == "heldout"]
    assert 10 <= len(held) <= 40
    train, test = FamilyGenerator("train", 1), FamilyGenerator("heldout", 1)
    assert set(train.families).isdisjoint(test.families)
    seen = {train.sample().family for _ in range(400)}
    assert seen <= set(train.families) and len(seen) > 60


def test_family_samples_answer_from_the_document_with_reworded_questions():
    g = FamilyGenerator("train", 3)
    n_facts, same_wording = [], 0
    for _ in range(300):
        s = g.sample()
        assert s.answer.lower() in s.document.lower()
        assert s.answer.lower() not in s.question.lower()
        n_facts.append(s.n_facts)
        q_words = set(re.findall(r"[a-z]+", s.question.lower())) - {"the", "of", "is", "what", "a"}
        doc_sents = re.split(r"(?<=\.)\s|\n", s.document)
        sent = next((x for x in doc_sents if s.answer in x), "")
        same_wording += q_words <= set(re.findall(r"[a-z]+", sent.lower()))
    assert min(n_facts) == 1 and max(n_facts) >= 9
    assert same_wording < 0.5 * 300  # most questions use words the fact's sentence does not


def test_generator_output_holds_no_builtin_suite_template_name_or_filler():
    ents, templates = _builtin_entities_and_templates()
    assert len(ents) > 30
    text = []
    for split in ("train", "heldout"):
        g = FamilyGenerator(split, 0)  # type: ignore[arg-type]
        for _ in range(1500):
            s = g.sample()
            text.append(s.document + "\n" + s.question)
    blob = "\n".join(text)
    low = blob.lower()
    for t in templates:
        assert t.lower() not in low, t
    words = set(re.findall(r"[A-Za-z]+", blob))
    clash = {e for e in ents if e in words or (" " in e and e in blob)}
    assert not clash, sorted(clash)[:10]


def test_invented_words_cannot_collide_with_builtin_names():
    g = FamilyGenerator("train", 5)
    for _ in range(2000):
        w = g.v.word()
        assert re.search(r"[cjqwy]|h(?<!th)", w.lower().replace("th", "")), w


def test_prose_split_is_by_source_and_licences_are_dropped():
    assert source_split("meta", "numpy") == source_split("meta", "NumPy")
    lic = (
        "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
        "associated documentation files, to deal in the Software without restriction, subject to the "
        "following conditions. THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND."
    )
    prose = (
        "The scheduler keeps a queue of pending jobs and starts the oldest one whenever a worker becomes free. "
        "Each job records its start time, its owner and the number of retries it is allowed before it fails."
    )
    assert list(paragraphs(lic)) == []
    assert list(paragraphs(prose)) == [prose]


def test_wh_questions_reword_and_answer_with_spans():
    got = {a: q for q, a in wh_questions("The first version was written by Ada Lovelace in 1843.")}
    assert "Ada Lovelace" in got and got["Ada Lovelace"].startswith("By whom")
    assert "1843" in got
    got = {a: q for q, a in wh_questions("The default timeout is thirty seconds for every request.")}
    assert any(q.startswith("What is the default timeout") for q in got.values())
    p = Passage(
        "meta",
        "demo",
        "The cache holds 512 entries per worker. It was designed by Mira Holm in 2019. "
        "Old entries are dropped first when the cache is full.",
    )
    qs = questions(p, random.Random(0))
    assert {q.form for q in qs} >= {"wh", "continue"}
    assert all(q.answer and q.answer.lower() in p.text.lower() for q in qs)


def test_mixture_draws_every_kind_and_heldout_suites_use_heldout_sources():
    train_ps = [
        Passage(
            "meta",
            f"src{i}",
            f"The tool number {i} reads {i + 3} files per second from the disk. "
            f"It was written by Mira Holm in 20{10 + i % 9}. Output goes to a log.",
        )
        for i in range(40)
    ]
    mix = TrainingMix(train_ps, seed=0)
    kinds = {mix.sample().kind for _ in range(300)}
    assert kinds == set(KINDS)
    hay = mix.sample("haystack")
    assert hay.answer in hay.document and len(hay.document.split()) > 60
    held = heldout_suites(train_ps, n=4)
    assert {s.kind for s in held} == set(KINDS)
    assert parse_weights("family=1,prose=0.5") == {**dict.fromkeys(KINDS, 0.0), "family": 1.0, "prose": 0.5}
    with pytest.raises(ValueError, match="unknown kind 'bogus'"):
        parse_weights("bogus=1")
    assert TrainingMix(None, seed=0).sample().kind in ("fact", "niah", "family")
    assert ProseGenerator(train_ps, seed=0).sample().answer
