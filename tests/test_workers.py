"""Celery workers: configuration, the embedded code path, the CLI commands, and real worker processes on Redis.

Run: .venv/bin/python -m pytest tests/test_workers.py -q -x          (add -m "not slow" to skip the real model)

The crash and race tests use a stub for the *compute* of an internalization only (``_fixtures_workers``);
the end-to-end test runs the real internalizer on the real 135M base model in a real worker.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
import typer
from _fixtures_ingest import write_corpus
from _fixtures_workers import WorkerProcess, markers, purge_prefix, wait_for, worker_env
from typer.testing import CliRunner

STUB = "_fixtures_workers:stub_internalize"


# ---------------------------------------------------------------- configuration
def test_app_routes_queues_and_reliability(monkeypatch):
    from memory.config import Settings
    from workers.app import celery_config, create_app

    conf = celery_config(
        Settings(broker_url="redis://localhost:6379/5"),
        env={"PMEM_VISIBILITY_TIMEOUT_S": "7200", "PMEM_BROKER_KEYPREFIX": "t1:"},
    )
    assert conf["task_routes"]["workers.tasks.internalize_version"]["queue"] == "internalize"
    assert conf["task_routes"]["workers.tasks.ingest_source"]["queue"] == "ingest"
    assert conf["task_routes"]["workers.tasks.refresh_sources"]["queue"] == "ingest"
    assert {q.name for q in conf["task_queues"]} == {"ingest", "internalize"}
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert conf["broker_transport_options"]["visibility_timeout"] == 7200
    assert conf["broker_transport_options"]["global_keyprefix"] == "t1:"
    # the default visibility timeout outlasts a long CPU/GPU internalization
    assert celery_config(Settings(), env={})["broker_transport_options"]["visibility_timeout"] >= 3600
    assert celery_config(Settings(), env={})["broker_url"] == "memory://"  # embedded: never published

    monkeypatch.setenv("PMEM_REFRESH_TICK_S", "15")
    app = create_app(Settings(broker_url="redis://localhost:6379/5"))
    entry = app.conf.beat_schedule["pmem-refresh-sources"]
    assert entry["task"] == "workers.tasks.refresh_sources" and entry["schedule"] == 15.0
    import workers.tasks  # noqa: F401 - registers the tasks
    from workers.app import app as module_app

    for name in ("ingest_source", "internalize_version", "refresh_sources"):
        task = module_app.tasks[f"workers.tasks.{name}"]
        assert task.acks_late and task.reject_on_worker_lost and task.max_retries == 5

    from memory.errors import ConfigError

    with pytest.raises(ConfigError):
        celery_config(Settings(), env={"PMEM_VISIBILITY_TIMEOUT_S": "soon"})


# ---------------------------------------------------------------- embedded mode (same task bodies, in-process)
@pytest.fixture
def stub_env(monkeypatch):
    monkeypatch.setenv("PMEM_WORKER_INTERNALIZER", STUB)


def _ready_adapters(mem):
    return [a for a in mem.adapters() if a.status == "ready"]


def _corpus_with_bad_files(root: Path) -> tuple[list[Path], list[str]]:
    files = write_corpus(root, n_pdf_pages=1)
    good = [files[k] for k in ("txt", "md", "html", "csv", "pdf")]
    for p in files.values():
        if p not in good:
            p.unlink()
    (root / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj <<>>\nthis is not a pdf at all" * 3)
    (root / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (root / "empty.md").write_bytes(b"")
    with open(root / "huge.txt", "wb") as f:  # 200 MB, sparse: refused by its size before it is read
        f.truncate(200 * 1024 * 1024)
    bad = ["corrupt.pdf", "binary.txt", "empty.md", "huge.txt"]
    if os.geteuid() != 0:  # root reads anything
        (root / "locked.txt").write_text("secret")
        (root / "locked.txt").chmod(0)
        bad.append("locked.txt")
    return good, bad


def test_embedded_ingest_runs_the_task_bodies_in_process(tmp_path, stub_env):
    from memory.api import ParametricMemory
    from memory.jobs import JobStore
    from workers.tasks import submit_ingest

    mem = ParametricMemory(home=tmp_path / "home")
    assert not mem.settings.broker_url
    good, bad = _corpus_with_bad_files(tmp_path / "docs")
    job = submit_ingest(mem, str(tmp_path / "docs"), namespace="default", refresh_interval_s=60)
    assert job.state == "succeeded", job.error
    assert job.result["files"] == len(good) + len(bad)
    assert len(job.result["changed"]) == len(good) and len(job.result["failed"]) == len(bad)
    for name in bad:  # each bad file fails alone, named in the job's error and on the source
        assert name in job.error
    src = mem.sources()[0]
    assert src["refresh_interval_s"] == 60 and all(name in src["last_error"] for name in bad)
    store = JobStore.for_memory(mem)
    internalize_jobs = [store.get(i) for i in job.result["internalize_jobs"]]
    assert len(internalize_jobs) == len(good) and all(j.state == "succeeded" for j in internalize_jobs)
    ready = _ready_adapters(mem)
    assert sorted(a.document_id for a in ready) == sorted(c["document"] for c in job.result["changed"])
    # submitting the same directory again: nothing new, the existing jobs are returned, no new adapters
    again = submit_ingest(mem, str(tmp_path / "docs"))
    assert again.result["unchanged"] == len(good) and not again.result["changed"]
    assert sorted(again.result["internalize_jobs"]) == sorted(job.result["internalize_jobs"])
    assert len(mem.adapters()) == len(good)


def test_ingest_of_only_bad_files_fails_the_job(tmp_path, stub_env):
    from memory.api import ParametricMemory
    from workers.tasks import submit_ingest

    mem = ParametricMemory(home=tmp_path / "home")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "empty.txt").write_bytes(b"")
    job = submit_ingest(mem, str(tmp_path / "bad"))
    assert job.state == "failed" and "empty.txt" in job.error and job.attempts == 1
    missing = submit_ingest(mem, str(tmp_path / "nowhere"))
    assert missing.state == "failed" and "no such file or directory" in missing.error


def test_embedded_submit_finishes_a_job_left_running_by_a_dead_process(tmp_path, stub_env):
    from memory.api import ParametricMemory
    from memory.jobs import JobStore
    from memory.refresh import version_id_for
    from workers.tasks import internalize_key, submit_internalize

    mem = ParametricMemory(home=tmp_path / "home")
    info = mem.add("The canteen opens at noon.", document_id="canteen")
    vid = version_id_for(mem, "default", "canteen", 1)
    store = JobStore.for_memory(mem)
    from memory.models import base_fingerprint

    key = internalize_key(info.document.version.content_sha256, vid, "auto", base_fingerprint(settings=mem.settings))
    orphan, _ = store.create(
        "internalize", {"version_id": vid, "method": "auto"}, namespace="default", idempotency_key=key
    )
    store.start(orphan.id)  # ... and the process died here
    job = submit_internalize(mem, vid)
    assert job.id == orphan.id and job.state == "succeeded" and job.attempts == 2
    assert [a.status for a in mem.adapters()] == ["ready"]


def test_internalize_submission_is_idempotent(tmp_path, stub_env):
    from memory.api import ParametricMemory
    from memory.refresh import version_id_for
    from workers.tasks import submit_internalize

    mem = ParametricMemory(home=tmp_path / "home")
    mem.add("The vault code is 7342.", document_id="vault")
    vid = version_id_for(mem, "default", "vault", 1)
    a = submit_internalize(mem, vid)
    b = submit_internalize(mem, vid)
    assert a.id == b.id and a.state == b.state == "succeeded" and b.attempts == 1
    forced = submit_internalize(mem, vid, force=True)
    assert forced.id != a.id and forced.state == "succeeded"
    assert len(mem.adapters()) == 1  # force recomputes, the (version, hypernetwork) row stays one
    from memory.errors import NotFoundError

    with pytest.raises(NotFoundError):
        submit_internalize(mem, 99999)


# ---------------------------------------------------------------- the broker interface (memory.submission.Broker)
@pytest.fixture
def fresh_broker():
    """``broker()`` is loaded once per process: forget it around a test that changes the entry points."""
    from memory.submission import broker

    broker.cache_clear()
    yield broker
    broker.cache_clear()


def test_the_core_finds_the_celery_broker_through_its_entry_point(fresh_broker):
    from workers.tasks import CeleryBroker

    assert isinstance(fresh_broker(), CeleryBroker)


@pytest.mark.parametrize(
    "found, match",
    [
        ([], r"no broker is installed.*parametric-memory\[workers\]"),
        ([("celery", "pmem_no_such_module:Broker")], r"cannot be imported.*parametric-memory\[workers\]"),
        ([("a", "workers.tasks:CeleryBroker"), ("b", "workers.tasks:CeleryBroker")], "several brokers"),
    ],
)
def test_a_broker_url_without_one_broker_installed_is_a_clear_error(found, match, fresh_broker, tmp_path, monkeypatch):
    """No job row is created: there is nothing to send it, and fixing the install then submitting works."""
    import importlib.metadata

    from memory.api import ParametricMemory
    from memory.errors import ConfigError
    from memory.jobs import JobStore
    from memory.submission import BROKERS, submit_refresh

    eps = [importlib.metadata.EntryPoint(name=n, value=v, group=BROKERS) for n, v in found]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == BROKERS else [])
    monkeypatch.setenv("PMEM_BROKER_URL", "redis://127.0.0.1:9/0")  # never reached
    mem = ParametricMemory(home=tmp_path / "home")
    with pytest.raises(ConfigError, match=match):
        submit_refresh(mem)
    assert JobStore.for_memory(mem).list() == []


# ---------------------------------------------------------------- CLI
@pytest.fixture
def cli():
    from workers.cli import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command, so typer keeps sub-command names
        pass

    return app


def _last_json(output: str):
    return json.loads(output.strip().splitlines()[-1])


def test_cli_ingest_jobs_refresh(tmp_path, stub_env, cli):
    runner = CliRunner()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "leave.md").write_text("# Leave\n\nTwenty days of paid leave per year.\n")
    r = runner.invoke(cli, ["ingest", str(docs), "--refresh-interval", "3600", "--json"])
    assert r.exit_code == 0, r.output
    assert _last_json(r.stdout)["job"]["state"] == "succeeded"

    r = runner.invoke(cli, ["jobs", "--json"])
    assert r.exit_code == 0, r.output
    jobs = _last_json(r.stdout)
    assert sorted(j["kind"] for j in jobs) == ["ingest", "internalize"]
    assert all(j["state"] == "succeeded" for j in jobs)
    r = runner.invoke(cli, ["jobs", "--kind", "internalize", "--json"])
    assert [j["kind"] for j in _last_json(r.stdout)] == ["internalize"]
    r = runner.invoke(cli, ["jobs"])
    assert r.exit_code == 0 and "internalize" in r.stdout

    # not due yet: nothing is re-read
    r = runner.invoke(cli, ["refresh", "--json"])
    assert r.exit_code == 0, r.output
    assert _last_json(r.stdout)["sources"] == 0
    (docs / "leave.md").write_text("# Leave\n\nThirty days of paid leave per year.\n")
    r = runner.invoke(cli, ["refresh", "--force", "--json"])
    out = _last_json(r.stdout)
    assert r.exit_code == 0 and out["sources"] == 1
    assert [(c["document"], c["version"]) for c in out["changed"]] == [("leave.md", 2)]
    r = runner.invoke(cli, ["refresh", "--force"])
    assert r.exit_code == 0 and "0 changed" in r.stderr + r.stdout

    r = runner.invoke(cli, ["jobs", "--state", "bogus"])
    assert r.exit_code == 2
    r = runner.invoke(cli, ["worker"])
    assert r.exit_code == 2 and "PMEM_BROKER_URL" in r.output


# ---------------------------------------------------------------- real Redis, real worker processes
@pytest.fixture
def broker(redis_url, tmp_path, monkeypatch):
    """A private key prefix on the test Redis, the test's PMEM_HOME, and the workers started by the test."""
    prefix = f"pmem-test-{uuid.uuid4().hex[:10]}:"
    home = tmp_path / "pmem-home"
    monkeypatch.setenv("PMEM_BROKER_URL", redis_url)
    monkeypatch.setenv("PMEM_BROKER_KEYPREFIX", prefix)
    workers: list[WorkerProcess] = []

    class Broker:
        url = redis_url

        def __init__(self) -> None:
            self.prefix, self.home = prefix, home

        def worker(self, beat: bool = False, pool: str = "solo", **extra: str) -> WorkerProcess:
            env = worker_env(home, redis_url, prefix, **extra)
            w = WorkerProcess(env, tmp_path / f"worker{len(workers)}.log", beat=beat, pool=pool)
            workers.append(w)
            return w

        def memory(self):
            from memory.api import ParametricMemory

            return ParametricMemory(home=home, broker_url=redis_url)

    yield Broker()
    for w in workers:
        w.stop()
    purge_prefix(redis_url, prefix)


