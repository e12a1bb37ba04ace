"""Text-to-LoRA evaluation on the three held-out splits of the task library, with unseen descriptions.

Splits (see :mod:`memory.training.tasks.library`), each reported on its own:

- ``interpolation``: seen families with parameter settings never trained on;
- ``composition``: chains with a family pair never chained in training;
- ``unseen_family``: families never trained on.

Arms, all with the same prompt (an evaluation-only description and the input in the user turn, empty system
turn):

- ``base``: the base model, description in the prompt only;
- ``mt_lora``: plus the multi-task LoRA trained on every training task (the same steps as T2L);
- ``t2l``: plus the adapter the T2L hypernetwork generates from the description;
- ``task_lora``: plus a LoRA trained on the held-out task itself (the ceiling; a sample of tasks per split).

A generation is scored by the task's own checker on its first line. For every split, T2L is compared with the
base model and with the multi-task LoRA on the same rows (paired bootstrap, 95 % CI).
``pmem eval t2l [--quick] [--checkpoint DIR] [--output DIR] [--limit TASKS_PER_SPLIT] [--arms base,t2l] --json``.

>>> res = run(quick=True)                                            # doctest: +SKIP
>>> res["splits"]["interpolation"]["paired"]["t2l_minus_mt_lora"]   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from memory.errors import ModelError, ValidationError
from memory.evaluation.progress import ProgressBar
from memory.hyper.t2l import T2LHypernetwork
from memory.lora import LoraAdapter, from_bytes, to_bytes
from memory.training.t2l import SYSTEM, TrainArgs, build_prompt, ceiling_tasks, load_lora, train
from memory.training.tasks import (
    EVAL_SEED_START,
    SPLITS,
    Example,
    Task,
    heldout_tasks,
    library,
    sample,
    train_tasks,
)

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "t2l-smollm2-135m"
MAX_NEW_TOKENS = 48  # the longest gold answers of the library are ~40 tokens (mean ~6)
BATCH = 36
ARMS = ("base", "mt_lora", "t2l", "task_lora")
SIZES = {  # tasks per split, examples per task, ceiling tasks per split, seen training tasks
    "quick": {"tasks": 8, "per_task": 3, "ceiling": 1, "seen": 0},
    "full": {"tasks": 40, "per_task": 5, "ceiling": 2, "seen": 40},
}

Row = tuple[Task, str, Example]


def cases(tasks: Sequence[Task], per_task: int) -> list[Row]:
    """(task, evaluation description, example) rows; descriptions rotate through the task's evaluation set."""
    rows: list[Row] = []
    for t in tasks:
        descs = t.eval_descriptions
        rows.extend((t, descs[(i * 7) % len(descs)], t.example(EVAL_SEED_START + i)) for i in range(per_task))
    return rows


def _score(
    base: Any,
    rows: list[Row],
    adapters: Sequence[LoraAdapter | None] | LoraAdapter | None,
    prompt_mode: str,
    samples: dict[str, str] | None = None,
    tick: Callable[[int], None] | None = None,
) -> list[bool]:
    """Greedy generation for every row (batched, per-row adapters), checked by each task's checker.

    The first generation of each task is recorded in ``samples`` (task -> text) when given.
    """
    ok: list[bool] = []
    for s in range(0, len(rows), BATCH):
        chunk = rows[s : s + BATCH]
        prompts = [base.chat_ids(build_prompt(d, ex.input, prompt_mode), system=SYSTEM) for _, d, ex in chunk]
        ads = adapters[s : s + BATCH] if isinstance(adapters, list) else adapters
        gens = base.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, stop=["\n"], adapters=ads)
        ok.extend(t.check_output(ex, g.text) for (t, _, ex), g in zip(chunk, gens, strict=False))
        if samples is not None:
            for (t, d, ex), g in zip(chunk, gens, strict=False):
                samples.setdefault(t.name, f"{d!r} | {ex.input!r} -> {g.text!r} (gold {ex.output!r})")
        if tick:
            tick(len(chunk))
    return ok


def _per_task(rows: list[Row], ok: list[bool]) -> dict[str, float]:
    acc: dict[str, list[bool]] = {}
    for (t, _, _), v in zip(rows, ok, strict=False):
        acc.setdefault(t.name, []).append(v)
    return {k: round(sum(v) / len(v), 4) for k, v in acc.items()}


