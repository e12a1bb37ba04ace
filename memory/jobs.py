"""Background jobs: one ``Job`` row per unit of work, whether a Celery worker or this process runs it.

A job is created once per idempotency key (``internalize:<version sha>:<version id>:<method>``), then moves
through ``queued -> running -> succeeded | failed``, with ``retrying`` between attempts that hit a transient
fault. Every transition re-reads the row and writes it back under the row's optimistic version counter,
so two processes that race on one job never both think they won a transition from the same state.

Redelivery is expected: a worker killed mid-job leaves the row ``running``; the next delivery starts it
again (``attempts`` counts both). A job that already ``succeeded`` is not run again.

>>> from memory.jobs import JobStore
>>> store = JobStore.for_url("sqlite:////tmp/pmem-jobs-doc/pmem.db")  # doctest: +SKIP
>>> key = "internalize:abc:3:auto"
>>> job, created = store.create("internalize", {"version_id": 3}, idempotency_key=key)  # doctest: +SKIP
>>> run_inline(store, job.id, lambda job: {"adapter_id": 1}).state  # doctest: +SKIP
'succeeded'
"""

from __future__ import annotations

import builtins
import logging
import random
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from memory.config import redact
from memory.db import Job, JobState, Namespace, get_engine, session_factory
from memory.db.migrate import ensure_schema
from memory.db.models import as_utc
from memory.errors import ConflictError, NotFoundError, ValidationError
from memory.services.records import check_int
from memory.types import JobInfo

log = logging.getLogger(__name__)

JOB_KINDS = ("ingest", "internalize", "refresh")
_TRANSITION_RETRIES = 8
MAX_ERROR_CHARS = 8000

Fault = Literal["transient", "permanent"]


class TransientJobError(Exception):
    """Raised by :func:`execute` when an attempt hit a transient fault and the job should be retried."""

    def __init__(self, job_id: int, cause: BaseException) -> None:
        super().__init__(f"job {job_id}: transient fault: {describe(cause)}")
        self.job_id = job_id
        self.cause = cause


