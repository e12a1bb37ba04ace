"""Meta-training for Text-to-LoRA, plus the two LoRA baselines that share its loop.

``pmem train t2l --out DIR --minutes 40`` trains the hypernetwork by SFT: each step samples a few training
tasks, one training description each, and a few examples per task; the hypernetwork turns each description
into a LoRA, which is applied to the frozen base model row by row (``apply_lora_batched``), and the loss is
the next-token cross-entropy on the gold answer tokens only.

The same loop trains
- ``--arm mt-lora``: one LoRA shared by all training tasks (the multi-task baseline), and
- ``--arm task-lora --task NAME``: one LoRA on one task (the per-task ceiling).

``--init-from PATH`` warm-starts a new run from a finished artefact (a T2L checkpoint directory, or a LoRA
``adapter.safetensors`` / its directory for the LoRA arms) with a fresh optimiser; the exported step count
includes the steps the artefact had already been trained for, so arms compared at equal totals stay fair.

``--arm all`` is the whole comparison in one command: T2L for ``--minutes`` (or ``--max-steps``), then the
multi-task LoRA for exactly as many steps, then per-task LoRA ceilings on a sample of each held-out split;
``DIR/checkpoint/`` is then what ``pmem eval t2l --checkpoint`` reads (``config.json``, ``model.safetensors``,
``baselines/``, the training logs). ``--device cuda`` trains on a GPU under bf16 autocast; ``--snapshot-every N``
keeps the artefact of every N-th step under ``DIR/snapshots/`` (for curves over training steps).

Training tasks come from the task library (:mod:`memory.training.tasks`): 1,959 tasks of one to three steps;
description embeddings are computed when a description is first drawn and kept for the run.

Runs are resumable: ``DIR/state.pt`` (weights, optimiser, step, wall time) and ``DIR/log.jsonl`` (one line
per logged step) are written every ``--save-every`` steps; ``--resume`` continues from them. The final
artefact is ``DIR/model/`` (T2L: ``config.json`` + ``model.safetensors``; LoRA arms: ``adapter.safetensors``).

>>> main(["--out", "/tmp/t2l-run", "--minutes", "1", "--size", "S"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from memory.errors import ValidationError
from memory.hyper.t2l import DEFAULT_TARGETS, T2LConfig, T2LHypernetwork
from memory.hyper.t2l_text import DescriptionEncoder
from memory.lora import LoraAdapter, apply_lora_batched, from_bytes, to_bytes
from memory.training import load_resume_state
from memory.training.tasks import SPLITS, Example, Task, get_task, heldout_tasks, library, sample, train_tasks

log = logging.getLogger(__name__)

IGNORE = -100
# An empty system turn: SmolLM2's default system prompt costs 16 tokens per row (a third of a training
# sequence here) and carries nothing the skill needs. Training and evaluation use the same value.
SYSTEM = ""


# ---------------------------------------------------------------------- prompts and batches
def build_prompt(description: str | None, text: str, mode: str = "description+input") -> str:
    """The user turn for one example (the same function at training and evaluation time).

    >>> build_prompt("Add the numbers.", "2 and 3")
    'Add the numbers.\\nInput: 2 and 3'
    """
    if mode == "input" or not description:
        return f"Input: {text}"
    return f"{description}\nInput: {text}"


def encode_example(base: Any, user: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt + answer + end-of-turn, and labels (``-100`` on the prompt)."""
    prompt = list(base.chat_ids(user, system=SYSTEM))
    tok = base.tokenizer
    eos = tok.eos_token or ""
    ans = tok.encode(answer + eos, add_special_tokens=False)
    return prompt + ans, [IGNORE] * len(prompt) + ans


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad to the longest row: ``input_ids``, ``attention_mask``, ``labels``."""
    n = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def answer_loss(model: nn.Module, ids: Tensor, mask: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean next-token cross-entropy over answer tokens; logits are computed only where labels exist."""
    inner = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if inner is None or head is None:  # not a *ForCausalLM: fall back to full logits
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)
    hidden = inner(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]  # [b, T-1, d]
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = head(hidden[keep]).float()  # [k, V]
    return nn.functional.cross_entropy(logits, target[keep], label_smoothing=label_smoothing)


