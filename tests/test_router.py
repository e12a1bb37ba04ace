"""The per-query router: each decision comes from a measured signal and says why."""

from __future__ import annotations

import dataclasses

import pytest

from memory.errors import ValidationError
from memory.router import Candidate, RouterConfig, decide, select_documents, wants_verbatim

CFG = RouterConfig()


def cand(doc, rel, ready=True, status="ready"):
    return Candidate(doc, rel, ready, status)


def test_auto_uses_adapters_of_relevant_documents_only():
    route = decide(
        "What is the vault code?",
        "auto",
        [cand("vault", 0.7), cand("cat", 0.1), cand("policy", 0.62), cand("misc", 0.3)],
        CFG,
    )
    assert route.mode == "parametric" and route.check_confidence
    assert route.adapter_documents == ["vault", "policy"]  # cat is irrelevant, misc far below the best
    assert "vault" in route.reason and "0.70" in route.reason


def test_auto_goes_to_retrieval_for_a_verbatim_request():
    route = decide("Quote the refund clause word for word", "auto", [cand("refunds", 0.9)], CFG)
    assert route.mode == "retrieval" and "exact wording" in route.reason


def test_auto_leaves_an_unrelated_question_to_the_base_model():
    # neither an adapter nor a passage: a question about something else is answered as without the memory
    route = decide("Who won the 1998 world cup?", "auto", [cand("vault", 0.05)], CFG)
    assert route.mode == "parametric" and route.adapter_documents == [] and "0.05" in route.reason
    assert "base model answers alone" in route.reason
    empty = decide("anything", "auto", [], CFG)
    assert empty.mode == "parametric" and empty.adapter_documents == []


def test_auto_goes_to_retrieval_when_the_top_adapter_is_stale():
    route = decide("vault code?", "auto", [cand("vault", 0.8, ready=False, status="pending"), cand("x", 0.5)], CFG)
    assert route.mode == "retrieval" and "pending" in route.reason and "vault" in route.reason


def test_explicit_modes_are_honoured():
    c = [cand("vault", 0.8)]
    assert decide("q", "retrieval", c, CFG).mode == "retrieval"
    h = decide("q", "hybrid", c, CFG)
    assert h.mode == "hybrid" and h.adapter_documents == ["vault"]
    p = decide("q", "parametric", [cand("vault", 0.8, ready=False, status="failed")], CFG)
    assert p.mode == "parametric" and p.adapter_documents == [] and "base model answers alone" in p.reason


def test_at_most_max_adapters():
    c = [cand(f"d{i}", 0.9 - i * 0.01) for i in range(10)]
    assert len(select_documents(c, RouterConfig(max_adapters=3))) == 3


def test_unknown_mode_is_an_error():
    with pytest.raises(ValidationError, match="mode must be one of"):
        decide("q", "psychic", [], CFG)


@pytest.mark.parametrize(
    "q", ["Give me the verbatim text of section 2", "What exactly does the policy say? Quote it.", "cite the clause"]
)
def test_verbatim_detection(q):
    assert wants_verbatim(q)


@pytest.mark.parametrize("q", ["How many days of leave?", "What is the code for the vault?"])
def test_not_verbatim(q):
    assert not wants_verbatim(q)


def test_support_is_the_share_of_new_answer_words_found_in_the_passages():
    from memory.router import content_words, support

    passages = ["The access code for the Orion vault is 7342.", "Visitors park on level two."]
    q = "What is the access code for the Orion vault?"
    assert support("7342", passages, q) == 1.0
    assert support("The access code is 7342.", passages, q) == 1.0
    assert support("The access code is 1111.", passages, q) == 0.0  # only '1111' is new, and it is not there
    assert support("It is 7342 on level two.", passages, q) == 1.0
    assert support("7342 or 1111", passages, q) == 0.5
    assert support("The Orion vault.", passages, q) == 0.0  # an echo of the question is no answer
    assert support("", passages, q) == 0.0 and support("the of is", passages) == 0.0
    assert support("Orion", []) == 0.0 and support("Orion", passages) == 1.0
    assert content_words("Blue-green, 42 TIMES!") == ["blue-green", "42", "times"]


