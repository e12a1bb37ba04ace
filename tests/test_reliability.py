"""Issue 14: races, stale state, path escapes, leaks and unbounded input, each reproduced then fixed.

Every test here runs on the embedded SQLite database and on the real PostgreSQL server where the path
uses a database, and with real processes where the finding is about two of them.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from _embedders import BagOfWords

from memory.api import ParametricMemory
from memory.errors import IntegrityError, ValidationError
from memory.services.query import QueryEngine

TEXT = "The vault code is 7342.\n\nThe backup vault is in Lyon."


# ---------------------------------------------------------------- 14.1 sweep vs a concurrent writer
def _swept_after_put(writer: ParametricMemory, sweep) -> None:
    """Run ``sweep()`` right after ``writer``'s next blob write, before its rows commit."""
    real_put = writer.blobs.put
    fired = []

    def put(data: bytes) -> str:
        sha = real_put(data)
        if not fired:
            fired.append(sha)
            sweep()
        return sha

    writer.blobs.put = put  # type: ignore[method-assign]


def test_gc_between_a_writers_blob_and_its_commit_keeps_the_blob(backend_settings):
    a, b = ParametricMemory(backend_settings), ParametricMemory(backend_settings)
    _swept_after_put(b, a.gc)
    b.add(TEXT, document_id="b")
    assert b.get("b", with_text=True).text == TEXT
    assert a.gc() == []


def test_delete_of_same_text_during_a_writers_add_keeps_the_blob(backend_settings):
    a, b = ParametricMemory(backend_settings), ParametricMemory(backend_settings)
    a.add(TEXT, document_id="a")
    _swept_after_put(b, lambda: a.delete("a"))
    b.add(TEXT, document_id="b")
    assert b.get("b", with_text=True).text == TEXT


def _gc_loop(settings, seconds: float, out) -> None:
    mem = ParametricMemory(settings)
    end, runs = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        mem.gc()
        runs += 1
    out.put(runs)


def test_gc_in_another_process_never_strands_a_writer(backend_settings):
    """One process sweeps non-stop while this one adds and deletes documents sharing their texts."""
    mem = ParametricMemory(backend_settings)
    mem.add("warm-up", document_id="w")  # schema and namespace exist before the race starts
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_gc_loop, args=(backend_settings, 8.0, out))
    proc.start()
    try:
        texts = [f"Shared text number {i}: the code is {i * 7}." for i in range(4)]
        i = 0
        deadline = time.monotonic() + 20
        while proc.is_alive() and time.monotonic() < deadline:
            t = texts[i % len(texts)]
            mem.add(t, document_id=f"d{i % 6}")
            if i % 3 == 2:
                mem.delete(f"d{(i + 1) % 6}") if _exists(mem, f"d{(i + 1) % 6}") else None
            i += 1
        assert out.get(timeout=60) > 1
    finally:
        proc.join(timeout=60)
    for info in mem.list(limit=1000):
        assert mem.get(info.id, with_text=True).text  # every committed row has its blob


def _exists(mem: ParametricMemory, doc_id: str) -> bool:
    return any(d.id == doc_id for d in mem.list(limit=1000))


# ---------------------------------------------------------------- 14.2 corrupt blob repair
def test_re_adding_the_text_repairs_a_corrupt_blob(mem):
    sha = mem.add(TEXT, document_id="v").document.version.content_sha256
    path = mem.blobs._path(sha)
    with open(path, "r+b") as f:
        f.write(b"X")
    with pytest.raises(IntegrityError, match="corrupt"):
        mem.get("v", with_text=True)
    assert mem.add(TEXT, document_id="v").status == "unchanged"
    assert mem.get("v", with_text=True).text == TEXT


