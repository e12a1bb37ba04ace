"""Text-to-LoRA evaluation: zero-shot on held-out tasks with unseen descriptions.

Arms, all with the same prompt (the unseen description and the input in the user turn, empty system turn):

- ``base``: the base model, description in the prompt only;
- ``mt_lora``: plus the multi-task LoRA trained on all training tasks;
- ``t2l``: plus the adapter the T2L hypernetwork generates from the description;
- ``task_lora``: plus a LoRA trained on the held-out task itself (the ceiling; a few tasks only).

A generation is scored by the task's own checker on its first line. ``pmem eval t2l [--quick] --json``.

>>> res = run(quick=True)                      # doctest: +SKIP
>>> res["heldout"]["mean"]["t2l"] > res["heldout"]["mean"]["base"]   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from memory.errors import ModelError
from memory.hyper.t2l import T2LHypernetwork
from memory.lora import LoraAdapter, from_bytes, to_bytes
from memory.training.t2l import SYSTEM, TrainArgs, build_prompt, load_lora, train
from memory.training.tasks import EVAL_SEED_START, Example, Task, heldout_tasks, train_tasks

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "t2l-smollm2-135m"
MAX_NEW_TOKENS = 16
BATCH = 36
CEILING_TASKS_QUICK = ("lowercase", "min_of_list")
CEILING_TASKS_FULL = ("lowercase", "min_of_list", "kebab_case", "previous_letter")
ARMS = ("base", "mt_lora", "t2l", "task_lora")


def _cases(tasks: Sequence[Task], per_task: int) -> list[tuple[Task, str, Example]]:
    """(task, unseen description, example) rows; descriptions rotate through the task's evaluation set."""
    rows = []
    for t in tasks:
        descs = t.eval_descriptions
        for i in range(per_task):
            rows.append((t, descs[(i * 7) % len(descs)], t.example(EVAL_SEED_START + i)))
    return rows


def _score(base: Any, rows: list[tuple[Task, str, Example]], adapters: list[LoraAdapter | None] | LoraAdapter | None,
           prompt_mode: str, samples: dict[str, str] | None = None) -> list[bool]:
    """Greedy generation for every row (batched, per-row adapters), checked by each task's checker.

    The first generation of each task is recorded in ``samples`` (task -> text) when given.
    """
    ok: list[bool] = []
    for s in range(0, len(rows), BATCH):
        chunk = rows[s : s + BATCH]
        prompts = [base.chat_ids(build_prompt(d, ex.input, prompt_mode), system=SYSTEM) for _, d, ex in chunk]
        ads = adapters[s : s + BATCH] if isinstance(adapters, list) else adapters
        gens = base.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, stop=["\n"], adapters=ads)
        ok.extend(t.check_output(ex, g.text) for (t, _, ex), g in zip(chunk, gens))
        if samples is not None:
            for (t, _, ex), g in zip(chunk, gens):
                samples.setdefault(t.name, f"{ex.input!r} -> {g.text!r} (gold {ex.output!r})")
    return ok


def _per_task(rows: list[tuple[Task, str, Example]], ok: list[bool]) -> dict[str, float]:
    acc: dict[str, list[bool]] = {}
    for (t, _, _), v in zip(rows, ok):
        acc.setdefault(t.name, []).append(v)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d) if d else float("nan")


def _paired(per_row: dict[str, list[bool]]) -> dict[str, dict[str, float]]:
    """T2L against each other arm on the same rows: mean difference in accuracy with a paired bootstrap CI."""
    from memory.evaluation.metrics import paired_bootstrap

    out = {}
    for other in ("base", "mt_lora"):
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
    train(TrainArgs(out=run_dir, arm="task-lora", task=task, max_steps=steps, minutes=60, lr=1e-3, warmup=5,
                    tasks_per_step=1, examples_per_task=8, save_every=10_000), base=base)
    ad = load_lora(run_dir / "model")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"task-lora-{task}.safetensors").write_bytes(to_bytes(ad))
    return ad


