"""Context distillation: question generation, the training loop (tiny model, fast) and the real effect (slow).

Run: .venv/bin/python -m pytest tests/test_distill.py -q          (the real-model test: -m slow)
"""

from __future__ import annotations

import os

import pytest
import torch
from _fixtures_models import tiny_base  # tests/ is on sys.path

from memory.config import Settings
from memory.distill import distill_document, make_questions, split_sentences, student_prompt, teacher_prompt
from memory.errors import ValidationError
from memory.lora import from_bytes, to_bytes
from memory.models import load_base_model


def test_split_sentences_and_questions():
    text = "Marisol Tenby's cat is called Biscuit. The starship Calloway carried 218 crew members.\n\nShort."
    assert split_sentences(text) == [
        "Marisol Tenby's cat is called Biscuit.",
        "The starship Calloway carried 218 crew members.",
        "Short.",
    ]
    qs = make_questions(text)
    assert "What is Marisol Tenby's cat?" in qs
    assert any("Calloway" in q for q in qs) and any(q.startswith("Complete this sentence") for q in qs)
    assert len(make_questions(" ".join(f"Fact number {i} is about Zed{i}." for i in range(50)), max_questions=10)) == 10


def test_distill_trains_an_adapter_on_tiny_model():
    base = tiny_base()
    seen = []
    ad, info = distill_document(
        base,
        "abc def ghi jkl is mno. pqr stu vwx yz is abc.",
        questions=["what is abc?"],
        rank=4,
        target_modules=("mlp.down_proj",),
        steps=12,
        lr=1e-2,
        progress=lambda s, n, loss: seen.append((s, n, loss)),
    )
    assert ad.rank == 4 and ad.target_modules == ["mlp.down_proj"] and ad.base_model == base.fingerprint
    assert info["questions"][0] == "what is abc?" and info["steps"] == 12 and len(seen) == 12
    assert info["loss_last"] < info["loss_first"]
    assert any(float(b.abs().sum()) > 0 for _, b in ad.weights.values())
    assert from_bytes(to_bytes(ad)).metadata["method"] == "context_distillation"
    assert all(not p.requires_grad for p in base.model.parameters())
    with pytest.raises(ValidationError):
        distill_document(base, "   ")


@pytest.mark.slow
def test_cd_internalizes_a_made_up_fact(shared_models_dir):
    torch.set_num_threads(int(os.environ.get("PMEM_TEST_THREADS", "2")))
    base = load_base_model(settings=Settings(home=shared_models_dir))
    doc = "The access code for the Orion vault is 7342."
    q = "What is the access code for the Orion vault?"
    before = base.generate([student_prompt(base, q)], max_new_tokens=24)[0].text
    assert "7342" not in before  # the base model cannot know it
    assert "7342" in base.generate([teacher_prompt(base, doc, q)], max_new_tokens=24)[0].text
    ad, info = distill_document(base, doc, seed=0)
    after = base.generate([student_prompt(base, q)], max_new_tokens=24, adapters=ad)[0].text
    assert "7342" in after, (after, info)
    # the adapter is document-specific: an unrelated question is still answered normally
    paris = base.generate([student_prompt(base, "What is the capital of France?")], max_new_tokens=16, adapters=ad)
    assert "Paris" in paris[0].text


def test_frozen_prefix_computes_what_the_whole_model_does():
    """Training only the top layers runs the layers below once per sample: the logits are the full forward's."""
    from _fixtures_models import rand_adapter

    from memory.distill import FrozenPrefix, _answer_logits, layer_of
    from memory.lora.adapter import LoraAdapter
    from memory.lora.apply import apply_lora

    base = tiny_base()
    full = rand_adapter(base, rank=4, seed=1)
    top = LoraAdapter({p: w for p, w in full.weights.items() if layer_of(p) == 1}, base.fingerprint)
    assert top.weights and len(top.weights) < len(full.weights)
    prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    answers = [[13, 14], [15, 16, 17, 18], [19]]
    prefix = FrozenPrefix(base, prompts, answers, first_layer=1)
    with torch.no_grad(), apply_lora(base, top):
        want = _answer_logits(base, prompts, answers)
        torch.testing.assert_close(prefix.answer_logits([0, 1, 2]), want, atol=1e-5, rtol=1e-5)
        # another batch order and width: each sample's rows are its own
        torch.testing.assert_close(
            prefix.answer_logits([2, 0]),
            _answer_logits(base, [prompts[2], prompts[0]], [answers[2], answers[0]]),
            atol=1e-5,
            rtol=1e-5,
        )
    with pytest.raises(ValidationError):
        FrozenPrefix(base, prompts, answers, first_layer=2)  # the tiny model has layers 0 and 1


def test_fit_kl_with_first_layer_trains_only_the_top_layers():
    from memory.distill import fit_kl, layer_of, teacher_topk

    base = tiny_base()
    prompts = [[3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13, 14]]
    answers = [[20, 21, 22], [23, 24], [25, 26, 27]]
    teacher = teacher_topk(base, [[30, 31, *p] for p in prompts], answers, top_k=8)
    weights, losses = fit_kl(
        base,
        prompts,
        answers,
        teacher,
        rank=4,
        target_modules=("mlp.down_proj", "self_attn.q_proj"),
        steps=20,
        lr=3e-2,
        batch_size=2,
        first_layer=1,
    )
    assert weights and {layer_of(p) for p in weights} == {1}
    assert sum(losses[-3:]) / 3 < losses[0]
    assert all(not p.requires_grad for p in base.model.parameters())
