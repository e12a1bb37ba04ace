"""Answering questions from memory: search, route, apply adapters, generate, check, log.

:class:`QueryEngine` runs one query end to end. What to do is decided by :mod:`memory.router` (the mode,
and the post-answer checks of ``auto``) under the engine's :class:`~memory.router.RouterConfig`, which is
injected, not read from a global. Classic retrieval is the :class:`~memory.chunk_index.ChunkIndex` over the
chunks of current versions.

When nothing stored is about the question, :meth:`QueryEngine.query` abstains instead of letting the model
invent an answer (mode ``abstain``, see :func:`passage_relevance` for the signal and
:data:`ABSTAIN_THRESHOLDS` for the measured thresholds).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory import router
from memory.db import Document, DocumentVersion, Namespace, QueryLog
from memory.errors import NotFoundError, ValidationError
from memory.services.adapters import AdapterRegistry, reads_passages, trained_chunks
from memory.services.models import ModelRuntime
from memory.services.records import Records, check_count, check_int, check_text_field, validate_document_id
from memory.services.skills import SkillLibrary
from memory.types import AdapterInfo, QueryResult, SearchHit

log = logging.getLogger(__name__)
MAX_QUESTION_CHARS = 8192  # a question or search query: embedding and prompting cost grow with it
MAX_K = 100
MAX_NEW_TOKENS = 2048

ABSTAIN = "abstain"  # the mode of a query that was not answered because nothing stored is about it
#: The passage relevance (:func:`passage_relevance`) below which a query abstains, per embedding model. For
#: all-MiniLM-L6-v2, measured on tests/data/firsthour (7 questions the 4 files answer: 0.66-0.85; 5 they do not:
#: 0.12-0.43) and on the built-in ``pmem eval qa`` items of two seeds (72 questions, 0.63-0.89): ``pmem bench
#: abstention``, README "Usage". Other models have no default: they abstain only on an empty namespace unless
#: PMEM_ABSTAIN_THRESHOLD is set.
ABSTAIN_THRESHOLDS = {"all-MiniLM-L6-v2": 0.45}
RELEVANCE_PASSAGES = 4  # the top passages whose sentences are compared with the question
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The sentences (and lines: headings, list items) of a passage.

    >>> sentences("# Leave\\nStaff get 25 days. Unused days lapse!")
    ['# Leave', 'Staff get 25 days.', 'Unused days lapse!']
    """
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


