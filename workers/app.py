"""The Celery app: queues ``ingest`` (CPU: parsing, database writes) and ``internalize`` (GPU), routing between them.

Configured from :class:`~memory.config.Settings` (``PMEM_BROKER_URL``, ``PMEM_RESULT_BACKEND``) plus a few
worker-only variables:

- ``PMEM_VISIBILITY_TIMEOUT_S`` (default 21600 = 6 h): how long the Redis broker waits for an unacked message
  before giving it to another worker. It must exceed the longest internalization, or a slow job runs twice
  (harmless, tasks are idempotent, but wasted GPU time). A worker that died is noticed after this long.
- ``PMEM_BROKER_KEYPREFIX``: a prefix for every broker key, so several deployments (or tests) share one Redis.

Reliability for long GPU jobs: one task reserved per process (``worker_prefetch_multiplier=1``), acknowledged
only after it finished (``task_acks_late``), requeued if its worker process dies
(``task_reject_on_worker_lost``). Run a GPU worker with ``--pool solo -c 1`` (CUDA must not be initialised
in a forked child): ``pmem worker --queues internalize --pool solo``.

Without ``PMEM_BROKER_URL`` nothing is sent anywhere: :func:`memory.submission.submit` runs the same task body
in-process (embedded mode).

>>> from workers.app import app
>>> app.conf.task_routes["workers.tasks.internalize_version"]["queue"]
'internalize'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from celery import Celery
from kombu import Queue

from memory.config import Settings
from memory.errors import ConfigError

INGEST_QUEUE = "ingest"
INTERNALIZE_QUEUE = "internalize"
QUEUES = (INGEST_QUEUE, INTERNALIZE_QUEUE)
DEFAULT_VISIBILITY_TIMEOUT_S = 6 * 3600
#: Placeholder broker for embedded mode: the app exists, but submit() never publishes without a broker URL.
EMBEDDED_BROKER = "memory://"


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
    return value


def celery_config(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Celery settings for ``settings`` (a plain dict, so tests can inspect it).

    >>> celery_config(Settings(broker_url="redis://localhost:6379/0"))["task_acks_late"]
    True
    """
    env = os.environ if env is None else env
    vt = _int_env(env, "PMEM_VISIBILITY_TIMEOUT_S", DEFAULT_VISIBILITY_TIMEOUT_S)
    prefix = env.get("PMEM_BROKER_KEYPREFIX", "")
    transport: dict[str, Any] = {
        "visibility_timeout": vt,
        # Look for messages of dead workers often enough to notice them soon after the timeout.
        "unacked_restore_interval": max(1, min(10, vt // 4)),
        "unacked_restore_throttle": 1 if vt < 600 else 10,
    }
    if prefix:
        transport["global_keyprefix"] = prefix
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url or EMBEDDED_BROKER,
        "result_backend": settings.result_backend,  # None: job state lives in our Job table
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": INGEST_QUEUE,
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_routes": {
            "workers.tasks.ingest_source": {"queue": INGEST_QUEUE},
            "workers.tasks.refresh_sources": {"queue": INGEST_QUEUE},
            "workers.tasks.internalize_version": {"queue": INTERNALIZE_QUEUE},
        },
        # Long GPU jobs: reserve one task at a time, ack after it finished, requeue if the worker dies.
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_track_started": True,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
        "timezone": "UTC",
        # beat's last-run record lives with the data, not in the current directory
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
    }
    if settings.result_backend and settings.result_backend.startswith("redis") and prefix:
        conf["result_backend_transport_options"] = {"global_keyprefix": prefix}
    return conf


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (default: the ``PMEM_*`` environment), with the beat schedule.

    >>> create_app(Settings(broker_url="redis://localhost:6379/3")).conf.broker_url
    'redis://localhost:6379/3'
    """
    from workers.schedule import beat_schedule

    settings = settings or Settings.from_env()
    celery = Celery("pmem", include=["workers.tasks"])
    celery.conf.update(celery_config(settings))
    celery.conf.beat_schedule = beat_schedule()
    return celery


app = create_app()

__all__ = ["INGEST_QUEUE", "INTERNALIZE_QUEUE", "QUEUES", "app", "celery_config", "create_app"]