@dataclass
class Row:
    task: Task
    description: str
    example: Example


def sample_rows(
    rng: random.Random, tasks: Sequence[Task], n_tasks: int, per_task: int, descriptions_per_task: int | None = None
) -> list[Row]:
    """``n_tasks`` distinct tasks x ``per_task`` examples; one training description per task
    (drawn from the first ``descriptions_per_task`` paraphrases; all when ``None``)."""
    rows: list[Row] = []
    for task in rng.sample(list(tasks), min(n_tasks, len(tasks))):
        desc = rng.choice(task.train_descriptions[:descriptions_per_task])
        rows.extend(Row(task, desc, task.example(rng.randrange(1_000_000))) for _ in range(per_task))
    return rows


# ---------------------------------------------------------------------- trainable arms
class LoraParams(nn.Module):
    """A plain trainable LoRA on the target modules of every layer (PEFT init: Kaiming A, zero B)."""

    def __init__(self, config: T2LConfig) -> None:
        super().__init__()
        self.config = config
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        for layer in range(config.n_layers):
            for m, (i, o) in config.module_dims.items():
                key = f"{layer}__{m.replace('.', '__')}"
                self.a[key] = nn.Parameter(torch.empty(config.rank, i).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i)))
                self.b[key] = nn.Parameter(torch.zeros(o, config.rank))

    def _paths(self) -> Iterator[tuple[str, str]]:
        c = self.config
        for layer in range(c.n_layers):
            for m in c.module_dims:
                yield f"{c.layer_prefix}.{layer}.{m}", f"{layer}__{m.replace('.', '__')}"

    def batched_weights(self, bs: int) -> dict[str, tuple[Tensor, Tensor]]:
        s = self.config.scaling
        return {p: (self.a[k].expand(bs, -1, -1), (self.b[k] * s).expand(bs, -1, -1)) for p, k in self._paths()}

    def to_adapter(self, metadata: dict[str, str] | None = None) -> LoraAdapter:
        s = self.config.scaling
        w = {
            p: (self.a[k].detach().float().cpu().clone(), (self.b[k] * s).detach().float().cpu().clone())
            for p, k in self._paths()
        }
        return LoraAdapter(w, self.config.base_model, metadata or {})


# ---------------------------------------------------------------------- the loop
@dataclass
class TrainArgs:
    out: Path
    arm: str = "t2l"  # t2l | mt-lora | task-lora
    task: str | None = None
    size: str = "L"
    rank: int = 8
    minutes: float = 30.0
    max_steps: int | None = None
    lr: float = 5e-4
    warmup: int = 30
    tasks_per_step: int = 4
    examples_per_task: int = 2
    l2_b: float = 1e-3
    label_smoothing: float = 0.0
    save_every: int = 25
    seed: int = 0
    resume: bool = False
    threads: int = 1
    prompt_mode: str = "description+input"
    descriptions_per_task: int | None = None  # None: every training paraphrase (tests use a few)
    init_from: Path | None = None  # warm start from a finished artefact (see module docstring)
    offset_rank: int = 0  # T2L: rank of the learned task-independent offset LoRA (0: none)
    offset_lr: float = 1e-3  # its learning rate (the multi-task LoRA's)
    device: str = "auto"  # auto | cpu | cuda[:N]; CUDA trains under bf16 autocast
    snapshot_every: int = 0  # keep the artefact of every N-th step under DIR/snapshots/ (0: none)
    # --arm all
    mt_lr: float = 1e-3
    ceiling_per_split: int = 2
    ceiling_steps: int = 150


class DescriptionCache:
    """MiniLM embeddings of training descriptions, computed on first use (the library has ~0.5 M wordings)."""

    def __init__(self, encoder: DescriptionEncoder, device: torch.device) -> None:
        self.encoder, self.device = encoder, device
        self._cache: dict[str, Tensor] = {}

    def __call__(self, descriptions: list[str]) -> Tensor:
        new = sorted({d for d in descriptions if d not in self._cache})
        if new:
            for d, e in zip(new, self.encoder.encode(new), strict=False):
                self._cache[d] = e.to(self.device)
        return torch.stack([self._cache[d] for d in descriptions])

    def __len__(self) -> int:
        return len(self._cache)


