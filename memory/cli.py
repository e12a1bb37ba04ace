"""``pmem``: the command line of parametric-memory (typer + rich).

Read commands take ``--json`` and then print one JSON document as their last line; ``bench`` and
``eval`` always print one JSON object as their last line.

Where the memory commands go (first match wins): ``pmem --url URL ...``, then ``PMEM_URL`` (``PMEM_SERVER_URL``
is its older name, the one ``pmem mcp`` read first), then this process. With a server, ``add``, ``ls``, ``show``,
``rm``, ``history``, ``rollback``, ``gc``, ``internalize``, ``adapters``, ``search``, ``ask``, ``namespaces``,
``jobs``, ``refresh``, ``ingest`` and ``ab report`` are HTTP calls with the key in ``PMEM_API_KEY``
(:class:`memory.client.RemoteMemory`), and nothing loads torch, the model or the database. ``serve``, ``keys``,
``db``, ``worker``, ``mcp``, ``bench``, ``eval`` and ``train`` always act on this machine; ``demo`` refuses and
says why. ``PMEM_URL=`` (empty) runs a command in-process again.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from memory.cli_shared import ASK_K, ASK_MAX_NEW_TOKENS, ASK_MODE, ASK_MODES, scrub
from memory.config import Settings, redact
from memory.errors import PMemError, ValidationError

if __name__ == "__main__":  # `python -m memory.cli`: the plugins' `from memory.cli import ...` must find this module
    sys.modules.setdefault("memory.cli", sys.modules[__name__])  # (and its --url), not a second, fresh copy

app = typer.Typer(
    help="parametric-memory: documents stored in model weights.", no_args_is_help=True, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(stderr=True)
out = Console()

NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: PMEM_NAMESPACE or 'default').")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class _Target:
    """The memory server the commands of this invocation go to (set by :func:`_main`); None: in-process."""

    url: str | None = None


@app.callback()
def _main(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar=["PMEM_URL", "PMEM_SERVER_URL"],
            show_envvar=False,
            help="A memory server (`pmem serve`) to send the memory commands to, with the key in PMEM_API_KEY "
            "[env var: PMEM_URL, or PMEM_SERVER_URL]; without one they run in this process.",
        ),
    ] = None,
) -> None:
    _Target.url = url.rstrip("/") if url else None


def server_url() -> str | None:
    """The server this ``pmem`` invocation goes through (``--url`` or ``PMEM_URL``), or None: in-process."""
    return _Target.url


def _settings() -> Settings:
    return Settings.from_env()


def open_memory() -> Any:
    """The memory the commands act on: a :class:`~memory.client.RemoteMemory` when :func:`server_url` is set (its
    key from PMEM_API_KEY), else a :class:`~memory.api.ParametricMemory` on this machine. Both are imported here,
    not at the top: a remote command must never import torch, and ``pmem --help`` stays fast."""
    if _Target.url:
        from memory.client import RemoteMemory

        return RemoteMemory(_Target.url)
    from memory.api import ParametricMemory

    return ParametricMemory(_settings())


_memory = open_memory


def local_only(command: str) -> None:
    """Exit 2 saying why, when ``command`` would have to go through a server (it has no HTTP API)."""
    if _Target.url:
        _fail(
            PMemError(
                f"`pmem {command}` runs in this process only: the memory server has no API for it. "
                "Run it where the memory is, without a server URL (unset PMEM_URL, or `PMEM_URL= pmem ...`)"
            )
        )


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _fail(e: Exception, as_json: bool = False) -> None:
    """Exit 2 with the error on stderr and, with ``--json``, as ``{"error", "type"}``, the last line of stdout."""
    message = scrub(str(e))
    if as_json:
        _print_json({"error": message, "type": type(e).__name__})
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=2)


# ---------------------------------------------------------------- database
@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Upgrade the database schema (the only way a server database is ever migrated)."""
    from memory.db import migrate

    url = _settings().resolved_database_url
    migrate.upgrade(url, revision)
    console.print(f"upgraded to {migrate.current_revision(_engine(url))}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument("-1")) -> None:
    """Downgrade the schema (``base`` removes every table)."""
    from memory.db import migrate

    url = _settings().resolved_database_url
    migrate.downgrade(url, revision)
    console.print(f"downgraded to {migrate.current_revision(_engine(url))}")


@db_app.command("current")
def db_current(as_json: JsonOpt = False) -> None:
    """Show the current and head revisions."""
    from memory.db import migrate

    url = _settings().resolved_database_url
    info = {"current": migrate.current_revision(_engine(url)), "head": migrate.head_revision()}
    _print_json(info) if as_json else out.print(f"current: {info['current']}  head: {info['head']}")


@db_app.command("check")
def db_check() -> None:
    """Fail if the models and the migrations disagree (``alembic check``)."""
    from alembic.util.exc import AutogenerateDiffsDetected

    from memory.db import migrate

    try:
        migrate.check(_settings().resolved_database_url)
    except AutogenerateDiffsDetected as e:
        console.print(f"[red]models and migrations differ:[/red] {e}")
        raise typer.Exit(code=1) from None
    out.print("models match the migrations")


def _engine(url: str):
    from memory.db import get_engine

    return get_engine(url)


# ---------------------------------------------------------------- documents
@app.command()
def add(
    source: Annotated[str, typer.Argument(help="A file, a directory, a glob, or '-' for standard input.")],
    document_id: Annotated[
        str | None, typer.Option("--id", help="Document id (default: from the file path or content hash).")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Document title.")] = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add documents (a new version when the content changed).

    Files that fail are reported and the others are still added; the exit code is then 1.
    """
    try:
        mem = _memory()
        if source == "-":
            data = _read_stdin(_settings().max_document_bytes)
            results = [mem.add(data, document_id=document_id, title=title, namespace=namespace)]
        elif server_url():  # the files are here: each is uploaded, and the server parses it
            results = mem.add_files(source, namespace=namespace, document_id=document_id, title=title)
        else:
            results = mem.add_source(source, namespace=namespace, document_id=document_id, title=title)
    except PMemError as e:
        _fail(e, as_json)
    failed = [r for r in results if r.status == "failed"]
    if as_json:
        _print_json([r.to_dict() for r in results])
    else:
        for r in results:
            if r.document is None:  # a file that failed alone, or (never here) a pruned document
                line = f"{r.status:12} {r.source}" + (f": {redact(r.error)}" if r.error else "")
                (console if r.status == "failed" else out).print(line, markup=False, highlight=False)
                continue
            v = r.document.version
            line = f"{r.status:12} {r.document.id}  v{v.number if v else '-'}  {v.chunk_count if v else 0} chunks"
            if r.job is not None:  # the namespace's on_add policy internalized it
                line += f"  internalize job {r.job.id}: {r.job.state}"
            out.print(line + (f" ({redact(r.error)})" if r.error else ""), markup=False, highlight=False)
    if failed:
        raise typer.Exit(code=1)


def _read_stdin(max_bytes: int) -> bytes:
    """Standard input, refusing more than ``max_bytes`` (PMEM_MAX_DOCUMENT_BYTES) without reading it all."""
    data = sys.stdin.buffer.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValidationError(
            f"standard input is over the limit of {max_bytes:,} bytes (PMEM_MAX_DOCUMENT_BYTES); split it first"
        )
    return data


@app.command("ls")
def ls(namespace: NamespaceOpt = None, limit: int = 100, prefix: str | None = None, as_json: JsonOpt = False) -> None:
    """List documents."""
    try:
        docs = _memory().list(namespace=namespace, limit=limit, prefix=prefix)
    except PMemError as e:
        _fail(e, as_json)
    if as_json:
        _print_json([d.to_dict() for d in docs])
        return
    table = Table("id", "version", "versions", "tokens", "chunks", "adapter", "updated")
    for d in docs:
        v = d.version
        table.add_row(
            d.id,
            str(v.number if v else "-"),
            str(d.version_count),
            str(v.token_count if v else 0),
            str(v.chunk_count if v else 0),
            (v.adapter_status or "-") if v else "-",
            d.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


@app.command()
def show(
    document_id: str,
    namespace: NamespaceOpt = None,
    version: int | None = None,
    text: Annotated[bool, typer.Option("--text", help="Include the full text.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show one document (its current version, or --version N)."""
    try:
        d = _memory().get(document_id, namespace=namespace, version=version, with_text=text)
    except PMemError as e:
        _fail(e, as_json)
    if as_json:
        _print_json(d.to_dict())
        return
    out.print_json(json.dumps({k: v for k, v in d.to_dict().items() if k != "text"}, default=str))
    if d.text is not None:
        out.print(d.text, markup=False, highlight=False)


@app.command()
def rm(document_id: str, namespace: NamespaceOpt = None, as_json: JsonOpt = False) -> None:
    """Delete a document with all its versions, chunks, adapters and blobs."""
    try:
        r = _memory().delete(document_id, namespace=namespace)
    except PMemError as e:
        _fail(e, as_json)
    _print_json(r.to_dict()) if as_json else out.print(
        f"deleted {r.document}: {r.versions} versions, {r.chunks} chunks, {r.adapters} adapters, "
        f"{r.blobs_removed} blobs"
    )


@app.command()
def history(
    document_id: str,
    namespace: NamespaceOpt = None,
    diff: Annotated[bool, typer.Option("--diff", help="Show what changed between consecutive versions.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the versions of a document."""
    try:
        mem = _memory()
        versions = mem.history(document_id, namespace=namespace)
        diffs = (
            {v.number: mem.diff(document_id, v.number - 1, v.number, namespace=namespace) for v in versions[1:]}
            if diff
            else {}
        )
    except PMemError as e:
        _fail(e, as_json)
    if as_json:
        _print_json([{**v.to_dict(), **({"diff": diffs.get(v.number)} if diff else {})} for v in versions])
        return
    table = Table("version", "current", "sha256", "tokens", "chunks", "adapter", "created")
    for v in versions:
        table.add_row(
            str(v.number),
            "*" if v.is_current else "",
            v.content_sha256[:12],
            str(v.token_count),
            str(v.chunk_count),
            v.adapter_status or "-",
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)
    for number, text in diffs.items():
        out.print(f"[bold]v{number - 1} -> v{number}[/bold]")
        out.print(text or "(no textual change)", markup=False, highlight=False)


@app.command()
def rollback(document_id: str, version: int, namespace: NamespaceOpt = None, as_json: JsonOpt = False) -> None:
    """Make an older version current again (its adapter becomes the ready one)."""
    try:
        d = _memory().rollback(document_id, version, namespace=namespace)
    except PMemError as e:
        _fail(e, as_json)
    _print_json(d.to_dict()) if as_json else out.print(f"{d.id} is now at v{d.version.number if d.version else '-'}")


@app.command()
def gc(dry_run: bool = False, as_json: JsonOpt = False) -> None:
    """Remove blobs that no row references (through a server: an admin key for every namespace)."""
    try:
        removed = _memory().gc(dry_run=dry_run)
    except PMemError as e:
        _fail(e, as_json)
    _print_json({"removed": removed, "dry_run": dry_run}) if as_json else out.print(
        f"{'would remove' if dry_run else 'removed'} {len(removed)} blob(s)"
    )


# ---------------------------------------------------------------- adapters and questions
@app.command()
def internalize(
    document_id: Annotated[str | None, typer.Argument(help="The document (or --all / --stale).")] = None,
    namespace: NamespaceOpt = None,
    version: int | None = None,
    method: Annotated[str, typer.Option(help="auto | d2l | cd | self-study")] = "auto",
    force: bool = False,
    all_: Annotated[bool, typer.Option("--all", help="Every document of the namespace.")] = False,
    stale: Annotated[
        bool, typer.Option("--stale", help="The documents whose current version has no ready adapter.")
    ] = False,
    tier: Annotated[
        str, typer.Option(help="instant: the adapter of METHOD; full: then the self-study adapter (minutes)")
    ] = "instant",
    as_json: JsonOpt = False,
) -> None:
    """Turn a document version into a LoRA adapter now, in this process (or, with --all / --stale, every
    document of a namespace, one job each: queued instead when PMEM_BROKER_URL is set)."""
    from rich.progress import Progress

    if all_ or stale:
        if document_id is not None or version is not None:
            _fail(ValidationError("--all and --stale take no document id or --version"))
        _internalize_many(namespace, stale=stale, method=method, force=force, tier=tier, as_json=as_json)
        return
    if document_id is None:
        _fail(ValidationError("name a document, or pass --all or --stale"))
    try:
        mem = _memory()
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"internalizing {document_id}", total=None)
            info = mem.internalize(
                document_id, namespace=namespace, version=version, method=method, force=force, tier=tier
            )
            bar.update(task, completed=1, total=1)
    except PMemError as e:
        _fail(e, as_json)
    _print_json(info.to_dict()) if as_json else out.print(
        f"{info.status}: adapter {info.id} for {info.document_id} v{info.version} by {info.hypernetwork} "
        f"({info.tier} tier, rank {info.rank}, {info.size_bytes} bytes, {info.latency_ms:.0f} ms"
        + (f", fidelity {info.fidelity['containment']:.0%}" if "containment" in info.fidelity else "")
        + ")"
    )


def _internalize_many(
    namespace: str | None, *, stale: bool, method: str, force: bool, tier: str, as_json: bool
) -> None:
    from rich.progress import Progress

    try:
        mem = _memory()
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("internalizing", total=None)

            def progress(done: int, total: int, doc_id: str, job: Any) -> None:
                bar.update(task, completed=done, total=total, description=f"internalizing {doc_id}")

            jobs = mem.internalize_all(
                namespace=namespace, stale=stale, method=method, force=force, tier=tier, progress=progress
            )
    except PMemError as e:
        _fail(e)
    if as_json:
        _print_json([j.to_dict() for j in jobs])
    else:
        for j in jobs:
            line = f"{j.state:10} {j.payload.get('document')}"
            if j.result and j.result.get("adapter_id") is not None:
                line += f"  adapter {j.result['adapter_id']} ({j.result.get('method')})"
            (console if j.state == "failed" else out).print(
                line + (f": {redact(j.error)}" if j.error else ""), markup=False, highlight=False
            )
        if not jobs:
            out.print("nothing to internalize")
    if any(j.state == "failed" for j in jobs):
        raise typer.Exit(code=1)


@app.command()
def adapters(
    namespace: NamespaceOpt = None,
    document_id: Annotated[str | None, typer.Option("--id")] = None,
    status: str | None = None,
    as_json: JsonOpt = False,
) -> None:
    """List adapters with their provenance."""
    try:
        rows = _memory().adapters(namespace=namespace, document_id=document_id, status=status)
    except PMemError as e:
        _fail(e, as_json)
    if as_json:
        _print_json([a.to_dict() for a in rows])
        return
    table = Table(
        "id", "document", "version", "method", "tier", "fidelity", "hypernetwork", "rank", "bytes", "ms", "status"
    )
    for a in rows:
        table.add_row(
            str(a.id),
            a.document_id or "-",
            str(a.version or "-"),
            a.method,
            a.tier,
            f"{a.fidelity['containment']:.0%}" if "containment" in a.fidelity else "-",
            a.hypernetwork,
            str(a.rank),
            str(a.size_bytes or "-"),
            f"{a.latency_ms:.0f}" if a.latency_ms else "-",
            a.status,
        )
    out.print(table)


@app.command()
def search(
    query: str,
    k: int = 4,
    namespace: NamespaceOpt = None,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Leave out hits below this cosine similarity (-1 to 1).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Classic vector search over current chunks."""
    try:
        hits = _memory().search(query, k=k, namespace=namespace, min_score=min_score)
    except PMemError as e:
        _fail(e, as_json)
    if as_json:
        _print_json([h.to_dict() for h in hits])
        return
    for h in hits:
        out.print(
            f"[bold]{h.score:.3f}[/bold] {h.document_id} v{h.version} #{h.ordinal}: {h.text[:200]}", highlight=False
        )


@app.command()
def ask(
    question: str,
    namespace: NamespaceOpt = None,
    mode: Annotated[str, typer.Option(help=" | ".join(ASK_MODES))] = ASK_MODE,
    k: int = ASK_K,
    max_new_tokens: int = ASK_MAX_NEW_TOKENS,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from memory; says which mode answered and why ("I don't know" when nothing stored is
    about it). Exits 1 when the namespace does not exist. Through a server the answer streams as it is
    generated (a plain remote ask is answered by memory/entry.py without loading typer: keep the two alike)."""
    try:
        mem = _memory()
        if server_url() and not as_json:
            r = _stream_answer(mem, question, namespace=namespace, mode=mode, k=k, max_new_tokens=max_new_tokens)
        else:
            r = mem.query(question, namespace=namespace, mode=mode, k=k, max_new_tokens=max_new_tokens)
            if not as_json:
                out.print(r.answer, markup=False, highlight=False)
        known = mem.namespaces() if r.mode == "abstain" else None
    except PMemError as e:
        _fail(e, as_json)
    if as_json:
        _print_json(r.to_dict())
    else:
        console.print(f"[dim]mode {r.mode}: {r.reason} ({r.timings_ms.get('total_ms', 0):.0f} ms)[/dim]")
    if known is not None and (namespace or mem.settings.namespace) not in known:
        console.print(f"namespaces: {', '.join(known) or '(none yet)'}", markup=False, highlight=False)
        raise typer.Exit(code=1)


def _stream_answer(mem: Any, question: str, **kwargs: Any) -> Any:
    """Write the answer's pieces to stdout as the server sends them; return the final QueryResult."""
    for item in mem.stream_query(question, **kwargs):
        if isinstance(item, str):
            sys.stdout.write(item)
            sys.stdout.flush()
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        return item
    raise PMemError("the server ended the answer without a result")  # stream_query raises first; never here


# ---------------------------------------------------------------- namespaces
ns_app = typer.Typer(help="Namespaces and what adding a document does in each (on_add).")
app.add_typer(ns_app, name="namespaces")


@ns_app.callback(invoke_without_command=True)
def namespaces(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the namespaces with their document counts and on_add policy."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        mem = _memory()
        infos = [mem.namespace_info(name) for name in mem.namespaces()]
    except PMemError as e:
        _fail(e)
    if as_json:
        _print_json([i.to_dict() for i in infos])
        return
    table = Table("namespace", "documents", "on_add")
    for i in infos:
        table.add_row(i.name, str(i.documents), i.on_add + (" (default)" if i.on_add_is_default else ""))
    out.print(table)


@ns_app.command("set")
def namespaces_set(
    namespace: str,
    on_add: Annotated[
        str,
        typer.Option(
            "--on-add",
            help="none (store only) | instant (the one-pass adapter at once) | full (both tiers, as a job) | "
            "default (follow PMEM_ON_ADD)",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Set what adding a document (pmem add, refresh, the server, MCP remember) does in a namespace."""
    try:
        info = _memory().configure_namespace(namespace, on_add=None if on_add == "default" else on_add)
    except PMemError as e:
        _fail(e)
    _print_json(info.to_dict()) if as_json else out.print(f"{info.name}: on_add {info.on_add}")


# ---------------------------------------------------------------- eval / train
def machine_info() -> dict[str, Any]:
    """The machine and the commit, for every JSON result of ``pmem eval`` and ``pmem bench``."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    import torch

    return {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "commit": commit,
    }


def run_module(module: str, what: str, name: str, **kwargs: Any) -> dict[str, Any]:
    """Import ``module`` and return its ``run(**kwargs)`` with the machine, the commit and the seconds taken."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            console.print(f"[red]error:[/red] unknown {what} {name!r} (no module {module})")
            raise typer.Exit(code=2) from None
        raise
    t0 = time.perf_counter()
    result = mod.run(**kwargs)
    return {what: name, **machine_info(), "seconds": round(time.perf_counter() - t0, 2), **result}


@app.command("eval")
def eval_(
    suite: str,
    quick: bool = False,
    as_json: JsonOpt = False,
    checkpoint: Annotated[str | None, typer.Option(help="Checkpoint directory to evaluate.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory for the JSON and plots.")] = None,
    data: Annotated[Path | None, typer.Option(help="qa: a JSONL file of {document(s), question, answers}.")] = None,
    arms: Annotated[str | None, typer.Option(help="qa: comma-separated arms to run.")] = None,
    limit: Annotated[int | None, typer.Option(help="qa: at most this many items.")] = None,
    items: Annotated[
        str | None, typer.Option(help="qa: only the items whose id matches this pattern (testdoc3-*), before --limit.")
    ] = None,
    cd_items: Annotated[int | None, typer.Option(help="qa: items for the (slow) context-distillation arm.")] = None,
    cd_steps: Annotated[int | None, typer.Option(help="qa: context-distillation steps per document.")] = None,
    self_study: Annotated[
        str | None, typer.Option(help='qa: self-study recipe options as JSON, e.g. \'{"adapters": "per-chunk"}\'.')
    ] = None,
    router: Annotated[
        str | None, typer.Option(help="qa: options of the auto router as JSON, e.g. '{\"min_fidelity\": 0.6}'.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="qa: draw the built-in items from this seed (a fresh set).")] = None,
) -> None:
    """Run an evaluation suite; the last line printed is one JSON object."""
    kwargs: dict[str, Any] = {"quick": quick}
    for key, value in {
        "checkpoint": checkpoint,
        "output": output,
        "data": data,
        "arms": arms,
        "limit": limit,
        "items": items,
        "cd_items": cd_items,
        "cd_steps": cd_steps,
        "self_study": self_study,
        "router": router,
        "seed": seed,
    }.items():
        if value is not None:
            kwargs[key] = str(value) if isinstance(value, Path) else value
    doc = run_module(f"memory.evaluation.{suite}", "eval", suite, **kwargs)
    _print_json(doc)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context, kind: str) -> None:
    """Meta-train a hypernetwork (``pmem train d2l --help``)."""
    try:
        mod = importlib.import_module(f"memory.training.{kind}")
    except ModuleNotFoundError:
        _fail(PMemError(f"unknown trainer {kind!r}"))
    raise typer.Exit(code=int(mod.main(list(ctx.args)) or 0))


# ---------------------------------------------------------------- demo (make run)
@app.command()
def demo(as_json: JsonOpt = False) -> None:
    """The main job on the embedded default: remember a few documents, then show what is stored."""
    local_only("demo")
    from memory.demo import run_demo

    try:
        result = run_demo(_settings(), console=console)
    except PMemError as e:
        _fail(e, as_json)
    _print_json(result) if as_json else out.print_json(json.dumps(result, default=str))


PLUGINS = "pmem.commands"  # entry-point group: ``name = "package.module:register"``, called with the app


def _register_components() -> None:
    """Commands owned by other packages, which depend on this one and never the reverse: A/B reports from
    :mod:`memory.evaluation`, and whatever registers itself under the ``pmem.commands`` entry points
    (``workers``: worker, jobs, refresh, ingest; ``bench``: bench). A plugin whose optional dependencies
    are not installed is left out, with a debug log. The server (``memory.server``) is part of the core."""
    import logging
    from importlib.metadata import entry_points

    from memory.evaluation.cli import register as register_ab
    from memory.server.cli import register as register_server

    register_ab(app)
    register_server(app)  # serve, keys, mcp (FastAPI, uvicorn and mcp are imported only when they run)
    for ep in sorted(entry_points(group=PLUGINS), key=lambda e: e.name):
        try:
            ep.load()(app)
        except ImportError as e:  # e.g. celery missing without the [workers] extra
            logging.getLogger(__name__).debug("pmem commands of %s not loaded: %s", ep.value, e)


_register_components()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
