"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (issue 22): every operation, as a caller
without a key, with a read key of one namespace, a write key of another and an admin key; no 500, no answer
outside the schema or the error shape, no cross-namespace read. A few cases per operation here (about a
minute); ``pmem bench fuzz`` sends many more (see ``bench/fuzz.py``).

    .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_server import _start


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, model_cache) -> Any:
    from bench.fuzz import MARKER

    srv = _start(
        tmp_path_factory.mktemp("fuzz"), model_cache, PMEM_WORKER_INTERNALIZER="_fixtures_workers:stub_internalize"
    )
    for ns, text in (("alpha", f"Secret plans of alpha: {MARKER}."), ("beta", "Public notes of beta.")):
        r = srv.call("POST", f"/v1/namespaces/{ns}/documents", json={"text": text, "document_id": "planted"})
        assert r.status_code == 201, r.text
    yield srv
    srv.proc.stop()


def test_fuzz_every_operation_from_the_schema(fuzzed) -> None:
    from bench.fuzz import callers, fuzz

    result = fuzz(fuzzed.url, callers(fuzzed.keys), examples=4, seconds=240, seed=22, model_routes=False)
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}))
    assert result["operations"] >= 20 and result["skipped"] == 0, result
    assert result["failure_count"] == 0, json.dumps(result["failures"], indent=1)
    assert result["requests"] >= result["operations"] * 4 * 2, result  # every operation, every caller
    assert fuzzed.call("GET", "/healthz", key=None).status_code == 200