def _load_base(device: str = "auto") -> Any:
    from memory.models import load_base_model

    base = load_base_model(device=device)
    for p in base.model.parameters():
        p.requires_grad_(False)
    base.model.eval()  # no dropout in the frozen base
    return base


def train(args: TrainArgs, base: Any | None = None) -> Path:
    """Run (or resume) one training run; returns the directory of the final artefact.

    >>> train(TrainArgs(out=Path("/tmp/mt"), arm="mt-lora", minutes=1))  # doctest: +SKIP
    """
    if args.arm == "all":
        return train_all(args, base)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base or _load_base(args.device)
    dev = base.device
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext
    tasks = train_tasks() if args.arm != "task-lora" else [get_task(_need(args.task))]
    cfg = T2LConfig.for_model(
        base,
        DEFAULT_TARGETS,
        size=args.size,
        rank=args.rank,
        prompt_mode=args.prompt_mode,
        offset_rank=args.offset_rank if args.arm == "t2l" else 0,
    )

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    embed: DescriptionCache | None = None
    if args.arm == "t2l":
        net: nn.Module = T2LHypernetwork(cfg)
        embed = DescriptionCache(DescriptionEncoder.load(), dev)
    else:
        net = LoraParams(cfg)
    prior_steps = _warm_start(net, args.init_from) if args.init_from else 0
    net.to(dev)
    net.train()
    offset = [p for n, p in net.named_parameters() if n.startswith("offset_")]
    rest = [p for n, p in net.named_parameters() if not n.startswith("offset_")]
    groups = [{"params": rest, "base_lr": args.lr}] + (
        [{"params": offset, "base_lr": args.offset_lr}] if offset else []
    )
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=1e-2)
    step, elapsed = 0, 0.0
    state_path = out / "state.pt"
    if args.resume and state_path.exists():
        state = load_resume_state(state_path)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        rng.setstate(state["rng"])
        log.info("resumed %s at step %d (%.1f min)", out, step, elapsed / 60)

    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else base.tokenizer.eos_token_id
    budget = args.minutes * 60
    logf = (out / "log.jsonl").open("a" if args.resume else "w")
    t0 = time.perf_counter() - elapsed
    losses: list[float] = []

    def save() -> None:
        tmp = out / "state.pt.tmp"
        torch.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "elapsed": time.perf_counter() - t0,
                "rng": rng.getstate(),
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            tmp,
        )
        tmp.replace(state_path)
        export(net, args, out / "model", prior_steps + step)
        if args.snapshot_every and step % args.snapshot_every == 0:
            export(net, args, out / "snapshots" / f"step-{prior_steps + step:07d}", prior_steps + step)

    while time.perf_counter() - t0 < budget and (args.max_steps is None or step < args.max_steps):
        rows = sample_rows(rng, tasks, args.tasks_per_step, args.examples_per_task, args.descriptions_per_task)
        enc = [
            encode_example(base, build_prompt(r.description, r.example.input, args.prompt_mode), r.example.output)
            for r in rows
        ]
        ids, mask, labels = (x.to(dev) for x in collate(enc, pad))
        warm = min(1.0, (step + 1) / max(1, args.warmup))
        lr = args.lr * warm
        for g in opt.param_groups:
            g["lr"] = g.get("base_lr", args.lr) * warm
        with autocast():
            if isinstance(net, T2LHypernetwork):
                assert embed is not None
                weights = net.batched_weights(embed([r.description for r in rows]))
            else:
                weights = net.batched_weights(len(rows))  # type: ignore[operator]
            with apply_lora_batched(base.model, weights):
                loss = answer_loss(base.model, ids, mask, labels, args.label_smoothing)
            reg = sum(b.float().pow(2).mean() for _, b in weights.values()) / len(weights)
        total = loss + args.l2_b * reg
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 5 == 0 or step == 1:
            rec = {
                "step": step,
                "loss": sum(losses) / len(losses),
                "lr": lr,
                "minutes": (time.perf_counter() - t0) / 60,
                "arm": args.arm,
            }
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log.info("step %d loss %.4f", step, rec["loss"])
            losses.clear()
        if step % args.save_every == 0 or (args.snapshot_every and step % args.snapshot_every == 0):
            save()
    save()
    logf.close()
    return out / "model"


