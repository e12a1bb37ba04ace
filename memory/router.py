"""Per-query choice between the weight-internalized adapters and classic retrieval.

Modes: ``parametric`` (apply the adapters of the relevant documents, no document text in the prompt),
``retrieval`` (top-k chunks in the prompt), ``hybrid`` (both) and ``auto``, which decides from measured
signals and says why:

1. a request for a verbatim quote goes to retrieval (adapters paraphrase, they cannot quote);
2. no stored document is relevant enough to the query -> the base model answers alone (no adapter, no
   passage: a question about something else is answered as if the memory were not there; by default such a
   question has already been answered with "I don't know" by the query's abstention check, see
   :mod:`memory.services.query`);
3. the most relevant document's adapter is missing or stale (not made from its current version) -> retrieval;
4. its measured fidelity (self-study measures it on probes held back from its own training data: the share
   of the in-context teacher's answer the adapter reproduces without the document) is below
   ``min_fidelity`` -> retrieval; an adapter without a measured fidelity (Doc-to-LoRA, context distillation)
   goes on to the answer checks;
5. an adapter trained to read passages beside it (self-study's in-context samples, ``reads_passages``) on one
   chunk (a paragraph: ``hybrid_max_chunks``) answers with the retrieved passages: ``hybrid``; it knows the
   document when retrieval misses the passage, and its training keeps it from spoiling the reading of the
   passage when retrieval finds it. An adapter trained on more chunks (a long document) does spoil it: on the
   dev documents hybrid answered 5 of 40 questions where retrieval answered 7 (``python -m
   bench.router_sweep``), so its questions go to retrieval (``over_chunks``).
   Whenever auto answers from retrieval (steps 3-5) and the document is short (``whole_document_tokens``, off
   by default) and longer than one chunk, the prompt holds the whole document instead of its top chunks
   (``Route.whole_document``). On the eight dev documents (1.2k-6.2k tokens) the 135M model reading a page whole
   answered 7 of 80 questions where its top chunks answered 15, and 2 of 40 against 7 on the four under 2k tokens
   (``bench/results/self-study/dev-context*``), so it stays off for this base model.
6. otherwise parametric, then three checks of the adapted answer, all free of extra model calls: it must
   not be degenerate (a repetition loop such as "3333..." or "licororor", :func:`degenerate`), the model
   must be sure of it (mean token log-probability), and the passages the search already returned must
   support it (most of the content words it adds to the question, and every name and number among them,
   appear in them). An unsure or unsupported answer is replaced by the retrieval answer. The support check
   catches what confidence cannot: an adapter that is confidently wrong (``bench/results/qa``). Retrieval
   rather than hybrid, because an adapter applied beside passages degrades the reading of the passages with
   the current checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from memory.errors import ValidationError

MODES = ("parametric", "retrieval", "hybrid", "auto")

_VERBATIM = re.compile(
    r"\b(verbatim|word[- ]for[- ]word|exact (wording|words|text|quote|phrase)|quote|quotation|cite|citation|"
    r"literally says|exactly what .* says)\b",
    re.IGNORECASE,
)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def wants_verbatim(question: str) -> bool:
    """Does the user ask for the document's exact words?

    >>> wants_verbatim("Quote the refund clause verbatim"), wants_verbatim("How long is the refund window?")
    (True, False)
    """
    return bool(_VERBATIM.search(question))


@dataclass(frozen=True)
class Candidate:
    """A document relevant to the query: its best chunk score and whether its adapter is current and ready."""

    document_id: str
    relevance: float
    adapter_ready: bool
    adapter_status: str | None
    tier: str | None = None  # instant | full (self-study)
    fidelity: float | None = None  # measured containment on held-back probes, when the adapter has one
    reads_passages: bool = False  # trained with the document in the student's prompt too (self-study in-context)
    chunks: int | None = None  # how many chunks of its document the adapter was trained on (self-study), if known
    document_tokens: int | None = None  # the length of the document's current version, when the caller looked
    document_chunks: int | None = None  # ... and how many chunks it has


@dataclass(frozen=True)
class RouterConfig:
    relevance_threshold: float = 0.25  # cosine similarity (all-MiniLM-L6-v2) of the best chunk
    relative_threshold: float = 0.8  # keep documents within this fraction of the best one's relevance
    max_adapters: int = 4
    min_confidence: float = -1.5  # mean log-probability per answer token
    min_support: float = 0.5  # share of the answer's content words found in the retrieved passages
    min_fidelity: float = 0.5  # an adapter reproducing less of its teacher's held-back answers is not used in auto
    hybrid_when_trained: bool = True  # auto: an adapter trained to read passages answers with them (hybrid)
    hybrid_max_chunks: int | None = 1  # ... only when it was trained on at most this many chunks (None: any)
    over_chunks: str = "retrieval"  # auto, an adapter over hybrid_max_chunks: "retrieval" | "parametric" (checked)
    check_hybrid: bool = False  # auto: the answer checks also judge a hybrid answer (doubt: retrieval's answer)
    whole_document_tokens: int = 0  # auto, answering from retrieval: a document of several chunks and at most this
    # many tokens goes into the prompt whole, not as its top chunks (0: never)

    def __post_init__(self) -> None:
        if self.over_chunks not in ("parametric", "retrieval"):
            raise ValidationError(f"over_chunks must be 'parametric' or 'retrieval', got {self.over_chunks!r}")
        if self.hybrid_max_chunks is not None and self.hybrid_max_chunks < 1:
            raise ValidationError(f"hybrid_max_chunks must be >= 1 or None, got {self.hybrid_max_chunks!r}")
        if isinstance(self.whole_document_tokens, bool) or not isinstance(self.whole_document_tokens, int):
            raise ValidationError(f"whole_document_tokens must be an integer, got {self.whole_document_tokens!r}")
        if self.whole_document_tokens < 0:
            raise ValidationError(f"whole_document_tokens must be >= 0, got {self.whole_document_tokens!r}")


@dataclass(frozen=True)
class Route:
    mode: str
    reason: str
    adapter_documents: list[str] = field(default_factory=list)
    check_confidence: bool = False  # auto: fall back to retrieval when the adapted answer is unsure or unsupported
    whole_document: str | None = None  # retrieval: this document's every chunk, in order, instead of the top chunks


_WORD = re.compile(r"[\w]+(?:[-'][\w]+)*", re.UNICODE)
_STOP = frozenset(
    "a an the is are was were be been being of to in on at by for with from as and or but not no it its this that "
    "these those there here he she they we you i me my your our their his her them us do does did has have had "
    "will would can could should may might must shall what which who whom whose when where why how answer".split()
)


def content_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` without stop words (numbers and hyphenated codes kept whole).

    >>> content_words("The code is copper-falcon-42.")
    ['code', 'copper-falcon-42']
    """
    return [w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in _STOP]