def _mean(values: Sequence[bool | float]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


def _paired(per_row: dict[str, list[bool]]) -> dict[str, dict[str, float]]:
    """T2L against each other arm on the same rows: mean difference in accuracy with a paired bootstrap CI."""
    from memory.evaluation.metrics import paired_bootstrap

    out = {}
    for other in ("base", "mt_lora"):
        if other not in per_row or "t2l" not in per_row:
            continue
        d = paired_bootstrap([float(v) for v in per_row[other]], [float(v) for v in per_row["t2l"]])
        out[f"t2l_minus_{other}"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}
    return out


def ceiling_lora(task: str, checkpoint: Path, base: Any, *, steps: int, cache: Path) -> LoraAdapter:
    """The per-task LoRA for ``task``: from the checkpoint's ``baselines/``, else trained now and cached."""
    for d in (checkpoint / "baselines", cache):
        f = d / f"task-lora-{task}.safetensors"
        if f.exists():
            return from_bytes(f.read_bytes())
    log.info("training the per-task LoRA ceiling for %s (%d steps)", task, steps)
    run_dir = cache / f"run-{task}"
    train(
        TrainArgs(
            out=run_dir,
            arm="task-lora",
            task=task,
            max_steps=steps,
            minutes=60,
            lr=1e-3,
            warmup=5,
            tasks_per_step=1,
            examples_per_task=8,
            save_every=10_000,
        ),
        base=base,
    )
    ad = load_lora(run_dir / "model")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"task-lora-{task}.safetensors").write_bytes(to_bytes(ad))
    return ad


def _arms(arms: str | Sequence[str] | None) -> list[str]:
    chosen = [a.strip() for a in arms.split(",")] if isinstance(arms, str) else list(arms or ARMS)
    bad = [a for a in chosen if a not in ARMS]
    if bad:
        raise ValidationError(f"unknown t2l arms {bad}; choose from {', '.join(ARMS)}")
    return [a for a in ARMS if a in chosen]


