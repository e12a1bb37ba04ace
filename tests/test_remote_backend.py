"""The remote generation backend (memory.models.remote) against a real ``pmem engine`` process (``--max-loras 2``),
and a memory server process that generates there (PMEM_GENERATION_URL): greedy answers equal the local model's,
adapters are exported in PEFT format, loaded once and loaded again when the engine forgot or evicted them, the
exports beyond ``max_exports`` are removed, log-probabilities come back for the router's confidence check, and the
engine's key never shows.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_remote_backend.py -q
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from _server import ServerProcess, free_port, server_env

ENGINE_KEY = "engine-secret-key-123"
PROMPT = "What is the capital of France?"
MAX_LORAS = 2  # the engine's


def call(engine: ServerProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    """A request to the engine with its key."""
    headers = {"Authorization": f"Bearer {ENGINE_KEY}"}
    return httpx.request(method, engine.url + path, headers=headers, timeout=300, **kw)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, model_cache) -> Iterator[ServerProcess]:
    """``python -m memory.cli engine`` on a free loopback port."""
    tmp = tmp_path_factory.mktemp("engine")
    cmd = [sys.executable, "-m", "memory.cli", "engine", "--max-loras", str(MAX_LORAS), "--log-level", "warning"]
    env = server_env(tmp / "home", PMEM_ENGINE_API_KEY=ENGINE_KEY)
    proc = ServerProcess(env, tmp / "engine.log", cmd=cmd, health="/health")
    try:
        yield proc.wait_ready(timeout=300)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def base() -> Any:
    from memory.models import load_base_model

    return load_base_model()


def _adapter(base: Any, seed: int = 0) -> Any:
    """A small random adapter on the attention projections: it changes what the model says."""
    import torch

    from memory.lora import LoraAdapter

    g = torch.Generator().manual_seed(seed)
    weights = {}
    for path in base.linear_paths(["self_attn.q_proj", "self_attn.v_proj"]):
        lin = base.model.get_submodule(path)
        a = torch.randn(4, lin.in_features, generator=g) * 0.05
        b = torch.randn(lin.out_features, 4, generator=g) * 0.05
        weights[path] = (a, b)
    return LoraAdapter(weights, base.fingerprint)


def test_engine_batches_concurrent_completions_each_with_its_adapter(tmp_path: Path) -> None:
    """Completions in flight at once, each naming another loaded adapter (or the base model), are decoded
    together by the engine's continuous batching; ``ignore_eos`` makes each exactly ``max_tokens`` long, and each
    equals the same prompt generated alone with its adapter (float32, the tiny model)."""
    from concurrent.futures import ThreadPoolExecutor

    from _fixtures_models import rand_adapter, tiny_base
    from fastapi.testclient import TestClient

    from memory.lora.io import save_peft
    from memory.server.engine import create_engine_app

    base = tiny_base()
    ads = {f"a{i}": rand_adapter(base, 2 + i, seed=i) for i in range(3)}
    app = create_engine_app(base, max_batch=4, max_concurrent=8)
    prompt = base.encode("what is two plus two?")
    with TestClient(app) as client:
        for name, ad in ads.items():
            path = save_peft(ad, tmp_path / name, "tiny")
            r = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
            assert r.status_code == 200, r.text
        names = ["tiny", *ads]

        def complete(model: str) -> dict[str, Any]:
            body = {"model": model, "prompt": prompt, "max_tokens": 100, "temperature": 0, "ignore_eos": True}
            body["return_token_ids"] = True
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(len(names)) as pool:
            got = list(pool.map(complete, names))
        max_rows = app.state.batching.scheduler(base).max_rows
    for name, out in zip(names, got, strict=True):
        solo = base.generate([prompt], max_new_tokens=100, adapters=ads.get(name), ignore_eos=True)[0]
        assert out["choices"][0]["token_ids"] == solo.token_ids and len(solo.token_ids) == 100
        assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 100
    assert len({tuple(o["choices"][0]["token_ids"]) for o in got}) == len(names)  # each adapter mattered
    assert max_rows > 1  # decoded together


@contextmanager
def _engine_at_model_pace() -> Iterator[tuple[Any, Any, str]]:
    """``(app, base, completions URL)`` of a real uvicorn engine, in a thread, over the tiny model slowed to a real
    model's pace. The tiny model decodes 4,000 tokens in a few seconds, and on a loaded CPU its thread can outrun
    the event loop that notices a disconnect. A real model takes milliseconds a step: so does this one (the sleep
    also releases the GIL), so a row asked for 4,000 tokens cannot end on its own before its client has left."""
    import threading

    import uvicorn
    from _fixtures_models import tiny_base

    from memory.server.engine import create_engine_app

    base = tiny_base()
    forward = base.model.forward

    def model_speed_step(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.003)
        return forward(*args, **kwargs)

    base.model.forward = model_speed_step
    app = create_engine_app(base, max_batch=4, max_concurrent=4)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the engine did not start"
            time.sleep(0.05)
        yield app, base, f"http://127.0.0.1:{server.config.port}/v1/completions"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _row_left_the_batch(app: Any, base: Any) -> None:
    sched = app.state.batching.scheduler(base)
    deadline = time.monotonic() + 20
    while sched.cancelled < 1:
        assert time.monotonic() < deadline, "the row stayed in the batch after its client left"
        time.sleep(0.05)
    assert sched.steps < 4000  # it left long before max_tokens


def test_a_streamed_completion_whose_client_leaves_leaves_the_batch(tmp_path: Path) -> None:
    """A client that closes a streamed completion after its first piece takes the row out of the engine's batch
    at the next step (as vLLM aborts it) instead of decoding on to ``max_tokens``. A real uvicorn server over
    the tiny model; 4,000 tokens asked for (several seconds of decoding), so the disconnect comes first."""
    with _engine_at_model_pace() as (app, base, url):
        body = {"model": "tiny", "prompt": base.encode("abc"), "max_tokens": 4000, "temperature": 0}
        with httpx.stream("POST", url, json={**body, "ignore_eos": True, "stream": True}, timeout=60) as r:
            assert r.status_code == 200
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            assert json.loads(first.removeprefix("data: "))["choices"][0]["text"]
        _row_left_the_batch(app, base)


def test_a_completion_whose_client_leaves_before_the_answer_leaves_the_batch(tmp_path: Path) -> None:
    """The same for a completion that is not streamed: a client that gives up waiting (a timeout) takes its row
    out of the engine's batch instead of leaving it to decode to ``max_tokens`` for nobody."""
    with _engine_at_model_pace() as (app, base, url):
        body = {"model": "tiny", "prompt": base.encode("abc"), "max_tokens": 4000, "temperature": 0, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body, timeout=httpx.Timeout(30, read=1.0))
        _row_left_the_batch(app, base)
        short = httpx.post(url, json={**body, "max_tokens": 3}, timeout=30)  # the engine serves on
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 3


