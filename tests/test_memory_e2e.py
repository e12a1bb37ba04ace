"""End to end on the real 135M model: internalize a made-up fact, answer it without the document,
with full provenance; versions, supersession and rollback carry over to adapters."""

from __future__ import annotations

import pytest

from memory.api import ParametricMemory
from memory.errors import NotFoundError, ValidationError

pytestmark = pytest.mark.slow

FACT = "The access code for the Orion vault is 7342."
QUESTION = "What is the access code for the Orion vault?"


@pytest.fixture
def mem(tmp_path):
    from memory.config import Settings

    return ParametricMemory(Settings.from_env(home=tmp_path / "home"))


def test_context_distillation_internalizes_a_fact_with_provenance(mem):
    mem.add(FACT, document_id="vault")
    base_answer = mem.query(QUESTION, mode="parametric", max_new_tokens=16).answer
    assert "7342" not in base_answer  # the base model cannot know it

    info = mem.internalize("vault", method="cd")
    assert info.status == "ready" and info.method == "cd" and info.version == 1
    assert info.base_model == mem.base_model.fingerprint
    assert info.rank > 0 and info.size_bytes and mem.blobs.exists(info.blob_sha256)
    assert info.hypernetwork.startswith("context-distillation@")

    again = mem.internalize("vault", method="cd")  # idempotent: same row, no new blob
    assert again.id == info.id and len(list(mem.blobs)) == 2  # text + adapter

    r = mem.query(QUESTION, mode="parametric", max_new_tokens=16)
    assert "7342" in r.answer, r.answer
    assert r.mode == "parametric" and [a.id for a in r.adapters] == [info.id] and r.chunks == []
    assert r.query_id is not None

    auto = mem.query(QUESTION, mode="auto", max_new_tokens=16)
    assert auto.mode in ("parametric", "retrieval") and "vault" in auto.reason and "7342" in auto.answer

    # a new version supersedes the adapter; rollback makes it ready again
    mem.add("The access code for the Orion vault is 9051.", document_id="vault")
    assert mem.adapters()[0].status == "superseded"
    stale = mem.query(QUESTION, mode="auto", max_new_tokens=16)
    assert stale.mode == "retrieval" and "no current ready adapter" in stale.reason
    mem.rollback("vault", 1)
    assert mem.adapters()[0].status == "ready"

    removed = mem.delete("vault")
    assert removed.adapters == 1 and list(mem.blobs) == []


def test_auto_replaces_an_unsupported_adapter_answer_by_the_retrieval_answer(mem, monkeypatch):
    """A confidently wrong adapter answer (one the retrieved passages do not support) is not returned."""
    from memory import router
    from memory.models.base import Generation
    from memory.services.query import QueryEngine

    mem.add(FACT, document_id="vault")
    mem.add("Visitors park on level two of the east garage.", document_id="parking")
    mem.internalize("vault", method="d2l")
    good = mem.query(QUESTION, mode="auto", max_new_tokens=16)
    assert "7342" in good.answer, good  # from the adapter, or from retrieval when the adapter was wrong
    assert good.support is not None and good.support >= 0.0  # auto chose the adapter and checked its answer

    real = QueryEngine._answer

    def confidently_wrong(base, question, context, lora, max_new_tokens, on_text=None, backend=None):
        if context:  # the retrieval answer is the real one
            return real(base, question, context, lora, max_new_tokens, on_text, backend)
        gen, prompt_ids, used = real(base, question, context, lora, max_new_tokens, on_text, backend)
        ids = base.encode("The access code is 1111.")
        return Generation("The access code is 1111.", ids, gen.prompt_tokens, len(ids), "eos"), prompt_ids, used

    monkeypatch.setattr(QueryEngine, "_answer", staticmethod(confidently_wrong))
    monkeypatch.setattr(mem.query_engine, "router_config", router.RouterConfig(min_confidence=-1e9))  # never unsure
    r = mem.query(QUESTION, mode="auto", max_new_tokens=16)
    assert r.mode == "retrieval" and "not supported by the retrieved passages" in r.reason, r.reason
    assert r.support is not None and r.support < 0.5 and "7342" in r.answer and r.chunks
    assert r.adapters and r.adapters[0].document_id == "vault"  # provenance: the adapter that was tried
    forced = mem.query(QUESTION, mode="parametric", max_new_tokens=16)  # an explicit mode is not second-guessed
    assert forced.mode == "parametric" and "1111" in forced.answer