def _new_words(answer: str, question: str) -> list[tuple[str, bool]]:
    """(word, is_key) for the answer's content words not in the question; key words carry a digit or a capital
    letter in the answer (names, codes, numbers, dates: the facts themselves)."""
    asked = set(content_words(question))
    out = []
    for m in _WORD.finditer(answer):
        raw = m.group(0)
        w = raw.lower()
        if w in _STOP or w in asked:
            continue
        out.append((w, any(ch.isdigit() or ch.isupper() for ch in raw)))
    return out


def support(answer: str, passages: list[str], question: str = "") -> float:
    """The share of the answer's new content words (those not already in the question) found in ``passages``.

    Words the answer repeats from the question are no evidence either way; an answer with no new content
    word (empty, or an echo of the question) has support 0.0.

    >>> support("The vault code is 7342.", ["Vault code: 7342, changed monthly."], "What is the vault code?")
    1.0
    >>> support("The vault code is 7343.", ["Vault code: 7342."], "What is the vault code?")
    0.0
    """
    words = [w for w, _ in _new_words(answer, question)]
    if not words:
        return 0.0
    seen = set(content_words(" ".join(passages)))
    return sum(w in seen for w in words) / len(words)


def unsupported_key_words(answer: str, passages: list[str], question: str = "") -> list[str]:
    """The answer's key words (names, numbers, codes: a digit or a capital letter) that ``passages`` lack.

    A fact is its names and numbers: an answer with the right surname and a wrong first name has half its
    words supported, but one of its key words is not, and that is enough to doubt it.

    >>> unsupported_key_words("Zanaldo Zounend", ["It was founded by Trandma Zounend."], "Who founded it?")
    ['zanaldo']
    """
    seen = set(content_words(" ".join(passages)))
    return [w for w, key in _new_words(answer, question) if key and w not in seen]


