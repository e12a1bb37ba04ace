"""The OpenAI-compatible endpoint (memory/server/openai_api.py) with the official ``openai`` client against a real
server process: the memories a key may ask as models, answers equal to ``POST /query``'s, streaming, the memory's
own fields, conversation turns kept with a session, OpenAI-shaped errors with the server's statuses, and busy.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_openai_api.py -q
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server import ServerProcess, server_env

openai = pytest.importorskip("openai")

NS, OTHER = "alpha", "beta"
QUESTION = "How many days of paid leave do staff get?"


@dataclass
class Served:
    url: str
    keys: dict[str, str]

    def client(self, key: str = "reader") -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.keys.get(key, key), max_retries=0, timeout=600)

    def call(self, method: str, path: str, key: str = "writer", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[key]}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=600, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    from memory.config import Settings
    from memory.db.migrate import ensure_schema
    from memory.server.auth import KeyStore

    tmp = tmp_path_factory.mktemp("openai")
    home = tmp / "home"
    url = Settings.from_env(home=home).resolved_database_url
    ensure_schema(url, auto_migrate=True)
    store = KeyStore.for_url(url)
    specs = {"admin": ("admin", ["*"]), "writer": ("write", [NS]), "reader": ("read", [NS])}
    keys = {name: store.create(name, role=role, namespaces=nss).secret for name, (role, nss) in specs.items()}
    server = ServerProcess(
        server_env(home, PMEM_TEST_QUEUE="0", PMEM_TEST_MAX_BATCH="1"), tmp / "server.log"
    )  # one model call, none waiting
    try:
        srv = Served(server.wait_ready().url, keys)
        for ns, text in ((NS, "Staff get 25 days of paid leave a year."), (OTHER, "Travel is booked ahead.")):
            r = srv.call("POST", f"/v1/namespaces/{ns}/documents", key="admin", json={"text": text})
            assert r.status_code == 201, r.text
        yield srv
    finally:
        server.stop()


def test_models_are_the_memories_the_key_sees(served: Served) -> None:
    assert [m.id for m in served.client("reader").models.list()] == [f"pmem/{NS}"]
    assert {m.id for m in served.client("admin").models.list()} >= {f"pmem/{NS}", f"pmem/{OTHER}"}
    assert served.client("reader").models.retrieve(f"pmem/{NS}").owned_by == "pmem"
    with pytest.raises(openai.NotFoundError):
        served.client("reader").models.retrieve(f"pmem/{OTHER}")


def test_errors_come_in_openai_shape_with_the_servers_statuses(served: Served) -> None:
    """Bad key 401, a namespace the key does not cover 403, a model that is not a memory 404, bad input 400;
    none of them reaches the model."""
    from memory.server.app import ERROR_CODES

    ask = [{"role": "user", "content": QUESTION}]
    PermissionDenied = openai.PermissionDeniedError  # noqa: N806 - keeps the table on one line a case
    cases = [
        ("not-a-key", {"model": f"pmem/{NS}", "messages": ask}, openai.AuthenticationError),
        ("reader", {"model": f"pmem/{OTHER}", "messages": ask}, openai.PermissionDeniedError),
        ("reader", {"model": "gpt-4o", "messages": ask}, openai.NotFoundError),
        ("reader", {"model": f"pmem/{NS}:magic", "messages": ask}, openai.BadRequestError),
        ("reader", {"model": f"pmem/{NS}", "messages": [{"role": "system", "content": "Hi."}]}, openai.BadRequestError),
        ("reader", {"model": f"pmem/{NS}", "messages": ask, "n": 2}, openai.BadRequestError),
        ("reader", {"model": f"pmem/{NS}", "messages": ask, "max_tokens": 100_000}, openai.BadRequestError),
        # a session appends to the conversation: it needs the write role
        (
            "reader",
            {"model": f"pmem/{NS}", "messages": ask, "extra_body": {"pmem": {"session": "s"}}},
            PermissionDenied,
        ),
    ]
    for key, kwargs, expected in cases:
        with pytest.raises(expected) as caught:
            served.client(key).chat.completions.create(**kwargs)
        err = caught.value.body
        assert set(err) == {"message", "type", "param", "code"} and err["message"], (kwargs, err)
        assert ERROR_CODES[err["code"]] == caught.value.status_code  # the server's stable codes, as everywhere
    r = httpx.post(f"{served.url}/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = served.call("POST", "/v1/chat/completions", key="reader", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"


@pytest.mark.slow
def test_chat_completion_answers_as_the_query_endpoint_and_keeps_the_turns(served: Served) -> None:
    """The last user message is the question: the answer equals POST /query's (earlier turns are not in the
    prompt); the memory's fields come in ``pmem``; with a session the turns are appended to the conversation
    once, and only the new ones."""
    r = served.call("POST", f"/v1/namespaces/{NS}/query", json={"question": QUESTION, "max_new_tokens": 32})
    assert r.status_code == 200, r.text
    expected = r.json()
    turns = [
        {"role": "system", "content": "You are a helpful HR assistant."},
        {"role": "user", "content": "Hi, my name is Sam."},
        {"role": "assistant", "content": "Hello Sam!"},
        {"role": "user", "content": QUESTION},
    ]
    client = served.client("writer")
    resp = client.chat.completions.create(model=f"pmem/{NS}", messages=turns, max_tokens=32)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected["answer"]
    assert resp.model == f"pmem/{NS}" and resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens == expected["completion_tokens"]
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    extra = resp.model_extra["pmem"]
    assert extra["mode"] == expected["mode"] and extra["reason"] == expected["reason"]
    assert [s["chunk_id"] for s in extra["sources"]] == [c["chunk_id"] for c in expected["chunks"]]
    # with a session the turns are kept (before answering, so what the user stated can be found)
    session = {"pmem": {"session": "chat-1", "mode": "retrieval"}}
    client.chat.completions.create(model=f"pmem/{NS}", messages=turns, max_tokens=8, extra_body=session)
    transcript = served.call("GET", f"/v1/namespaces/{NS}/conversations/chat-1").json()["messages"]
    assert [t["content"] for t in transcript] == [t["content"] for t in turns]
    # the next call sends the whole conversation again: only the two new turns are appended
    later = [*turns, {"role": "assistant", "content": choice.message.content}, {"role": "user", "content": QUESTION}]
    client.chat.completions.create(model=f"pmem/{NS}", messages=later, max_tokens=8, extra_body=session)
    transcript = served.call("GET", f"/v1/namespaces/{NS}/conversations/chat-1").json()["messages"]
    assert len(transcript) == len(later)


@pytest.mark.slow
def test_streamed_chat_completion_joins_to_the_answer(served: Served) -> None:
    """Chunks (role first, then content pieces, then the finish with ``pmem``, then usage) join to the answer
    of the same request unstreamed; the mode comes from the model name."""
    client = served.client("reader")
    kwargs = {"model": f"pmem/{NS}:retrieval", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 32}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["pmem"]["mode"] == "retrieval"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert len({c.id for c in chunks}) == 1


@pytest.mark.slow
def test_busy_is_a_503_with_retry_after(served: Served) -> None:
    """With one model call allowed and none waiting, concurrent requests beyond it get 503 in OpenAI's shape."""
    body = {"model": f"pmem/{NS}:retrieval", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 48}
    results: list[httpx.Response] = []

    def ask() -> None:
        results.append(served.call("POST", "/v1/chat/completions", key="reader", json=body))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses[0] == 200 and statuses[-1] == 503, statuses
    busy = next(r for r in results if r.status_code == 503)
    assert busy.headers["retry-after"] and busy.json()["error"]["code"] == "busy"


def test_model_names_parse(tmp_path: Path) -> None:
    from memory.server.openai_api import OpenAIError, parse_model

    assert parse_model("pmem/hr") == ("hr", None) and parse_model("pmem/hr:parametric") == ("hr", "parametric")
    for bad in ("hr", "pmem/", "openai/gpt"):
        with pytest.raises(OpenAIError) as caught:
            parse_model(bad)
        assert caught.value.status == 404