def _job_done(store, job_id):
    j = store.get(job_id)
    return j if j.state in ("succeeded", "failed") else None


def _orphans(mem) -> list[str]:
    return mem.gc(dry_run=True)


@pytest.mark.services
def test_sigkilled_worker_job_is_redelivered_and_completes(broker, tmp_path, monkeypatch):
    from memory.jobs import JobStore
    from memory.refresh import version_id_for
    from workers.tasks import submit_internalize

    marks = tmp_path / "markers"
    vt = "4"  # seconds: a dead worker's message goes back to the queue this long after delivery
    monkeypatch.setenv("PMEM_VISIBILITY_TIMEOUT_S", vt)
    mem = broker.memory()
    mem.add("Refunds are paid within 14 days of the request.", document_id="refunds")
    vid = version_id_for(mem, "default", "refunds", 1)
    first = broker.worker(
        PMEM_WORKER_INTERNALIZER=STUB,
        PMEM_TEST_SLEEP_S="600",
        PMEM_TEST_MARKERS=str(marks),
        PMEM_VISIBILITY_TIMEOUT_S=vt,
    ).wait_ready()
    job = submit_internalize(mem, vid)
    assert job.state == "queued" and job.celery_id
    store = JobStore.for_memory(mem)
    wait_for(lambda: markers(marks), 60, "the first worker to start the internalization")
    assert store.get(job.id).state == "running" and store.get(job.id).attempts == 1
    time.sleep(float(vt) + 0.5)  # let the visibility timeout pass while the first worker is busy
    first.kill()
    assert mem.adapters() == [] and _orphans(mem) == []  # it died mid-compute: no adapter, no blob

    second = broker.worker(
        PMEM_WORKER_INTERNALIZER=STUB,
        PMEM_TEST_SLEEP_S="0.2",
        PMEM_TEST_MARKERS=str(marks),
        PMEM_VISIBILITY_TIMEOUT_S=vt,
    ).wait_ready()
    done = wait_for(lambda: _job_done(store, job.id), 90, "the redelivered job to finish")
    assert done.state == "succeeded", (done.error, second.log())
    assert done.attempts == 2 and done.celery_id == job.celery_id  # the same message, delivered twice
    assert len(markers(marks)) == 2
    adapters = mem.adapters()
    assert len(adapters) == 1 and adapters[0].status == "ready" and adapters[0].id == done.result["adapter_id"]
    assert _orphans(mem) == []
    blobs = {p.name for p in Path(mem.blobs.url).rglob("*") if p.is_file() and len(p.name) == 64}
    assert adapters[0].blob_sha256 in blobs