def ceiling_tasks(per_split: int) -> dict[str, list[Task]]:
    """The held-out tasks that get a per-task LoRA ceiling: the first ``per_split`` of each split's evaluation
    sample (:func:`memory.training.tasks.sample` with seed 0, which the evaluation also draws from)."""
    return {split: sample(heldout_tasks(split), per_split, seed=0) for split in SPLITS}


def train_all(args: TrainArgs, base: Any | None = None) -> Path:
    """T2L, then the multi-task LoRA at the same step count, then per-task ceilings; returns ``DIR/checkpoint``.

    Each part runs in its own directory under ``args.out`` and resumes with ``--resume``; the finished parts
    are assembled into ``DIR/checkpoint`` (the layout :mod:`memory.evaluation.t2l` reads).
    """
    out = Path(args.out)
    base = base or _load_base(args.device)
    t2l_dir = train(replace(args, arm="t2l", out=out / "t2l"), base=base)
    steps = int(json.loads((t2l_dir / "config.json").read_text())["training"]["trained_steps"])
    log.info("T2L trained for %d steps; the multi-task LoRA gets the same", steps)
    # Equal steps, not equal time: the LoRA's steps are cheaper, its wall-clock budget is only a guard.
    mt_dir = train(
        replace(
            args,
            arm="mt-lora",
            out=out / "mt-lora",
            lr=args.mt_lr,
            max_steps=steps,
            minutes=max(args.minutes * 3, 1.0),
            init_from=None,
            snapshot_every=args.snapshot_every,
        ),
        base=base,
    )
    ck = out / "checkpoint"
    (ck / "baselines").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(t2l_dir / name, ck / name)
    shutil.copy2(mt_dir / "adapter.safetensors", ck / "baselines" / "mt-lora.safetensors")
    shutil.copy2(out / "t2l" / "log.jsonl", ck / "train_log_t2l.jsonl")
    shutil.copy2(out / "mt-lora" / "log.jsonl", ck / "baselines" / "train_log_mt-lora.jsonl")
    for split, tasks in ceiling_tasks(args.ceiling_per_split).items():
        for task in tasks:
            target = ck / "baselines" / f"task-lora-{task.name}.safetensors"
            if target.exists():
                continue
            log.info("per-task LoRA ceiling (%s): %s, %d steps", split, task.name, args.ceiling_steps)
            run_dir = train(
                replace(
                    args,
                    arm="task-lora",
                    task=task.name,
                    out=out / "ceilings" / task.name,
                    max_steps=args.ceiling_steps,
                    minutes=max(args.minutes, 10.0),
                    lr=args.mt_lr,
                    warmup=5,
                    tasks_per_step=1,
                    examples_per_task=8,
                    init_from=None,
                    snapshot_every=0,
                ),
                base=base,
            )
            shutil.copy2(run_dir / "adapter.safetensors", target)
    return ck


def _warm_start(net: nn.Module, source: Path) -> int:
    """Copy a finished artefact's weights into ``net``; returns the steps it had been trained for."""
    source = Path(source)
    if isinstance(net, T2LHypernetwork):
        prior = T2LHypernetwork.load(source)
        mine, theirs = net.config.to_json(), prior.config.to_json()
        if {**mine, "offset_rank": 0} != {**theirs, "offset_rank": 0}:
            raise ValidationError(f"--init-from {source}: its config differs from this run's (size, rank, base model)")
        # An offset the artefact lacks starts from zero delta; one it has but this run lacks is an error.
        missing, unexpected = net.load_state_dict(prior.state_dict(), strict=False)
        if unexpected or any(not k.startswith("offset_") for k in missing):
            raise ValidationError(f"--init-from {source}: weights do not match ({missing + unexpected})")
        meta = json.loads((source / "config.json").read_text()).get("training", {})
        return int(meta.get("trained_steps", 0))
    assert isinstance(net, LoraParams)
    file = source / "adapter.safetensors" if source.is_dir() else source
    adapter = from_bytes(file.read_bytes())
    s = net.config.scaling
    with torch.no_grad():
        for path, key in net._paths():
            if path not in adapter.weights:
                raise ValidationError(f"--init-from {file}: no weights for {path}")
            a, b = adapter.weights[path]
            net.a[key].copy_(a.float())
            net.b[key].copy_(b.float() / s)
    return int(adapter.metadata.get("steps", 0))


