"""A client that disconnects in the middle of a streamed answer stops its generation: a real ``pmem serve`` process
(``_server.ServerProcess``, continuous batching on, the real base model) and real HTTP connections.

Two clients stream the same long greedy answer, batched together; one reads its first token and closes its
connection. The server's ``pmem_generation_queue_depth`` (``/metrics``: model calls running or waiting) drops from
2 to 1 within a few decode steps, while the client that stayed still streams for seconds: without the
cancellation, the identical row that left would have decoded as long as the one that stayed.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_server_disconnect.py -q
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _server import ServerProcess, server_env

DOC = (
    "The lighthouse keeper of Gull Rock kept a diary for forty years. He wrote about storms, ships, birds, "
    "the seasons, his lamp, his dog and the village on the mainland."
)
QUESTION = "Write a long story about the lighthouse keeper of Gull Rock and his diary, in many paragraphs."
MAX_NEW_TOKENS = 64


def queue_depth(url: str) -> int:
    """``pmem_generation_queue_depth`` from the server's Prometheus metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(float(re.search(r"^pmem_generation_queue_depth (\S+)$", text, re.M).group(1)))  # type: ignore[union-attr]


def events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a server-sent event stream."""
    name = "message"
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])


@pytest.mark.slow  # the server generates a long answer with the real base model
def test_a_client_that_leaves_mid_stream_stops_its_row(tmp_path: Path, model_cache: str) -> None:
    env = server_env(tmp_path / "home", PMEM_TEST_NO_AUTH="1", PMEM_TEST_MAX_BATCH="8", PMEM_MODEL_CACHE=model_cache)
    server = ServerProcess(env, tmp_path / "server.log")
    try:
        server.wait_ready()
        r = httpx.post(f"{server.url}/v1/namespaces/default/documents", json={"text": DOC}, timeout=300)
        assert r.status_code == 201, r.text
        url = f"{server.url}/v1/namespaces/default/query"
        body = {"question": QUESTION, "mode": "retrieval", "max_new_tokens": MAX_NEW_TOKENS, "stream": True}
        with httpx.Client(timeout=600) as stays, stays.stream("POST", url, json=body) as kept:
            assert kept.status_code == 200
            kept_events = events(kept.iter_lines())
            assert next(kept_events)[0] == "token"
            leaves = httpx.Client(timeout=600)
            with leaves.stream("POST", url, json=body) as left:
                assert next(events(left.iter_lines()))[0] == "token"
                assert queue_depth(server.url) == 2  # both rows in the batch
            leaves.close()  # the connection closes with the answer unread
            closed = time.monotonic()
            while (depth := queue_depth(server.url)) == 2 and time.monotonic() - closed < 10:
                time.sleep(0.05)
            left_after = time.monotonic() - closed
            assert depth == 1, f"the row of the client that left still runs after {left_after:.1f} s"
            rest = list(kept_events)
            kept_for = time.monotonic() - closed
        assert [e for e, _ in rest[:-1]] == ["token"] * (len(rest) - 1) and rest[-1][0] == "answer"
        answer = rest[-1][1]
        # the premise: a long answer; the row that left, the same greedy generation, would have run as long
        assert answer["completion_tokens"] == MAX_NEW_TOKENS, answer
        assert kept_for > 3 * left_after and kept_for > 2.0, (left_after, kept_for)
        assert queue_depth(server.url) == 0
        assert "Traceback" not in server.log()
    finally:
        server.stop()
