"""``pmem serve``, ``pmem engine``, ``pmem keys create|list|revoke`` and ``pmem mcp``: added to the main CLI by
:func:`register`.

Nothing here imports FastAPI, uvicorn or mcp until a command runs (they come with the ``server`` extra).

>>> import typer
>>> cli = typer.Typer()
>>> register(cli)
>>> sorted(c.name for c in cli.registered_commands), [g.name for g in cli.registered_groups]
(['engine', 'mcp', 'serve'], ['keys'])
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from memory.config import Settings
from memory.errors import PMemError

console = Console(stderr=True)
out = Console()
keys_app = typer.Typer(
    help="API keys of the memory server (stored hashed; scoped to namespaces, with a role).", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(e: Exception, as_json: bool = False) -> None:
    """Exit 2 with the error on stderr and, with ``--json``, as ``{"error", "type"}``, the last line of stdout."""
    if as_json:
        _print_json({"error": str(e), "type": type(e).__name__})
    console.print(f"[red]error:[/red] {e}")
    raise typer.Exit(code=2)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _key_store() -> Any:
    from memory.db.migrate import ensure_schema
    from memory.server.auth import KeyStore

    settings = Settings.from_env()
    url = settings.resolved_database_url
    ensure_schema(url, auto_migrate=settings.should_auto_migrate)
    return KeyStore.for_url(url)


def serve(
    host: Annotated[str, typer.Option(envvar="PMEM_SERVER_HOST", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PMEM_SERVER_PORT", help="Port to bind.")] = 8000,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve without API keys (loopback hosts only).")] = False,
    source_root: Annotated[
        list[str] | None,
        typer.Option("--source-root", help="A server directory that sources may come from (repeatable)."),
    ] = None,
    max_concurrent: Annotated[
        int, typer.Option(envvar="PMEM_SERVER_GENERATIONS", min=1, help="Model calls at once.")
    ] = 1,
    max_waiting: Annotated[
        int, typer.Option(envvar="PMEM_SERVER_QUEUE", min=0, help="Model calls that may wait; more get 503.")
    ] = 32,
    max_batch: Annotated[
        int,
        typer.Option(
            envvar="PMEM_SERVER_MAX_BATCH",
            min=1,
            help="Queries decoded together (continuous batching); 1: one at a time.",
        ),
    ] = 8,
    max_batch_tokens: Annotated[
        int,
        typer.Option(
            envvar="PMEM_SERVER_MAX_BATCH_TOKENS", min=1, help="Prompt + answer tokens of the queries in one batch."
        ),
    ] = 16384,
    threads: Annotated[
        int | None,
        typer.Option(
            envvar="PMEM_THREADS",
            min=1,
            help="Torch threads per model call (OMP_NUM_THREADS); default: torch's. On a small or shared CPU use 1: "
            "with 2 per call on 2 busy cores a query took 9-22 s instead of 1 s.",
        ),
    ] = None,
    query_timeout: Annotated[
        float, typer.Option(envvar="PMEM_SERVER_QUERY_TIMEOUT_S", help="Seconds before a query gets 504.")
    ] = 120.0,
    max_body_mb: Annotated[
        float, typer.Option(envvar="PMEM_SERVER_MAX_BODY_MB", help="Largest request body (MiB).")
    ] = 32.0,
    max_upload_mb: Annotated[
        float, typer.Option(envvar="PMEM_SERVER_MAX_UPLOAD_MB", help="Largest uploaded file (MiB).")
    ] = 16.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the HTTP API (OpenAPI docs at /docs, a dashboard at /ui) over this memory; jobs go to PMEM_BROKER_URL
    when set."""
    try:
        import uvicorn

        from memory.api import ParametricMemory
        from memory.server.app import ServerLimits, check_no_auth, create_app
    except ImportError as e:
        _fail(
            PMemError(
                f"the server needs the 'server' extra ({e.name} is missing): pip install 'parametric-memory[server]'"
            )
        )
    if threads is not None:  # before torch loads (nothing above imports it), so every thread's OpenMP team has it
        os.environ["OMP_NUM_THREADS"] = os.environ["PMEM_THREADS"] = str(threads)
    try:
        if no_auth:
            check_no_auth(host)
        limits = ServerLimits(
            max_body_bytes=int(max_body_mb * 2**20),
            max_upload_bytes=int(max_upload_mb * 2**20),
            max_concurrent_generations=max_concurrent,
            max_waiting_generations=max_waiting,
            max_batch=max_batch,
            max_batch_tokens=max_batch_tokens,
            query_timeout_s=query_timeout,
            source_roots=tuple(source_root or ()),
        )
        app = create_app(ParametricMemory(Settings.from_env()), auth=not no_auth, limits=limits)
    except PMemError as e:
        _fail(e)
    if not no_auth and not app.state.keys.list():
        console.print(
            "[yellow]no API keys yet:[/yellow] every /v1 request will get 401; "
            "create one with `pmem keys create NAME --role write --namespace NS`"
        )
    console.print(f"dashboard: http://{f'[{host}]' if ':' in host else host}:{port}/ui")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for (e.g. 'support-agent').")],
    role: Annotated[str, typer.Option(help="read | write | admin")] = "read",
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="A namespace the key covers (repeatable); '*' for all."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key; the key itself is printed once and never stored (only its hash is)."""
    try:
        created = _key_store().create(name, role=role, namespaces=list(namespace or []))
    except PMemError as e:
        _fail(e, as_json)
    if as_json:
        _print_json({**created.info.to_dict(), "key": created.secret})
        return
    out.print(created.secret, markup=False, highlight=False)
    console.print(
        f"key {created.info.key_id} ({created.info.role} on {', '.join(created.info.namespaces)}); "
        "store it now: it cannot be shown again"
    )


@keys_app.command("list")
def keys_list(
    all_: Annotated[bool, typer.Option("--all", help="Also revoked keys.")] = False, as_json: JsonOpt = False
) -> None:
    """List keys (ids, names, roles, namespaces; never the secrets)."""
    try:
        rows = _key_store().list(include_revoked=all_)
    except PMemError as e:
        _fail(e, as_json)
    if as_json:
        _print_json([k.to_dict() for k in rows])
        return
    table = Table("key id", "name", "role", "namespaces", "created", "last used", "revoked")
    for k in rows:
        table.add_row(
            k.key_id,
            k.name,
            k.role,
            ", ".join(k.namespaces),
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "-",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (from `pmem keys list`).")], as_json: JsonOpt = False
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    try:
        info = _key_store().revoke(key_id)
    except PMemError as e:
        _fail(e, as_json)
    _print_json(info.to_dict()) if as_json else console.print(f"revoked {info.key_id} ({info.name})")


def mcp(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="The namespace the tools work in (default: PMEM_NAMESPACE).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            envvar=["PMEM_URL", "PMEM_SERVER_URL"],
            help="A memory server to go through, else in-process (default: `pmem --url`, PMEM_URL or PMEM_SERVER_URL).",
        ),
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="PMEM_API_KEY", help="The server's API key (prefer the env var).")
    ] = None,
    transport: Annotated[str, typer.Option(help="stdio | streamable-http")] = "stdio",
    host: Annotated[str, typer.Option(help="streamable-http: address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="streamable-http: port to bind.")] = 8765,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="streamable-http: take requests without an API key (loopback hosts only)."),
    ] = False,
    file_root: Annotated[
        list[Path] | None,
        typer.Option(
            "--file-root",
            envvar="PMEM_MCP_FILE_ROOTS",
            help="A directory remember_file may read from (repeatable; the variable separates them with "
            f"{os.pathsep!r}). None: remember_file reads no file.",
        ),
    ] = None,
) -> None:
    """Run an MCP server with remember / recall / ask / forget / list tools for an agent host.

    Over streamable HTTP every request needs an API key of the memory server (`Authorization: Bearer`), whose
    role and namespaces apply; with --url each caller's key goes to the server.
    """
    try:
        from memory.server.auth import KeyStore
        from memory.server.mcp import KeyAccess
        from memory.server.mcp import serve as serve_mcp
    except ImportError as e:
        _fail(PMemError(f"the MCP server needs the 'server' extra ({e.name} is missing)"))
    from memory.cli import server_url  # not at import: memory.cli registers this module

    url = url or server_url()
    try:
        if url:
            from memory.client import RemoteMemory

            memory: Any = RemoteMemory(url, key, namespace=namespace)
        else:
            from memory.api import ParametricMemory

            memory = ParametricMemory(Settings.from_env())
        ns = namespace or memory.settings.namespace
        access = None

        if transport == "streamable-http" and not no_auth:
            access = KeyAccess(ns, url=url) if url else KeyAccess(ns, memory=memory)
            if not url and not KeyStore.for_memory(memory).list():
                console.print(
                    "[yellow]no API keys yet:[/yellow] every request will get 401; "
                    f"create one with `pmem keys create NAME --role write --namespace {ns}`"
                )
        roots = tuple(str(r) for r in file_root or ())
        serve_mcp(memory, namespace=ns, transport=transport, host=host, port=port, file_roots=roots, access=access)
    except (PMemError, ValueError) as e:
        _fail(e)


def engine(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8001,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="PMEM_ENGINE_API_KEY", help="Require this key (prefer the env var).", show_default=False),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="The base model's name in /v1/models (default: its own name).")
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="PMEM_ENGINE_MAX_BATCH",
            help="Rows decoded together by continuous batching, each with its own adapter (1: one request at a time).",
        ),
    ] = 8,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Completion requests generating at once; more wait (default: 4 x --max-batch, 1 without batching).",
            show_default=False,
        ),
    ] = None,
    max_loras: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="PMEM_ENGINE_MAX_LORAS",
            help="Adapters kept loaded; loading one more unloads the least recently used (default: no bound). "
            "Keep it at least the memory servers' --max-batch.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run a generation engine over the local base model that speaks the part of vLLM's OpenAI-compatible API a
    memory server with PMEM_GENERATION_URL uses (completions, runtime LoRA loading)."""
    try:
        import uvicorn

        from memory.models import load_base_model
        from memory.server.engine import create_engine_app
    except ImportError as e:
        _fail(PMemError(f"the engine needs the 'server' extra ({e.name} is missing)"))
    try:
        base = load_base_model(settings=Settings.from_env())
        app = create_engine_app(
            base,
            served_model_name=served_model_name,
            api_key=api_key,
            max_concurrent=max_concurrent or (4 * max_batch if max_batch > 1 else 1),
            max_loras=max_loras,
            max_batch=max_batch,
        )
    except PMemError as e:
        _fail(e)
    if not api_key and not _is_loopback_host(host):
        console.print("[yellow]no --api-key:[/yellow] anyone who can reach this address can generate and load adapters")
    console.print(
        f"engine: {base.name} ({base.fingerprint}) at http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``engine``, ``keys`` and ``mcp`` to a typer app (the ``pmem`` CLI calls this)."""
    app.command("serve")(serve)
    app.command("engine")(engine)
    app.add_typer(keys_app, name="keys")
    app.command("mcp")(mcp)