def test_every_name_and_number_of_the_answer_must_be_in_the_passages():
    from memory.router import support, unsupported_key_words

    passages = ["The Koufeth Library was founded in 1772 by Trandma Zounend."]
    q = "Who founded the Koufeth Library?"
    assert support("Zanaldo Zounend", passages, q) == 0.5  # half supported ...
    assert unsupported_key_words("Zanaldo Zounend", passages, q) == ["zanaldo"]  # ... but a name is wrong
    assert unsupported_key_words("Trandma Zounend", passages, q) == []
    assert unsupported_key_words("It was founded by Trandma Zounend in 1772.", passages, q) == []
    assert unsupported_key_words("founded in 1773", passages, q) == ["1773"]
    assert unsupported_key_words("a kind librarian", passages, q) == []  # no key words: left to support()
    assert unsupported_key_words("The Koufeth Library", passages, q) == []  # echoes of the question don't count


# ---------------------------------------------------------------------------- degenerate adapted answers
@pytest.mark.parametrize(
    "answer",
    [
        "3333333333333333333333",
        "licororororororor",
        "Dindindindindin",
        "special special special special special",
        "The code is 4242424242424242",
        "the the the the the the the the",
        "Zan Zan Zan Zan Zan Zan Zan",
        "ab ab ab ab ab ab ab ab ab",
    ],
)
def test_degenerate_answers_are_recognised(answer):
    from memory.router import degenerate

    assert degenerate(answer), answer


def test_real_answers_are_not_degenerate():
    from memory.evaluation import suites
    from memory.router import degenerate

    answers = [a for it in suites.builtin(False) + suites.builtin(False, seed=2026) for a in it.answers]
    answers += [
        "1,000,000",
        "10000",
        "2019-03-12",
        "Agnes Calloway",
        "It costs $12.50.",
        "Mississippi",
        "The refund window is 30 days after purchase, or 60 days for members.",
        "ext. 4471",
        "Yes.",
        "banana",
        "Committee on committees",
        "Tuesday and Thursday",
        "",
    ]
    flagged = [a for a in answers if degenerate(a)]
    assert not flagged, flagged
    assert len(answers) > 40


def test_auto_check_rejects_a_degenerate_answer_even_when_confident_and_supported():
    from memory.router import check_answer

    passages = ["The licorice stall sells 3333 sticks a year."]
    assert check_answer("3333", -0.2, passages, "How many sticks?").doubt is None
    for loop in ("3333333333333333", "licorice licorice licorice licorice licorice licorice"):
        doubt = check_answer(loop, -0.05, passages, "How many sticks?").doubt
        assert doubt and "degenerate" in doubt, (loop, doubt)


def test_auto_answers_in_hybrid_with_an_adapter_trained_to_read_passages():
    trained = Candidate("vault", 0.7, True, "ready", tier="full", fidelity=0.8, reads_passages=True)
    route = decide("What is the vault code?", "auto", [trained], CFG)
    assert route.mode == "hybrid" and route.adapter_documents == ["vault"] and "read passages" in route.reason
    # its fidelity gate still applies, and the choice can be turned off
    weak = Candidate("vault", 0.7, True, "ready", tier="full", fidelity=0.2, reads_passages=True)
    assert decide("What is the vault code?", "auto", [weak], CFG).mode == "retrieval"
    off = RouterConfig(hybrid_when_trained=False)
    assert decide("What is the vault code?", "auto", [trained], off).mode == "parametric"