# ---------------------------------------------------------------- 14.4 metadata that JSON cannot hold
@pytest.mark.parametrize(
    "bad",
    [
        {"score": float("nan")},
        {"score": float("inf")},
        {"nested": {"x": [1, float("-inf")]}},
        {"tags": {"a", "b"}},
        {"raw": b"bytes"},
        {1: "int key"},
        {"when": object()},
    ],
)
def test_metadata_json_cannot_hold_is_refused_and_search_keeps_working(backend_settings, bad):
    mem = ParametricMemory(backend_settings, embedder=BagOfWords())
    mem.add("Refunds are accepted within 30 days.", document_id="ok", metadata={"team": "support"})
    with pytest.raises(ValidationError, match="metadata"):
        mem.add("A poisoned document.", document_id="bad", metadata=bad)
    assert [d.id for d in mem.list()] == ["ok"]
    assert mem.search("refunds", k=2, filter={"team": "support"})[0].document_id == "ok"


def test_finite_json_metadata_round_trips(mem):
    md = {"score": 1.5, "n": -3, "ok": True, "none": None, "tags": ["a", "b"], "nested": {"x": 0.0}}
    mem.add("Kept with its metadata.", document_id="m", metadata=md)
    assert mem.get("m").metadata == md


# ---------------------------------------------------------------- 14.12 validators
@pytest.mark.parametrize("doc_id", ["policy\n", "a" * 255 + "\n", "a" * 256, "x" * 4000])
def test_document_ids_with_a_trailing_newline_or_over_long_are_a_clear_error(mem, doc_id):
    with pytest.raises(ValidationError, match="invalid document id"):
        mem.add(TEXT, document_id=doc_id)
    assert mem.list() == []


@pytest.mark.parametrize("ns", ["team\n", "a" * 65])
def test_namespaces_with_a_trailing_newline_or_over_long_are_a_clear_error(mem, ns):
    with pytest.raises(ValidationError, match="invalid namespace"):
        mem.add(TEXT, document_id="d", namespace=ns)


def test_over_long_title_is_a_clear_error(mem):
    with pytest.raises(ValidationError, match="title"):
        mem.add(TEXT, document_id="d", title="t" * 513)
    assert mem.add(TEXT, document_id="d", title="t" * 512).document.title == "t" * 512


# ---------------------------------------------------------------- 14.8 secrets
SECRET = "s3cr3t-pw"


@pytest.fixture
def secret_settings(pg_url, tmp_path):
    """Settings whose URLs carry a password (the test server trusts any password, so they work)."""
    from memory.config import Settings
    from memory.db import migrate

    url = pg_url.replace("postgres@", f"postgres:{SECRET}@")
    migrate.upgrade(url)
    return Settings.from_env(
        home=tmp_path / "h",
        database_url=url,
        broker_url=f"redis://:{SECRET}@127.0.0.1:6399/0",
        blob_url=str(tmp_path / "blobs"),
    )


def test_chat_model_and_llm_never_show_the_urls_passwords(secret_settings):
    import json

    from langchain_core.load import dumpd, dumps

    from integrations.langchain import ParametricChatModel
    from integrations.llamaindex import ParametricLLM

    mem = ParametricMemory(secret_settings)
    assert SECRET not in repr(secret_settings) and "***" in repr(secret_settings)
    for obj in (
        ParametricChatModel(memory=mem, settings=secret_settings, max_tokens=8),
        ParametricChatModel(settings=secret_settings),
    ):
        shown = [
            repr(obj),
            str(obj),
            str(obj.model_dump()),
            json.dumps(dumpd(obj), default=str),
            dumps(obj),
            obj.model_dump_json(),
            str(obj._identifying_params),
        ]
        assert not [s for s in shown if SECRET in s]
    llm = ParametricLLM(memory=mem, settings=secret_settings)
    shown = [repr(llm), str(llm), str(llm.model_dump()), llm.model_dump_json(), llm.to_json(), str(llm.metadata)]
    assert not [s for s in shown if SECRET in s]
    assert SECRET not in repr(mem)


