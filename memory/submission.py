"""What a job does, and how it is submitted: the bodies of ``ingest``, ``internalize`` and ``refresh`` jobs,
:func:`submit` and its wrappers, and the :class:`Broker` interface that sends job messages.

The bodies are plain functions of ``(memory, job)``. Without ``PMEM_BROKER_URL`` (embedded mode),
:func:`submit` runs the body here (:func:`memory.jobs.run_inline`). With it, :func:`submit` creates the job
and hands its id to the installed :class:`Broker`; a worker then runs the very same body. The core defines
the broker and never imports one: ``workers/`` implements it with Celery and registers it under the
``pmem.brokers`` entry points (``pip install 'parametric-memory[workers]'``).

Idempotency: an internalization job is keyed by (version content hash, version id, method, hypernetwork:
the identity its adapter row will name, from ``memory.hyper.identity``), so submitting the same version
twice gives one job; the facade keeps one adapter per (version, hypernetwork), so a redelivered or
duplicated message ends with the same single adapter.

>>> from memory.submission import submit_ingest
>>> job = submit_ingest(mem, "policies/", namespace="hr", refresh_interval_s=3600)  # doctest: +SKIP
>>> job.kind, job.state  # doctest: +SKIP
('ingest', 'queued')
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from collections.abc import Callable
from functools import cache, partial
from typing import Any, Protocol

from memory.config import Settings
from memory.errors import ConfigError, IngestError, NotFoundError, ValidationError
from memory.ingest.sources import check_ingest_root
from memory.jobs import JobStore, describe, run_inline
from memory.refresh import changed_versions, version_id_for
from memory.refresh import refresh_sources as _refresh
from memory.types import JobInfo

log = logging.getLogger(__name__)

# The error of a job whose message never reached the broker: none of its work ran, so submitting it again
# always sends it (whatever ``retry_failed`` says).
UNPUBLISHED = "could not publish to the broker"
BROKERS = "pmem.brokers"  # entry-point group: ``name = "package.module:Class"``, built with no arguments


# ---------------------------------------------------------------- the broker
class Broker(Protocol):
    """Sends job messages for :func:`submit` when ``PMEM_BROKER_URL`` is set.

    Implemented outside the core (``workers.tasks.CeleryBroker``) and found through the ``pmem.brokers``
    entry points. A message carries only the job id; the worker re-reads the job row.
    """

    def publish(self, settings: Settings, kind: str, job_id: int, task_id: str) -> None:
        """Send job ``job_id`` (of ``kind``) to the broker of ``settings`` under the message id ``task_id``;
        raise if it could not be sent."""

    def check(self, settings: Settings) -> None:
        """Raise if the broker of ``settings`` cannot be reached now (the server's ``/readyz``)."""


@cache
def broker() -> Broker:
    """The installed :class:`Broker` (loaded once per process).

    Raises :class:`~memory.errors.ConfigError` when no implementation is installed (or several are, or
    the one installed cannot be imported): a broker URL with nothing to publish to it is a setup mistake.
    """
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=BROKERS), key=lambda e: e.name)
    if not found:
        raise ConfigError(
            f"PMEM_BROKER_URL is set but no broker is installed (no {BROKERS!r} entry point): install the "
            "workers extra, `pip install 'parametric-memory[workers]'` (in a checkout, `pip install -e .` "
            "again), or unset PMEM_BROKER_URL to run jobs in this process"
        )
    if len(found) > 1:
        names = ", ".join(f"{e.name} ({e.value})" for e in found)
        raise ConfigError(f"several brokers are installed ({names}); uninstall all but one")
    try:
        return found[0].load()()
    except ImportError as e:  # e.g. celery missing without the [workers] extra
        raise ConfigError(
            f"the broker {found[0].value} cannot be imported ({e}): install the workers extra, "
            "`pip install 'parametric-memory[workers]'`, or unset PMEM_BROKER_URL"
        ) from e