def test_unreachable_engine_is_a_model_error_without_the_key(tmp_path: Path) -> None:
    """A dead engine is a ModelError naming the URL (password masked), never the API key; reprs hide both."""
    from memory.config import Settings
    from memory.errors import ModelError
    from memory.models.remote import RemoteEngine

    settings = Settings.from_env(
        home=tmp_path,
        generation_url=f"http://user:pw@127.0.0.1:{free_port()}",
        generation_api_key="sk-very-secret",
        generation_timeout_s=5.0,
    )
    remote = RemoteEngine.from_settings(settings, base=None)
    with pytest.raises(ModelError) as caught:
        _ = remote.model
    shown = f"{caught.value} {remote!r} {settings!r}"
    assert "sk-very-secret" not in shown and "pw@" not in shown and "127.0.0.1" in shown


@pytest.mark.slow
def test_remote_greedy_equals_local_with_and_without_an_adapter(engine: ServerProcess, base: Any, tmp_path) -> None:
    """Same tokens and text as BaseModel.generate; log-probabilities match the local forward pass; the stream
    joins to the text; the adapter is exported once, named by content, and listed by the engine."""
    from memory.models.remote import RemoteEngine, adapter_name
    from memory.services.query import QueryEngine

    remote = RemoteEngine(engine.url, base=base, adapter_dir=tmp_path / "exported", api_key=ENGINE_KEY)
    ad = _adapter(base)
    prompt_ids = base.chat_ids(PROMPT)
    texts = []
    for adapter in (None, ad):
        local = base.generate([prompt_ids], max_new_tokens=16, adapters=adapter)[0]
        pieces: list[str] = []
        got = remote.generate([prompt_ids], max_new_tokens=16, adapters=adapter, on_text=pieces.append)[0]
        assert (got.text, got.token_ids, got.finish_reason) == (local.text, local.token_ids, local.finish_reason)
        assert "".join(pieces) == got.text and got.prompt_tokens == len(prompt_ids)
        mean = sum(got.token_logprobs) / len(got.token_logprobs)
        # the engine's are its decode loop's; a bfloat16 model rounds the incremental and the one-pass logits apart
        tol = 2e-2 if base.dtype == torch.bfloat16 else 1e-3
        assert mean == pytest.approx(QueryEngine._mean_logprob(base, prompt_ids, local.token_ids, adapter), abs=tol)
        texts.append(got.token_ids)
    assert texts[0] != texts[1]  # the adapter was applied on the engine
    name = adapter_name(ad)
    assert [p.name for p in (tmp_path / "exported").iterdir()] == [name]
    listed = call(engine, "GET", "/v1/models").json()["data"]
    assert listed[0]["pmem_fingerprint"] == base.fingerprint
    assert [(m["id"], m["parent"]) for m in listed[1:]] == [(name, listed[0]["id"])]
    # two rows with different adapters in one call; the engine decodes them together (continuous batching).
    # Equal to one at a time in float32; in bfloat16 a batch of two rounds apart from one row (see
    # memory.models.batching), so there the rows' answers must start as their own adapter's answer does
    both = remote.generate([prompt_ids, prompt_ids], max_new_tokens=16, adapters=[None, ad])
    n = 16 if base.dtype == torch.float32 else 6
    assert [g.token_ids[:n] for g in both] == [t[:n] for t in texts]
    # vLLM's ignore_eos goes through: the answer runs on past its end-of-turn token to max_new_tokens
    short = base.generate([prompt_ids], max_new_tokens=48)[0]
    assert short.finish_reason == "eos"
    long = remote.generate([prompt_ids], max_new_tokens=48, ignore_eos=True)[0]
    assert len(long.token_ids) == 48 and long.finish_reason == "length"