def _now() -> datetime:
    return datetime.now(UTC)


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (the form stored in ``Job.error``)."""
    text = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classify(exc: BaseException) -> Fault:
    """``"transient"`` for faults worth retrying (database connection or lock, broker, network), else ``"permanent"``.

    Validation, parse and model errors are permanent: running them again gives the same error.

    >>> classify(ConnectionResetError()), classify(ValidationError("empty file"))
    ('transient', 'permanent')
    """
    if isinstance(
        exc,
        (
            sa_exc.OperationalError,
            sa_exc.DisconnectionError,
            sa_exc.TimeoutError,
            StaleDataError,
            ConflictError,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return "transient"
    # Broker and Redis client errors, without importing either library here.
    for cls in type(exc).__mro__:
        mod = cls.__module__ or ""
        if mod.startswith(("kombu", "redis", "amqp")) and cls.__name__ in {
            "OperationalError",
            "ConnectionError",
            "TimeoutError",
            "BusyLoadingError",
            "ChannelError",
        }:
            return "transient"
    return "permanent"


def backoff_seconds(retries: int, *, base: float = 2.0, cap: float = 300.0, jitter: bool = True) -> float:
    """Exponential backoff: ``base * 2**retries`` capped at ``cap``, with full jitter on the upper half.

    >>> backoff_seconds(0, jitter=False), backoff_seconds(3, jitter=False), backoff_seconds(20, jitter=False)
    (2.0, 16.0, 300.0)
    """
    delay = min(cap, base * (2 ** max(0, retries)))
    return delay / 2 + random.uniform(0, delay / 2) if jitter else delay


def _info(row: Job) -> JobInfo:
    return JobInfo(
        id=row.id,
        kind=row.kind,
        state=row.state.value,
        attempts=row.attempts,
        celery_id=row.celery_id,
        payload=dict(row.payload or {}),
        result=dict(row.result) if row.result is not None else None,
        error=row.error,
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
    )


class JobStore:
    """The ``Job`` table: create jobs idempotently, move them through their states, list them.

    Args:
        sessions: a session factory bound to the memory's database (``JobStore.for_memory(mem)``).
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    @classmethod
    def for_memory(cls, mem: Any) -> JobStore:
        """The job store of a :class:`~memory.api.ParametricMemory` (same database)."""
        return cls(session_factory(mem.engine))

    @classmethod
    def for_url(cls, url: str, *, auto_migrate: bool | None = None) -> JobStore:
        migrate = url.startswith("sqlite") if auto_migrate is None else auto_migrate
        ensure_schema(url, auto_migrate=migrate)
        return cls(session_factory(get_engine(url)))

    # ------------------------------------------------------------ plumbing
    def _update(self, job_id: int, change: Callable[[Job], bool]) -> JobInfo:
        """Re-read the row, apply ``change`` (False: leave it) and commit under the optimistic counter."""
        for attempt in range(_TRANSITION_RETRIES):
            session = self._sessions()
            try:
                row = session.get(Job, job_id)
                if row is None:
                    raise NotFoundError(f"no job {job_id}")
                if change(row):
                    session.flush()
                session.commit()
                return _info(row)
            except (StaleDataError, sa_exc.OperationalError) as e:
                session.rollback()
                if isinstance(e, sa_exc.OperationalError) and "lock" not in str(e).lower():
                    raise
                log.debug("job %s: concurrent update, re-reading (%s)", job_id, e)
                time.sleep(0.01 * (attempt + 1))
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()
        raise ConflictError(f"job {job_id}: gave up after {_TRANSITION_RETRIES} concurrent updates")

    # ------------------------------------------------------------ create / read
    def create(
        self, kind: str, payload: dict[str, Any], *, namespace: str | None = None, idempotency_key: str | None = None
    ) -> tuple[JobInfo, bool]:
        """Insert a ``queued`` job, or return the existing job with this ``idempotency_key``.

        Returns ``(job, created)``.

        >>> job, created = store.create("ingest", {"spec": "docs/"}, namespace="hr")  # doctest: +SKIP
        """
        if kind not in JOB_KINDS:
            raise ValidationError(f"unknown job kind {kind!r}; known: {', '.join(JOB_KINDS)}")
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
            raise ValidationError("an idempotency key has 1-200 characters")
        for _ in range(_TRANSITION_RETRIES):
            if idempotency_key is not None:
                existing = self.find(idempotency_key)
                if existing is not None:
                    return existing, False
            session = self._sessions()
            try:
                ns_id = None
                if namespace is not None:
                    ns = session.scalar(select(Namespace).where(Namespace.name == namespace))
                    if ns is None:
                        ns = Namespace(name=namespace)
                        session.add(ns)
                        session.flush()
                    ns_id = ns.id
                row = Job(
                    kind=kind,
                    payload=payload,
                    namespace_id=ns_id,
                    idempotency_key=idempotency_key,
                    state=JobState.queued,
                    attempts=0,
                )
                session.add(row)
                session.commit()
                return _info(row), True
            except sa_exc.IntegrityError:
                session.rollback()  # another process created the same key (or namespace) first: read theirs
            finally:
                session.close()
        raise ConflictError(f"could not create job {idempotency_key!r}: concurrent inserts kept winning")

    def get(self, job_id: int) -> JobInfo:
        with self._sessions() as s:
            row = s.get(Job, job_id)
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            return _info(row)

    def find(self, idempotency_key: str) -> JobInfo | None:
        with self._sessions() as s:
            row = s.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
            return _info(row) if row is not None else None

    def list(
        self,
        *,
        kind: str | None = None,
        state: str | None = None,
        namespace: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[JobInfo]:
        """Jobs, newest first, optionally filtered by kind, state and namespace.

        >>> [j.state for j in store.list(kind="internalize", limit=3)]  # doctest: +SKIP
        ['succeeded', 'running', 'queued']
        """
        check_int("limit", limit, low=0)
        check_int("offset", offset, low=0)
        q = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
        if kind is not None:
            if kind not in JOB_KINDS:
                raise ValidationError(f"unknown job kind {kind!r}; known: {', '.join(JOB_KINDS)}")
            q = q.where(Job.kind == kind)
        if state is not None:
            try:
                q = q.where(Job.state == JobState(state))
            except ValueError:
                raise ValidationError(
                    f"unknown job state {state!r}; known: {', '.join(s.value for s in JobState)}"
                ) from None
        if namespace is not None:
            q = q.join(Namespace, Job.namespace_id == Namespace.id).where(Namespace.name == namespace)
        with self._sessions() as s:
            return [_info(r) for r in s.scalars(q)]

    def stale(self, older_than_s: float, *, now: datetime | None = None) -> builtins.list[JobInfo]:
        """Unfinished jobs untouched for more than ``older_than_s`` seconds, oldest first.

        ``queued`` since creation, or ``retrying``/``running`` since their last attempt began: a job
        that old has most likely lost its broker message (a broker restarted without persistence, a
        purged queue, a retry's countdown held by a worker that died): no worker will ever pick it up
        unless it is sent again. Choose ``older_than_s`` above the longest attempt plus the largest retry
        backoff; re-sending a job that is in fact still running is harmless (jobs are idempotent), only
        wasted work.

        >>> [j.id for j in store.stale(3600)]  # doctest: +SKIP
        [12]
        """
        if older_than_s < 0:
            raise ValidationError("older_than_s must be >= 0")
        cutoff = (now or _now()) - timedelta(seconds=older_than_s)
        q = (
            select(Job)
            .where(
                or_(
                    and_(Job.state == JobState.queued, Job.created_at <= cutoff),
                    and_(
                        Job.state.in_([JobState.retrying, JobState.running]),
                        func.coalesce(Job.started_at, Job.created_at) <= cutoff,
                    ),
                )
            )
            .order_by(Job.id)
        )
        with self._sessions() as s:
            return [_info(r) for r in s.scalars(q)]

    # ------------------------------------------------------------ transitions
    def set_celery_id(self, job_id: int, celery_id: str) -> JobInfo:
        def change(row: Job) -> bool:
            row.celery_id = celery_id
            return True

        return self._update(job_id, change)

    def start(self, job_id: int, *, celery_id: str | None = None) -> JobInfo:
        """Begin an attempt: ``running``, ``attempts + 1``. A ``succeeded`` job is returned unchanged.

        A ``running`` job is started again: its previous worker died (redelivery after a crash).
        """

        def change(row: Job) -> bool:
            if row.state == JobState.succeeded:
                return False
            if row.state == JobState.running:
                log.warning(
                    "job %s was still running (attempt %s): redelivered after a lost worker", row.id, row.attempts
                )
            row.state = JobState.running
            row.attempts = (row.attempts or 0) + 1
            row.started_at = _now()
            row.finished_at = None
            if celery_id is not None:
                row.celery_id = celery_id
            return True

        return self._update(job_id, change)

    def succeed(self, job_id: int, result: dict[str, Any], *, error: str | None = None) -> JobInfo:
        """Mark done with ``result`` (``error`` may still name files that failed alone in a batch).

        A job that another delivery already completed keeps its first result.
        """

        def change(row: Job) -> bool:
            if row.state == JobState.succeeded:
                return False
            row.state = JobState.succeeded
            row.result = result
            row.error = redact(error)[:MAX_ERROR_CHARS] if error else None
            row.finished_at = _now()
            return True

        return self._update(job_id, change)

    def fail(self, job_id: int, error: str) -> JobInfo:
        """Mark failed for good (a permanent fault, or retries exhausted)."""

        def change(row: Job) -> bool:
            if row.state == JobState.succeeded:
                return False
            row.state = JobState.failed
            row.error = redact(error)[:MAX_ERROR_CHARS]
            row.finished_at = _now()
            return True

        return self._update(job_id, change)

    def retrying(self, job_id: int, error: str) -> JobInfo:
        """An attempt hit a transient fault; another attempt is scheduled."""

        def change(row: Job) -> bool:
            if row.state == JobState.succeeded:
                return False
            row.state = JobState.retrying
            row.error = redact(error)[:MAX_ERROR_CHARS]
            return True

        return self._update(job_id, change)

    def requeue(self, job_id: int) -> JobInfo:
        """Put a ``failed`` job back to ``queued`` (its attempts are kept); other states are left alone."""

        def change(row: Job) -> bool:
            if row.state != JobState.failed:
                return False
            row.state = JobState.queued
            row.finished_at = None
            return True

        return self._update(job_id, change)


# ---------------------------------------------------------------- running a job body
Body = Callable[[JobInfo], "tuple[dict[str, Any], str | None] | dict[str, Any]"]


def execute(
    store: JobStore, job_id: int, body: Body, *, celery_id: str | None = None, last_attempt: bool = True
) -> JobInfo:
    """Run one attempt of a job: start it, call ``body(job)``, record the outcome.

    ``body`` returns a result dict, or ``(result, error)`` when part of the work failed alone. A permanent
    fault marks the job failed and returns it. A transient fault marks it ``retrying`` and raises
    :class:`TransientJobError`, unless ``last_attempt`` (then it is failed). A job that already succeeded
    is returned without running ``body``. Celery tasks and :func:`run_inline` both call this: one code path.
    """
    job = store.start(job_id, celery_id=celery_id)
    if job.state == JobState.succeeded.value:
        log.info("job %s already succeeded; nothing to do", job_id)
        return job
    t0 = time.perf_counter()
    try:
        out = body(job)
    except Exception as e:  # every fault is recorded on the job
        fault = classify(e)
        msg = describe(e)
        if fault == "transient" and not last_attempt:
            log.warning("job %s attempt %s: transient fault, will retry: %s", job_id, job.attempts, msg)
            store.retrying(job_id, msg)
            raise TransientJobError(job_id, e) from e
        log.error("job %s (%s) failed on attempt %s: %s", job_id, job.kind, job.attempts, msg)
        log.debug("job %s traceback:\n%s", job_id, traceback.format_exc())
        return store.fail(job_id, msg if fault == "permanent" else f"{msg} (gave up after {job.attempts} attempts)")
    result, error = out if isinstance(out, tuple) else (out, None)
    result = {**result, "seconds": round(time.perf_counter() - t0, 3)}
    return store.succeed(job_id, result, error=error)


def run_inline(
    store: JobStore, job_id: int, body: Body, *, max_retries: int = 3, base_delay: float = 0.5, max_delay: float = 10.0
) -> JobInfo:
    """Embedded mode: run a job in this process, retrying transient faults with exponential backoff.

    >>> job, _ = store.create("refresh", {})  # doctest: +SKIP
    >>> run_inline(store, job.id, lambda job: {"checked": 0}).state  # doctest: +SKIP
    'succeeded'
    """
    for retries in range(max_retries + 1):
        try:
            return execute(store, job_id, body, last_attempt=retries == max_retries)
        except TransientJobError:
            time.sleep(backoff_seconds(retries, base=base_delay, cap=max_delay))
    raise AssertionError("unreachable")


__all__ = [
    "JOB_KINDS",
    "JobStore",
    "TransientJobError",
    "backoff_seconds",
    "classify",
    "describe",
    "execute",
    "run_inline",
]