def test_job_rows_and_cli_errors_never_hold_a_password(secret_settings, monkeypatch, capsys):
    from memory.jobs import JobStore, describe

    store = JobStore.for_memory(ParametricMemory(secret_settings))
    job, _ = store.create("ingest", {"spec": "docs/"})
    err = ConnectionError(f"Error connecting to {secret_settings.broker_url}: refused")
    assert SECRET not in describe(err)
    store.fail(job.id, f"OperationalError: could not reach {secret_settings.database_url}")
    assert SECRET not in (store.get(job.id).error or "") and "***" in store.get(job.id).error

    from typer.testing import CliRunner

    from memory.cli import app

    monkeypatch.setenv("PMEM_DATABASE_URL", f"postgresql://postgres:{SECRET}@127.0.0.1:5432/no_such_db_here")
    result = CliRunner().invoke(app, ["ls", "--json"])
    assert result.exit_code != 0
    assert SECRET not in result.output + str(result.exception or "")


# ---------------------------------------------------------------- 14.13 / 14.10: the pmem add and ingest commands
def _pmem(*args: str, input: bytes | None = None, env: dict | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "pmem")
    return subprocess.run(
        [exe, *args], input=input, capture_output=True, timeout=180, env={**os.environ, **(env or {})}
    )


def test_pmem_add_dir_reports_failed_files_and_exits_1(tmp_path):
    import json

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("Lockers are emptied on Fridays.\n")
    (docs / "empty.txt").write_text("   \n")
    p = _pmem("add", str(docs))
    assert p.returncode == 1, p.stderr
    assert b"Traceback" not in p.stderr
    assert b"good.txt" in p.stdout and b"empty.txt" in p.stderr and b"empty" in p.stderr

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_text("\n")
    p = _pmem("add", str(bad), "--json")
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    assert [r["status"] for r in json.loads(p.stdout.splitlines()[-1])] == ["failed"]


def test_pmem_add_stdin_is_bounded(tmp_path):
    """An endless stdin stops at the document limit instead of filling memory."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    endless = subprocess.Popen(["yes", "word"], stdout=subprocess.PIPE)
    try:
        p = subprocess.run(
            [str(Path(sys.executable).parent / "pmem"), "add", "-", "--id", "big"],
            stdin=endless.stdout,
            capture_output=True,
            timeout=90,
            env={**os.environ, "PMEM_MAX_DOCUMENT_BYTES": "100000"},
        )
    finally:
        endless.kill()
        endless.wait()
    assert p.returncode == 2 and b"over the limit" in p.stderr and b"Traceback" not in p.stderr
    p = _pmem("add", "-", "--id", "small", input=b"word " * 100, env={"PMEM_MAX_DOCUMENT_BYTES": "1000"})
    assert p.returncode == 0, p.stderr


def test_pmem_ingest_json_with_the_broker_down_is_a_json_error(tmp_path):
    import json
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "a.txt").write_text("Visitors park on level two.\n")
    p = _pmem(
        "ingest", str(tmp_path / "a.txt"), "--json", env={"PMEM_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:{port}/0"}
    )
    assert p.returncode == 2 and b"Traceback" not in p.stderr, p.stderr[-2000:]
    err = json.loads(p.stdout.splitlines()[-1])
    assert "unreachable" in err["error"] and SECRET not in p.stdout.decode() + p.stderr.decode()


# ---------------------------------------------------------------- 14.9 text without spaces
@pytest.mark.parametrize("kind", ["cjk", "base64", "cjk-file"])
def test_text_without_spaces_is_chunked_within_the_token_bound(tmp_path, kind):
    import base64
    import os

    mem = ParametricMemory(home=tmp_path / "h", chunk_tokens=128)
    if kind == "base64":
        text = base64.b64encode(os.urandom(60_000)).decode()
    else:
        text = "数据库中的每一个文档都被存储在模型的权重里面" * 2000
    if kind == "cjk-file":
        (tmp_path / "zh.txt").write_text(text, encoding="utf-8")
        [r] = mem.add_source(str(tmp_path / "zh.txt"))
        doc = r.document.id
    else:
        doc = mem.add(text, document_id="dense").document.id
    chunks = mem.chunks(doc)
    assert len(chunks) > 10
    # A CJK character is at least one token of any tokenizer; base64 at least one per 3-4 characters.
    per_token = 1 if kind.startswith("cjk") else 4
    assert max(len(c.text) for c in chunks) <= 128 * per_token
    assert "".join(c.text for c in chunks) == text  # nothing lost between chunks


# ---------------------------------------------------------------- 14.10 .docx and PDF bounds
def _rezip(data: bytes, extra: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        for name, body in extra.items():
            dst.writestr(name, body, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def test_docx_zip_bomb_is_refused_by_ratio_and_by_the_document_limit():
    from _fixtures_ingest import docx_bytes

    from memory.errors import IngestError
    from memory.ingest import partition_bytes

    good = docx_bytes()
    assert partition_bytes(good, "ok.docx").text.strip()
    bomb = _rezip(good, {"customXml/item9.xml": b"<a>" + b" " * (40 * 1024 * 1024) + b"</a>"})
    assert len(bomb) < 256 * 1024
    with pytest.raises(IngestError, match="zip bomb"):
        partition_bytes(bomb, "bomb.docx")
    # Unpacked size is bounded by the document limit too (here 1 MB: the 3 MB member is too much).
    padded = _rezip(good, {"customXml/item9.xml": bytes(range(256)) * (3 * 4096)})
    with pytest.raises(IngestError, match="unpacks to"):
        partition_bytes(padded, "big.docx", max_bytes=1024 * 1024)


def _flate_pdf(pages: list[bytes]) -> bytes:
    """A valid PDF whose page content streams are Flate-compressed (``pages``: each page's raw content)."""
    import io
    import zlib

    objects: list[bytes] = [b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    pages_id = 1 + 2 * len(pages) + 1
    kids = []
    for content in pages:
        z = zlib.compress(content, 9)
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(z) + z + b"\nendstream")
        objects.append(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 1 0 R >> >>"
            b" /Contents %d 0 R >>" % (pages_id, len(objects))
        )
        kids.append(len(objects))
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids)))
    objects.append(b"<< /Type /Catalog /Pages %d 0 R >>" % len(objects))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, len(objects), xref)
    )
    return out.getvalue()


