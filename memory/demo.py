"""The main job on the embedded default (``make run`` / ``pmem demo``).

It exercises everything that has landed: documents are added, versioned, rolled back; later
components (internalization, querying) join this script as they land.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from memory.api import ParametricMemory
from memory.config import Settings

POLICY_V1 = """Travel policy of the Orion Research Lab.

Employees may book economy class for flights under six hours.
The daily meal allowance is 42 euros.
Expense reports are due within 14 days of returning."""

POLICY_V2 = POLICY_V1.replace("42 euros", "55 euros")

FACTS = """The access code for the Orion vault is 7342.
The vault keeper is Marisol Tenby, whose cat is called Biscuit."""


def run_demo(settings: Settings, console: Console | None = None) -> dict[str, Any]:
    """Add, update and roll back documents in the ``demo`` namespace; return a summary."""
    say = console.print if console else (lambda *a, **k: None)
    mem = ParametricMemory(settings)
    ns = "demo"
    say(f"memory: {mem!r}")
    r1 = mem.add(POLICY_V1, document_id="travel-policy", title="Travel policy", namespace=ns)
    say(f"add travel-policy: {r1.status}")
    r2 = mem.add(POLICY_V2, document_id="travel-policy", namespace=ns)
    say(f"update travel-policy: {r2.status}")
    r3 = mem.add(FACTS, document_id="vault-facts", title="Vault facts", namespace=ns)
    say(f"add vault-facts: {r3.status}")
    diff = mem.diff("travel-policy", 1, 2, namespace=ns)
    say(diff)
    rolled = mem.rollback("travel-policy", 1, namespace=ns)
    say(f"rolled travel-policy back to v{rolled.version.number if rolled.version else '-'}")
    restored = mem.rollback("travel-policy", 2, namespace=ns)
    docs = mem.list(namespace=ns)
    return {
        "namespace": ns,
        "documents": [{"id": d.id, "version": d.version.number if d.version else None,
                       "versions": d.version_count, "chunks": d.version.chunk_count if d.version else 0}
                      for d in docs],
        "travel_policy_current": restored.version.number if restored.version else None,
        "diff_lines": len(diff.splitlines()),
    }