@pytest.mark.services
def test_a_job_whose_message_was_lost_is_resubmitted(broker, tmp_path):
    """A queued job with no message behind it (a broker that lost it) runs once ``resubmit_stale`` sends it again;
    fresh queued jobs and finished jobs are left alone."""
    from datetime import timedelta

    from sqlalchemy import update

    from memory.db import Job, session_factory
    from memory.jobs import JobStore
    from memory.refresh import version_id_for
    from workers.tasks import resubmit_stale

    mem = broker.memory()
    mem.add("Lockers are emptied every Friday evening.", document_id="lockers")
    mem.add("Visitors park on level two.", document_id="parking")
    store = JobStore.for_memory(mem)
    # Jobs created but never published, as after a broker restart that lost its queue.
    lost, _ = store.create(
        "internalize",
        {"version_id": version_id_for(mem, "default", "lockers", 1), "method": "auto", "force": False},
        namespace="default",
    )
    fresh, _ = store.create(
        "internalize",
        {"version_id": version_id_for(mem, "default", "parking", 1), "method": "auto", "force": False},
        namespace="default",
    )
    with session_factory(mem.engine)() as s, s.begin():
        s.execute(update(Job).where(Job.id == lost.id).values(created_at=lost.created_at - timedelta(hours=2)))
    assert [j.id for j in store.stale(3600)] == [lost.id]

    broker.worker(PMEM_WORKER_INTERNALIZER=STUB, PMEM_TEST_SLEEP_S="0").wait_ready()
    time.sleep(1.0)
    assert store.get(lost.id).state == "queued"  # nothing in the broker: the worker has nothing to do
    sent = resubmit_stale(mem, 3600)
    assert [j.id for j in sent] == [lost.id] and sent[0].celery_id
    done = wait_for(lambda: _job_done(store, lost.id), 60, "the re-sent job")
    assert done.state == "succeeded" and done.attempts == 1, done.error
    assert [a.document_id for a in mem.adapters()] == ["lockers"]
    assert store.get(fresh.id).state == "queued"  # younger than the threshold: not touched
    assert resubmit_stale(mem, 3600) == []  # the finished job is not sent again