_CHAR_RUN = re.compile(r"(\S)\1{7,}")
_PERIODIC = re.compile(r"(.{2,24}?)\1{2,}", re.DOTALL)


def degenerate(answer: str) -> str | None:
    """Why an adapted answer is a degenerate repetition loop, or None when it reads as an answer.

    A pure function of the text (no model call): a character repeated 8+ times, a piece of 2-24 characters
    repeated 3+ times in a row over at least 8 characters and a third of the answer, or 6+ words of which
    fewer than 40 % are distinct. Ordinary answers (numbers, codes, names, short sentences) pass.

    >>> degenerate("3333333333333"), degenerate("licororororor"), degenerate("special special special special")
    ('a character repeated 13 times', "'or' repeated 5 times in a row", "'special ' repeated 3 times in a row")
    >>> [degenerate(a) for a in ("1,000,000", "2019", "Agnes Calloway", "copper-falcon-42", "It costs $12.50.")]
    [None, None, None, None, None]
    """
    text = answer.strip()
    if not text:
        return None
    m = _CHAR_RUN.search(text)
    if m:
        return f"a character repeated {len(m.group(0))} times"
    for m in _PERIODIC.finditer(text):
        span = len(m.group(0))
        unit = m.group(1)
        if unit.strip() and span >= 8 and span >= len(text) / 3:
            return f"{unit!r} repeated {span // len(unit)} times in a row"
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) >= 6 and len(set(words)) / len(words) < 0.4:
        return f"{len(words)} words with only {len(set(words))} distinct"
    return None


@dataclass(frozen=True)
class AnswerCheck:
    """The post-answer checks of an adapted answer in ``auto`` mode; ``doubt`` says why it is rejected."""

    confidence: float  # mean log-probability per answer token under the adapted model
    support: float  # share of the answer's new content words found in the retrieved passages
    doubt: str | None  # None: the answer stands


def check_answer(
    answer: str, confidence: float, passages: list[str], question: str, cfg: RouterConfig = RouterConfig()
) -> AnswerCheck:
    """Judge an adapted answer: degenerate (a repetition loop, :func:`degenerate`), unsure (low ``confidence``),
    a key word the passages lack, or too little support.

    >>> check_answer("The vault code is 7342.", -0.3, ["Vault code: 7342."], "What is the vault code?").doubt
    >>> check_answer("It is 1111.", -0.3, ["Vault code: 7342."], "What is the vault code?").doubt
    "the adapted answer is not supported by the retrieved passages (they lack '1111')"
    >>> check_answer("licorororororor", -0.1, ["licorice"], "What flavour?").doubt
    "the adapted answer is degenerate ('or' repeated 6 times in a row)"
    """
    supported = support(answer, passages, question)
    missing = unsupported_key_words(answer, passages, question)
    doubt = None
    loop = degenerate(answer)
    if loop:
        doubt = f"the adapted answer is degenerate ({loop})"
    elif confidence < cfg.min_confidence:
        doubt = f"the adapted model was unsure (mean log-prob {confidence:.2f} < {cfg.min_confidence})"
    elif missing:
        doubt = (
            "the adapted answer is not supported by the retrieved passages (they lack "
            f"{', '.join(repr(w) for w in missing[:3])})"
        )
    elif supported < cfg.min_support:
        doubt = (
            f"the adapted answer is not supported by the retrieved passages ({supported:.0%} of its "
            f"content words found < {cfg.min_support:.0%})"
        )
    return AnswerCheck(confidence, supported, doubt)