def test_pdf_decompression_bomb_and_page_count_are_bounded():
    import time

    from memory.errors import IngestError
    from memory.ingest import partition_bytes
    from memory.ingest.pdf import extract_pdf

    text = b"BT /F1 12 Tf 72 700 Td (Refunds are paid within 14 days.) Tj ET"
    ok = _flate_pdf([text, text.replace(b"14", b"30")])
    assert "14 days" in partition_bytes(ok, "ok.pdf").text
    bomb = _flate_pdf([text + b"\n%" + b" " * (200 * 1024 * 1024)])  # 200 MB of padding in ~200 KB
    assert len(bomb) < 512 * 1024
    t0 = time.perf_counter()
    with pytest.raises(IngestError, match="decompression bomb"):
        partition_bytes(bomb, "bomb.pdf", max_bytes=1024 * 1024)
    assert time.perf_counter() - t0 < 30
    assert "14 days" in partition_bytes(ok, "ok.pdf").text  # the bound was for that one PDF only
    with pytest.raises(IngestError, match="more than 1 pages"):
        extract_pdf(ok, "two.pdf", max_pages=1)


# ---------------------------------------------------------------- 14.5 sources
def test_relative_directory_source_is_resolved_at_registration(tmp_path, monkeypatch):
    from memory.refresh import refresh_sources

    work = tmp_path / "work"
    (work / "policies").mkdir(parents=True)
    (work / "policies" / "leave.md").write_text("# Leave\n\nThirty days of paid leave.\n")
    monkeypatch.chdir(work)
    mem = ParametricMemory(home=tmp_path / "h")
    [r] = mem.add_source("policies/", refresh_interval_s=60)
    assert r.status == "created"
    assert mem.sources()[0]["uri"] == str(work / "policies")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the refreshing process (a worker, cron) runs somewhere else
    report = refresh_sources(mem, force=True)
    assert [d.id for d in mem.list()] == ["leave.md"]
    assert not report.to_dict().get("removed") and mem.get("leave.md", with_text=True).text.endswith("paid leave.")