def export(net: nn.Module, args: TrainArgs, directory: Path, step: int) -> Path:
    """Write the artefact a run produces (hypernetwork checkpoint or LoRA safetensors)."""
    meta = {
        "trained_steps": step,
        "arm": args.arm,
        "train_tasks": len(train_tasks()),
        "lr": args.lr,
        "library": library().counts(),
        "device": args.device,
        "offset_rank": args.offset_rank if args.arm == "t2l" else 0,
        "offset_lr": args.offset_lr,
        "tasks_per_step": args.tasks_per_step,
        "examples_per_task": args.examples_per_task,
    }
    if isinstance(net, T2LHypernetwork):
        return net.save(directory, metadata={"training": meta})
    assert isinstance(net, LoraParams)
    directory.mkdir(parents=True, exist_ok=True)
    ad = net.to_adapter({"kind": args.arm, "task": args.task or "", "steps": str(step)})
    (directory / "adapter.safetensors").write_bytes(to_bytes(ad))
    (directory / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_lora(directory: str | Path) -> LoraAdapter:
    """Load a baseline LoRA written by :func:`export`.

    >>> load_lora("/tmp/mt/model")  # doctest: +SKIP
    """
    return from_bytes((Path(directory) / "adapter.safetensors").read_bytes())


def _need(task: str | None) -> str:
    if not task:
        raise ValidationError("--arm task-lora needs --task NAME")
    return task


def main(argv: list[str] | None = None) -> int:
    """``pmem train t2l``: train the T2L hypernetwork (or a LoRA baseline), resumably."""
    p = argparse.ArgumentParser(prog="pmem train t2l", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory (state.pt, log.jsonl, model/)")
    p.add_argument(
        "--arm",
        choices=["t2l", "mt-lora", "task-lora", "all"],
        default="t2l",
        help="all: T2L, the multi-task LoRA at equal steps, and per-task ceilings (DIR/checkpoint)",
    )
    p.add_argument("--task", help="task name for --arm task-lora")
    p.add_argument("--size", choices=["L", "M", "S"], default="L")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (counted across resumes)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=30, help="linear warm-up steps")
    p.add_argument("--tasks-per-step", type=int, default=4)
    p.add_argument("--examples-per-task", type=int, default=2)
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt-mode", choices=["description+input", "input"], default="description+input")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-from", type=Path, help="warm-start from a finished artefact (fresh optimiser)")
    p.add_argument("--offset-rank", type=int, default=0, help="T2L: rank of a learned task-independent offset LoRA")
    p.add_argument("--offset-lr", type=float, default=1e-3, help="learning rate of the offset LoRA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (CUDA: bf16 autocast)")
    p.add_argument("--snapshot-every", type=int, default=0, help="keep the artefact of every N-th step")
    p.add_argument("--mt-lr", type=float, default=1e-3, help="--arm all: the LoRA arms' learning rate")
    p.add_argument("--ceiling-per-split", type=int, default=2, help="--arm all: ceiling tasks per held-out split")
    p.add_argument("--ceiling-steps", type=int, default=150, help="--arm all: steps of each per-task LoRA")
    p.add_argument("--descriptions-per-task", type=int, help="draw from the first N paraphrases only")
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = TrainArgs(**vars(ns))
    path = train(args)
    log.info("wrote %s", path)
    return 0


__all__ = [
    "DescriptionCache",
    "LoraParams",
    "TrainArgs",
    "answer_loss",
    "build_prompt",
    "ceiling_tasks",
    "collate",
    "encode_example",
    "load_lora",
    "main",
    "train",
    "train_all",
]


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