@pytest.mark.services
def test_prefork_child_killed_is_requeued_at_once(broker, tmp_path):
    """``task_reject_on_worker_lost``: the parent requeues the message of a child killed by a signal."""
    from memory.jobs import JobStore
    from memory.refresh import version_id_for
    from workers.tasks import submit_internalize

    marks = tmp_path / "markers"
    mem = broker.memory()
    mem.add("Guests sign in at the front desk.", document_id="guests")
    vid = version_id_for(mem, "default", "guests", 1)
    w = broker.worker(
        pool="prefork",
        PMEM_WORKER_INTERNALIZER=STUB,
        PMEM_TEST_SLEEP_S="600",
        PMEM_TEST_SLEEP_FIRST_ONLY="1",
        PMEM_TEST_MARKERS=str(marks),
    ).wait_ready()
    job = submit_internalize(mem, vid)
    [first] = wait_for(lambda: markers(marks), 60, "a child to start the internalization")
    child = int(first.name.split("-")[1])
    assert child != w.proc.pid
    os.kill(child, 9)
    store = JobStore.for_memory(mem)
    done = wait_for(lambda: _job_done(store, job.id), 60, "the requeued job")  # no visibility timeout wait
    assert done.state == "succeeded" and done.attempts == 2, (done.error, w.log())
    assert len(markers(marks)) == 2 and [a.status for a in mem.adapters()] == ["ready"]
    assert _orphans(mem) == []


