"""``pmem bench``: added to the main CLI through the ``pmem.commands`` entry point (see pyproject.toml).

>>> import typer
>>> from bench.cli import register
>>> cli = typer.Typer()
>>> register(cli)
>>> [c.name for c in cli.registered_commands]
['bench']
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)

BENCHES = (
    "runtime",
    "cd",
    "internalize",
    "ingest",
    "retrieval",
    "t2l",
    "worker",
    "context",
    "registry",
    "abstention",
    "do_no_harm",
    "knowledge_update",
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON here.")]
BackendOpt = Annotated[
    str | None, typer.Option(help="retrieval: inprocess | pgvector | both (database-backed section only).")
]
SizesOpt = Annotated[str | None, typer.Option(help="retrieval: chunk counts with --backend, e.g. 100000,1000000.")]


def bench(
    name: str,
    quick: bool = False,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
    backend: BackendOpt = None,
    sizes: SizesOpt = None,
) -> None:
    """Run a benchmark (``all`` runs each); the last line printed is one JSON object."""
    from memory.cli import machine_info, run_module  # not at import: memory.cli loads this module as a plugin

    names = BENCHES if name == "all" else (name,)
    extra = {k: v for k, v in {"backend": backend, "sizes": sizes}.items() if v is not None}
    if extra and name != "retrieval":
        console.print("[red]error:[/red] --backend and --sizes apply to `pmem bench retrieval` only")
        raise typer.Exit(code=2)
    results: dict[str, Any] = {}
    for n in names:
        console.print(f"[bold]bench {n}[/bold]{' (quick)' if quick else ''} ...")
        results[n] = run_module(f"bench.{n}", "bench", n, quick=quick, **extra)
    doc = results[name] if name != "all" else {"bench": "all", **machine_info(), "results": results}
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.write(json.dumps(doc, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add ``bench`` to ``app``."""
    app.command("bench")(bench)
