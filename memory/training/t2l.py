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

Runs are resumable: ``DIR/state.pt`` (weights, optimiser, step, wall time) and ``DIR/log.jsonl`` (one line
per logged step) are written every ``--save-every`` steps; ``--resume`` continues from them. The final
artefact is ``DIR/model/`` (T2L: ``config.json`` + ``model.safetensors``; LoRA arms: ``adapter.safetensors``).

>>> main(["--out", "/tmp/t2l-run", "--minutes", "1", "--size", "S"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from memory.training import load_resume_state
from memory.errors import ValidationError
from memory.hyper.t2l import DEFAULT_TARGETS, T2LConfig, T2LHypernetwork
from memory.hyper.t2l_text import DescriptionEncoder
from memory.lora import LoraAdapter, apply_lora_batched, from_bytes, to_bytes
from memory.training.tasks import Example, Task, get_task, train_tasks

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


def sample_rows(rng: random.Random, tasks: Sequence[Task], n_tasks: int, per_task: int,
                descriptions_per_task: int | None = None) -> list[Row]:
    """``n_tasks`` distinct tasks x ``per_task`` examples; one training description per task
    (drawn from the first ``descriptions_per_task`` paraphrases; all when ``None``)."""
    rows = []
    for task in rng.sample(list(tasks), min(n_tasks, len(tasks))):
        desc = rng.choice(task.train_descriptions[:descriptions_per_task])
        for _ in range(per_task):
            rows.append(Row(task, desc, task.example(rng.randrange(1_000_000))))
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
        w = {p: (self.a[k].detach().float().clone(), (self.b[k] * s).detach().float().clone()) for p, k in self._paths()}
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


def _load_base() -> Any:
    from memory.models import load_base_model

    base = load_base_model()
    for p in base.model.parameters():
        p.requires_grad_(False)
    base.model.eval()  # no dropout in the frozen base
    return base


def train(args: TrainArgs, base: Any | None = None) -> Path:
    """Run (or resume) one training run; returns the directory of the final artefact.

    >>> train(TrainArgs(out=Path("/tmp/mt"), arm="mt-lora", minutes=1))  # doctest: +SKIP
    """
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base or _load_base()
    tasks = train_tasks() if args.arm != "task-lora" else [get_task(_need(args.task))]
    cfg = T2LConfig.for_model(base, DEFAULT_TARGETS, size=args.size, rank=args.rank, prompt_mode=args.prompt_mode,
                              offset_rank=args.offset_rank if args.arm == "t2l" else 0)

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    encoder = None
    desc_cache: dict[str, Tensor] = {}
    if args.arm == "t2l":
        net: nn.Module = T2LHypernetwork(cfg)
        encoder = DescriptionEncoder.load()
        descs = sorted({d for t in tasks for d in t.train_descriptions[: args.descriptions_per_task]})
        emb_path = out / "description_embeddings.pt"  # a fixed set: embed once per run, reuse on resume
        cached = torch.load(emb_path) if emb_path.exists() else None
        if cached is None or cached["descriptions"] != descs:
            cached = {"descriptions": descs, "embeddings": encoder.encode(descs)}
            torch.save(cached, emb_path)
        desc_cache = dict(zip(descs, cached["embeddings"]))
    else:
        net = LoraParams(cfg)
    prior_steps = _warm_start(net, args.init_from) if args.init_from else 0
    net.train()
    offset = [p for n, p in net.named_parameters() if n.startswith("offset_")]
    rest = [p for n, p in net.named_parameters() if not n.startswith("offset_")]
    groups = [{"params": rest, "base_lr": args.lr}] + ([{"params": offset, "base_lr": args.offset_lr}] if offset else [])
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
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": time.perf_counter() - t0,
                    "rng": rng.getstate(), "args": {k: str(v) for k, v in vars(args).items()}}, tmp)
        tmp.replace(state_path)
        export(net, args, out / "model", prior_steps + step)

    while time.perf_counter() - t0 < budget and (args.max_steps is None or step < args.max_steps):
        rows = sample_rows(rng, tasks, args.tasks_per_step, args.examples_per_task, args.descriptions_per_task)
        enc = [encode_example(base, build_prompt(r.description, r.example.input, args.prompt_mode), r.example.output) for r in rows]
        ids, mask, labels = collate(enc, pad)
        warm = min(1.0, (step + 1) / max(1, args.warmup))
        lr = args.lr * warm
        for g in opt.param_groups:
            g["lr"] = g.get("base_lr", args.lr) * warm
        if isinstance(net, T2LHypernetwork):
            emb = torch.stack([desc_cache[r.description] for r in rows])
            weights = net.batched_weights(emb)
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
            rec = {"step": step, "loss": sum(losses) / len(losses), "lr": lr, "minutes": (time.perf_counter() - t0) / 60,
                   "arm": args.arm}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log.info("step %d loss %.4f", step, rec["loss"])
            losses.clear()
        if step % args.save_every == 0:
            save()
    save()
    logf.close()
    return out / "model"


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
    meta = {"trained_steps": step, "arm": args.arm, "train_tasks": len(train_tasks()), "lr": args.lr,
            "offset_rank": args.offset_rank if args.arm == "t2l" else 0, "offset_lr": args.offset_lr,
            "tasks_per_step": args.tasks_per_step, "examples_per_task": args.examples_per_task}
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
    p.add_argument("--arm", choices=["t2l", "mt-lora", "task-lora"], default="t2l")
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
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = TrainArgs(**vars(ns))
    path = train(args)
    log.info("wrote %s", path)
    return 0


__all__ = ["TrainArgs", "train", "main", "build_prompt", "encode_example", "collate", "answer_loss", "LoraParams", "load_lora"]


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
