"""Tasks: ``ingest_source``, ``internalize_version``, ``refresh_sources``, and :func:`submit`, which sends them.

Every task takes a ``Job`` id and nothing else; the job row holds the payload and mirrors the state
(attempts, error, timings). The bodies below are plain functions of ``(memory, job)``; a Celery worker and
the embedded mode (no ``PMEM_BROKER_URL``: :func:`memory.jobs.run_inline`) run the very same body.

Idempotency: an internalization job is keyed by (version content hash, version id, method, hypernetwork:
the identity its adapter row will name, from ``memory.hyper.identity``), so submitting the same version
twice gives one job;
the facade keeps one adapter per (version, hypernetwork), so a redelivered or duplicated message ends
with the same single adapter.

Retries: transient faults (database connection or lock, broker, network) are retried with exponential
backoff (2, 4, 8, 16, 32 s, jittered; ``PMEM_RETRY_BASE_S`` changes the base), at most 5 times.
Validation, parse and model errors fail the job at once, with the error on the job (and, for files, on
the source).

>>> from workers.tasks import submit_ingest
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
from functools import partial
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init

from memory.config import Settings
from memory.errors import IngestError, NotFoundError, ValidationError
from memory.ingest.sources import check_ingest_root
from memory.jobs import JobStore, TransientJobError, backoff_seconds, classify, describe, execute, run_inline
from memory.refresh import changed_versions, version_id_for
from memory.refresh import refresh_sources as _refresh
from memory.types import JobInfo
from workers.app import app, celery_config

log = logging.getLogger(__name__)

TASK_NAMES = {
    "ingest": "workers.tasks.ingest_source",
    "internalize": "workers.tasks.internalize_version",
    "refresh": "workers.tasks.refresh_sources",
}
MAX_RETRIES = 5
# The error of a job whose message never reached the broker: none of its work ran, so submitting it again
# always sends it (whatever ``retry_failed`` says).
UNPUBLISHED = "could not publish to the broker"

# ---------------------------------------------------------------- one ParametricMemory per process
_process: dict[str, Any] = {"pid": None, "mem": None}


def get_memory() -> Any:
    """This process's :class:`~memory.api.ParametricMemory` (created on first use; the base model and the
    hypernetwork load lazily inside it, once, on the first internalization)."""
    if _process["mem"] is None or _process["pid"] != os.getpid():
        from memory.api import ParametricMemory

        _process["mem"] = ParametricMemory(Settings.from_env())
        _process["pid"] = os.getpid()
    return _process["mem"]


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    # A forked child must not reuse its parent's database connections.
    from memory.db import dispose_engines

    dispose_engines()
    _process.update(pid=None, mem=None)


def _internalize_fn() -> Callable[..., Any]:
    """``PMEM_WORKER_INTERNALIZER=module:function`` replaces the facade call (a custom backend, or a test
    double for crash mechanics); it is called like ``mem.internalize_version``, with ``mem`` first."""
    spec = os.environ.get("PMEM_WORKER_INTERNALIZER", "").strip()
    if not spec:
        return lambda mem, version_id, **kw: mem.internalize_version(version_id, **kw)
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- job bodies
def _ingest(mem: Any, job: JobInfo) -> tuple[dict[str, Any], str | None]:
    p = job.payload
    ns = p["namespace"]
    check_ingest_root(p["spec"], mem.settings.ingest_roots)
    results = mem.add_source(p["spec"], namespace=ns, refresh_interval_s=p.get("refresh_interval_s"))
    changed, unchanged, failed = changed_versions(mem, results, ns)
    jobs = []
    if p.get("internalize", True):
        # Unchanged documents too: if an earlier attempt added them but died before submitting, they get
        # their job now; if their job exists, submit() returns it without doing anything.
        for r in results:
            if r.status != "failed" and r.document is not None and r.document.version is not None:
                vid = version_id_for(mem, ns, r.document.id, r.document.version.number)
                jobs.append(
                    submit_internalize(
                        mem, vid, method=p.get("method", "auto"), retry_failed=r.status != "unchanged"
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
    """``PMEM_WORKER_CD_OPTIONS='{"steps": 8}'``: context-distillation options for this worker (read once;
    e.g. fewer steps on a CPU-only test machine). The base model loads here, on the first internalization."""
    raw = os.environ.get("PMEM_WORKER_CD_OPTIONS", "").strip()
    if raw and not getattr(mem, "_pmem_worker_configured", False):
        import json

        try:
            options = json.loads(raw)
        except ValueError as e:
            raise ValidationError(f"PMEM_WORKER_CD_OPTIONS is not JSON: {e}") from None
        mem.configure_internalizer("cd", **options)
        mem._pmem_worker_configured = True


def _internalize(mem: Any, job: JobInfo) -> dict[str, Any]:
    p = job.payload
    _configure(mem)
    info = _internalize_fn()(mem, p["version_id"], method=p.get("method", "auto"), force=p.get("force", False))
    return {
        "adapter_id": info.id,
        "status": info.status,
        "document": info.document_id,
        "version": info.version,
        "method": info.method,
        "hypernetwork": info.hypernetwork,
        "blob_sha256": info.blob_sha256,
        "latency_ms": info.latency_ms,
    }


def _refresh_body(mem: Any, job: JobInfo) -> dict[str, Any]:
    p = job.payload
    report = _refresh(
        mem,
        namespace=p.get("namespace"),
        force=p.get("force", False),
        roots=mem.settings.ingest_roots,
        enqueue=lambda vid: submit_internalize(mem, vid, method=p.get("method", "auto"), retry_failed=True),
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


# ---------------------------------------------------------------- Celery tasks (thin)
def _run(task: Task, job_id: int) -> dict[str, Any]:
    base = float(os.environ.get("PMEM_RETRY_BASE_S") or 2.0)
    try:
        mem = get_memory()
        job = execute(
            JobStore.for_memory(mem),
            job_id,
            partial(run_body, mem),
            celery_id=task.request.id,
            last_attempt=task.request.retries >= task.max_retries,
        )
    except NotFoundError as e:
        log.error("dropping message for job %s: %s", job_id, e)  # another database, or the job was deleted
        return {"job_id": job_id, "state": "missing"}
    except TransientJobError as e:
        raise task.retry(args=[job_id], countdown=backoff_seconds(task.request.retries, base=base), exc=e) from e
    except Exception as e:
        # The job row itself could not be read or written (database down): retry the message if that is
        # transient, since the Job table cannot record anything now.
        if classify(e) == "transient" and task.request.retries < task.max_retries:
            log.warning("job %s: cannot reach the database (%s); retrying", job_id, describe(e))
            raise task.retry(args=[job_id], countdown=backoff_seconds(task.request.retries, base=base), exc=e) from e
        raise
    return {"job_id": job.id, "state": job.state, "attempts": job.attempts}


_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "max_retries": MAX_RETRIES,
    "acks_late": True,
    "reject_on_worker_lost": True,
}


@app.task(name=TASK_NAMES["ingest"], **_TASK_OPTIONS)
def ingest_source(self: Task, job_id: int) -> dict[str, Any]:
    """Parse a source (file, directory, glob) into versions and submit their internalization."""
    return _run(self, job_id)


@app.task(name=TASK_NAMES["internalize"], **_TASK_OPTIONS)
def internalize_version(self: Task, job_id: int) -> dict[str, Any]:
    """Turn one document version into a ready adapter (idempotent by version and hypernetwork)."""
    return _run(self, job_id)


@app.task(name=TASK_NAMES["refresh"], **_TASK_OPTIONS)
def refresh_sources(self: Task, job_id: int | None = None) -> dict[str, Any]:
    """Re-read due sources. The beat calls this without a job: a job is created only when a source is due,
    so an idle schedule leaves no rows behind."""
    if job_id is None:
        from memory.refresh import due_sources

        mem = get_memory()
        if not due_sources(mem):
            return {"job_id": None, "state": "idle"}
        job, _ = JobStore.for_memory(mem).create("refresh", {})
        job_id = job.id
    return _run(self, job_id)


# ---------------------------------------------------------------- submitting
_apps: dict[tuple[str, str], Celery] = {}


def app_for(settings: Settings) -> Celery:
    """The Celery app that publishes for ``settings`` (the module app when the environment matches)."""
    conf = celery_config(settings)
    key = (conf["broker_url"], str(conf["broker_transport_options"].get("global_keyprefix", "")))
    if key == (app.conf.broker_url, str(app.conf.broker_transport_options.get("global_keyprefix", ""))):
        return app
    if key not in _apps:
        other = Celery("pmem-client")
        other.conf.update(conf)
        _apps[key] = other
    return _apps[key]


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
    store = JobStore.for_memory(mem)
    embedded = not mem.settings.broker_url
    job, created = store.create(kind, payload, namespace=namespace, idempotency_key=key)
    if not created:
        if job.state == "failed" and (retry_failed or (job.error or "").startswith(UNPUBLISHED)):
            job = store.requeue(job.id)
        elif not (embedded and job.state in ("queued", "running", "retrying")):
            return job
        # embedded: an unfinished job was left by a process that died (or runs right now: both finish it,
        # the facade keeps one adapter); run it here
    if embedded:
        return run_inline(store, job.id, partial(run_body, mem))
    try:
        return _publish(mem, store, job)
    except Exception as e:  # the job must not stay 'queued' with no message behind it
        store.fail(job.id, f"{UNPUBLISHED}: {describe(e)}")
        raise


def _publish(mem: Any, store: JobStore, job: JobInfo) -> JobInfo:
    """Send a job's message to the broker under a fresh Celery id (recorded on the job first)."""
    celery_id = uuid.uuid4().hex
    store.set_celery_id(job.id, celery_id)
    app_for(mem.settings).send_task(TASK_NAMES[job.kind], args=[job.id], task_id=celery_id)
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
        out.append(_publish(mem, store, job))
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