@pytest.mark.services
def test_two_workers_racing_on_one_version_make_one_adapter(broker, tmp_path):
    from memory.jobs import JobStore
    from memory.refresh import version_id_for
    from workers.tasks import TASK_NAMES, app_for, submit_internalize

    marks = tmp_path / "markers"
    mem = broker.memory()
    mem.add("Badges must be worn at all times on site.", document_id="badges")
    vid = version_id_for(mem, "default", "badges", 1)
    extra = {"PMEM_WORKER_INTERNALIZER": STUB, "PMEM_TEST_SLEEP_S": "3", "PMEM_TEST_MARKERS": str(marks)}
    w1, w2 = broker.worker(**extra), broker.worker(**extra)
    w1.wait_ready()
    w2.wait_ready()
    # Two submissions of the same version are one job ...
    job = submit_internalize(mem, vid)
    assert submit_internalize(mem, vid).id == job.id
    # ... and a duplicated message (as after a visibility timeout) reaches the other worker while the first runs.
    app_for(mem.settings).send_task(TASK_NAMES["internalize"], args=[job.id])
    wait_for(lambda: len(markers(marks)) >= 2, 60, "both workers to run the job")
    pids = {m.name.split("-")[1] for m in markers(marks)}
    assert len(pids) == 2  # two processes really computed concurrently
    store = JobStore.for_memory(mem)
    done = wait_for(lambda: _job_done(store, job.id), 60, "the job to finish")
    time.sleep(4)  # let the slower worker finish too
    assert done.state == "succeeded" and store.get(job.id).attempts == 2
    adapters = mem.adapters()
    assert len(adapters) == 1 and adapters[0].status == "ready", adapters
    assert _orphans(mem) == []