def run(
    quick: bool = False,
    checkpoint: str | Path | None = None,
    output: str | Path | None = None,
    limit: int | None = None,
    per_task: int | None = None,
    seen_tasks: int | None = None,
    ceiling_per_split: int | None = None,
    ceiling_steps: int | None = None,
    arms: str | Sequence[str] | None = None,
    progress: bool = True,
    base: Any | None = None,
    curve: bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Evaluate the arms on each held-out split; with ``output`` (a directory), write ``t2l_eval.json`` and
    ``t2l_eval.png`` there.

    Args:
        quick: 8 tasks per split x 3 examples, one ceiling task per split, no seen-task pass.
        checkpoint: T2L checkpoint directory (``config.json``, ``model.safetensors``, ``baselines/``).
        limit: tasks per split (a fixed, family-spread sample); per_task: examples per task.
        seen_tasks: training tasks evaluated with unseen descriptions (0: skip).
        ceiling_per_split / ceiling_steps: per-task LoRA ceilings (missing ones are trained and cached).
        arms: a subset of :data:`ARMS` (list or comma-separated).
        progress: show progress on stderr (:class:`~memory.evaluation.progress.ProgressBar`).
        curve: when ``checkpoint`` is the ``checkpoint/`` of a ``pmem train t2l --arm all --snapshot-every N``
            run, also evaluate T2L and the multi-task LoRA at every snapshot, on at most the quick sample (``curve``).

    >>> run(quick=True)["splits"]["composition"]["mean"]        # doctest: +SKIP
    """
    import torch

    from memory.config import Settings
    from memory.models import load_base_model

    size = SIZES["quick" if quick else "full"]
    n_tasks = limit or size["tasks"]
    per_task = per_task or size["per_task"]
    n_seen = seen_tasks if seen_tasks is not None else size["seen"]
    n_ceiling = ceiling_per_split if ceiling_per_split is not None else size["ceiling"]
    chosen = _arms(arms)
    ckpt = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    base = base or load_base_model()
    net = T2LHypernetwork.load(ckpt, base_fingerprint=base.fingerprint)
    mode = net.config.prompt_mode
    mt = None
    if "mt_lora" in chosen:
        mt_path = ckpt / "baselines" / "mt-lora.safetensors"
        if not mt_path.exists():
            raise ModelError(f"{mt_path} is missing; train it with `pmem train t2l --arm mt-lora --out DIR`")
        mt = from_bytes(mt_path.read_bytes())
    cache = Settings.from_env().home / "t2l-ceilings"
    t_start = time.perf_counter()
    torch.manual_seed(0)

    split_tasks = {s: sample(heldout_tasks(s), n_tasks, seed=0) for s in SPLITS}
    split_rows = {s: cases(split_tasks[s], per_task) for s in SPLITS}
    rows = [r for s in SPLITS for r in split_rows[s]]
    seen_rows = cases(sample(train_tasks(), n_seen, seed=0), 3) if n_seen else []
    ceilings = {s: [t for t in ts if t in split_tasks[s]] for s, ts in ceiling_tasks(n_ceiling).items()}
    ceiling_rows = [r for s in SPLITS for r in split_rows[s] if r[0] in ceilings[s]]
    model_arms = [a for a in chosen if a != "task_lora"]
    total = len(model_arms) * (len(rows) + len(seen_rows)) + ("task_lora" in chosen) * len(ceiling_rows)
    bar = ProgressBar("t2l eval", total, enabled=progress)
    samples: dict[str, dict[str, str]] = {arm: {} for arm in chosen}

    def arms_on(rs: list[Row], keep: bool, label: str) -> tuple[dict[str, list[bool]], float]:
        t0 = time.perf_counter()
        ads = net.generate([d for _, d, _ in rs]) if "t2l" in model_arms else None
        gen_ms = (time.perf_counter() - t0) * 1000 / max(1, len(rs))
        per_row = {}
        for arm in model_arms:
            adapters = {"base": None, "mt_lora": mt, "t2l": ads}[arm]
            per_row[arm] = _score(
                base,
                rs,
                adapters,
                mode,
                samples[arm] if keep else None,
                tick=partial(bar.advance, now=f"{label}, {arm}"),
            )
            log.info("t2l eval: %s %s done (%.0f s)", label, arm, time.perf_counter() - t_start)
        return per_row, gen_ms

    try:
        per_row, gen_ms = arms_on(rows, keep=True, label="held-out")
        task_lora: dict[int, bool] = {}
        if "task_lora" in chosen:
            for s in SPLITS:
                for task in ceilings[s]:
                    ad = ceiling_lora(task.name, ckpt, base, steps=ceiling_steps or (60 if quick else 150), cache=cache)
                    rs = [r for r in ceiling_rows if r[0] == task]
                    oks = _score(base, rs, ad, mode, samples["task_lora"], tick=partial(bar.advance, now="ceilings"))
                    task_lora.update({id(r): v for r, v in zip(rs, oks, strict=False)})
        seen_ok, _seen_ms = arms_on(seen_rows, keep=False, label="seen tasks") if seen_rows else ({}, 0.0)
    finally:
        bar.close()

    splits: dict[str, Any] = {}
    offset = 0
    for s in SPLITS:
        rs = split_rows[s]
        ok = {arm: v[offset : offset + len(rs)] for arm, v in per_row.items()}
        offset += len(rs)
        ceil_idx = [i for i, r in enumerate(rs) if r[0] in ceilings[s]]
        ceiling: dict[str, Any] = {"tasks": [t.name for t in ceilings[s]], "n": len(ceil_idx)}
        if "task_lora" in chosen and ceil_idx:
            means = {arm: _mean([ok[arm][i] for i in ceil_idx]) for arm in ok}
            means["task_lora"] = _mean([task_lora[id(rs[i])] for i in ceil_idx])
            ceiling["mean"] = means
        splits[s] = {
            "tasks": [t.name for t in split_tasks[s]],
            "available_tasks": len(heldout_tasks(s)),
            "n": len(rs),
            "mean": {arm: _mean(v) for arm, v in ok.items()},
            "paired": _paired(ok),
            "per_task": {arm: _per_task(rs, v) for arm, v in ok.items()},
            "ceiling": ceiling,
        }
    result: dict[str, Any] = {
        "suite": "t2l",
        "quick": quick,
        "checkpoint": str(ckpt),
        "hypernetwork": net.fingerprint(),
        "trained_steps": json.loads((ckpt / "config.json").read_text()).get("training", {}).get("trained_steps"),
        "size": net.config.size,
        "base_model": base.fingerprint,
        "prompt_mode": mode,
        "arms": chosen,
        "tasks_per_split": n_tasks,
        "examples_per_task": per_task,
        "library": library().counts(),
        "splits": splits,
        "t2l_generation_ms_per_adapter": round(gen_ms, 2),
        "samples": samples,
    }
    if seen_rows:
        result["seen_tasks_unseen_descriptions"] = {
            "n": len(seen_rows),
            "mean": {arm: _mean(v) for arm, v in seen_ok.items()},
            "paired": _paired(seen_ok),
        }
    snapshots = ckpt.parent / "t2l" / "snapshots"
    if curve and snapshots.is_dir() and "t2l" in chosen:
        q = SIZES["quick"]
        result["curve"] = curve_over_steps(
            ckpt.parent,
            base,
            limit=min(n_tasks, q["tasks"]),
            per_task=min(per_task, q["per_task"]),
            progress=progress,
            prompt_mode=mode,
        )
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "t2l_eval.json").write_text(json.dumps(result, indent=2) + "\n")
        plot(result, out / "t2l_eval.png")
    return result


def curve_over_steps(
    run_dir: str | Path,
    base: Any,
    *,
    limit: int,
    per_task: int,
    progress: bool = True,
    prompt_mode: str = "description+input",
) -> dict[str, Any]:
    """Per-split accuracy of T2L and the multi-task LoRA at every training snapshot of an ``--arm all`` run.

    Snapshots are ``run_dir/t2l/snapshots/step-N`` and ``run_dir/mt-lora/snapshots/step-N``; a step missing for
    one arm is reported for the other alone.
    """
    run_dir = Path(run_dir)
    split_rows = {s: cases(sample(heldout_tasks(s), limit, seed=0), per_task) for s in SPLITS}
    rows = [r for s in SPLITS for r in split_rows[s]]
    t2l_steps = sorted((run_dir / "t2l" / "snapshots").glob("step-*"))
    mt_steps = sorted((run_dir / "mt-lora" / "snapshots").glob("step-*"))
    bar = ProgressBar("t2l curves", len(rows) * (len(t2l_steps) + len(mt_steps)), enabled=progress)
    points: dict[int, dict[str, dict[str, float]]] = {}

    def record(step_dir: Path, arm: str, ok: list[bool]) -> None:
        step = int(step_dir.name.split("-")[1])
        at, offset = points.setdefault(step, {}), 0
        for s in SPLITS:
            n = len(split_rows[s])
            at.setdefault(s, {})[arm] = _mean(ok[offset : offset + n])
            offset += n

    try:
        for d in t2l_steps:
            net = T2LHypernetwork.load(d, base_fingerprint=base.fingerprint)
            ads = net.generate([desc for _, desc, _ in rows])
            record(d, "t2l", _score(base, rows, ads, net.config.prompt_mode, tick=partial(bar.advance, now=d.name)))
        for d in mt_steps:
            mt = load_lora(d)
            record(d, "mt_lora", _score(base, rows, mt, prompt_mode, tick=partial(bar.advance, now=d.name)))
    finally:
        bar.close()
    return {
        "tasks_per_split": limit,
        "examples_per_task": per_task,
        "steps": {str(k): points[k] for k in sorted(points)},
    }


COLORS = {"base": "#999999", "mt_lora": "#4c72b0", "t2l": "#dd8452", "task_lora": "#55a868"}


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Accuracy per split and arm with the T2L paired CIs in the titles; the ceilings on their own sample (PNG).

    >>> plot(run(quick=True), "/tmp/t2l.png")    # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(result["splits"])
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 4.2), sharey=True)
    for ax, s in zip(axes, splits, strict=False):
        d = result["splits"][s]
        arms = list(d["mean"])
        bars = ax.bar(arms, [d["mean"][a] for a in arms], color=[COLORS[a] for a in arms])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ceil = d["ceiling"].get("mean")
        if ceil:
            bars = ax.bar(["ceiling\nsample"], [ceil["task_lora"]], color=COLORS["task_lora"], hatch="//")
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        lines = [f"{s} ({d['n']} rows, {len(d['tasks'])} tasks)"]
        for k, v in d["paired"].items():
            lines.append(f"{k.replace('t2l_minus_', 'T2L - ')}: {v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]")
        ax.set_title("\n".join(lines), fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    axes[0].set_ylabel("accuracy (task checker)")
    steps = result.get("trained_steps")
    fig.suptitle(f"T2L held-out splits, unseen descriptions ({steps} training steps)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    if result.get("curve"):
        plot_curve(result["curve"], Path(path).with_name(Path(path).stem + "_curve.png"))
    return Path(path)


def plot_curve(curve: dict[str, Any], path: str | Path) -> Path:
    """Accuracy over training steps, one panel per split, T2L and the multi-task LoRA (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(curve["steps"], key=int)
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(4.2 * len(SPLITS), 3.6), sharey=True)
    for ax, s in zip(axes, SPLITS, strict=False):
        for arm in ("mt_lora", "t2l"):
            xs = [int(k) for k in steps if arm in curve["steps"][k].get(s, {})]
            ax.plot(xs, [curve["steps"][str(x)][s][arm] for x in xs], marker="o", color=COLORS[arm], label=arm)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["ARMS", "DEFAULT_CHECKPOINT", "cases", "ceiling_lora", "curve_over_steps", "plot", "plot_curve", "run"]