def submit_internalize(
    mem: Any, version_id: int, *, method: str = "auto", force: bool = False, retry_failed: bool = False
) -> JobInfo:
    """Submit the internalization of a version by id (one job per version, method and base model).

    >>> submit_internalize(mem, 7).kind  # doctest: +SKIP
    'internalize'
    """
    from sqlalchemy import select

    from memory.db import Document, DocumentVersion, Namespace, session_factory

    with session_factory(mem.engine)() as s:
        row = s.execute(
            select(DocumentVersion.content_sha256, Namespace.name)
            .join(Document, DocumentVersion.document_id == Document.id)
            .join(Namespace, Document.namespace_id == Namespace.id)
            .where(DocumentVersion.id == version_id)
        ).first()
    if row is None:
        raise NotFoundError(f"no document version with id {version_id}")
    sha, ns = row
    from memory.models import base_fingerprint

    key = internalize_key(sha, version_id, method, base_fingerprint(mem.settings.base_model, settings=mem.settings))
    if force:
        key = f"{key}:force:{uuid.uuid4().hex[:12]}"
    return submit(
        mem,
        "internalize",
        {"version_id": version_id, "method": method, "force": force},
        namespace=ns,
        key=key,
        retry_failed=retry_failed,
    )


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
    "MAX_RETRIES",
    "TASK_NAMES",
    "UNPUBLISHED",
    "app_for",
    "check_ingest_root",
    "get_memory",
    "hypernetwork_tag",
    "ingest_source",
    "internalize_key",
    "internalize_version",
    "refresh_sources",
    "run_body",
    "submit",
    "submit_ingest",
    "submit_internalize",
    "submit_refresh",
]