def test_auto_answers_in_hybrid_only_with_an_adapter_of_one_chunk():
    """The rule chosen on the dev documents (bench.router_sweep): beside retrieved passages an adapter trained on
    many chunks spoils their reading, so auto uses retrieval for it; a paragraph's adapter still answers in hybrid."""
    one = Candidate("para", 0.7, True, "ready", tier="full", fidelity=0.8, reads_passages=True, chunks=1)
    many = Candidate("doc", 0.7, True, "ready", tier="full", fidelity=0.8, reads_passages=True, chunks=7)
    q = "What is the vault code?"
    assert decide(q, "auto", [one], CFG).mode == "hybrid"
    route = decide(q, "auto", [many], CFG)
    assert route.mode == "retrieval" and "7 chunks" in route.reason and not route.adapter_documents
    assert decide(q, "auto", [many], RouterConfig(hybrid_max_chunks=None)).mode == "hybrid"  # the former rule
    assert decide(q, "auto", [many], RouterConfig(hybrid_max_chunks=7)).mode == "hybrid"
    checked = decide(q, "auto", [many], RouterConfig(over_chunks="parametric"))
    assert checked.mode == "parametric" and checked.check_confidence and checked.adapter_documents == ["doc"]
    # an adapter whose chunk count is unknown keeps the hybrid choice
    unknown = Candidate("doc", 0.7, True, "ready", tier="full", fidelity=0.8, reads_passages=True)
    assert decide(q, "auto", [unknown], CFG).mode == "hybrid"
    for bad in ({"over_chunks": "hybrid"}, {"hybrid_max_chunks": 0}):
        with pytest.raises(ValidationError):
            RouterConfig(**bad)


def test_auto_reads_a_short_document_whole_when_it_answers_from_retrieval():
    """whole_document_tokens: a document of several chunks and at most that many tokens goes into the prompt whole
    on every retrieval route of auto, never on a requested mode, a one-chunk document or a longer one."""
    cfg = RouterConfig(whole_document_tokens=3000)
    q = "What is the vault code?"
    short = Candidate("doc", 0.7, False, None, document_tokens=2100, document_chunks=5)
    route = decide(q, "auto", [short], cfg)
    assert route.mode == "retrieval" and route.whole_document == "doc" and "2,100 tokens in 5 chunks" in route.reason
    assert decide(q, "auto", [short], CFG).whole_document is None  # off (0)
    assert decide(q, "retrieval", [short], cfg).whole_document is None  # a requested mode stays classic retrieval
    long = Candidate("doc", 0.7, False, None, document_tokens=4900, document_chunks=12)
    one = Candidate("doc", 0.7, False, None, document_tokens=400, document_chunks=1)
    unknown = Candidate("doc", 0.7, False, None)
    for c in (long, one, unknown):
        assert decide(q, "auto", [c], cfg).whole_document is None
    # the low-fidelity and many-chunk routes to retrieval read it whole too; hybrid and parametric do not
    weak = Candidate("doc", 0.7, True, "ready", tier="full", fidelity=0.2, document_tokens=2100, document_chunks=5)
    many = dataclasses.replace(weak, fidelity=0.8, reads_passages=True, chunks=5)  # trained on 5 chunks
    para = dataclasses.replace(many, chunks=1)  # an adapter of one chunk: hybrid
    assert decide(q, "auto", [weak], cfg).whole_document == "doc"
    assert decide(q, "auto", [many], cfg).whole_document == "doc"
    assert decide(q, "auto", [para], cfg).mode == "hybrid" and decide(q, "auto", [para], cfg).whole_document is None
    for bad in (-1, 1.5, True, "3000"):
        with pytest.raises(ValidationError):
            RouterConfig(whole_document_tokens=bad)


def test_auto_can_check_a_hybrid_answer():
    trained = Candidate("vault", 0.7, True, "ready", tier="full", fidelity=0.8, reads_passages=True)
    assert not decide("What is the vault code?", "auto", [trained], CFG).check_confidence
    route = decide("What is the vault code?", "auto", [trained], RouterConfig(check_hybrid=True))
    assert route.mode == "hybrid" and route.check_confidence