# ---------------------------------------------------------------- job bodies
def _internalize_fn() -> Callable[..., Any]:
    """``PMEM_WORKER_INTERNALIZER=module:function`` replaces the facade call (a custom backend, or a test
    double for crash mechanics); it is called like ``mem.internalize_version``, with ``mem`` first."""
    spec = os.environ.get("PMEM_WORKER_INTERNALIZER", "").strip()
    if not spec:
        return lambda mem, version_id, **kw: mem.internalize_version(version_id, **kw)
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _ingest(mem: Any, job: JobInfo) -> tuple[dict[str, Any], str | None]:
    p = job.payload
    ns = p["namespace"]
    check_ingest_root(p["spec"], mem.settings.ingest_roots)
    results = mem.add_source(p["spec"], namespace=ns, refresh_interval_s=p.get("refresh_interval_s"), on_add="none")
    changed, unchanged, failed = changed_versions(mem, results, ns)
    jobs = []
    wanted = p.get("internalize", True)  # None: as the namespace's on_add policy says
    policy = mem.namespace_settings.on_add(ns) if wanted is None else ("instant" if wanted else "none")
    if policy != "none":
        # Unchanged documents too: if an earlier attempt added them but died before submitting, they get
        # their job now; if their job exists, submit() returns it without doing anything.
        for r in results:
            if r.status != "failed" and r.document is not None and r.document.version is not None:
                vid = version_id_for(mem, ns, r.document.id, r.document.version.number)
                jobs.append(
                    submit_internalize(
                        mem, vid, method=p.get("method", "auto"), retry_failed=r.status != "unchanged", tier=policy
                    ).id
                )
    result = {
        "spec": p["spec"],
        "namespace": ns,
        "files": len(results),
        "changed": changed,
        "unchanged": unchanged,
        "failed": failed,
        "internalize_jobs": jobs,
    }
    error = "; ".join(f["error"] for f in failed) or None
    if failed and not changed and not unchanged:
        raise IngestError(f"every file of {p['spec']!r} failed: {error}")
    return result, error


def _configure(mem: Any) -> None:
    """``PMEM_WORKER_CD_OPTIONS='{"steps": 8}'`` and ``PMEM_WORKER_SELF_STUDY_OPTIONS='{"min_steps": 8}'``:
    context-distillation and self-study options for this worker (read once; e.g. fewer steps on a CPU-only
    test machine). The base model loads here, on the first internalization."""
    if getattr(mem, "_pmem_worker_configured", False):
        return
    from memory.config import json_options

    for method, var in (("cd", "PMEM_WORKER_CD_OPTIONS"), ("self-study", "PMEM_WORKER_SELF_STUDY_OPTIONS")):
        raw = os.environ.get(var, "").strip()
        if raw:
            mem.configure_internalizer(method, **json_options(var, raw))
    mem._pmem_worker_configured = True


def _internalize(mem: Any, job: JobInfo) -> dict[str, Any]:
    p = job.payload
    _configure(mem)
    tier = {"tier": p["tier"]} if p.get("tier", "instant") != "instant" else {}  # (custom functions: no tier)
    info = _internalize_fn()(mem, p["version_id"], method=p.get("method", "auto"), force=p.get("force", False), **tier)
    return {
        "adapter_id": info.id,
        "status": info.status,
        "document": info.document_id,
        "version": info.version,
        "method": info.method,
        "hypernetwork": info.hypernetwork,
        "blob_sha256": info.blob_sha256,
        "latency_ms": info.latency_ms,
        "tier": info.tier,
    }


def _version_row(s: Any, version_id: int, *columns: Any) -> Any:
    """``columns`` (of the version, its document or its namespace) of document version ``version_id``."""
    from sqlalchemy import select

    from memory.db import Document, DocumentVersion, Namespace

    row = s.execute(
        select(*columns)
        .select_from(DocumentVersion)
        .join(Document, DocumentVersion.document_id == Document.id)
        .join(Namespace, Document.namespace_id == Namespace.id)
        .where(DocumentVersion.id == version_id)
    ).first()
    if row is None:
        raise NotFoundError(f"no document version with id {version_id}")
    return row


def refresh_tier(mem: Any, version_id: int) -> str | None:
    """How a version that a refresh found changed is internalized: as its namespace's ``on_add`` policy says;
    under ``none``, still ``instant`` when an older version of the document has an adapter (a refresh keeps
    what was internalized current, and internalizes nothing new); None: not at all."""
    from sqlalchemy import select

    from memory.db import Adapter, DocumentVersion, Namespace, session_factory

    with session_factory(mem.engine)() as s:
        row = _version_row(s, version_id, Namespace.on_add, DocumentVersion.document_id)
        policy = row.on_add or mem.settings.on_add
        if policy != "none":
            return str(policy)
        had = s.scalar(
            select(Adapter.id)
            .join(DocumentVersion, Adapter.version_id == DocumentVersion.id)
            .where(DocumentVersion.document_id == row.document_id, DocumentVersion.id != version_id)
            .limit(1)
        )
    return "instant" if had is not None else None