@pytest.mark.slow
def test_an_engine_that_forgot_the_adapter_gets_it_again(engine: ServerProcess, base: Any, tmp_path) -> None:
    """After the engine lost the adapter (as after a restart), the next request loads it again and answers."""
    from memory.models.remote import RemoteEngine, adapter_name

    remote = RemoteEngine(engine.url, base=base, adapter_dir=tmp_path / "exported", api_key=ENGINE_KEY)
    ad = _adapter(base, seed=1)
    first = remote.generate(PROMPT, max_new_tokens=8, adapters=ad)[0].text
    r = call(engine, "POST", "/v1/unload_lora_adapter", json={"lora_name": adapter_name(ad)})
    assert r.status_code == 200
    assert remote.generate(PROMPT, max_new_tokens=8, adapters=ad)[0].text == first
    assert httpx.get(f"{engine.url}/v1/models", timeout=10).status_code == 401  # the engine's key is required


def loaded(engine: ServerProcess) -> set[str]:
    """The adapters the engine holds now."""
    return {m["id"] for m in call(engine, "GET", "/v1/models").json()["data"] if m["parent"]}


@pytest.mark.slow
def test_the_engine_unloads_the_least_recently_used(engine: ServerProcess, base: Any, tmp_path) -> None:
    """Loading a third adapter unloads the one used least recently (not the one loaded first); a request for it
    answers 404 and the remote backend loads it again, with the same answer."""
    from memory.models.remote import RemoteEngine, adapter_name

    remote = RemoteEngine(engine.url, base=base, adapter_dir=tmp_path / "exported", api_key=ENGINE_KEY)
    ads = [_adapter(base, seed) for seed in (10, 11, 12)]
    names = [adapter_name(a) for a in ads]
    first = [remote.generate(PROMPT, max_new_tokens=6, adapters=a)[0].text for a in ads[:2]]
    assert loaded(engine) == set(names[:2])  # earlier tests' adapters were unloaded to make room
    remote.generate(PROMPT, max_new_tokens=6, adapters=ads[0])  # ads[0] is now the more recently used
    remote.generate(PROMPT, max_new_tokens=6, adapters=ads[2])
    assert loaded(engine) == {names[0], names[2]}
    assert remote.generate(PROMPT, max_new_tokens=6, adapters=ads[1])[0].text == first[1]  # 404, loaded again
    assert loaded(engine) == {names[2], names[1]}
    r = call(engine, "POST", "/v1/completions", json={"model": names[0], "prompt": [1, 2, 3], "max_tokens": 1})
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"


