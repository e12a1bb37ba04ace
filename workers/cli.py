"""``pmem worker``, ``pmem jobs``, ``pmem refresh`` and ``pmem ingest``: added to the main CLI by :func:`register`.

>>> import typer
>>> from workers.cli import register
>>> cli = typer.Typer()
>>> register(cli)
>>> sorted(c.name for c in cli.registered_commands)
['ingest', 'jobs', 'refresh', 'worker']
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from memory.config import Settings, redact
from memory.errors import PMemError

console = Console(stderr=True)
out = Console()

NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: PMEM_NAMESPACE or 'default').")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
_DONE = ("succeeded", "failed")


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _memory() -> Any:
    """The memory of ``pmem`` (a :class:`~memory.client.RemoteMemory` with ``pmem --url`` or PMEM_URL)."""
    from memory.cli import open_memory  # not at import: memory.cli loads this module as a plugin

    return open_memory()


def _remote() -> bool:
    from memory.cli import server_url

    return server_url() is not None


def _fail(e: Exception, as_json: bool = False) -> None:
    """Exit 2 with the error on stderr, or (``--json``) as ``{"error": ...}``, the last line of stdout."""
    message = redact(str(e))
    if as_json:
        _print_json({"error": message, "type": type(e).__name__})
    console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(code=2)


def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-Q", help="Comma-separated queues: ingest (CPU), internalize (GPU).")
    ] = "ingest,internalize",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Processes (1 per GPU).")] = 1,
    pool: Annotated[
        str, typer.Option("--pool", "-P", help="solo (GPU: no fork after CUDA), prefork, threads.")
    ] = "solo",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
    hostname: Annotated[str | None, typer.Option("--hostname", help="Worker name, e.g. gpu0@%h.")] = None,
    beat: Annotated[
        bool, typer.Option("--beat", help="Also run the refresh schedule (exactly one per broker).")
    ] = False,
) -> None:
    """Start a Celery worker on PMEM_BROKER_URL (a GPU worker: ``--queues internalize --pool solo``)."""
    from workers.app import QUEUES

    settings = Settings.from_env()
    if not settings.broker_url:
        _fail(
            PMemError(
                "PMEM_BROKER_URL is not set: start Redis and set PMEM_BROKER_URL=redis://HOST:6379/0 "
                "(without a broker, jobs run in-process and no worker is needed)"
            )
        )
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        _fail(PMemError(f"unknown queue(s) {unknown or names}; known: {', '.join(QUEUES)}"))
    if pool == "solo" and concurrency != 1:
        _fail(PMemError("the solo pool runs one task at a time: use -c 1, or start one worker per GPU"))
    from workers.app import app as celery_app

    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "-P", pool, "-l", loglevel]
    if hostname:
        argv += ["-n", hostname]
    if beat:
        argv.append("-B")
    celery_app.worker_main(argv)


def jobs(
    namespace: NamespaceOpt = None,
    kind: Annotated[str | None, typer.Option(help="ingest | internalize | refresh")] = None,
    state: Annotated[str | None, typer.Option(help="queued | running | retrying | succeeded | failed")] = None,
    limit: int = 50,
    resubmit_stale: Annotated[
        float | None,
        typer.Option(
            "--resubmit-stale",
            metavar="SECONDS",
            help=(
                "first send again the unfinished jobs (queued, retrying, running) untouched for SECONDS (lost messages)"
            ),
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    try:
        mem = _memory()
        if _remote():
            if resubmit_stale is not None:
                raise PMemError("--resubmit-stale runs where the database and the broker are (without PMEM_URL)")
            rows = mem.jobs(namespace=namespace, kind=kind, state=state, limit=limit)
        else:
            from memory.jobs import JobStore

            if resubmit_stale is not None:
                from workers.tasks import resubmit_stale as resend

                sent = resend(mem, resubmit_stale)
                console.print(f"re-sent {len(sent)} stale job(s): {', '.join(str(j.id) for j in sent) or '-'}")
            rows = JobStore.for_memory(mem).list(kind=kind, state=state, namespace=namespace, limit=limit)
    except PMemError as e:
        _fail(e)
    if as_json:
        _print_json([j.to_dict() for j in rows])
        return
    table = Table("id", "kind", "state", "attempts", "created", "seconds", "error")
    for j in rows:
        secs = (j.finished_at - j.started_at).total_seconds() if j.finished_at and j.started_at else None
        table.add_row(
            str(j.id),
            j.kind,
            j.state,
            str(j.attempts),
            j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{secs:.1f}" if secs is not None else "",
            (j.error or "")[:80],
        )
    out.print(table)


def _wait(mem: Any, job_ids: list[int], timeout_s: float, namespace: str | None = None) -> list[Any]:
    if _remote():  # the server finds a job in the namespace it was submitted to

        def get(job_id: int) -> Any:
            return mem.job(job_id, namespace=namespace)

    else:
        from memory.jobs import JobStore

        get = JobStore.for_memory(mem).get
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [get(i) for i in job_ids]
        children = [c for j in rows if j.kind == "ingest" and j.result for c in j.result.get("internalize_jobs", [])]
        children += [
            c["job"]
            for j in rows
            if j.kind == "refresh" and j.result
            for c in j.result.get("changed", [])
            if isinstance(c.get("job"), int)
        ]
        rows += [get(i) for i in children if i not in job_ids]
        if all(j.state in _DONE for j in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def refresh(
    namespace: NamespaceOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Re-read every source with an interval, due or not.")] = False,
    method: Annotated[str, typer.Option(help="auto | d2l | cd")] = "auto",
    wait: Annotated[
        float | None,
        typer.Option("--wait", help="With a broker: wait up to N seconds for the refresh and its internalizations."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-read the due sources now; new versions are internalized (by the workers, or here without a broker)."""
    try:
        mem = _memory()
        if _remote():  # the server refreshes its sources (and internalizes with its own method)
            job = mem.refresh(namespace=namespace, force=force)
        else:
            from workers.tasks import submit_refresh

            job = submit_refresh(mem, namespace=namespace, force=force, method=method)
        rows = _wait(mem, [job.id], wait, namespace) if wait and job.state not in _DONE else [job]
    except PMemError as e:
        _fail(e)
    job = rows[0]
    if job.state not in _DONE:  # a broker is configured: the refresh itself runs on a worker
        if as_json:
            _print_json({"job": job.to_dict()})
        else:
            console.print(f"refresh queued as job {job.id}")
        return
    result = job.result or {}
    if as_json:
        _print_json({"job": job.to_dict(), **result})
        return
    console.print(
        f"job {job.id} {job.state}: {result.get('sources', 0)} source(s) checked, "
        f"{len(result.get('changed', []))} changed, {len(result.get('failed', []))} failed"
    )
    for c in result.get("changed", []):
        out.print(f"  {c['document']} -> v{c['version']} ({c['status']})")
    for f in result.get("failed", []):
        out.print(f"  [red]failed[/red] {f['source']}: {f['error']}")
    if job.state == "failed":
        raise typer.Exit(code=1)