def _refresh_body(mem: Any, job: JobInfo) -> dict[str, Any]:
    p = job.payload

    def enqueue(vid: int) -> JobInfo | None:
        tier = refresh_tier(mem, vid)
        if tier is None:
            return None
        return submit_internalize(mem, vid, method=p.get("method", "auto"), retry_failed=True, tier=tier)

    report = _refresh(
        mem,
        namespace=p.get("namespace"),
        force=p.get("force", False),
        roots=mem.settings.ingest_roots,
        enqueue=enqueue,
    )
    return report.to_dict()


BODIES: dict[str, Callable[[Any, JobInfo], Any]] = {
    "ingest": _ingest,
    "internalize": _internalize,
    "refresh": _refresh_body,
}


def run_body(mem: Any, job: JobInfo) -> Any:
    """The body of ``job`` (dispatched on its kind)."""
    return BODIES[job.kind](mem, job)


# ---------------------------------------------------------------- submitting
def submit(
    mem: Any,
    kind: str,
    payload: dict[str, Any],
    *,
    namespace: str | None = None,
    key: str | None = None,
    retry_failed: bool = False,
) -> JobInfo:
    """Create the job (or find it by ``key``) and send it to the broker, or run it here in embedded mode.

    An existing job with the same key is returned as it is (queued, running or done), unless it failed
    and ``retry_failed`` is set, or it failed only because its message could not be published (a broker
    blip): then it is queued again and sent. In embedded mode an unfinished job with the
    same key (left by a process that died) is run here.

    >>> submit(mem, "refresh", {"force": True}).state  # doctest: +SKIP
    'succeeded'
    """
    embedded = not mem.settings.broker_url
    to = None if embedded else broker()  # no broker installed: fail before a job row exists
    store = JobStore.for_memory(mem)
    job, created = store.create(kind, payload, namespace=namespace, idempotency_key=key)
    if not created:
        if job.state == "failed" and (retry_failed or (job.error or "").startswith(UNPUBLISHED)):
            job = store.requeue(job.id)
        elif not (embedded and job.state in ("queued", "running", "retrying")):
            return job
        # embedded: an unfinished job was left by a process that died (or runs right now: both finish it,
        # the facade keeps one adapter); run it here
    if to is None:
        return run_inline(store, job.id, partial(run_body, mem))
    try:
        return _publish(mem, store, job, to)
    except Exception as e:  # the job must not stay 'queued' with no message behind it
        store.fail(job.id, f"{UNPUBLISHED}: {describe(e)}")
        raise


def _publish(mem: Any, store: JobStore, job: JobInfo, to: Broker) -> JobInfo:
    """Send a job's message to the broker under a fresh message id (recorded on the job first)."""
    task_id = uuid.uuid4().hex
    store.set_celery_id(job.id, task_id)
    to.publish(mem.settings, job.kind, job.id, task_id)
    return store.get(job.id)


def resubmit_stale(mem: Any, older_than_s: float) -> list[JobInfo]:
    """Send the jobs left unfinished for more than ``older_than_s`` seconds to the broker again.

    ``queued`` ones, and ``retrying``/``running`` ones whose last attempt began that long ago (see
    :meth:`memory.jobs.JobStore.stale`).

    For messages the broker lost. Jobs are idempotent (a worker skips a job that already succeeded, and
    the facade keeps one adapter per version and hypernetwork), so a job whose first message does turn
    up after all is harmless. Embedded mode has no broker: there the jobs are run here, as ``submit`` does.

    >>> [j.id for j in resubmit_stale(mem, 3600)]  # doctest: +SKIP
    [12]
    """
    store = JobStore.for_memory(mem)
    out = []
    for job in store.stale(older_than_s):
        if not mem.settings.broker_url:
            out.append(run_inline(store, job.id, partial(run_body, mem)))
            continue
        out.append(_publish(mem, store, job, broker()))
        log.info(
            "re-sent stale job %s (%s, %s since %s)", job.id, job.kind, job.state, job.started_at or job.created_at
        )
    return out