def test_internalize_errors_are_clear(mem):
    with pytest.raises(NotFoundError):
        mem.internalize("missing")
    mem.add(FACT, document_id="vault")
    with pytest.raises(ValidationError, match="method must be one of"):
        mem.internalize("vault", method="magic")
    with pytest.raises(ValidationError, match="question"):
        mem.query("   ")


def test_adapter_rows_follow_versions(mem):
    """Provenance and status bookkeeping, with a deliberately short (2-step) real context distillation."""
    mem.configure_internalizer("cd", steps=2, max_questions=2)
    mem.add(FACT, document_id="vault")
    a1 = mem.internalize("vault", method="cd")
    assert (a1.status, a1.version, a1.document_id, a1.chunk_count) == ("ready", 1, "vault", 1)
    assert mem.load_adapter(a1).base_model == mem.base_model.fingerprint
    assert mem.internalize("vault", method="cd").id == a1.id
    mem.add("The access code for the Orion vault is 9051.", document_id="vault")
    a2 = mem.internalize("vault", method="cd")
    assert a2.id != a1.id and a2.version == 2 and a2.status == "ready"
    by_id = {a.id: a.status for a in mem.adapters(document_id="vault")}
    assert by_id == {a1.id: "superseded", a2.id: "ready"}
    old = mem.internalize("vault", method="cd", version=1)  # an old version's adapter is kept, not current
    assert old.id == a1.id and old.status == "superseded"
    mem.rollback("vault", 1)
    assert {a.id: a.status for a in mem.adapters(document_id="vault")} == {a1.id: "ready", a2.id: "superseded"}
    assert mem.delete("vault").adapters == 2 and list(mem.blobs) == []


def test_knowledge_and_skill_adapters_apply_in_one_forward_pass(mem):
    import torch

    from memory.lora import apply_lora, concat

    mem.add(FACT, document_id="vault")
    knowledge = mem.internalize("vault")  # the shipped Doc-to-LoRA checkpoint
    assert knowledge.method == "d2l"
    skill = mem.specialize("Answer with the number only, no words.")
    assert skill.method == "t2l" and skill.task_description.startswith("Answer with the number")
    assert mem.specialize("Answer with the number only, no words.").id == skill.id  # idempotent
    with pytest.raises(NotFoundError):
        mem.skill(skill.id, namespace="elsewhere")

    r = mem.query(QUESTION, mode="parametric", skill=skill.id, max_new_tokens=12)
    assert [a.id for a in r.adapters] == [knowledge.id, skill.id]

    k, s = mem.load_adapter(knowledge), mem.load_adapter(skill)
    assert not set(k.target_modules) & set(s.target_modules)  # knowledge on down_proj, skill on q/v
    base = mem.base_model
    ids = torch.tensor([base.chat_ids(QUESTION)])
    with torch.no_grad():
        with apply_lora(base.model, k):
            only_k = base.model(input_ids=ids).logits
        with apply_lora(base.model, k), apply_lora(base.model, s):
            nested = base.model(input_ids=ids).logits
        with apply_lora(base.model, concat([k, s])):
            both = base.model(input_ids=ids).logits
    torch.testing.assert_close(both, nested, atol=2e-2, rtol=0)
    assert (both - only_k).abs().max() > 1e-2  # the skill changes what the knowledge-adapted model computes
