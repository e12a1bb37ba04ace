"""Self-study (the full internalization tier): synthetic data, training, provenance, two tiers, routing.

Run: .venv/bin/python -m pytest tests/test_self_study.py -q        (the knowledge-update test: -m slow)
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from _fixtures_models import tiny_base  # tests/ is on sys.path

from memory import router
from memory.errors import ValidationError
from memory.lora import from_bytes, to_bytes
from memory.self_study import KINDS, SelfStudyConfig, SyntheticPrompt, build_prompts, in_context_prompt, self_study
from memory.services.adapters import trained_chunks

TEXT = (
    "The Orrin relay station was built in 1931 by the engineer Talia Veck. "
    "Its beacon can be seen from 26 kilometres away. "
    "The station keeper is Brannoch Idle, who took over the post in 2004."
)
TINY = SelfStudyConfig(
    rank=2,
    target_modules=("mlp.down_proj",),
    generated_per_chunk=3,
    model_questions_per_chunk=0,
    dense_per_chunk=4,
    steps_per_chunk=6,
    min_steps=6,
    max_answer_tokens=6,
    lr=1e-2,
    holdout=1,
    in_context_per_chunk=0,
)
FAST = {  # the real model, as few steps as still make an adapter (mechanics, not quality)
    "generated_per_chunk": 3,
    "model_questions_per_chunk": 0,
    "dense_per_chunk": 3,
    "steps_per_chunk": 3,
    "min_steps": 3,
    "max_answer_tokens": 12,
    "holdout": 1,
}


def test_prompts_cover_every_sentence_and_mix_kinds():
    samples = build_prompts([TEXT], SelfStudyConfig(), random.Random(0))
    recalled = {s.response for s in samples if s.kind == "recall"}
    assert len(recalled) == 3  # each sentence of the chunk is a teacher-forced response once
    assert {"question", "recall", "complete"} <= {s.kind for s in samples}
    assert {s.kind for s in samples} <= set(KINDS)
    assert all(s.chunk == 0 for s in samples)
    gen = [s for s in samples if s.response is None]  # the teacher writes these
    assert 1 <= len(gen) <= SelfStudyConfig().generated_per_chunk


def test_budget_scales_with_length_and_covers_every_chunk():
    cfg = SelfStudyConfig(dense_per_chunk=2)
    chunks = [f"Unit {i} of the Merrow depot holds {10 + i} crates. It opened in {1900 + i}." for i in range(5)]
    samples = build_prompts(chunks, cfg, random.Random(0))
    assert {s.chunk for s in samples} == set(range(5))
    assert all(sum(s.chunk == c and s.response is not None for s in samples) <= 2 for c in range(5))


def test_self_study_trains_an_adapter_with_provenance_on_a_tiny_model():
    base = tiny_base()
    seen: list[tuple[str, int, int]] = []
    r = self_study(base, TEXT, TINY, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert r.steps == 6 and r.loss_last < r.loss_first
    assert r.adapter.rank == 2 and r.adapter.target_modules == ["mlp.down_proj"]
    assert list(r.adapter.weights) == ["model.layers.1.mlp.down_proj"]  # the top third of 2 layers: the top one
    assert any(float(b.abs().sum()) > 0 for _, b in r.adapter.weights.values())
    assert from_bytes(to_bytes(r.adapter)).metadata["method"] == "self-study"
    assert {s for s, _, _ in seen} == {"teacher", "train"} and seen[-1] == ("train", 6, 6)
    assert r.counts["samples"] == len(r.data) and r.counts["heldout"] == 1
    assert set(r.fidelity) >= {"agreement", "containment", "agreement_base", "containment_base"}
    prov = r.provenance()
    assert prov["method"] == "self-study" and prov["synthetic_sha256"] == r.data_sha256 and prov["steps"] == 6
    assert json.loads(json.dumps(r.data))[0]["prompt"]  # JSON-ready
    again = self_study(base, TEXT, TINY)
    assert again.data_sha256 == r.data_sha256  # same text and recipe: the same synthetic data
    assert all(not p.requires_grad for p in base.model.parameters())
    assert r.counts["in_context"] == 0
    # in-context samples: teacher-answered samples trained again with the chunk in the student's prompt
    ctx = self_study(base, TEXT, dataclasses.replace(TINY, in_context_per_chunk=1))
    assert ctx.counts["in_context"] == 1 and ctx.data_sha256 == r.data_sha256  # no new synthetic data
    raft = self_study(base, TEXT, dataclasses.replace(TINY, in_context_per_chunk=1, in_context_distractors=1))
    assert raft.counts["in_context"] == 1 and raft.data_sha256 == r.data_sha256 and raft.steps == 6


def test_bad_input_and_bad_recipes_are_refused():
    base = tiny_base()
    with pytest.raises(ValidationError):
        self_study(base, "  \n ", TINY)
    with pytest.raises(ValidationError):
        SelfStudyConfig(rank=0)
    with pytest.raises(ValidationError):
        SelfStudyConfig(lr=3.0)
    with pytest.raises(ValidationError):
        SelfStudyConfig(top_layers=0)
    with pytest.raises(ValidationError):
        SelfStudyConfig(in_context_distractors=-1)


def test_an_in_context_sample_reads_its_chunk_beside_other_chunks_in_random_order():
    """in_context_distractors (RAFT): the student's prompt holds the sample's own chunk and that many other chunks
    of the document, in random order, in the retrieval prompt's format; nothing to add: the teacher's prompt."""
    from memory import prompts

    base = tiny_base()
    chunks = ["alpha one.", "beta two.", "gamma three.", "delta four."]
    sample = SyntheticPrompt("question", 1, "what is beta?")
    rng = random.Random(0)
    orders = set()
    for _ in range(12):
        ids = in_context_prompt(base, chunks, sample, 1, rng)
        assert ids is not None
        text = base.tokenizer.decode(ids)
        held = sorted((c for c in chunks if c in text), key=text.index)  # in the prompt's order
        assert "beta two." in held and len(held) == 2 and "what is beta?" in text
        orders.add(held[0] == "beta two.")
        user = prompts.context_prompt(sample.prompt, held)
        assert ids == base.chat_ids(user, system=prompts.QA_SYSTEM)
    assert orders == {True, False}  # its own chunk comes first or second
    three = base.tokenizer.decode(in_context_prompt(base, chunks, sample, 9, rng) or [])
    assert all(c in three for c in chunks)  # capped at the document's other chunks
    assert in_context_prompt(base, chunks, sample, 0, rng) is None
    assert in_context_prompt(base, ["beta two."], SyntheticPrompt("question", 0, "what is beta?"), 1, rng) is None


def test_router_keeps_an_adapter_of_low_measured_fidelity_out_of_auto():
    cfg = router.RouterConfig(min_fidelity=0.5)
    low = router.Candidate("doc", 0.9, True, "ready", "full", 0.2)
    high = router.Candidate("doc", 0.9, True, "ready", "full", 0.8)
    unmeasured = router.Candidate("doc", 0.9, True, "ready", "instant", None)
    r = router.decide("What is the beacon range?", "auto", [low], cfg)
    assert r.mode == "retrieval" and "20%" in r.reason
    assert router.decide("What is the beacon range?", "auto", [high], cfg).mode == "parametric"
    assert router.decide("What is the beacon range?", "auto", [unmeasured], cfg).mode == "parametric"
    assert router.decide("What is the beacon range?", "parametric", [low], cfg).adapter_documents == ["doc"]


def test_full_tier_replaces_the_instant_adapter_and_keeps_its_provenance(mem):
    """The real model, both tiers in-process (no broker): the self-study adapter becomes the version's adapter,
    the instant one stays; its synthetic data is a blob that gc keeps and delete removes."""
    mem.configure_internalizer("cd", steps=2, max_questions=2)
    mem.configure_internalizer("self-study", **FAST)
    mem.add(TEXT, document_id="relay", namespace="ss")
    full = mem.internalize("relay", namespace="ss", method="cd", tier="full")
    assert full.tier == "full" and full.method == "self-study" and full.status == "ready"
    assert full.provenance["method"] == "self-study" and full.provenance["steps"] == 3
    assert full.provenance["synthetic_counts"]["samples"] > 0 and "teacher" in full.provenance
    assert set(full.fidelity) >= {"agreement", "containment"}
    rows = mem.adapters(namespace="ss", document_id="relay")
    assert sorted(a.method for a in rows) == ["cd", "self-study"]
    assert all(a.status == "ready" for a in rows)
    # what auto's hybrid_max_chunks reads: the chunks the adapter was trained on (unknown for the instant one)
    assert {a.method: trained_chunks(a) for a in rows} == {"cd": None, "self-study": 1}
    data = json.loads(mem.records.blobs.get(full.synthetic_sha256))
    assert full.synthetic_sha256 and {d["kind"] for d in data} >= {"recall"}
    assert full.to_dict()["fidelity"] == full.fidelity  # what the HTTP API and `pmem adapters --json` print
    r = mem.query("Who built the Orrin relay station?", namespace="ss", mode="parametric", max_new_tokens=4)
    assert [a.method for a in r.adapters] == ["self-study"]
    mem.records.gc()
    assert mem.records.blobs.exists(full.synthetic_sha256)
    # idempotent: asking again makes nothing new
    assert mem.internalize("relay", namespace="ss", method="cd", tier="full").id == full.id
    mem.delete("relay", namespace="ss")
    assert not mem.records.blobs.exists(full.synthetic_sha256)


def test_unknown_tier_and_self_study_options_are_refused(mem):
    mem.add(TEXT, document_id="relay", namespace="ss")
    with pytest.raises(ValidationError, match="tier"):
        mem.internalize("relay", namespace="ss", tier="deluxe")
    with pytest.raises(ValidationError, match="self-study option"):
        mem.configure_internalizer("self-study", wings=3)


@pytest.mark.slow
def test_knowledge_update_the_version_2_adapter_answers_the_new_value(tmp_path):
    """Version 2 changes a fact: its self-study adapter answers the new value, not the old one (the default
    recipe, the real model; SQLite only: the database plays no part in what is learnt, and it takes minutes)."""
    from memory.api import ParametricMemory
    from memory.config import Settings

    mem = ParametricMemory(Settings.from_env(home=tmp_path / "home"))
    mem.add("The access code of the Quillon archive is 7342. It opens at nine.", document_id="arch", namespace="ku")
    v1 = mem.internalize("arch", namespace="ku", method="self-study")
    mem.add("The access code of the Quillon archive is 5190. It opens at nine.", document_id="arch", namespace="ku")
    v2 = mem.internalize("arch", namespace="ku", method="self-study")
    assert (v1.version, v2.version) == (1, 2) and v2.id != v1.id
    r = mem.query("What is the access code of the Quillon archive?", namespace="ku", mode="parametric")
    assert [a.version for a in r.adapters] == [2]
    assert "5190" in r.answer and "7342" not in r.answer


def test_a_killed_run_resumes_from_its_state_and_ends_as_an_uninterrupted_one(tmp_path):
    base = tiny_base()
    cfg = dataclasses.replace(TINY, steps_per_chunk=12, min_steps=12)
    whole = self_study(base, TEXT, cfg)

    class Killed(Exception):
        pass

    def kill_at_step_11(stage: str, done: int, total: int) -> None:
        if stage == "train" and done == 11:
            raise Killed

    with pytest.raises(Killed):
        self_study(base, TEXT, cfg, progress=kill_at_step_11, work_dir=tmp_path)
    state = next(tmp_path.iterdir())
    assert {p.name for p in state.iterdir()} == {"teacher.pt", "train.pt"}  # the data, and step 10's state
    stages: list[tuple[str, int]] = []
    resumed = self_study(base, TEXT, cfg, progress=lambda st, done, _: stages.append((st, done)), work_dir=tmp_path)
    assert stages[0] == ("train", 11)  # no teacher stage again, training from step 10 on
    assert resumed.data_sha256 == whole.data_sha256
    for path, (a, b) in whole.adapter.weights.items():
        ra, rb = resumed.adapter.weights[path]
        assert torch.equal(a, ra) and torch.equal(b, rb)
    assert list(tmp_path.iterdir()) == []  # the state goes when the run ends


def test_per_chunk_adapters_are_concatenated_along_rank_and_a_killed_run_resumes(tmp_path):
    """``adapters="per-chunk"``: one LoRA per chunk on that chunk's samples, concatenated along rank (the same
    synthetic data as the joint adapter); a run killed in a later chunk keeps the finished chunks' factors and
    ends as an uninterrupted one."""
    base = tiny_base()
    cfg = dataclasses.replace(TINY, adapters="per-chunk", chunk_tokens=80)
    whole = self_study(base, TEXT, cfg)
    n = whole.counts["chunks"]
    assert n >= 2 and whole.steps == 6 * n and whole.adapter.rank == 2 * n
    assert whole.provenance()["config"]["adapters"] == "per-chunk"
    joint = self_study(base, TEXT, dataclasses.replace(cfg, adapters="joint"))
    assert joint.adapter.rank == 2 and joint.data_sha256 == whole.data_sha256

    class Killed(Exception):
        pass

    def kill_in_the_second_chunk(stage: str, done: int, total: int) -> None:
        if stage == "train" and done == 6 + 3:
            raise Killed

    with pytest.raises(Killed):
        self_study(base, TEXT, cfg, progress=kill_in_the_second_chunk, work_dir=tmp_path)
    state = next(tmp_path.iterdir())
    assert {p.name for p in state.iterdir()} == {"teacher.pt", "chunk-0.pt"}
    stages: list[tuple[str, int, int]] = []
    resumed = self_study(base, TEXT, cfg, progress=lambda *a: stages.append(a), work_dir=tmp_path)
    assert stages[0] == ("train", 7, 6 * n) and stages[-1] == ("train", 6 * n, 6 * n)  # from the second chunk on
    for path, (a, b) in whole.adapter.weights.items():
        ra, rb = resumed.adapter.weights[path]
        assert torch.equal(a, ra) and torch.equal(b, rb)
    with pytest.raises(ValidationError):
        SelfStudyConfig(adapters="some")


def test_prompts_of_a_chunk_whose_names_cross_a_line_break():
    """A manual page's heading line followed by a capitalised line reads as one name across the break
    ("UID AND GID POOLS Adduser"); naming the chunk's topic must not fail on it (it did on login.defs(5))."""
    chunk = "UID AND GID POOLS\nAdduser reads the pools from /etc/adduser-pool.conf.\nThe Debian  Project keeps it."
    prompts = build_prompts([chunk], TINY, random.Random(0))
    assert prompts and all(p.chunk == 0 for p in prompts)
    assert any("UID AND GID POOLS Adduser" in p.prompt or "Debian Project" in p.prompt for p in prompts)
