"""``ParametricMemory``: the one facade that the CLI, the workers and the integrations call.

It holds one of each service (``memory/services/``) and delegates; every method keeps its signature.

>>> from memory import ParametricMemory
>>> import tempfile
>>> mem = ParametricMemory(home=tempfile.mkdtemp())
>>> mem.add("The vault code is 7342.", document_id="vault").status in {"created", "unchanged"}
True
>>> mem.get("vault").version.number >= 1
True
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from memory.config import Settings
from memory.db import get_engine, session_factory
from memory.db.migrate import ensure_schema
from memory.errors import PMemError
from memory.ingest import content_hash
from memory.router import RouterConfig
from memory.services.adapters import AdapterRegistry
from memory.services.conversations import ConversationMemory, ConversationResult
from memory.services.documents import DocumentStore
from memory.services.internalization import Internalization
from memory.services.models import ModelRuntime
from memory.services.namespaces import Namespaces, check_on_add, check_tier
from memory.services.query import MAX_K, MAX_NEW_TOKENS, MAX_QUESTION_CHARS, QueryEngine
from memory.services.records import Records, validate_document_id, validate_metadata, validate_namespace
from memory.services.skills import SkillLibrary
from memory.services.sources import SourceIngestor
from memory.storage import BlobStore
from memory.types import (
    AdapterInfo,
    AddResult,
    ChunkInfo,
    DeleteResult,
    DocumentInfo,
    JobInfo,
    NamespaceInfo,
    QueryResult,
    SearchHit,
    VersionInfo,
)

__all__ = [
    "MAX_K",
    "MAX_NEW_TOKENS",
    "MAX_QUESTION_CHARS",
    "ParametricMemory",
    "content_hash",
    "validate_document_id",
    "validate_metadata",
    "validate_namespace",
]

log = logging.getLogger(__name__)


class ParametricMemory:
    """Documents stored in model weights, with provenance, versions and classic retrieval beside them.

    Args:
        settings: a ready :class:`~memory.config.Settings`; otherwise built from ``PMEM_*`` variables and
            ``overrides`` (e.g. ``home=``, ``database_url=``, ``namespace=``).
        embedder: the embedding model of classic retrieval (default: the embedded all-MiniLM-L6-v2).
        router_config: thresholds of the ``auto`` router (default :class:`~memory.router.RouterConfig`).

    The embedded database is migrated on first use; a server database must be upgraded with
    ``pmem db upgrade`` first. The services are attributes: ``documents``, ``adapter_registry``,
    ``ingestor``, ``namespace_settings``, ``runtime``, ``internalization``, ``skills``, ``query_engine`` (see
    README, "Layout").
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: Any = None,
        router_config: RouterConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = cfg = settings.with_(**overrides) if settings else Settings.from_env(**overrides)
        url = cfg.resolved_database_url
        ensure_schema(url, auto_migrate=cfg.should_auto_migrate)
        self.engine = get_engine(url)
        self.blobs = BlobStore(cfg.resolved_blob_url)
        self.records = Records(self.engine, session_factory(self.engine), self.blobs, cfg.namespace)
        self.documents = DocumentStore(
            self.records, max_document_bytes=cfg.max_document_bytes, chunk_tokens=cfg.chunk_tokens
        )
        self.adapter_registry = AdapterRegistry(self.records, cache_size=cfg.adapter_cache_size)
        self.ingestor = SourceIngestor(self.records, self.documents)
        self.conversations = ConversationMemory(self.documents, lambda: self.runtime.base_model)
        self.namespace_settings = Namespaces(self.records, default_on_add=cfg.on_add)
        self.runtime = ModelRuntime(cfg)
        self.internalization = Internalization(self.records, self.adapter_registry, self.runtime)
        self.skills = SkillLibrary(self.records, self.adapter_registry, self.runtime)
        self.query_engine = QueryEngine(
            self.records,
            self.adapter_registry,
            self.runtime,
            self.skills,
            router_config=router_config,
            embedder=embedder,
            home=cfg.home,
            retrieval_backend=cfg.retrieval_backend,
            retrieval_ef_search=cfg.retrieval_ef_search,
            abstain_threshold=cfg.abstain_threshold,
        )

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"ParametricMemory(database={url!r}, blobs={self.blobs.url!r})"

    # ------------------------------------------------------------ documents
    def add(
        self,
        text: str | bytes,
        *,
        document_id: str | None = None,
        namespace: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        parser: dict[str, Any] | None = None,
        source: str | None = None,
        chunks: builtins.list[Any] | None = None,
        on_add: str | None = None,
    ) -> AddResult:
        """Store a document's text as a new version (deduplicated by the hash of its normalised text).

        Same content as the current version: nothing changes (``status="unchanged"``). Same content as an
        older version: that version becomes current again (``"restored"``). Otherwise a new version with
        its chunks is written (``"created"`` / ``"new_version"``).

        Then the namespace's ``on_add`` policy applies (``on_add`` overrides it for this call; see
        :meth:`configure_namespace`): with ``instant`` or ``full`` the current version is internalized as a
        job (run here in embedded mode, queued with a broker), returned as ``AddResult.job``.

        >>> mem.add("Policy v1", document_id="policy").status  # doctest: +SKIP
        'created'
        """
        result = self.documents.add(
            text,
            document_id=document_id,
            namespace=namespace,
            title=title,
            metadata=metadata,
            parser=parser,
            source=source,
            chunks=chunks,
        )
        return self._apply_on_add([result], namespace, on_add)[0]

    def get(
        self, document_id: str, *, namespace: str | None = None, with_text: bool = False, version: int | None = None
    ) -> DocumentInfo:
        """Return a document (its current version, or ``version``), optionally with its verified text."""
        return self.documents.get(document_id, namespace=namespace, with_text=with_text, version=version)

    def list(
        self, *, namespace: str | None = None, limit: int = 100, offset: int = 0, prefix: str | None = None
    ) -> builtins.list[DocumentInfo]:
        """List documents in a namespace, ordered by id."""
        return self.documents.find(namespace=namespace, limit=limit, offset=offset, prefix=prefix)

    def chunks(
        self, document_id: str, *, namespace: str | None = None, version: int | None = None
    ) -> builtins.list[ChunkInfo]:
        """The chunks of the current version (or ``version``) of a document."""
        return self.documents.chunks(document_id, namespace=namespace, version=version)

    def namespaces(self) -> builtins.list[str]:
        """Every namespace that holds something, by name."""
        return self.documents.namespaces()

    def history(self, document_id: str, *, namespace: str | None = None) -> builtins.list[VersionInfo]:
        """Every version of a document, oldest first, with the current one marked."""
        return self.documents.history(document_id, namespace=namespace)

    def diff(
        self, document_id: str, old: int, new: int | None = None, *, namespace: str | None = None, context: int = 2
    ) -> str:
        """A unified diff between two versions' texts (``new`` defaults to the current version)."""
        return self.documents.diff(document_id, old, new, namespace=namespace, context=context)

    def rollback(self, document_id: str, version: int, *, namespace: str | None = None) -> DocumentInfo:
        """Make an older (or any) version current again; its adapter, if any, becomes the ready one."""
        return self.documents.rollback(document_id, version, namespace=namespace)

    def delete(self, document_id: str, *, namespace: str | None = None) -> DeleteResult:
        """Remove a document with all its versions, chunks, adapters and (now unreferenced) blobs."""
        return self.documents.delete(document_id, namespace=namespace)

    def gc(self, *, dry_run: bool = False) -> builtins.list[str]:
        """Remove every blob that no row references (left by a crash between blob write and commit)."""
        return self.documents.gc(dry_run=dry_run)

    def add_conversation(
        self,
        messages: Any,
        *,
        session: str,
        namespace: str | None = None,
        extract: Any = None,
        index_transcript: bool | None = None,
    ) -> ConversationResult:
        """Append turns (``{"role", "content"}`` dicts, ``(role, text)`` pairs or chat message objects) to the
        transcript document ``conversations/<session>``, a new version per call; with ``extract`` (``"rules"``,
        ``"model"`` or a function of the turns) also keep each stated fact as ``facts/<subject>``, where a new
        fact about a known subject supersedes the old one as a new version (see
        :mod:`memory.services.conversations`).

        >>> turns = [("user", "My favourite colour is blue."), ("assistant", "Noted.")]
        >>> mem.add_conversation(turns, session="s1", extract="rules").facts[0].status  # doctest: +SKIP
        'created'
        """
        return self.conversations.add(
            messages, session=session, namespace=namespace, extract=extract, index_transcript=index_transcript
        )

    # ------------------------------------------------------------ sources
    def add_source(
        self,
        spec: str,
        *,
        namespace: str | None = None,
        document_id: str | None = None,
        title: str | None = None,
        refresh_interval_s: int | None = None,
        prune_missing: bool = False,
        on_add: str | None = None,
    ) -> builtins.list[AddResult]:
        """Parse a file, a directory or a glob with Unstructured and add each file as a document.

        Each file becomes the document ``document_key(path, root)`` (or ``document_id`` for a single file);
        the source (uri, kind, refresh interval, parser versions) is recorded. A bad file fails alone:
        its error is recorded on the source and returned as an ``AddResult`` with ``status="failed"``.
        With ``prune_missing`` (what the scheduled refresh uses), documents that came from this directory or
        glob but whose file is no longer there are deleted (``status="removed"``); a file that is still
        there but fails to parse keeps its document, and a source that now holds no files at all removes
        nothing (it is recorded as the source's error).

        Each added document then gets the namespace's ``on_add`` policy, as in :meth:`add`.

        >>> [r.status for r in mem.add_source("policies/")]  # doctest: +SKIP
        ['created', 'created', 'failed']
        """
        results = self.ingestor.add_source(
            spec,
            namespace=namespace,
            document_id=document_id,
            title=title,
            refresh_interval_s=refresh_interval_s,
            prune_missing=prune_missing,
        )
        return self._apply_on_add(results, namespace, on_add)

    def _apply_on_add(
        self, results: builtins.list[AddResult], namespace: str | None, on_add: str | None
    ) -> builtins.list[AddResult]:
        """Internalize the current version of each added document as the ``on_add`` policy says (the
        namespace's when ``on_add`` is None). A submission that fails leaves the document stored and says why
        in the result's ``error``."""
        policy = check_on_add(on_add) if on_add is not None else self.namespace_settings.on_add(namespace)
        if policy == "none":
            return results
        from memory.refresh import version_id_for
        from memory.submission import submit_internalize

        ns = self.records.namespace(namespace)
        out = []
        for r in results:
            doc = r.document
            if r.status in ("failed", "removed") or doc is None or doc.version is None:
                out.append(r)
                continue
            try:
                vid = version_id_for(self, ns, doc.id, doc.version.number)
                job = submit_internalize(self, vid, tier=policy, retry_failed=r.status != "unchanged")
                out.append(replace(r, job=job))
            except PMemError as e:
                log.warning("%s/%s was stored but not internalized: %s", ns, doc.id, e)
                out.append(replace(r, error=f"stored, but not internalized: {e}"))
        return out

    # ------------------------------------------------------------ namespaces
    def namespace_info(self, namespace: str | None = None) -> NamespaceInfo:
        """A namespace's document count and ``on_add`` policy (:class:`~memory.errors.NotFoundError` if missing)."""
        return self.namespace_settings.info(namespace)

    def configure_namespace(self, namespace: str | None = None, *, on_add: str | None) -> NamespaceInfo:
        """Set what adding a document does in ``namespace``: ``on_add`` = ``none`` (store only), ``instant``
        (the one-pass adapter at once) or ``full`` (both tiers, as a job); ``None``: follow ``PMEM_ON_ADD``.

        >>> mem.configure_namespace("hr", on_add="instant").on_add  # doctest: +SKIP
        'instant'
        """
        return self.namespace_settings.configure(namespace, on_add=on_add)

    def sources(self, *, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        """Registered sources with their refresh interval, last check and last error."""
        return self.ingestor.sources(namespace=namespace)

    # ------------------------------------------------------------ models and internalization
    @property
    def base_model(self) -> Any:
        """The base model (loaded once per process on first use; converted from GGUF once per PMEM_HOME)."""
        return self.runtime.base_model

    def internalizer(self, method: str = "auto") -> Any:
        """The internalizer for ``method`` (``auto``: Doc-to-LoRA when a checkpoint fits the base model, else CD)."""
        return self.runtime.internalizer(method)

    def configure_internalizer(self, method: str, **options: Any) -> Any:
        """Set options of an internalizer for later calls, e.g. ``configure_internalizer("cd", steps=24)``
        (context distillation's options are those of :func:`memory.distill.distill_document`)."""
        return self.runtime.configure_internalizer(method, **options)

    def internalize(
        self,
        document_id: str,
        *,
        namespace: str | None = None,
        version: int | None = None,
        method: str = "auto",
        force: bool = False,
        tier: str = "instant",
    ) -> AdapterInfo:
        """Turn a version (default: current) into a ready LoRA adapter, in-process; idempotent.

        ``method``: ``d2l`` (Doc-to-LoRA hypernetwork), ``cd`` (context distillation), ``auto`` (D2L when a
        checkpoint for the base model exists, else CD) or ``self-study`` (the quality tier: minutes, not
        seconds; see :mod:`memory.self_study`).

        ``tier="full"``: make the instant adapter with ``method`` now, then the self-study adapter of the same
        version (:meth:`_full_tier`). Returns the self-study adapter when it is ready, else the instant one.

        >>> mem.internalize("vault").status  # doctest: +SKIP
        'ready'
        >>> mem.internalize("vault", tier="full").tier  # doctest: +SKIP
        'full'
        """
        if check_tier(tier) == "full":
            rec = self.records
            with rec.tx() as s:
                version_id = rec.version(s, rec.document(s, rec.namespace(namespace), document_id), version).id
            return self.internalize_version(version_id, method=method, force=force, tier=tier)
        return self.internalization.internalize(
            document_id, namespace=namespace, version=version, method=method, force=force
        )

    def internalize_version(
        self,
        version_id: int,
        *,
        method: str = "auto",
        force: bool = False,
        progress: Any = None,
        tier: str = "instant",
    ) -> AdapterInfo:
        """Worker entry point: internalize a version by its database id (idempotent by version and hypernetwork).

        Two callers racing on the same version end with one adapter: the blob is content-addressed and the row
        is unique per (version, hypernetwork); the loser adopts the winner's row.

        ``tier``: ``instant`` makes the one-pass adapter; ``full`` makes it and then the second (self-study)
        tier, :meth:`_full_tier`.
        """
        check_tier(tier)
        info = self.internalization.internalize_version(version_id, method=method, force=force, progress=progress)
        if tier == "full":
            info = self._full_tier(version_id, info, force=force, progress=progress)
        return info

    def _full_tier(self, version_id: int, instant: AdapterInfo, *, force: bool, progress: Any) -> AdapterInfo:
        """The second tier of a ``full`` internalization, after the one-pass adapter ``instant`` is ready.

        Submits the self-study job of the same version (every caller of ``full`` ends here: ``internalize``,
        the ``on_add`` policy, ``internalize_all(tier="full")``, the job body, HTTP and MCP): on the
        ``internalize`` queue with a broker, run here, before returning, without one. Returns the self-study
        adapter when it is ready, else ``instant`` (the self-study job's state is in ``pmem jobs``).
        """
        if instant.tier == "full":
            return instant
        from memory.submission import submit_internalize

        job = submit_internalize(self, version_id, method="self-study", force=force, retry_failed=True)
        if job.state != "succeeded":
            return instant
        full = self.internalization.internalize_version(version_id, method="self-study")
        return full if full.status in ("ready", "superseded") else instant

    def internalize_all(
        self,
        *,
        namespace: str | None = None,
        stale: bool = False,
        document_ids: builtins.list[str] | None = None,
        method: str = "auto",
        force: bool = False,
        tier: str = "instant",
        progress: Callable[[int, int, str, JobInfo | None], None] | None = None,
    ) -> builtins.list[JobInfo]:
        """Internalize every document of a namespace (or those of ``document_ids``), one job each, in id order.

        ``stale``: only the documents whose current version has no ready adapter (never internalized, or
        changed since). Jobs run here in embedded mode and are queued with a broker; one that fails does not
        stop the others (its job says why). ``progress(done, total, document_id, job)`` is called before each
        document (``job`` None) and after it.

        >>> [j.state for j in mem.internalize_all(namespace="hr", stale=True)]  # doctest: +SKIP
        ['succeeded', 'succeeded']
        """
        from memory.submission import submit_internalize

        check_tier(tier)
        targets = self.documents.current_versions(namespace=namespace, stale=stale, document_ids=document_ids)
        jobs: builtins.list[JobInfo] = []
        for doc_id, version_id in targets:
            if progress is not None:
                progress(len(jobs), len(targets), doc_id, None)
            jobs.append(submit_internalize(self, version_id, method=method, force=force, retry_failed=True, tier=tier))
            if progress is not None:
                progress(len(jobs), len(targets), doc_id, jobs[-1])
        return jobs

    # ------------------------------------------------------------ adapters and skills
    def adapters(
        self, *, namespace: str | None = None, document_id: str | None = None, status: str | None = None
    ) -> builtins.list[AdapterInfo]:
        """List adapters with their provenance, newest first."""
        return self.adapter_registry.find(namespace=namespace, document_id=document_id, status=status)

    def load_adapter(self, info: AdapterInfo) -> Any:
        """Decode a stored adapter (hash-verified, LRU-cached)."""
        return self.adapter_registry.load(info)

    def specialize(
        self, description: str, *, namespace: str | None = None, checkpoint: str | None = None
    ) -> AdapterInfo:
        """Turn a plain-language task description into a stored skill adapter (Text-to-LoRA, one forward pass).

        The same description in the same namespace gives the same adapter row (idempotent).

        >>> skill = mem.specialize("Answer with the number only.")  # doctest: +SKIP
        >>> mem.query("What is the vault code?", skill=skill.id).answer  # doctest: +SKIP
        """
        return self.skills.specialize(description, namespace=namespace, checkpoint=checkpoint)

    def skill(self, adapter_id: int, *, namespace: str | None = None) -> AdapterInfo:
        """A skill adapter of this namespace by id."""
        return self.skills.get(adapter_id, namespace=namespace)

    # ------------------------------------------------------------ query
    def query(
        self,
        question: str,
        *,
        namespace: str | None = None,
        mode: str = "auto",
        k: int = 4,
        document_ids: builtins.list[str] | None = None,
        max_new_tokens: int = 64,
        log: bool = True,
        experiment: str | None = None,
        arm: str | None = None,
        skill: int | None = None,
        filter: dict[str, Any] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> QueryResult:
        """Answer a question from memory: ``parametric`` (adapters), ``retrieval``, ``hybrid`` or ``auto``.

        Only the adapters of the documents relevant to the question are applied (or of ``document_ids``).
        ``filter`` (the search filter language, :mod:`memory.retrieval.filters`) limits both the passages and
        the adapters to the documents it matches.
        ``skill`` (a skill adapter id from :meth:`specialize`) is applied in the same forward pass: knowledge
        adapters and a skill adapter compose by rank concatenation. The result carries the mode and the reason.
        ``on_token`` is called with each piece of the answer as it is generated (the pieces join to ``answer``;
        see :meth:`memory.services.query.QueryEngine.query` for ``auto``).

        >>> r = mem.query("What is the vault code?")  # doctest: +SKIP
        >>> r.answer, r.mode  # doctest: +SKIP
        ('7342', 'parametric')
        """
        return self.query_engine.query(
            question,
            namespace=namespace,
            mode=mode,
            k=k,
            document_ids=document_ids,
            max_new_tokens=max_new_tokens,
            log=log,
            experiment=experiment,
            arm=arm,
            skill=skill,
            filter=filter,
            on_token=on_token,
        )

    def search(
        self,
        query: str,
        *,
        k: int = 4,
        namespace: str | None = None,
        filter: dict[str, Any] | None = None,  # public keyword
        min_score: float | None = None,
    ) -> builtins.list[SearchHit]:
        """Classic vector search over the chunks of current versions (metadata filters on document metadata).

        ``min_score`` (a cosine similarity, -1 to 1) leaves out the hits that score lower, so fewer than ``k``
        may come back.

        >>> [h.document_id for h in mem.search("vault code", k=1)]  # doctest: +SKIP
        ['vault']
        """
        return self.query_engine.search(query, k=k, namespace=namespace, filter=filter, min_score=min_score)

    def document_ids_matching(
        self, filter: dict[str, Any] | None, *, namespace: str | None = None
    ) -> builtins.list[str]:
        """Ids of the documents a search ``filter`` matches (metadata, ``document_id``, current ``version``).

        Selected by query, a page at a time, on any namespace size; a malformed filter raises
        :class:`~memory.errors.ValidationError`.

        >>> mem.document_ids_matching({"document_id": {"$ne": "keep"}})  # doctest: +SKIP
        ['other']
        """
        return self.query_engine.document_ids_matching(filter, namespace=namespace)

    @property
    def embedder(self) -> Any:
        """The embedding model of classic retrieval (``memory.retrieval.Embedder``); settable."""
        return self.query_engine.embedder

    @embedder.setter
    def embedder(self, value: Any) -> None:
        self.query_engine.embedder = value

    @property
    def chunk_index(self) -> Any:
        """The classic-retrieval index over current chunks (embedding model loaded on first use)."""
        return self.query_engine.chunk_index

    def feedback(self, query_id: int, score: float, *, namespace: str | None = None) -> None:
        """Attach a user score to a logged query (for A/B reports)."""
        self.query_engine.feedback(query_id, score, namespace=namespace)

    def experiment(self, name: str, *, arms: Any, namespace: str | None = None) -> Any:
        """An online A/B experiment: each query key is assigned to an arm by a stable hash and logged.

        >>> arms = {"adapter": {"mode": "parametric"}, "rag": {"mode": "retrieval"}}
        >>> exp = mem.experiment("policy-qa", arms=arms)  # doctest: +SKIP
        >>> r = exp.query("How many days of leave?", user_key="user-42")  # doctest: +SKIP
        """
        from memory.evaluation.experiments import Experiment

        return Experiment(self, name, arms, namespace)