def select_documents(candidates: list[Candidate], cfg: RouterConfig) -> list[Candidate]:
    """The relevant documents with a ready adapter, best first, at most ``cfg.max_adapters``."""
    relevant = [c for c in candidates if c.relevance >= cfg.relevance_threshold]
    if not relevant:
        return []
    best = max(c.relevance for c in relevant)
    keep = [c for c in relevant if c.adapter_ready and c.relevance >= cfg.relative_threshold * best]
    return sorted(keep, key=lambda c: -c.relevance)[: cfg.max_adapters]


def _retrieval(top: Candidate, reason: str, cfg: RouterConfig) -> Route:
    """``auto``'s retrieval route for the most relevant document ``top``: its whole text when it is short enough to
    be read whole (``whole_document_tokens``) and longer than one chunk, else the top chunks."""
    tokens, chunks = top.document_tokens, top.document_chunks
    if tokens is None or chunks is None or chunks < 2 or tokens > cfg.whole_document_tokens:
        return Route("retrieval", reason)
    return Route(
        "retrieval",
        f"{reason}; {top.document_id!r} is short ({tokens:,} tokens in {chunks} chunks, "
        f"<= {cfg.whole_document_tokens:,}), so the whole document is in the prompt",
        whole_document=top.document_id,
    )


def decide(question: str, mode: str, candidates: list[Candidate], cfg: RouterConfig = RouterConfig()) -> Route:
    """Pick the mode for one query (see the module docstring) and say why."""
    check_mode(mode)
    chosen = select_documents(candidates, cfg)
    docs = [c.document_id for c in chosen]
    if mode in ("parametric", "hybrid"):
        reason = f"mode {mode} requested"
        if mode == "parametric" and not docs:
            reason += "; no relevant document has a ready adapter, so the base model answers alone"
        elif docs:
            reason += f"; adapters of {', '.join(docs)}"
        return Route(mode, reason, docs)
    if mode == "retrieval":
        return Route("retrieval", "mode retrieval requested")
    # auto
    if wants_verbatim(question):
        return Route("retrieval", "the question asks for exact wording; adapters paraphrase, retrieval quotes")
    relevant = sorted((c for c in candidates if c.relevance >= cfg.relevance_threshold), key=lambda c: -c.relevance)
    if not relevant:
        best = max((c.relevance for c in candidates), default=None)
        shown = f"{best:.2f}" if best is not None else "none"
        return Route(
            "parametric",
            f"no document is relevant enough (best similarity {shown} < {cfg.relevance_threshold}); "
            "the base model answers alone, without adapters or passages",
        )
    top = relevant[0]
    if not top.adapter_ready:
        return _retrieval(
            top,
            f"the most relevant document {top.document_id!r} has no current ready adapter "
            f"(status {top.adapter_status or 'none'}); using retrieval",
            cfg,
        )
    if top.fidelity is not None and top.fidelity < cfg.min_fidelity:
        return _retrieval(
            top,
            f"the adapter of {top.document_id!r} ({top.tier or 'instant'} tier) reproduces {top.fidelity:.0%} of its "
            f"teacher's held-back answers (< {cfg.min_fidelity:.0%}); using retrieval",
            cfg,
        )
    over = cfg.hybrid_max_chunks is not None and top.chunks is not None and top.chunks > cfg.hybrid_max_chunks
    if cfg.hybrid_when_trained and top.reads_passages and not over:
        return Route(
            "hybrid",
            f"{len(docs)} relevant internalized document(s) ({', '.join(docs)}; best similarity "
            f"{top.relevance:.2f}) whose adapter was trained to read passages beside it: adapter and retrieved "
            "passages together",
            docs,
            check_confidence=cfg.check_hybrid,
        )
    if over and cfg.over_chunks == "retrieval":
        return _retrieval(
            top,
            f"the adapter of {top.document_id!r} was trained on {top.chunks} chunks (> {cfg.hybrid_max_chunks}); "
            "using retrieval",
            cfg,
        )
    return Route(
        "parametric",
        f"{len(docs)} relevant internalized document(s) ({', '.join(docs)}; best similarity "
        f"{top.relevance:.2f}) with current adapters",
        docs,
        check_confidence=True,
    )
