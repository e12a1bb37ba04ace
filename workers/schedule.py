"""The beat schedule: ``refresh_sources`` runs every ``PMEM_REFRESH_TICK_S`` seconds (default 60).

The tick only sets how often sources are *looked at*; each source is re-read when its own
``refresh_interval_s`` is due (``memory.refresh.due_sources``). Run exactly one beat per broker:
``celery -A workers.app beat`` (or ``pmem worker --beat`` on one worker).

>>> beat_schedule(tick_s=30)["pmem-refresh-sources"]["schedule"]
30.0
"""

from __future__ import annotations

import os
from typing import Any

REFRESH_ENTRY = "pmem-refresh-sources"
DEFAULT_TICK_S = 60.0


def beat_schedule(tick_s: float | None = None) -> dict[str, Any]:
    """The ``beat_schedule`` setting. A tick that is not consumed within one period expires (no pile-up)."""
    if tick_s is None:
        tick_s = float(os.environ.get("PMEM_REFRESH_TICK_S") or DEFAULT_TICK_S)
    tick_s = float(tick_s)
    if tick_s <= 0:
        from memory.errors import ConfigError

        raise ConfigError(f"the refresh tick must be > 0 seconds, got {tick_s}")
    return {
        REFRESH_ENTRY: {
            "task": "workers.tasks.refresh_sources",
            "schedule": tick_s,
            "kwargs": {},
            "options": {"queue": "ingest", "expires": tick_s},
        }
    }


__all__ = ["DEFAULT_TICK_S", "REFRESH_ENTRY", "beat_schedule"]