@pytest.mark.services
def test_worker_retries_transient_faults_and_fails_permanent_ones_at_once(broker):
    from memory.jobs import JobStore
    from memory.refresh import version_id_for
    from workers.tasks import submit_internalize

    mem = broker.memory()
    mem.add("Lockers are emptied every Friday.", document_id="lockers")
    vid = version_id_for(mem, "default", "lockers", 1)
    store = JobStore.for_memory(mem)
    flaky = broker.worker(
        PMEM_WORKER_INTERNALIZER="_fixtures_workers:flaky_internalize", PMEM_RETRY_BASE_S="0.5"
    ).wait_ready()
    job = submit_internalize(mem, vid)
    done = wait_for(lambda: _job_done(store, job.id), 60, "the retried job")
    assert done.state == "succeeded" and done.attempts == 2, (done.error, flaky.log())
    assert "Retry in" in flaky.log() and "ConnectionResetError" in flaky.log()
    assert len(mem.adapters()) == 1
    flaky.stop()

    mem.add("Keys are returned at reception.", document_id="keys")
    vid2 = version_id_for(mem, "default", "keys", 1)
    broker.worker(PMEM_WORKER_INTERNALIZER="_fixtures_workers:invalid_internalize").wait_ready()
    job2 = submit_internalize(mem, vid2)
    bad = wait_for(lambda: _job_done(store, job2.id), 60, "the invalid job")
    assert bad.state == "failed" and bad.attempts == 1
    assert bad.error == f"ValidationError: version {vid2} has no chunks to internalize"


@pytest.mark.services
def test_beat_refreshes_a_changed_source_on_its_own(broker, tmp_path):
    from memory.jobs import JobStore

    mem = broker.memory()
    docs = tmp_path / "docs"
    docs.mkdir()
    policy = docs / "parking.md"
    policy.write_text("# Parking\n\nVisitors park on level 2.\n")
    mem.configure_namespace(on_add="instant")  # the namespace's policy: a refresh internalizes what changed
    [added] = mem.add_source(str(docs), refresh_interval_s=1, on_add="none")  # parsed here; nothing internalized
    assert added.status == "created" and mem.adapters() == []
    policy.write_text("# Parking\n\nVisitors park on level 3.\n")
    broker.worker(beat=True, PMEM_REFRESH_TICK_S="1", PMEM_WORKER_INTERNALIZER=STUB).wait_ready()

    def v2_ready():
        return [a for a in mem.adapters(document_id="parking.md") if a.version == 2 and a.status == "ready"]

    wait_for(v2_ready, 90, "the beat to refresh the source and the worker to internalize version 2")
    assert mem.get("parking.md").version.number == 2
    store = JobStore.for_memory(mem)
    refreshes = [j for j in store.list(kind="refresh", limit=500) if j.state == "succeeded"]
    assert any(c["document"] == "parking.md" and c["version"] == 2 for j in refreshes for c in j.result["changed"])
    assert (broker.home / "celerybeat-schedule").exists() or list(broker.home.glob("celerybeat-schedule*"))


@pytest.fixture
def shared_home(broker, shared_models_dir):
    """Point the test home's model cache at the session's converted base model (conversion runs once)."""
    models = Path(shared_models_dir) / "models"
    models.mkdir(parents=True, exist_ok=True)
    broker.home.mkdir(parents=True, exist_ok=True)
    os.symlink(models, broker.home / "models")
    return broker