def test_two_sources_with_the_same_relative_path_do_not_replace_each_other(mem, tmp_path):
    for team, fact in (("teamA", "Team A meets on Mondays."), ("teamB", "Team B meets on Fridays.")):
        (tmp_path / team).mkdir()
        (tmp_path / team / "index.json").write_text(f'{{"note": "{fact}"}}')
    [a] = mem.add_source(str(tmp_path / "teamA"))
    assert a.status == "created" and a.document.id == "index.json"
    [b] = mem.add_source(str(tmp_path / "teamB"))
    assert b.status == "failed" and "already comes from the source" in b.error
    assert "Team A" in mem.get("index.json", with_text=True).text
    # teamA refreshes and prunes: its document stays; teamB pruning removes nothing of teamA's
    assert [r.status for r in mem.add_source(str(tmp_path / "teamA"), prune_missing=True)] == ["unchanged"]
    assert [r.status for r in mem.add_source(str(tmp_path / "teamB"), prune_missing=True)] == ["failed"]
    assert "Team A" in mem.get("index.json", with_text=True).text


def test_glob_does_not_follow_a_symlinked_directory_out_of_the_root(tmp_path):
    import os

    docs, outside = tmp_path / "docs", tmp_path / "outside"
    (docs / "team").mkdir(parents=True)
    outside.mkdir()
    (docs / "team" / "notes.txt").write_text("Team notes.\n")
    (outside / "secret.txt").write_text("The root password is hunter2.\n")
    os.symlink(outside, docs / "link")
    mem = ParametricMemory(home=tmp_path / "h")
    results = mem.add_source(str(docs / "*" / "*.txt"))
    assert [r.document.id for r in results] == ["team/notes.txt"]
    assert all("hunter2" not in (mem.get(d.id, with_text=True).text or "") for d in mem.list())


# ---------------------------------------------------------------- 14.11 query bounds
@pytest.fixture
def tiny_mem(tmp_path):
    from _fixtures_models import tiny_base

    mem = ParametricMemory(home=tmp_path / "h", embedder=BagOfWords())
    mem.runtime._base_model = tiny_base()
    return mem


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"question": "x" * 100_000}, "question is"),
        ({"k": 0}, "k must be"),
        ({"k": 10**6}, "k must be"),
        ({"k": True}, "k must be"),
        ({"max_new_tokens": 10**7}, "max_new_tokens must be"),
        ({"max_new_tokens": 0}, "max_new_tokens must be"),
    ],
)
def test_query_bounds_question_k_and_max_new_tokens(tiny_mem, kwargs, match):
    args = {"question": "what opens the vault?", **kwargs}
    with pytest.raises(ValidationError, match=match):
        tiny_mem.query(args.pop("question"), mode="retrieval", **args)


def test_query_prompt_is_kept_inside_the_model_window(tiny_mem):
    base = tiny_mem.runtime._base_model
    base.model.config.max_position_embeddings = window = 700  # the tiny model counts one token per character
    for i in range(8):
        tiny_mem.add(f"the vault {i} opens with code {i}{i}{i}. " * 4, document_id=f"v{i}")
    r = tiny_mem.query("what opens the vault?", mode="retrieval", k=8, max_new_tokens=16, log=False)
    assert r.prompt_tokens + 16 <= window
    assert 0 < len(r.chunks) < 8  # the passages that did not fit were left out
    with pytest.raises(ValidationError, match="window"):
        tiny_mem.query("what opens the vault? " * 40, mode="retrieval", k=1, max_new_tokens=16, log=False)


