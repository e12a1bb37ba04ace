"""``auto`` reads a short document whole when it answers from retrieval (``RouterConfig.whole_document_tokens``):
the prompt holds every chunk of the document's current version, in order, instead of its top chunks."""

from __future__ import annotations

import pytest
from _embedders import BagOfWords

from memory.api import ParametricMemory
from memory.router import RouterConfig

POLICY = [
    "Refunds are paid within 14 days of the request.",
    "Travel must be booked through the travel desk.",
    "Laptops are replaced every three years.",
    "The vault code is changed every month by security.",
    "Visitors sign in at the front desk on arrival.",
]


@pytest.fixture
def mem(backend_settings):
    """The bag-of-words embedder, a tiny random base model and 16-token chunks, so a short text has several."""
    from _fixtures_models import tiny_base

    mem = ParametricMemory(backend_settings.with_(chunk_tokens=16, abstain_threshold=0), embedder=BagOfWords())
    mem.runtime._base_model = base = tiny_base()
    base.model.config.max_position_embeddings = 4096  # one token per character: room for the document
    return mem


def test_auto_puts_every_chunk_of_a_short_document_in_the_prompt_in_order(mem):
    mem.add(" ".join(POLICY), document_id="policy")
    mem.add("The canteen opens at noon.", document_id="canteen")
    chunks = mem.chunks("policy")
    assert len(chunks) >= 3
    question = "How often is the vault code changed?"

    top = mem.query(question, mode="auto", k=1, max_new_tokens=2, log=False)  # off by default: the top chunk
    assert top.mode == "retrieval" and len(top.chunks) == 1 and "whole document" not in top.reason

    mem.query_engine.router_config = RouterConfig(whole_document_tokens=10_000)
    whole = mem.query(question, mode="auto", k=1, max_new_tokens=2, log=False)
    assert whole.mode == "retrieval" and "whole document is in the prompt" in whole.reason
    assert [(h.document_id, h.chunk_id) for h in whole.chunks] == [("policy", c.id) for c in chunks]
    assert whole.prompt_tokens > top.prompt_tokens + sum(len(s) for s in POLICY[:2])

    asked = mem.query(question, mode="retrieval", k=1, max_new_tokens=2, log=False)  # a requested mode: top chunks
    assert len(asked.chunks) == 1

    mem.query_engine.router_config = RouterConfig(whole_document_tokens=chunks[0].token_count)  # too long now
    assert len(mem.query(question, mode="auto", k=1, max_new_tokens=2, log=False).chunks) == 1


def test_the_whole_document_is_its_current_version(mem):
    mem.add(" ".join(POLICY), document_id="policy")
    mem.add(" ".join([*POLICY[:3], "The vault code is changed every week by the guards."]), document_id="policy")
    mem.query_engine.router_config = RouterConfig(whole_document_tokens=10_000)
    r = mem.query("How often is the vault code changed?", mode="auto", k=1, max_new_tokens=2, log=False)
    assert [h.chunk_id for h in r.chunks] == [c.id for c in mem.chunks("policy")]
    assert {h.version for h in r.chunks} == {2}
    text = " ".join(h.text for h in r.chunks)
    assert "every week" in text and "every month" not in text and "Visitors" not in text
