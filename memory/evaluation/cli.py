"""``pmem ab ...``: online experiment reports (mounted on the main CLI with :func:`register`).

>>> import typer; app = typer.Typer(); register(app)   # doctest: +SKIP
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

ab_app = typer.Typer(help="Online A/B experiments over query settings.", no_args_is_help=True)


@ab_app.command("report")
def ab_report(
    name: str,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace of the experiment.")] = None,
    control: Annotated[str | None, typer.Option(help="Arm the others are compared with.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Summarise experiment NAME: queries, feedback and its 95% CI per arm, differences from the control."""
    from rich.console import Console
    from rich.table import Table

    from memory.cli import open_memory, server_url  # not at import: memory.cli registers this module
    from memory.errors import PMemError

    try:
        mem = open_memory()
        if server_url():  # the same report, computed by the server
            doc = mem.experiment_report(name, namespace=namespace, control=control)
        else:
            from memory.evaluation.experiments import report

            doc = report(mem, name, namespace, control=control)
    except PMemError as e:
        Console(stderr=True).print(f"[red]error:[/red] {e}")
        raise typer.Exit(code=1) from None
    if as_json:
        print(json.dumps(doc, default=str))
        return
    console = Console()
    if not doc["queries"]:
        console.print(f"no queries logged for experiment {name!r}")
        return
    table = Table(
        "arm", "queries", "feedback n", "mean feedback [95% CI]", "p50 ms", "modes", title=f"experiment {name}"
    )
    for arm, a in doc["arms"].items():
        fb = a["feedback"]
        ci = f"{fb['mean']:.3f} [{fb['low']:.3f}, {fb['high']:.3f}]" if fb["n"] else "-"
        lat = f"{a['latency_ms']['p50']:.0f}" if a["latency_ms"] else "-"
        table.add_row(arm, str(a["queries"]), str(fb["n"]), ci, lat, json.dumps(a["modes_used"]))
    console.print(table)
    for c in doc["comparisons"]:
        console.print(
            f"{c['arm']} - {c['control']}: {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], "
            f"P({c['arm']} better) = {c['p_b_better']:.2f}"
        )


def register(app: Any) -> None:
    """Add the ``ab`` command group to a Typer app."""
    app.add_typer(ab_app, name="ab")