def hypernetwork_tag(method: str, base_fingerprint: str) -> str:
    """What will learn the version, without loading any model: the short form of the identity that the
    adapter row will name (:func:`memory.internalizers.planned_identity`): the D2L checkpoint's when
    ``auto``/``d2l`` has one trained for this base model, else context distillation's for it.

    A new checkpoint therefore gives every version a new job (and the facade a new adapter row), while
    re-submitting under the same checkpoint is a no-op.
    """
    from memory.internalizers import planned_identity

    return planned_identity(method, base_fingerprint).tag


def internalize_key(content_sha256: str, version_id: int, method: str, base_fingerprint: str) -> str:
    """The idempotency key of an internalization: what is learnt (the version) and what learns it.

    >>> internalize_key("ab" * 32, 7, "cd", "smollm2-135m-instruct@6c31d45195a667e1")[:24]
    'internalize:abababababab'
    """
    return f"internalize:{content_sha256}:{version_id}:{method}:{hypernetwork_tag(method, base_fingerprint)}"


def version_job_key(
    mem: Any, content_sha256: str, version_id: int, method: str, *, force: bool = False, tier: str = "instant"
) -> str:
    """The job key of an internalization submitted through ``mem`` (the CLI, the workers and the server alike):
    :func:`internalize_key` under ``mem``'s base-model fingerprint, and the tier unless ``instant`` (a ``full``
    job is another job); ``force`` makes it unique (a new job)."""
    from memory.models import base_fingerprint

    key = internalize_key(
        content_sha256, version_id, method, base_fingerprint(mem.settings.base_model, settings=mem.settings)
    )
    if tier != "instant":
        key = f"{key}:{tier}"
    return f"{key}:force:{uuid.uuid4().hex[:12]}" if force else key


def submit_internalize(
    mem: Any,
    version_id: int,
    *,
    method: str = "auto",
    force: bool = False,
    retry_failed: bool = False,
    tier: str = "instant",
) -> JobInfo:
    """Submit the internalization of a version by id (one job per version, method, base model and tier).

    ``tier``: ``instant`` (the one-pass adapter) or ``full`` (both tiers; see
    :meth:`memory.api.ParametricMemory.internalize_version`).

    ``tier="full"``: once the adapter of ``method`` is ready, the job submits the self-study job of the same
    version (the quality tier; see :meth:`memory.api.ParametricMemory.internalize`).

    >>> submit_internalize(mem, 7).kind  # doctest: +SKIP
    'internalize'
    """
    from memory.db import Document, DocumentVersion, Namespace, session_factory
    from memory.services.namespaces import check_tier

    check_tier(tier)
    with session_factory(mem.engine)() as s:
        sha, ns, doc_key = _version_row(s, version_id, DocumentVersion.content_sha256, Namespace.name, Document.key)
    payload = {"version_id": version_id, "method": method, "force": force, "document": doc_key}
    if tier != "instant":
        payload["tier"] = tier
    key = version_job_key(mem, sha, version_id, method, force=force, tier=tier)
    return submit(mem, "internalize", payload, namespace=ns, key=key, retry_failed=retry_failed)


def submit_ingest(
    mem: Any,
    spec: str,
    *,
    namespace: str | None = None,
    refresh_interval_s: int | None = None,
    method: str = "auto",
    internalize: bool = True,
) -> JobInfo:
    """Submit the ingestion of a file, directory or glob (its path made absolute: workers run elsewhere)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValidationError("a source is a file, a directory or a glob, got an empty string")
    from memory.api import validate_namespace

    ns = validate_namespace(namespace if namespace is not None else mem.settings.namespace)
    spec = os.path.abspath(os.path.expanduser(spec))
    return submit(
        mem,
        "ingest",
        {
            "spec": spec,
            "namespace": ns,
            "refresh_interval_s": refresh_interval_s,
            "method": method,
            "internalize": internalize,
        },
        namespace=ns,
    )


def submit_refresh(mem: Any, *, namespace: str | None = None, force: bool = False, method: str = "auto") -> JobInfo:
    """Submit a one-shot refresh of the due sources (every source with an interval if ``force``)."""
    return submit(mem, "refresh", {"namespace": namespace, "force": force, "method": method}, namespace=namespace)


__all__ = [
    "BODIES",
    "BROKERS",
    "UNPUBLISHED",
    "Broker",
    "broker",
    "hypernetwork_tag",
    "internalize_key",
    "refresh_tier",
    "resubmit_stale",
    "run_body",
    "submit",
    "submit_ingest",
    "submit_internalize",
    "submit_refresh",
    "version_job_key",
]
