"""The main job on the embedded default (``make run`` / ``pmem demo``).

Documents are added, versioned and rolled back; one is internalized into a LoRA adapter (Doc-to-LoRA
when a checkpoint for the base model ships, else context distillation) and questions are answered
without the document in the prompt, then through the router, which says which mode it chose and why.
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
QUESTION = "What is the access code for the Orion vault?"


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
    say(f"restored travel-policy to v{restored.version.number if restored.version else '-'} (the questions read it)")
    say("internalizing vault-facts (loads the base model on first use) ...")
    adapter = mem.internalize("vault-facts", namespace=ns)
    say(
        f"adapter {adapter.id}: {adapter.method} via {adapter.hypernetwork}, rank {adapter.rank}, "
        f"{adapter.size_bytes} bytes, {adapter.latency_ms:.0f} ms"
    )
    answers = []
    for question, mode in [(QUESTION, "parametric"), (QUESTION, "auto"), ("What is the daily meal allowance?", "auto")]:
        r = mem.query(question, namespace=ns, mode=mode, max_new_tokens=24)
        say(f"[{mode} -> {r.mode}] {question} -> {r.answer!r}  ({r.reason})")
        answers.append(
            {
                "question": question,
                "requested": mode,
                "mode": r.mode,
                "answer": r.answer,
                "reason": r.reason,
                "ms": round(r.timings_ms.get("total_ms", 0)),
            }
        )
    docs = mem.list(namespace=ns)
    return {
        "adapter": {
            "method": adapter.method,
            "hypernetwork": adapter.hypernetwork,
            "rank": adapter.rank,
            "bytes": adapter.size_bytes,
            "latency_ms": round(adapter.latency_ms or 0),
        },
        "answers": answers,
        "namespace": ns,
        "documents": [
            {
                "id": d.id,
                "version": d.version.number if d.version else None,
                "versions": d.version_count,
                "chunks": d.version.chunk_count if d.version else 0,
            }
            for d in docs
        ],
        "travel_policy_current": restored.version.number if restored.version else None,
        "diff_lines": len(diff.splitlines()),
    }
