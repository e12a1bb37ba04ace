"""Property-based fuzzing of the memory server from its own OpenAPI schema (schemathesis + hypothesis).

``pmem bench fuzz [--quick] --json`` calls :func:`run`: a fresh ``pmem serve`` on 127.0.0.1 with keys on,
one document planted in each of two namespaces, then :func:`fuzz` sends every operation of
``/openapi.json`` cases drawn from the schema (valid ones, and invalid ones: wrong types, out-of-range
numbers, unknown fields, odd strings) as four callers: no key, a read key of one namespace, a write key of the
other, an admin key of every namespace. Every answer must:

- not be a server error (5xx), nor a dropped connection;
- be the documented error shape ``{"error": {"code", "message"}}`` with the status its code promises
  (:data:`memory.server.app.ERROR_CODES`) when it is an error, and conform to the operation's response schema
  when it is a success;
- never be a success for a namespace the caller's key does not cover, nor contain the text planted in a
  namespace the key does not cover (no cross-namespace read).

The test suite runs :func:`fuzz` with a few examples per operation (``tests/test_fuzz.py``); this bench runs
many more. The JSON result counts the requests sent, the answers by status and the failures found.

Standalone: ``python -m bench.fuzz --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._serving import free_port, wait_healthy

#: Planted in the first namespace: no answer to a caller without that namespace may contain it.
MARKER = "ZEBRA-MARKER-7731"
NAMESPACES = ("alpha", "beta")
_MODEL_ROUTES = ("/query",)  # operations whose valid cases run the base model (a generation each)


def callers(keys: dict[str, str]) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """The four callers from ``keys`` (``reader``: read on alpha, ``other``: write on beta, ``admin``: ``*``)."""
    return {
        "anonymous": (None, ()),
        "reader": (keys["reader"], ("alpha",)),
        "other": (keys["other"], ("beta",)),
        "admin": (keys["admin"], ("*",)),
    }


def fuzz(
    url: str,
    who: dict[str, tuple[str | None, tuple[str, ...]]],
    *,
    examples: int,
    seconds: float,
    seed: int = 0,
    model_routes: bool = True,
) -> dict[str, Any]:
    """Fuzz every operation of the server at ``url`` as each caller of ``who`` (name -> (key, namespaces)).

    Args:
        examples: cases drawn per operation and caller.
        seconds: time budget; operations not reached by then are counted in ``skipped``.
        model_routes: also send valid cases to the routes that generate (slow: a model call each).

    Returns counts: ``requests``, ``by_status``, ``operations``, ``failures`` (the first 20, each with the
    method, path, caller, status and what was wrong) and ``failure_count``.
    """
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    deadline = time.monotonic() + seconds
    statuses: Counter[int] = Counter()
    failures: list[dict[str, Any]] = []
    skipped = 0

    for op in operations:
        for name, (key, namespaces) in who.items():
            if time.monotonic() > deadline:
                skipped += 1
                continue
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            modes = [GenerationMode.NEGATIVE]
            if model_routes or not any(op.path.endswith(r) for r in _MODEL_ROUTES) or not namespaces:
                modes.append(GenerationMode.POSITIVE)
            strategies = [op.as_strategy(m) for m in modes]
            if "{namespace}" in op.path:  # random names are mostly refused early: aim at real ones too
                strategies += [op.as_strategy(m, path_parameters={"namespace": ns}) for m in modes for ns in NAMESPACES]

            def send(case: Any, name: str = name, headers: dict[str, str] = headers, ns: tuple = namespaces) -> None:
                if time.monotonic() > deadline:
                    return
                try:
                    response = case.call(base_url=url, headers=headers, timeout=120)
                except Exception as e:  # noqa: BLE001 - a dropped connection is a finding
                    failures.append(_failure(case, name, 0, f"no answer: {type(e).__name__}: {e}"))
                    return
                statuses[response.status_code] += 1
                failures.extend(_failure(case, name, response.status_code, p) for p in _problems(case, response, ns))

            _draw(st.one_of(strategies), examples, seed, send)
    return {
        "requests": sum(statuses.values()) + sum(1 for f in failures if f["status"] == 0),
        "by_status": {str(k): v for k, v in sorted(statuses.items())},
        "operations": len(operations),
        "callers": sorted(who),
        "examples_per_operation_and_caller": examples,
        "skipped": skipped,
        "failure_count": len(failures),
        "failures": failures[:20],
    }


def _draw(strategy: Any, examples: int, seed: int, send: Any) -> None:
    """Call ``send`` on ``examples`` cases drawn from ``strategy`` (no shrinking: every case is a request)."""
    import hypothesis

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def each(case: Any) -> None:
        send(case)

    each()


def _failure(case: Any, caller: str, status: int, problem: str) -> dict[str, Any]:
    return {"method": case.method, "path": case.formatted_path, "caller": caller, "status": status, "problem": problem}


def _problems(case: Any, response: Any, namespaces: tuple[str, ...]) -> list[str]:
    """What is wrong with ``response`` to ``case`` for a caller whose key covers ``namespaces``."""
    from memory.server.app import ERROR_CODES

    status = response.status_code
    out = []
    if status >= 500:
        out.append("server error")
    if status >= 400:
        try:
            err = response.json()["error"]
            code = err["code"]
            assert isinstance(err["message"], str) and err["message"]
        except Exception:  # noqa: BLE001
            return [*out, f"error answer not in the error shape: {response.text[:200]!r}"]
        if ERROR_CODES.get(code) != status:
            out.append(f"error code {code!r} answered with status {status}")
        return out
    covers = "*" in namespaces
    ns = (case.path_parameters or {}).get("namespace")
    if "{namespace}" in case.path and not covers and ns not in namespaces:
        out.append(f"success in namespace {ns!r} outside the key's {list(namespaces)}")
    if MARKER in response.text and not covers and NAMESPACES[0] not in namespaces:
        out.append("the answer holds text of a namespace the key does not cover")
    if case.path == "/v1/namespaces" and not covers:
        seen = set(response.json().get("namespaces", []))
        if seen - set(namespaces):
            out.append(f"lists namespaces outside the key: {sorted(seen - set(namespaces))}")
    try:
        case.validate_response(response, checks=[_schema_check()])
    except Exception as e:  # noqa: BLE001 - schemathesis raises a group of failures
        out.append(f"response outside the schema: {str(e)[:300]}")
    return out


def _schema_check() -> Any:
    from schemathesis.specs.openapi.checks import response_schema_conformance

    return response_schema_conformance


# ---------------------------------------------------------------------------- the bench
def plant(mem: Any) -> dict[str, str]:
    """The documents and keys the fuzzing needs in a fresh memory; returns the keys by caller name."""
    from memory.server.auth import KeyStore

    mem.add(f"Secret plans of alpha: {MARKER}.", document_id="secret", namespace="alpha", metadata={"n": 1})
    mem.add("Public notes of beta.", document_id="notes", namespace="beta", metadata={"n": 2})
    store = KeyStore.for_memory(mem)
    return {
        "reader": store.create("fuzz-reader", role="read", namespaces=["alpha"]).secret,
        "other": store.create("fuzz-other", role="write", namespaces=["beta"]).secret,
        "admin": store.create("fuzz-admin", role="admin", namespaces=["*"]).secret,
    }


def run(
    quick: bool = False,
    examples: int | None = None,
    seconds: float | None = None,
    model_routes: bool | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, Any]:
    """A fresh server, fuzzed: ``quick`` 10 cases per operation and caller, without the routes that generate;
    else 100 with them (each valid query a model call: hours on a CPU). The keywords override either."""

    from memory.api import ParametricMemory
    from memory.config import Settings

    examples = examples or (10 if quick else 100)
    seconds = seconds or (300 if quick else 4 * 3600)
    model_routes = (not quick) if model_routes is None else model_routes
    home = Path(tempfile.mkdtemp(prefix="pmem-bench-fuzz-"))
    keys = plant(ParametricMemory(Settings.from_env(home=home)))
    port = free_port()
    env = {**os.environ, "PMEM_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = home / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log_path)
        t0 = time.perf_counter()
        result = fuzz(url, callers(keys), examples=examples, seconds=seconds, seed=seed, model_routes=model_routes)
        result["fuzz_seconds"] = round(time.perf_counter() - t0, 1)
        result["server_alive"] = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return result


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))
