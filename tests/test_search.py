"""Classic retrieval through the facade: only current versions, hard namespaces, filters, re-embedding."""

from __future__ import annotations

import numpy as np
import pytest

from memory.api import ParametricMemory
from memory.errors import ValidationError


class BagOfWords:
    """A tiny real embedder (hashed bag of words) so these tests need no model; cosine = word overlap."""

    name = "bag-of-words"
    dim = 64

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for w in text.lower().replace(".", " ").replace("?", " ").split():
            v[hash(w) % self.dim] += 1.0
        n = np.linalg.norm(v)
        return v / n if n else v

    def embed_documents(self, texts):
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_query(self, text):
        return self._vec(text)


@pytest.fixture
def mem(backend_settings):
    return ParametricMemory(backend_settings, embedder=BagOfWords())


def test_search_finds_the_matching_chunk(mem):
    mem.add("The vault code is 7342.", document_id="vault")
    mem.add("The cat is called Biscuit.", document_id="cat")
    hits = mem.search("what is the vault code", k=2)
    assert hits[0].document_id == "vault" and hits[0].score > hits[1].score
    assert hits[0].text == "The vault code is 7342." and hits[0].version == 1


def test_only_current_versions_are_searched(mem):
    mem.add("The vault code is 7342.", document_id="vault")
    mem.search("vault", k=1)  # index built
    mem.add("The vault code is now 9051.", document_id="vault")
    hits = mem.search("vault code", k=5)
    assert [h.text for h in hits] == ["The vault code is now 9051."] and hits[0].version == 2
    mem.rollback("vault", 1)
    assert [h.text for h in mem.search("vault code", k=5)] == ["The vault code is 7342."]
    mem.delete("vault")
    assert mem.search("vault code", k=5) == []


def test_namespaces_are_walls_even_with_hostile_filters(mem):
    mem.add("alpha secret vault code 1111", document_id="s", namespace="alpha", metadata={"team": "x"})
    mem.add("beta public notes", document_id="p", namespace="beta", metadata={"team": "x"})
    assert {h.document_id for h in mem.search("vault code", k=10, namespace="beta")} == {"p"}
    for hostile in ({"namespace": "alpha"}, {"$or": [{"team": "x"}, {"namespace": "alpha"}]}):
        with pytest.raises(ValidationError, match="namespace"):
            mem.search("vault code", k=10, namespace="beta", filter=hostile)
    assert all(h.document_id == "p" for h in mem.search("vault code", k=10, namespace="beta", filter={"team": "x"}))


def test_metadata_filters_and_malformed_filters(mem):
    mem.add("leave policy twenty days", document_id="leave", metadata={"dept": "hr", "year": 2024})
    mem.add("leave policy for contractors", document_id="contract", metadata={"dept": "legal", "year": 2026})
    assert [h.document_id for h in mem.search("leave policy", filter={"dept": "hr"})] == ["leave"]
    assert [h.document_id for h in mem.search("leave policy", filter={"year": {"$gte": 2025}})] == ["contract"]
    for bad in ({"$bad": 1}, {"year": {"$gt": "x", "$lt": []}}, "dept=hr"):
        with pytest.raises(ValidationError):
            mem.search("leave", filter=bad)  # type: ignore[arg-type]


def test_metadata_changes_reach_the_index(mem):
    mem.add("leave policy", document_id="leave", metadata={"dept": "hr"})
    assert mem.search("leave", filter={"dept": "hr"})
    mem.add("leave policy, revised", document_id="leave", metadata={"dept": "ops"})
    assert mem.search("leave", filter={"dept": "hr"}) == []
    assert [h.document_id for h in mem.search("leave", filter={"dept": "ops"})] == ["leave"]


def test_bad_queries(mem):
    for q in ("", "   "):
        with pytest.raises(ValidationError):
            mem.search(q)
    with pytest.raises(ValidationError):
        mem.search("x", k=0)


def test_changing_the_embedder_re_embeds(mem):
    mem.add("the vault code", document_id="v")
    assert mem.search("vault")
    class Wider(BagOfWords):
        name = "bag-of-words"
        dim = 32
    mem.embedder = Wider()
    hits = mem.search("vault")
    assert hits and mem.embedder.dim == 32


@pytest.mark.slow
def test_default_minilm_embedder_ranks_the_matching_fact_first(tmp_path):
    from memory.config import Settings

    mem = ParametricMemory(Settings.from_env(home=tmp_path / "h"))
    mem.add("The access code for the Orion vault is 7342.", document_id="vault")
    mem.add("Marisol's cat is called Biscuit and likes fish.", document_id="cat")
    mem.add("Expense reports are due within 14 days.", document_id="expenses")
    assert mem.search("What is the name of the cat?", k=1)[0].document_id == "cat"
    assert mem.search("vault access code", k=1)[0].document_id == "vault"