@pytest.mark.slow
@pytest.mark.services
def test_real_worker_directory_refresh_and_rollback(shared_home, tmp_path):
    """The main flow with the real internalizer on the real base model, in a real worker process."""
    from memory.jobs import JobStore
    from workers.tasks import submit_ingest, submit_refresh

    broker = shared_home
    docs = tmp_path / "docs"
    good, bad = _corpus_with_bad_files(docs)
    for p in good:  # two real internalizations (+1 after the refresh) keep this test short on a CPU
        if p.suffix not in (".md", ".csv"):
            p.unlink()
    good = [p for p in good if p.exists()]
    mem = broker.memory()
    # method "auto": the packaged D2L checkpoint when it fits the base model, else the real context
    # distillation with fewer questions and steps than its default (minutes per document on a shared CPU)
    cd_options = json.dumps({"steps": 6, "max_questions": 3, "max_answer_tokens": 12})
    worker = broker.worker(
        PMEM_VISIBILITY_TIMEOUT_S="3600", PMEM_THREADS="2", OMP_NUM_THREADS="2", PMEM_WORKER_CD_OPTIONS=cd_options
    ).wait_ready(timeout=120)
    store = JobStore.for_memory(mem)

    job = submit_ingest(mem, str(docs), refresh_interval_s=3600)
    ingest = wait_for(lambda: _job_done(store, job.id), 120, "the ingest job")
    assert ingest.state == "succeeded", (ingest.error, worker.log())
    assert len(ingest.result["changed"]) == len(good) and len(ingest.result["failed"]) == len(bad)
    for name in bad:
        assert name in ingest.error and name in mem.sources()[0]["last_error"]
    children = ingest.result["internalize_jobs"]
    wait_for(lambda: all(_job_done(store, i) for i in children), 1800, "the internalizations", every=2)
    assert all(store.get(i).state == "succeeded" for i in children), [store.get(i).error for i in children]
    ready = _ready_adapters(mem)
    assert len(ready) == len(good)
    assert {(a.document_id, a.version) for a in ready} == {(c["document"], 1) for c in ingest.result["changed"]}
    assert all(a.method in ("cd", "d2l") and a.base_model != "stub-base@0" for a in ready)

    # a changed file is picked up by the refresh: new version, new adapter; the old one is superseded
    changed = next(p for p in good if p.suffix == ".md")
    doc_id = changed.name
    old = next(a for a in ready if a.document_id == doc_id)
    changed.write_text(changed.read_text() + "\n\nUpdate: refunds are now paid within 7 days.\n")
    refresh = submit_refresh(mem, force=True)
    refresh = wait_for(lambda: _job_done(store, refresh.id), 120, "the refresh job")
    assert refresh.state == "succeeded", refresh.error
    assert [(c["document"], c["version"]) for c in refresh.result["changed"]] == [(doc_id, 2)]
    new_job = refresh.result["changed"][0]["job"]
    wait_for(lambda: _job_done(store, new_job), 1200, "the new version's internalization", every=2)
    mine = {a.version: a for a in mem.adapters(document_id=doc_id)}
    assert mine[2].status == "ready" and mine[1].status == "superseded" and mine[1].id == old.id

    # rollback restores the old version and its adapter, without recomputing anything
    mem.rollback(doc_id, 1)
    mine = {a.version: a for a in mem.adapters(document_id=doc_id)}
    assert mine[1].status == "ready" and mine[2].status == "superseded"
    assert mem.get(doc_id).version.number == 1
    assert _orphans(mem) == []
    shutil.rmtree(docs)


def test_internalize_key_names_the_version_and_the_hypernetwork(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    import memory.internalizers as internalizers
    from memory.hyper.identity import checkpoint_sha256
    from workers.tasks import internalize_key

    sha, fp = "ab" * 32, "smollm2-135m-instruct@6c31d45195a667e1"
    monkeypatch.setattr(internalizers, "DEFAULT_D2L", tmp_path / "d2l")
    cd = internalize_key(sha, 7, "auto", fp)
    assert cd.startswith(f"internalize:{sha}:7:auto:cd-") and len(cd) <= 200
    assert internalize_key(sha, 7, "auto", "other-model@0123456789abcdef") != cd
    # a D2L checkpoint for this base model appears: a new key (new job, new adapter row); retrained: another one
    (tmp_path / "d2l").mkdir()
    (tmp_path / "d2l" / "config.json").write_text(json.dumps({"kind": "d2l-fastweight", "base_model": fp}))
    save_file({"w": torch.ones(3)}, str(tmp_path / "d2l" / "model.safetensors"))
    d2l_1 = internalize_key(sha, 7, "auto", fp)
    assert d2l_1.endswith(f":auto:d2l-{checkpoint_sha256(tmp_path / 'd2l')[:16]}")
    assert d2l_1 == internalize_key(sha, 7, "auto", fp)
    save_file({"w": torch.full((3,), 2.0)}, str(tmp_path / "d2l" / "model.safetensors"))
    assert internalize_key(sha, 7, "auto", fp) not in (d2l_1, cd)
    assert ":cd:cd-" in internalize_key(sha, 7, "cd", fp)  # cd ignores the checkpoint
    # a checkpoint trained for another base model is not used: auto falls back to CD, as at run time
    assert (
        internalize_key(sha, 7, "auto", "smollm2-135m-instruct-tuned@6c31d45195a667e1").split(":")[-1].startswith("cd-")
    )