def test_mean_logprob_runs_the_vocabulary_head_on_the_answer_positions_only(tiny_mem):
    import torch

    base = tiny_mem.runtime._base_model
    prompt, answer = list(range(2, 40)) * 3, [5, 6, 7, 8]
    rows: list[int] = []
    hook = base.model.lm_head.register_forward_hook(lambda m, i, o: rows.append(o.shape[1]))
    try:
        got = QueryEngine._mean_logprob(base, prompt, answer, None)
    finally:
        hook.remove()
    assert rows == [len(answer) + 1]
    with torch.no_grad():  # the reference: every position's logits
        logits = base.forward(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].float()
    want = float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(answer)[:, None]).mean())
    assert got == pytest.approx(want, abs=1e-5)


# ---------------------------------------------------------------- 14.14 SQLite lock while embedding
class _SlowEmbedder(BagOfWords):
    """Embedding a batch takes a while (as a real model does on CPU)."""

    def __init__(self, started, seconds: float) -> None:
        self.started, self.seconds = started, seconds

    def embed_documents(self, texts):
        self.started.set()
        time.sleep(self.seconds)
        return super().embed_documents(texts)


def _add_and_time(home, out) -> None:
    t0 = time.monotonic()
    ParametricMemory(home=home).add("Written while another process embeds.", document_id="writer")
    out.put(time.monotonic() - t0)


def test_sqlite_write_lock_is_not_held_while_chunks_are_embedded(tmp_path):
    import threading

    home = tmp_path / "h"
    mem = ParametricMemory(home=home)
    for i in range(5):
        mem.add(f"Document {i} about lockers and parking.", document_id=f"d{i}")
    started = threading.Event()
    mem.embedder = _SlowEmbedder(started, seconds=20.0)
    searcher = threading.Thread(target=lambda: mem.search("lockers", k=2))
    searcher.start()
    assert started.wait(60)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    writer = ctx.Process(target=_add_and_time, args=(home, out))
    writer.start()
    try:
        took = out.get(timeout=120)
    finally:
        writer.join(timeout=60)
        searcher.join(timeout=120)
    assert took < 12.0, f"the other process's add waited {took:.1f} s for the embedding to finish"


# ---------------------------------------------------------------- 14.15 resume without executing pickles
class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_training_resume_refuses_a_state_that_runs_code(tmp_path):
    import pathlib
    import random

    import torch

    from memory.training import load_resume_state

    net = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(net.parameters(), betas=(0.9, 0.99))
    net(torch.ones(1, 4)).sum().backward()
    opt.step()
    good = tmp_path / "state.pt"
    torch.save(
        {
            "net": net.state_dict(),
            "opt": opt.state_dict(),
            "step": 3,
            "best": float("inf"),
            "elapsed": 1.5,
            "rng": random.Random(1).getstate(),
            "args": {"out": pathlib.Path("/tmp/run"), "lr": 1e-3},
        },
        good,
    )
    state = load_resume_state(good)
    assert state["step"] == 3 and torch.equal(state["net"]["weight"], net.state_dict()["weight"])
    opt.load_state_dict(state["opt"])

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"net": net.state_dict(), "step": _Payload(str(marker))}, evil)
    with pytest.raises(ValidationError, match="run code"):
        load_resume_state(evil)
    assert not marker.exists()


def test_refresh_with_ingest_roots_skips_sources_outside_them(tmp_path):
    from memory.refresh import refresh_sources

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for d, text in ((allowed, "Allowed notes.\n"), (outside, "Registered elsewhere.\n")):
        d.mkdir()
        (d / f"{d.name}.txt").write_text(text)
    mem = ParametricMemory(home=tmp_path / "h")
    mem.add_source(str(allowed), refresh_interval_s=60)
    mem.add_source(str(outside), namespace="other", refresh_interval_s=60)
    (outside / "outside.txt").write_text("Changed, but this worker may not read it.\n")
    report = refresh_sources(mem, force=True, roots=str(allowed)).to_dict()
    errors = {c["source"]: c["error"] for c in report["checked"]}
    assert errors[str(allowed)] is None and "outside" in errors[str(outside)]
    assert mem.get("outside.txt", namespace="other", with_text=True).text == "Registered elsewhere."