def run(quick: bool = False, checkpoint: str | Path | None = None, output: str | Path | None = None,
        per_task: int | None = None, seen_per_task: int | None = None, ceiling_steps: int | None = None,
        **_: Any) -> dict[str, Any]:
    """Evaluate every arm; with ``output`` (a directory), write ``t2l_eval.json`` and ``t2l_eval.png`` there.

    Args:
        quick: 6 examples per held-out task, 2 ceiling tasks, no seen-task pass.
        checkpoint: T2L checkpoint directory (``config.json``, ``model.safetensors``, ``baselines/``).
        per_task / seen_per_task / ceiling_steps: override the sizes.

    >>> run(quick=True)["heldout"]["mean"]        # doctest: +SKIP
    """
    import torch

    from memory.config import Settings
    from memory.models import load_base_model

    ckpt = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    base = load_base_model()
    net = T2LHypernetwork.load(ckpt, base_fingerprint=base.fingerprint)
    mode = net.config.prompt_mode
    mt_path = ckpt / "baselines" / "mt-lora.safetensors"
    if not mt_path.exists():
        raise ModelError(f"{mt_path} is missing; train it with `pmem train t2l --arm mt-lora --out DIR`")
    mt = from_bytes(mt_path.read_bytes())
    per_task = per_task or (6 if quick else 20)
    seen_per_task = seen_per_task if seen_per_task is not None else (0 if quick else 4)
    ceiling_tasks = CEILING_TASKS_QUICK if quick else CEILING_TASKS_FULL
    cache = Settings.from_env().home / "t2l-ceilings"
    t_start = time.perf_counter()
    torch.manual_seed(0)

    samples: dict[str, dict[str, str]] = {arm: {} for arm in ARMS}

    def arms_on(rows: list[tuple[Task, str, Example]], keep: bool
                ) -> tuple[dict[str, dict[str, float]], dict[str, list[bool]], float]:
        t0 = time.perf_counter()
        ads = net.generate([d for _, d, _ in rows])
        gen_ms = (time.perf_counter() - t0) * 1000 / max(1, len(rows))
        res, per_row = {}, {}
        for arm, adapters in (("base", None), ("mt_lora", mt), ("t2l", ads)):
            per_row[arm] = _score(base, rows, adapters, mode, samples[arm] if keep else None)
            res[arm] = _per_task(rows, per_row[arm])
            log.info("t2l eval: %s done (%.0f s)", arm, time.perf_counter() - t_start)
        return res, per_row, gen_ms

    held_rows = _cases(heldout_tasks(), per_task)
    held, held_rows_ok, gen_ms = arms_on(held_rows, keep=True)
    ceiling_rows = [r for r in held_rows if r[0].name in ceiling_tasks]
    task_lora: dict[str, float] = {}
    for name in ceiling_tasks:
        ad = ceiling_lora(name, ckpt, base, steps=ceiling_steps or (40 if quick else 80), cache=cache)
        rows = [r for r in ceiling_rows if r[0].name == name]
        task_lora.update(_per_task(rows, _score(base, rows, ad, mode, samples["task_lora"])))
    held["task_lora"] = task_lora

    result: dict[str, Any] = {
        "suite": "t2l",
        "quick": quick,
        "checkpoint": str(ckpt),
        "hypernetwork": net.fingerprint(),
        "size": net.config.size,
        "base_model": base.fingerprint,
        "prompt_mode": mode,
        "examples_per_task": per_task,
        "heldout": {
            "tasks": [t.name for t in heldout_tasks()],
            "mean": {arm: round(_mean(held[arm]), 4) for arm in ("base", "mt_lora", "t2l")},
            "per_task": {arm: {k: round(v, 4) for k, v in held[arm].items()} for arm in ARMS},
            "paired": _paired(held_rows_ok),
        },
        "ceiling": {
            "tasks": list(ceiling_tasks),
            "mean": {arm: round(_mean({k: held[arm][k] for k in ceiling_tasks}), 4) for arm in ARMS},
        },
        "t2l_generation_ms_per_adapter": round(gen_ms, 2),
        "samples": samples,
    }
    if seen_per_task:
        seen, seen_ok, _ = arms_on(_cases(train_tasks(), seen_per_task), keep=False)
        result["seen_tasks_unseen_descriptions"] = {
            "mean": {arm: round(_mean(seen[arm]), 4) for arm in seen},
            "paired": _paired(seen_ok),
            "per_task": {arm: {k: round(v, 4) for k, v in seen[arm].items()} for arm in seen},
        }
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "t2l_eval.json").write_text(json.dumps(result, indent=2) + "\n")
        plot(result, out / "t2l_eval.png")
    return result


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bar chart: accuracy per held-out task and arm, plus the means (PNG).

    >>> plot(run(quick=True), "/tmp/t2l.png")    # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["heldout"]["per_task"]
    tasks = result["heldout"]["tasks"]
    arms = [a for a in ARMS if per.get(a)]
    colors = {"base": "#999999", "mt_lora": "#4c72b0", "t2l": "#dd8452", "task_lora": "#55a868"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [5, 1]})
    w = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        xs = [j + i * w for j, t in enumerate(tasks) if t in per[arm]]
        ys = [per[arm][t] for t in tasks if t in per[arm]]
        ax1.bar(xs, ys, w, label=arm, color=colors[arm])
    ax1.set_xticks([j + 0.4 - w / 2 for j in range(len(tasks))], tasks, rotation=60, ha="right", fontsize=8)
    ax1.set_ylabel("accuracy")
    ax1.set_ylim(0, 1)
    ax1.set_title(f"held-out tasks, unseen descriptions ({result['examples_per_task']} examples each)")
    ax1.legend(fontsize=8)
    means = result["heldout"]["mean"]
    ax2.bar(list(means), list(means.values()), color=[colors[a] for a in means])
    ax2.set_ylim(0, 1)
    ax2.set_title("mean over held-out tasks")
    ax2.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["run", "plot", "DEFAULT_CHECKPOINT", "ceiling_lora"]