@pytest.mark.slow
def test_exports_beyond_max_exports_are_removed(engine: ServerProcess, base: Any, tmp_path) -> None:
    """With max_exports=2, a third export removes the least recently used directory and unloads it from the
    engine; asking for it again exports and loads it again and answers the same."""
    from memory.errors import ValidationError
    from memory.models.remote import RemoteEngine, adapter_name

    exported = tmp_path / "exported"
    remote = RemoteEngine(engine.url, base=base, adapter_dir=exported, api_key=ENGINE_KEY, max_exports=2)
    (exported / ".pmem-0123456789abcdef.tmp-dead").mkdir(parents=True)  # a write that died an hour ago
    os.utime(exported / ".pmem-0123456789abcdef.tmp-dead", (time.time() - 7200,) * 2)
    (exported / "notes").mkdir()  # not an export: never touched
    ads = [_adapter(base, seed) for seed in (20, 21, 22)]
    names = [adapter_name(a) for a in ads]
    first = [remote.generate(PROMPT, max_new_tokens=6, adapters=a)[0].text for a in ads[:2]]
    remote.generate(PROMPT, max_new_tokens=6, adapters=ads[0])  # ads[1] is now the least recently used
    remote.generate(PROMPT, max_new_tokens=6, adapters=ads[2])
    assert {p.name for p in exported.iterdir()} == {names[0], names[2], "notes"}
    assert names[1] not in loaded(engine) and names[1] not in remote._loaded
    assert remote.generate(PROMPT, max_new_tokens=6, adapters=ads[1])[0].text == first[1]
    assert {p.name for p in exported.iterdir()} == {names[2], names[1], "notes"}
    with pytest.raises(ValidationError, match="max_exports"):
        RemoteEngine(engine.url, base=base, adapter_dir=exported, max_exports=0)


@pytest.mark.slow
def test_memory_server_answers_through_the_engine(engine: ServerProcess, base: Any, tmp_path: Path) -> None:
    """A memory server with PMEM_GENERATION_URL answers parametric and hybrid queries on the engine, with the
    document's adapter loaded there, and the answers equal the in-process (local model) greedy answers; after
    the engine unloaded that adapter to make room for others, the server loads it again and answers the same."""
    from _embedders import BagOfWords

    from memory.api import ParametricMemory
    from memory.config import Settings

    home = tmp_path / "home"
    mem = ParametricMemory(Settings.from_env(home=home), embedder=BagOfWords())
    mem.add("The vault code is 7342. Only the night guard knows it.", document_id="vault")
    adapter = mem.internalize("vault", method="d2l")
    question = "What is the vault code?"
    local = {
        mode: mem.query(question, mode=mode, document_ids=["vault"], max_new_tokens=16, log=False)
        for mode in ("parametric", "hybrid", "auto")
    }
    exported = tmp_path / "exported"
    env = server_env(
        home,
        PMEM_TEST_NO_AUTH="1",
        PMEM_GENERATION_URL=engine.url,
        PMEM_GENERATION_API_KEY=ENGINE_KEY,
        PMEM_GENERATION_ADAPTER_DIR=str(exported),
    )
    server = ServerProcess(env, tmp_path / "server.log")
    try:
        server.wait_ready()
        for mode, expected in local.items():
            r = httpx.post(
                f"{server.url}/v1/namespaces/default/query",
                json={"question": question, "mode": mode, "document_ids": ["vault"], "max_new_tokens": 16},
                timeout=600,
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["mode"], body["answer"]) == (expected.mode, expected.answer), (mode, body)
            assert [a["id"] for a in body["adapters"]] == [a.id for a in expected.adapters]
            if expected.confidence is not None:  # auto checked the adapted answer: with the engine's logprobs
                assert body["confidence"] == pytest.approx(expected.confidence, abs=1e-3)
        assert [a.id for a in local["parametric"].adapters] == [adapter.id]
        # streamed through the server: the engine's tokens arrive as token events and join to the answer
        stream = {"question": question, "mode": "parametric", "document_ids": ["vault"], "max_new_tokens": 16}
        with httpx.stream(
            "POST", f"{server.url}/v1/namespaces/default/query", json={**stream, "stream": True}, timeout=600
        ) as r:
            events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
        assert "".join(e["text"] for e in events[:-1]) == events[-1]["answer"] == local["parametric"].answer
        assert len(list(exported.iterdir())) == 1  # one adapter, exported once for both queries
        # other adapters fill the engine (--max-loras 2): the document's adapter is unloaded there
        from memory.models.remote import RemoteEngine

        other = RemoteEngine(engine.url, base=base, adapter_dir=tmp_path / "others", api_key=ENGINE_KEY)
        for seed in (30, 31):
            other.generate(PROMPT, max_new_tokens=2, adapters=_adapter(base, seed))
        assert len(loaded(engine)) == MAX_LORAS and not loaded(engine) & {p.name for p in exported.iterdir()}
        r = httpx.post(
            f"{server.url}/v1/namespaces/default/query",
            json=stream,
            timeout=600,
        )
        assert r.status_code == 200 and r.json()["answer"] == local["parametric"].answer, r.text
        assert "no longer knows adapter" in server.log()  # the engine's 404, then loaded again
        assert ENGINE_KEY not in server.log()
    finally:
        server.stop()