class _SentenceVectors:
    """Embeddings of the sentences of passages, by passage text (LRU, thread-safe): a passage is embedded
    sentence by sentence once per process, not once per query."""

    def __init__(self, max_passages: int = 4096) -> None:
        self.max_passages = max_passages
        self._lock = threading.Lock()
        self._rows: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, embedder: Any, text: str) -> Any:
        key = (f"{embedder.name}:{embedder.dim}", hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
        with self._lock:
            if key in self._rows:
                self._rows.move_to_end(key)
                return self._rows[key]
        vectors = embedder.embed_documents(sentences(text) or [text])
        with self._lock:
            self._rows[key] = vectors
            while len(self._rows) > self.max_passages:
                self._rows.popitem(last=False)
        return vectors


def passage_relevance(question: str, passages: list[str], embedder: Any, cache: _SentenceVectors) -> float:
    """How much the best of ``passages`` is about ``question``: the highest cosine similarity between the
    question and any single sentence of them (-1.0 for no passage).

    Why sentences and not the passages' own search scores: a 512-token chunk's embedding averages over
    everything it says, so a chunk that answers the question in one sentence among others can score lower
    than an unrelated chunk that shares the question's topic words (tests/data/firsthour: "Within how many
    days must receipts be uploaded?" scores 0.35 against the expenses file that answers it, "How many weeks
    of parental leave do employees get?" 0.35 against the onboarding file that does not; their best
    sentences score 0.84 and 0.43).
    """
    import numpy as np

    if not passages:
        return -1.0
    q = np.asarray(embedder.embed_query(question), dtype=np.float32)
    return max(float(np.max(np.asarray(cache.get(embedder, p), dtype=np.float32) @ q)) for p in passages)


def check_query_text(name: str, text: Any) -> str:
    """A question or search query: a non-empty string of at most :data:`MAX_QUESTION_CHARS` characters, no NUL.

    >>> check_query_text("query", "leave policy")
    'leave policy'
    """
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(f"{name} must be a non-empty string")
    if len(text) > MAX_QUESTION_CHARS:
        raise ValidationError(f"{name} is {len(text):,} characters, over the limit of {MAX_QUESTION_CHARS:,}")
    return check_text_field(name, text)


class QueryEngine:
    """Search, routing, generation and the query log.

    Args:
        records: the shared database and blob store.
        registry: where the documents' current adapters are found and loaded.
        runtime: the base model.
        skills: skill adapters applied with ``skill=``.
        router_config: thresholds of the ``auto`` router and its answer checks.
        embedder: the embedding model of classic retrieval (anything :func:`memory.retrieval.as_embedder`
            takes; ``None`` for the embedded default, loaded on first search).
        home: the directory under which the in-process vector index is saved.
        retrieval_backend: ``auto``, ``inprocess`` or ``pgvector`` (see :class:`~memory.chunk_index.ChunkIndex`).
        retrieval_ef_search: the HNSW candidate list at query time; ``None``: the backend's default.
        abstain_threshold: the passage relevance below which a query abstains (:data:`ABSTAIN_THRESHOLDS`);
            ``None``: the value measured for the embedding model (none: abstain only when nothing is stored),
            ``0``: never abstain for low relevance.
    """

    def __init__(
        self,
        records: Records,
        registry: AdapterRegistry,
        runtime: ModelRuntime,
        skills: SkillLibrary,
        *,
        router_config: router.RouterConfig | None = None,
        embedder: Any = None,
        home: Path,
        retrieval_backend: str = "auto",
        retrieval_ef_search: int | None = None,
        abstain_threshold: float | None = None,
    ) -> None:
        self.records = records
        self.abstain_threshold_setting = abstain_threshold
        self._sentence_vectors = _SentenceVectors()
        self.home = home
        self.retrieval_backend = retrieval_backend
        self.retrieval_ef_search = retrieval_ef_search
        self.registry = registry
        self.runtime = runtime
        self.skills = skills
        self.router_config = router_config or router.RouterConfig()
        self._embedder_arg = embedder
        self._chunk_index: Any = None

    # ------------------------------------------------------------ classic retrieval
    @property
    def embedder(self) -> Any:
        """The embedding model of classic retrieval (``memory.retrieval.Embedder``)."""
        return self.chunk_index.embedder

    @embedder.setter
    def embedder(self, value: Any) -> None:
        self._embedder_arg = value
        self._chunk_index = None  # rebuilt (and chunks re-embedded) with the new model on next use

    @property
    def chunk_index(self) -> Any:
        """The classic-retrieval index over current chunks (embedding model loaded on first use)."""
        if self._chunk_index is None:
            from memory.chunk_index import ChunkIndex, index_path
            from memory.retrieval import as_embedder

            embedder = as_embedder(self._embedder_arg)
            path = index_path(
                self.home,
                self.records.engine.url.render_as_string(hide_password=True),
                f"{embedder.name}:{embedder.dim}",
            )
            self._chunk_index = ChunkIndex(
                self.records.sessions,
                embedder,
                backend=self.retrieval_backend,
                path=path,
                ef_search=self.retrieval_ef_search,
            )
        return self._chunk_index

    @property
    def abstain_threshold(self) -> float:
        """The passage relevance below which a query abstains (0.0: only when nothing is stored)."""
        if self.abstain_threshold_setting is not None:
            return self.abstain_threshold_setting
        return ABSTAIN_THRESHOLDS.get(self.embedder.name, 0.0)

    def relevance(self, question: str, hits: list[SearchHit]) -> float:
        """How much the best of the top ``hits`` (:data:`RELEVANCE_PASSAGES`) is about ``question``
        (:func:`passage_relevance`; -1.0 for no hit)."""
        passages = [h.text for h in hits[:RELEVANCE_PASSAGES]]
        return passage_relevance(question, passages, self.embedder, self._sentence_vectors)

    def search(
        self,
        query: str,
        *,
        k: int = 4,
        namespace: str | None = None,
        filter: dict[str, Any] | None = None,  # the facade's keyword
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """See :meth:`memory.api.ParametricMemory.search`."""
        ns = self.records.namespace(namespace)
        check_query_text("query", query)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:  # no cap: the integrations widen a search
            raise ValidationError(f"k must be a positive integer, got {k!r}")
        if min_score is not None and (
            not isinstance(min_score, (int, float)) or isinstance(min_score, bool) or not -1.0 <= min_score <= 1.0
        ):
            raise ValidationError(f"min_score must be a number from -1 to 1 (a cosine similarity), got {min_score!r}")
        hits = self.chunk_index.search(query, k=k, ns=ns, filter=filter)
        return hits if min_score is None else [h for h in hits if h.score >= min_score]

    def document_ids_matching(self, filter: dict[str, Any] | None, *, namespace: str | None = None) -> list[str]:
        """See :meth:`memory.api.ParametricMemory.document_ids_matching`."""
        from memory.chunk_index import matching_document_ids

        return matching_document_ids(self.records.sessions, self.records.namespace(namespace), filter)

    # ------------------------------------------------------------ query
    def query(
        self,
        question: str,
        *,
        namespace: str | None = None,
        mode: str = "auto",
        k: int = 4,
        document_ids: list[str] | None = None,
        max_new_tokens: int = 64,
        log: bool = True,
        experiment: str | None = None,
        arm: str | None = None,
        skill: int | None = None,
        filter: dict[str, Any] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> QueryResult:
        """See :meth:`memory.api.ParametricMemory.query`.

        ``on_token`` receives the answer piece by piece as it is generated; the pieces join to the returned
        ``answer``. An ``auto`` query whose answer is checked after generation (adapters answered) streams
        nothing until the check: then the checked answer comes in one piece, or, when the check doubts it,
        the retrieval answer that replaces it streams as it is generated. Nothing streamed is ever retracted.
        """
        ns = self.records.namespace(namespace)
        router.check_mode(mode)
        check_query_text("question", question)
        check_count("k", k, MAX_K)
        check_count("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS)
        cfg = self.router_config
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        named = {validate_document_id(d) for d in document_ids} if document_ids is not None else None
        scope: dict[str, Any] | None = {"document_id": {"$in": sorted(named)}} if named else None
        if filter is not None:  # only documents it matches are searched and can lend their adapters
            scope = {"$and": [scope, filter]} if scope else filter
        hits = self.search(question, k=max(k, 8), namespace=ns, filter=scope) if named != set() else []
        timings["search_ms"] = (time.perf_counter() - t0) * 1000
        if not named and skill is None:  # named documents count as relevant; a skill's input need not be
            why, relevance = self._abstention(ns, question, hits, filtered=filter is not None, timings=timings)
            if why is not None:
                answer, reason = why
                if on_token is not None:
                    on_token(answer)
                timings["total_ms"] = (time.perf_counter() - t0) * 1000
                query_id = (
                    self._log(ns, question, ABSTAIN, reason, experiment, arm, [], [], timings["total_ms"], answer)
                    if log
                    else None
                )
                return QueryResult(
                    answer=answer,
                    mode=ABSTAIN,
                    reason=reason,
                    adapters=[],
                    chunks=[],
                    timings_ms=timings,
                    query_id=query_id,
                    relevance=relevance,
                )
        else:
            relevance = None
        ready = self.registry.current(ns, {h.document_id for h in hits} | (named or set()))
        best: dict[str, float] = {}
        for h in hits:
            best[h.document_id] = max(best.get(h.document_id, -1.0), h.score)
        for d in named or ():  # documents named by the caller count as relevant whatever their similarity
            best[d] = 1.0
        lengths = self._lengths(ns, list(best)) if mode == "auto" and cfg.whole_document_tokens else {}
        candidates = [
            router.Candidate(
                d,
                score,
                d in ready and ready[d].status == "ready",
                ready[d].status if d in ready else None,
                ready[d].tier if d in ready else None,
                ready[d].fidelity.get("containment") if d in ready else None,
                d in ready and reads_passages(ready[d]),
                trained_chunks(ready[d]) if d in ready else None,
                *lengths.get(d, (None, None)),
            )
            for d, score in best.items()
        ]
        route = router.decide(question, mode, candidates, cfg)
        adapter_infos = [ready[d] for d in route.adapter_documents]
        if skill is not None:
            adapter_infos.append(self.skills.get(skill, namespace=ns))
        context = hits[:k] if route.mode in ("retrieval", "hybrid") else []
        if route.whole_document is not None:
            context = self.chunk_index.document_chunks(ns, route.whole_document) or context  # []: deleted
        t1 = time.perf_counter()
        lora = self.registry.compose(adapter_infos)
        timings["adapter_load_ms"] = (time.perf_counter() - t1) * 1000
        base = self.runtime.base_model
        mode_used, reason = route.mode, route.reason
        checked = bool(route.check_confidence and route.adapter_documents)
        emit = _AnswerPieces(on_token) if on_token is not None else None
        backend = self.runtime.generator  # the base model, or a remote engine (memory.models.remote)
        gen, prompt_ids, context = self._answer(
            base, question, context, lora, max_new_tokens, None if checked or emit is None else emit.feed, backend
        )
        check = None
        if checked:
            chosen = set(route.adapter_documents)
            check = router.check_answer(
                gen.text,
                self._confidence(base, prompt_ids, gen, lora),
                [h.text for h in hits if h.document_id in chosen],
                question,
                cfg,
            )
            if check.doubt:
                context = hits[:k]
                skill_only = self.registry.compose(adapter_infos[len(route.adapter_documents) :])  # keep a skill
                gen, prompt_ids, context = self._answer(
                    base,
                    question,
                    context,
                    skill_only,
                    max_new_tokens,
                    emit.feed if emit is not None else None,
                    backend,
                )
                mode_used = "retrieval"
                reason += f"; {check.doubt}, so it answered from the retrieved passages instead"
            elif emit is not None:
                emit.feed(gen.text)
        timings["generate_ms"] = gen.total_s * 1000
        timings["total_ms"] = (time.perf_counter() - t0) * 1000
        query_id = None
        if log:
            query_id = self._log(
                ns, question, mode_used, reason, experiment, arm, adapter_infos, context, timings["total_ms"], gen.text
            )
        return QueryResult(
            answer=gen.text.strip(),
            mode=mode_used,
            reason=reason,
            adapters=adapter_infos,
            chunks=context,
            timings_ms=timings,
            query_id=query_id,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            confidence=check.confidence if check else None,
            support=check.support if check else None,
            relevance=relevance,
        )

    def _lengths(self, ns: str, document_ids: list[str]) -> dict[str, tuple[int, int]]:
        """``{document id: (tokens, chunks)}`` of the current versions of ``document_ids``."""
        if not document_ids:
            return {}
        with self.records.tx() as s:
            rows = s.execute(
                select(Document.key, DocumentVersion.token_count, DocumentVersion.chunk_count)
                .join(Namespace, Document.namespace_id == Namespace.id)
                .join(DocumentVersion, DocumentVersion.id == Document.current_version_id)
                .where(Namespace.name == ns, Document.key.in_(document_ids))
            ).tuples()
            return {key: (tokens, chunks) for key, tokens, chunks in rows}

    def _abstention(
        self, ns: str, question: str, hits: list[SearchHit], *, filtered: bool, timings: dict[str, float]
    ) -> tuple[tuple[str, str] | None, float | None]:
        """``((answer, reason), relevance)`` when the query should not be answered because nothing stored is
        about it, else ``(None, relevance)``; ``relevance`` is :func:`passage_relevance` (None: not measured)."""
        if not hits:
            with self.records.tx() as s:  # read only: a mistyped namespace is not created by asking in it
                ns_row = self.records.namespace_row(s, ns, create=False)
                has_documents = ns_row is not None and (
                    s.scalar(select(Document.id).where(Document.namespace_id == ns_row.id).limit(1)) is not None
                )
            if ns_row is None:
                return (
                    f"I don't know: there is no namespace {ns!r}, nothing was ever stored in it.",
                    f"namespace {ns!r} does not exist (check its name); the model was not asked",
                ), None
            if not has_documents:
                return (
                    f"I don't know: namespace {ns!r} holds no documents.",
                    f"namespace {ns!r} holds no documents; the model was not asked",
                ), None
            what = "no document matches the filter" if filtered else "the search found no passage"
            return (f"I don't know: {what} in namespace {ns!r}.", f"{what}; the model was not asked"), None
        threshold = self.abstain_threshold
        if threshold <= 0:
            return None, None
        t0 = time.perf_counter()
        relevance = self.relevance(question, hits)
        timings["relevance_ms"] = (time.perf_counter() - t0) * 1000
        if relevance >= threshold:
            return None, relevance
        return (
            f"I don't know: nothing in namespace {ns!r} is about this.",
            (
                f"no stored passage is about the question (its best sentence's similarity {relevance:.2f} < "
                f"{threshold:.2f}, PMEM_ABSTAIN_THRESHOLD); the model was not asked"
            ),
        ), relevance

    @staticmethod
    def _answer(
        base: Any,
        question: str,
        context: list[SearchHit],
        lora: Any,
        max_new_tokens: int,
        on_text: Callable[[str], None] | None = None,
        backend: Any = None,
    ) -> tuple[Any, list[int], list[SearchHit]]:
        """Generate the answer (with ``backend``, default ``base``); passages that would push the prompt past the
        model's window are left out (the least relevant first). Returns the generation, the prompt ids and the
        passages used."""
        from memory import prompts

        window = int(getattr(base.config, "max_position_embeddings", 0) or 0)
        context = list(context)
        while True:
            user = (
                prompts.context_prompt(question, [h.text for h in context])
                if context
                else prompts.parametric_prompt(question)
            )
            prompt_ids = base.chat_ids(user, system=prompts.QA_SYSTEM)
            if not window or len(prompt_ids) + max_new_tokens <= window:
                break
            if not context:
                raise ValidationError(
                    f"the question takes {len(prompt_ids):,} tokens; with max_new_tokens={max_new_tokens} that is over "
                    f"the model's window of {window:,} tokens"
                )
            context.pop()  # the least relevant passage goes first
            log.info("prompt over the model's window of %d tokens: answering from %d passage(s)", window, len(context))
        gen = (backend or base).generate([prompt_ids], max_new_tokens=max_new_tokens, adapters=lora, on_text=on_text)[0]
        return gen, prompt_ids, context

    @classmethod
    def _confidence(cls, base: Any, prompt_ids: list[int], gen: Any, lora: Any) -> float:
        """The router's confidence in ``gen``: its mean token log-probability, from the decode loop's
        ``token_logprobs`` (the same value as :meth:`_mean_logprob` up to rounding: tests/test_batching.py), or
        from a second forward pass when the generator returned none."""
        lps = getattr(gen, "token_logprobs", None)
        if gen.token_ids and lps and len(lps) == len(gen.token_ids):
            return float(sum(lps) / len(lps))
        return cls._mean_logprob(base, prompt_ids, gen.token_ids, lora)

    @staticmethod
    def _mean_logprob(base: Any, prompt_ids: list[int], answer_ids: list[int], lora: Any) -> float:
        """Mean log-probability per answer token under the adapted model (the router's confidence signal)."""
        import torch

        if not answer_ids:
            return float("-inf")
        ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=base.device)
        with torch.no_grad():
            # Only the positions that predict the answer go through the vocabulary head (a long prompt's
            # full-vocabulary logits would be prompt length x 49k floats).
            logits = base.forward(ids, adapters=lora, logits_to_keep=len(answer_ids) + 1).logits[0, :-1].float()
        target = torch.tensor(answer_ids, device=logits.device)[:, None]
        return float(torch.log_softmax(logits, -1).gather(-1, target).mean())

    # ------------------------------------------------------------ query log
    def _log(
        self,
        ns: str,
        question: str,
        mode: str,
        reason: str,
        experiment: str | None,
        arm: str | None,
        adapters: list[AdapterInfo],
        chunks: list[SearchHit],
        latency_ms: float,
        answer: str,
    ) -> int | None:
        """The query's log row id; None when the namespace does not exist (a read never creates one)."""

        def write(s: Session) -> int | None:
            ns_row = self.records.namespace_row(s, ns, create=False)
            if ns_row is None:
                return None
            row = QueryLog(
                namespace_id=ns_row.id,
                query=question,
                mode=mode,
                reason=reason,
                experiment=experiment,
                arm=arm,
                adapter_ids=[a.id for a in adapters],
                chunk_ids=[c.chunk_id for c in chunks],
                latency_ms=latency_ms,
                answer=answer,
            )
            s.add(row)
            s.flush()
            return row.id

        return self.records.retrying(write)

    def feedback(self, query_id: int, score: float, *, namespace: str | None = None) -> None:
        """See :meth:`memory.api.ParametricMemory.feedback`."""
        ns = self.records.namespace(namespace)
        check_int("query_id", query_id)
        if not isinstance(score, (int, float)) or score != score:
            raise ValidationError(f"score must be a number, got {score!r}")
        with self.records.tx() as s:
            row = s.scalar(
                select(QueryLog)
                .join(Namespace, QueryLog.namespace_id == Namespace.id)
                .where(QueryLog.id == query_id, Namespace.name == ns)
            )
            if row is None:
                raise NotFoundError(f"no query {query_id} in namespace {ns!r}")
            row.feedback = float(score)


class _AnswerPieces:
    """Passes generated text on piece by piece as the answer is returned: stripped of leading and trailing
    whitespace (trailing whitespace is held back until more text follows it), so the pieces join to
    ``QueryResult.answer``."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self.sink, self.started, self.held = sink, False, ""

    def feed(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return
            self.started = True
        text = self.held + piece
        body = text.rstrip()
        self.held = text[len(body) :]
        if body:
            self.sink(body)