def ingest(
    spec: Annotated[str, typer.Argument(help="A file, a directory or a glob.")],
    namespace: NamespaceOpt = None,
    refresh_interval: Annotated[
        int | None, typer.Option("--refresh-interval", min=1, help="Re-read every N seconds (beat).")
    ] = None,
    method: Annotated[str, typer.Option(help="auto | d2l | cd")] = "auto",
    internalize: Annotated[bool, typer.Option("--internalize/--no-internalize")] = True,
    wait: Annotated[float | None, typer.Option("--wait", help="Wait up to N seconds for the jobs to finish.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a source: parsed on the ``ingest`` queue, each version internalized on the ``internalize`` queue.

    Through a server (``pmem --url`` or PMEM_URL), SPEC is a path on the server, under its ``--source-root``s;
    ``pmem add`` uploads files from here instead."""
    from memory.jobs import classify, describe

    try:
        mem = _memory()
        if _remote():  # SPEC is a path on the server, under one of its --source-root directories
            job = mem.add_source(
                spec, namespace=namespace, refresh_interval_s=refresh_interval, internalize=internalize, method=method
            )
        else:
            from workers.tasks import submit_ingest

            job = submit_ingest(
                mem,
                spec,
                namespace=namespace,
                refresh_interval_s=refresh_interval,
                method=method,
                internalize=internalize,
            )
        rows = _wait(mem, [job.id], wait, namespace) if wait else [job]
    except PMemError as e:
        _fail(e, as_json)
    except Exception as e:  # a broker or database that is down is an error, not a traceback
        if classify(e) != "transient":
            raise
        _fail(RuntimeError(f"the broker or the database is unreachable: {describe(e)}"), as_json)
    if as_json:
        _print_json({"job": rows[0].to_dict(), "jobs": [j.to_dict() for j in rows[1:]]})
    else:
        for j in rows:
            out.print(f"job {j.id} {j.kind} {j.state}" + (f": {j.error}" if j.error else ""))
    if rows[0].state == "failed":
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``worker``, ``jobs``, ``refresh`` and ``ingest`` to a typer app (the ``pmem`` CLI calls this)."""
    app.command("worker")(worker)
    app.command("jobs")(jobs)
    app.command("refresh")(refresh)
    app.command("ingest")(ingest)


__all__ = ["register"]
