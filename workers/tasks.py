"""Tasks: ``ingest_source``, ``internalize_version``, ``refresh_sources``, and :class:`CeleryBroker`, which sends them.

Every task takes a ``Job`` id and nothing else; the job row holds the payload and mirrors the state
(attempts, error, timings). The bodies are plain functions of ``(memory, job)`` in the core
(:mod:`memory.submission`); a Celery worker and the embedded mode (no ``PMEM_BROKER_URL``:
:func:`memory.jobs.run_inline`) run the very same body. :func:`memory.submission.submit` creates a job and
publishes it through :class:`CeleryBroker`, registered under the ``pmem.brokers`` entry points; the
submitting functions are re-exported here.

Idempotency (one job per version and hypernetwork, one adapter however often a message is delivered):
see :mod:`memory.submission`.

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

import logging
import os
from functools import partial
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init

from memory.config import Settings
from memory.errors import NotFoundError
from memory.ingest.sources import check_ingest_root
from memory.jobs import JobStore, TransientJobError, backoff_seconds, classify, describe, execute
from memory.submission import (
    BODIES,
    UNPUBLISHED,
    hypernetwork_tag,
    internalize_key,
    resubmit_stale,
    run_body,
    submit,
    submit_ingest,
    submit_internalize,
    submit_refresh,
)
from workers.app import app, celery_config

log = logging.getLogger(__name__)

TASK_NAMES = {
    "ingest": "workers.tasks.ingest_source",
    "internalize": "workers.tasks.internalize_version",
    "refresh": "workers.tasks.refresh_sources",
}
MAX_RETRIES = 5

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


class CeleryBroker:
    """The core's :class:`memory.submission.Broker` with Celery (the ``pmem.brokers`` entry point ``celery``)."""

    def publish(self, settings: Settings, kind: str, job_id: int, task_id: str) -> None:
        app_for(settings).send_task(TASK_NAMES[kind], args=[job_id], task_id=task_id)

    def check(self, settings: Settings) -> None:
        with app_for(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)


__all__ = [
    "BODIES",
    "MAX_RETRIES",
    "TASK_NAMES",
    "UNPUBLISHED",
    "CeleryBroker",
    "app_for",
    "check_ingest_root",
    "get_memory",
    "hypernetwork_tag",
    "ingest_source",
    "internalize_key",
    "internalize_version",
    "refresh_sources",
    "resubmit_stale",
    "run_body",
    "submit",
    "submit_ingest",
    "submit_internalize",
    "submit_refresh",
]
