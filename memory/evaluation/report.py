"""The QA comparison written out: ``qa.json`` (summary and every answer), ``report.md`` and PNG plots.

>>> write_report(result, rows, "out/")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _fmt_ci(m: dict[str, float]) -> str:
    return f"{m['mean']:.2f} [{m['low']:.2f}, {m['high']:.2f}]"


def _plots(result: dict[str, Any], outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = {a: s for a, s in result["arms"].items() if s.get("available")}
    if not arms:
        return []
    names = list(arms)
    x = range(len(names))
    files = []

    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 3, 3.6))
    width = 0.27
    for j, metric in enumerate(("exact_match", "f1", "contains")):
        means = [arms[a][metric]["mean"] for a in names]
        err = [
            [m - arms[a][metric]["low"] for a, m in zip(names, means, strict=True)],
            [arms[a][metric]["high"] - m for a, m in zip(names, means, strict=True)],
        ]
        ax.bar([i + (j - 1) * width for i in x], means, width, yerr=err, capsize=3, label=metric)
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (95% bootstrap CI)")
    ax.set_title(f"QA accuracy by arm ({result['suite']}, {result['items']} items)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "accuracy.png", dpi=110)
    plt.close(fig)
    files.append("accuracy.png")

    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 3, 3.6))
    prefill = [arms[a]["prefill_ms"]["mean"] for a in names]
    total = [arms[a]["total_ms"]["mean"] for a in names]
    ax.bar([i - 0.2 for i in x], prefill, 0.4, label="prefill")
    ax.bar([i + 0.2 for i in x], total, 0.4, label="total per query")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms (mean)")
    ax.set_title("Per-query latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "latency.png", dpi=110)
    plt.close(fig)
    files.append("latency.png")

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for a in names:
        ax.scatter(arms[a]["total_ms"]["mean"], arms[a]["contains"]["mean"], s=40)
        ax.annotate(
            a,
            (arms[a]["total_ms"]["mean"], arms[a]["contains"]["mean"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("total ms per query (mean)")
    ax.set_ylabel("answer contained (mean)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Accuracy against cost")
    fig.tight_layout()
    fig.savefig(outdir / "tradeoff.png", dpi=110)
    plt.close(fig)
    files.append("tradeoff.png")
    return files


def markdown(result: dict[str, Any], plots: list[str]) -> str:
    """The report as Markdown: one table of arms, the comparisons against retrieval, the plots, the errors."""
    cfg = result["config"]
    lines = [
        f"# QA evaluation: {result['suite']}",
        "",
        (
            f"{result['items']} items; base model `{cfg['base_model']}`; k={cfg['k']}; max_new_tokens="
            f"{cfg['max_new_tokens']}; context window {cfg['window_tokens']} tokens; "
            f"chunk_tokens {cfg['chunk_tokens']}; context distillation on {cfg['cd_items']} item(s), "
            f"steps {cfg['cd_steps'] or 'default'}; run took {result['run_seconds']} s."
        ),
        "",
        (
            "| arm | n | exact match | token F1 | contains | prefill ms | total ms | prompt tokens | KV cache KiB "
            "| peak RSS MiB | internalize ms/doc | bytes stored/doc |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    unavailable = []
    for arm, s in result["arms"].items():
        if not s.get("available"):
            unavailable.append(f"- `{arm}`: unavailable: {s.get('reason')}")
            continue
        lines.append(
            f"| {arm} | {s['n']} | {_fmt_ci(s['exact_match'])} | {_fmt_ci(s['f1'])} | {_fmt_ci(s['contains'])} "
            f"| {s['prefill_ms']['mean']:.0f} | {s['total_ms']['mean']:.0f} | {s['prompt_tokens']['mean']:.0f} "
            f"| {s['kv_cache_bytes']['mean'] / 1024:.0f} | {s['peak_rss_mb']:.0f} "
            f"| {s['internalize_ms_per_document']:.0f} | {s['bytes_stored_per_document']:,.0f} |"
        )
    lines += [
        "",
        (
            "Scores are means with 95% percentile-bootstrap intervals. Prefill and total are per query; "
            "internalization (adapter making, or chunk embedding for `rag`) is paid once per document. "
            "Bytes stored: `context` the text; `rag` text + chunk embeddings; `d2l`/`cd` the adapter blob; "
            "`hybrid`/`auto` adapter + text + embeddings. KV cache = (prompt + answer tokens) x bytes per "
            "token."
        ),
        "",
    ]
    if unavailable:
        lines += ["Unavailable arms:", "", *unavailable, ""]
    notes = []
    for arm, s in result["arms"].items():
        if s.get("modes_used"):
            notes.append(f"- `{arm}` answered with modes {s['modes_used']}")
        if s.get("truncated"):
            notes.append(f"- `{arm}`: {s['truncated']} document(s) truncated to the window")
        notes.extend(f"- `{arm}` failed on {f}" for f in s.get("failures", [])[:5])
    if notes:
        lines += ["Notes:", "", *notes, ""]
    vs = [c for c in result["comparisons"] if c["metric"] == "contains" and "rag" in (c["a"], c["b"])]
    if vs:
        lines += [
            "## Against retrieval (answer contained, paired bootstrap on shared items)",
            "",
            "| arm | n | arm − rag | 95% CI | P(arm better) |",  # noqa: RUF001 - a typographic minus
            "|---|---|---|---|---|",
        ]
        for c in vs:
            sign, other = (1, c["b"]) if c["a"] == "rag" else (-1, c["a"])
            low, high = (c["low"], c["high"]) if sign == 1 else (-c["high"], -c["low"])
            p = c["p_b_better"] if sign == 1 else 1 - c["p_b_better"]
            diff, low, high = sign * c["diff"] + 0.0, low + 0.0, high + 0.0  # no "-0.00"
            lines.append(f"| {other} | {c['n']} | {diff:+.2f} | [{low:+.2f}, {high:+.2f}] | {p:.2f} |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    if result["errors"]:
        lines += ["## Malformed input lines (skipped)", ""]
        lines += [f"- line {e['line']}: {e['error']}" for e in result["errors"]] + [""]
    lines += ["All answers are in `qa.json` (`rows`)."]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], rows: list[dict[str, Any]], outdir: str | Path) -> Path:
    """Write ``qa.json``, the plots and ``report.md`` into ``outdir``; returns the Markdown path."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qa.json").write_text(json.dumps({**result, "rows": rows}, indent=1, default=str) + "\n")
    try:
        plots = _plots(result, out)
    except ImportError as e:  # matplotlib is optional for the numbers
        log.warning("no plots: %s", e)
        plots = []
    path = out / "report.md"
    path.write_text(markdown(result, plots))
    result["report"] = str(path)
    result["plots"] = [str(out / p) for p in plots]
    return path
