"""Meta-training of the Doc-to-LoRA hypernetwork: ``pmem train d2l --out DIR --minutes M [--resume]``.

Each step samples documents with questions from the training pools (curriculum: one-fact documents first,
then more facts and longer haystacks), runs the frozen base model over the documents, generates one adapter
per document, and trains on the answer cross-entropy of the base model + adapter with the question alone.
Every ``--eval-every`` steps it logs the held-out answer NLL with the matched adapter and with another
document's adapter (rolled by one); their difference, the *gap*, is what the hypernetwork has learned about
documents. ``DIR`` receives ``log.jsonl``, ``state.pt`` (resumable) and ``best/`` (a loadable checkpoint
with the lowest held-out matched NLL).

>>> # main(["--out", "/tmp/d2l", "--minutes", "5"])
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from memory.hyper.d2l import D2LConfig, D2LHypernetwork, document_features, save_checkpoint
from memory.lora.apply import apply_lora_batched
from memory.training import load_resume_state
from memory.training.d2l_data import FactGenerator, Sample, heldout_set
from memory.training.d2l_mix import MixConfig, TrainingMix, heldout_suites, load_passages, parse_weights
from memory.training.d2l_objective import (
    answer_logits,
    chunked_features,
    encode_documents,
    kl_to_teacher,
    per_sample_nll,
    student_batch,
)

log = logging.getLogger(__name__)


def load_base(base_dir: str | None = None, dtype: str | None = None) -> Any:
    """The frozen base model (``memory.models.load_base_model``), or a local HF directory for experiments."""
    if base_dir:
        from types import SimpleNamespace

        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype or "bfloat16"))
        return SimpleNamespace(
            model=model.eval().requires_grad_(False), tokenizer=tok, fingerprint="smollm2-135m-instruct@local"
        )
    from memory.models import load_base_model

    base = load_base_model(dtype=dtype)
    base.model.eval().requires_grad_(False)
    return base


# ---------------------------------------------------------------------------- curriculum
def curriculum(step: int, args: argparse.Namespace) -> dict[str, Any]:
    """Data mix at ``step``: facts per document grow 1 -> ``max_facts`` and haystacks 32 -> ``niah_max`` tokens."""
    frac = min(1.0, step / max(1, args.ramp_steps))
    return {
        "max_facts": 1 + round(frac * (args.max_facts - 1)),
        "niah_prob": args.niah_prob,
        "niah_tokens": (32, int(64 + frac * (args.niah_max - 64))),
    }


def _features(base: Any, net: D2LHypernetwork, samples: Sequence[Sample], chunk: int, max_chunks: int):
    if max_chunks <= 1:
        dev = next(base.model.parameters()).device
        ids, mask = encode_documents(base.tokenizer, [s.document for s in samples], chunk)
        return document_features(base.model, ids.to(dev), mask.to(dev), net.config.target_layers)
    return chunked_features(
        base.model, base.tokenizer, [s.document for s in samples], chunk, max_chunks, net.config.target_layers
    )


def _autocast(base: Any):
    dev = next(base.model.parameters()).device
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def nll_pair(
    base: Any,
    net: D2LHypernetwork,
    samples: Sequence[Sample],
    chunk: int,
    *,
    grad: bool = False,
    shuffled: bool = False,
    max_chunks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample answer NLL with each sample's own adapter (and, if ``shuffled``, with the next sample's)."""
    tok, model = base.tokenizer, base.model
    feats = _features(base, net, samples, chunk, max_chunks)
    batch = student_batch(tok, [s.question for s in samples], [s.answer for s in samples])
    with torch.set_grad_enabled(grad), _autocast(base):
        weights, gates = net.batched_weights(feats)
        with apply_lora_batched(model, weights):
            matched = per_sample_nll(answer_logits(model, batch), batch, len(samples))
        if not shuffled:
            return matched, gates
        rolled = {p: (a.roll(1, 0), b.roll(1, 0)) for p, (a, b) in weights.items()}
        with apply_lora_batched(model, rolled):
            other = per_sample_nll(answer_logits(model, batch), batch, len(samples))
    return matched, other


def kl_step(
    base: Any, net: D2LHypernetwork, samples: Sequence[Sample], chunk: int, max_chunks: int = 1
) -> tuple[torch.Tensor, ...]:
    """Gold-answer NLL, gates and the distillation term: cross-entropy to the teacher's top-16 distribution
    (the base model with the document in its prompt) at the answer tokens."""
    tok, model = base.tokenizer, base.model
    feats = _features(base, net, samples, chunk, max_chunks)
    qs, ans = [s.question for s in samples], [s.answer for s in samples]
    teacher_batch = student_batch(tok, qs, ans, contexts=[s.document for s in samples])
    with torch.no_grad(), _autocast(base):
        teacher = answer_logits(model, teacher_batch)
    batch = student_batch(tok, qs, ans)
    with _autocast(base):
        weights, gates = net.batched_weights(feats)
        with apply_lora_batched(model, weights):
            logits = answer_logits(model, batch)
    n = len(samples)
    return per_sample_nll(logits, batch, n), gates, kl_to_teacher(logits, teacher, batch, n)


@torch.no_grad()
def evaluate_gap(
    base: Any, net: D2LHypernetwork, samples: Sequence[Sample], chunk: int, bs: int = 16, max_chunks: int = 1
) -> dict[str, float]:
    """Held-out matched vs shuffled answer NLL, split by kind (fact, niah, family, prose, continue, haystack).

    Batches hold one kind each, so the shuffled adapter is another document of the same kind."""
    out: dict[str, list[float]] = {}
    by_kind: dict[str, list[Sample]] = {}
    for s in samples:
        by_kind.setdefault(s.kind, []).append(s)
    for kind, group in by_kind.items():
        for i in range(0, len(group), bs):
            part = list(group[i : i + bs])
            if len(part) < 2:
                continue
            m, o = nll_pair(base, net, part, chunk, shuffled=True, max_chunks=max_chunks)
            out.setdefault(f"{kind}_matched", []).extend(m.tolist())
            out.setdefault(f"{kind}_shuffled", []).extend(o.tolist())
    res = {k: sum(v) / len(v) for k, v in out.items()}
    for kind in by_kind:
        if f"{kind}_matched" in res:
            res[f"{kind}_gap"] = res[f"{kind}_shuffled"] - res[f"{kind}_matched"]
    return res


def _param_groups(net: D2LHypernetwork, lr: float, wd: float) -> list[dict[str, Any]]:
    decay = {id(p) for p in net.regularised_parameters()}
    fast = [p for n, p in net.named_parameters() if n.endswith("alpha")]
    fast_ids = {id(p) for p in fast}
    rest_decay = [p for p in net.parameters() if id(p) in decay]
    rest = [p for p in net.parameters() if id(p) not in decay and id(p) not in fast_ids]
    return [
        {"params": rest_decay, "lr": lr, "weight_decay": wd},
        {"params": rest, "lr": lr, "weight_decay": 0.0},
        {"params": fast, "lr": lr * 10, "weight_decay": 0.0},
    ]


def _init_net(args: argparse.Namespace, base: Any) -> D2LHypernetwork:
    """A fresh hypernetwork, or (``--init DIR``) one warm-started from a checkpoint (its shapes win)."""
    if args.init:
        from memory.hyper.d2l import load_checkpoint

        net = load_checkpoint(args.init, base)
        net.requires_grad_(True).train()
        net.config.chunk_tokens = args.chunk_tokens
        net.config.extra = {"init": str(args.init), "init_step": net.config.extra.get("step")}
        return net
    cfg = D2LConfig.for_model(
        base.model.config,
        rank=args.rank,
        key_rank=args.key_rank,
        chunk_tokens=args.chunk_tokens,
        base_model=base.fingerprint,
        **({"target_layers": tuple(args.layers)} if args.layers else {}),
    )
    return D2LHypernetwork(cfg)


def train(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = load_base(args.base_dir, args.dtype)
    device = torch.device(args.device)
    if device.type != "cpu":
        base.model.to(device)
    net = _init_net(args, base).to(device)
    cfg = net.config
    opt = torch.optim.AdamW(_param_groups(net, args.lr, args.wd), betas=(0.9, 0.99))
    gen = FactGenerator("train", seed=args.seed)
    mix: TrainingMix | None = None
    if args.mix:
        weights = parse_weights(None if args.mix == "default" else args.mix)
        mix = TrainingMix(
            load_passages(args.prose_cache, "train", args.prose_max_words),
            seed=args.seed,
            config=MixConfig(
                weights,
                max_facts=args.max_facts,
                haystack_words=(60, max(80, int(args.chunk_tokens * args.max_chunks * 0.7))),
            ),
        )
        held = heldout_suites(
            load_passages(args.prose_cache, "heldout", args.prose_max_words),
            n=args.eval_n,
            haystack_words=(int(args.chunk_tokens * 0.7), max(100, int(args.chunk_tokens * args.max_chunks * 0.7))),
        )
        held += heldout_set(args.eval_facts, args.eval_niah, max_facts=4, niah_tokens=min(args.niah_max, 128))
    else:
        held = heldout_set(
            args.eval_facts, args.eval_niah, max_facts=args.max_facts, niah_tokens=min(args.niah_max, 128)
        )
    state_path = out / "state.pt"
    step, best, elapsed0 = 0, math.inf, 0.0
    if args.resume and state_path.exists():
        st = load_resume_state(state_path)  # on the CPU; load_state_dict moves tensors to the parameters' device
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        step, best, elapsed0 = st["step"], st["best"], st["elapsed"]
        gen.rng.setstate(st["rng"])
        if mix is not None and "mix_rng" in st:
            for r, state in zip(_mix_rngs(mix), st["mix_rng"], strict=False):  # a resumed run may differ in prose
                r.setstate(state)
        log.info("resumed at step %d", step)
    elif args.centre_keys and not args.init:
        warm = [gen.mixed(1, args.niah_prob) for _ in range(32)]
        ids, mask = encode_documents(base.tokenizer, [s.document for s in warm], args.chunk_tokens)
        net.init_key_centres(document_features(base.model, ids.to(device), mask.to(device), cfg.target_layers))
    logf = open(out / "log.jsonl", "a")  # noqa: SIM115 - written through the whole run, closed at its end
    t0 = time.time()
    budget = args.minutes * 60.0
    total_steps_est = args.total_steps
    score_kinds = ("family", "prose", "haystack", "fact") if mix is not None else ("fact", "niah")

    def save_state() -> None:
        tmp = out / "state.pt.tmp"
        torch.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "best": best,
                "elapsed": elapsed0 + time.time() - t0,
                "rng": gen.rng.getstate(),
                "args": vars(args),
                "mix_rng": [r.getstate() for r in _mix_rngs(mix)] if mix is not None else None,
            },
            tmp,
        )
        os.replace(tmp, state_path)
        save_checkpoint(net, out / "last")

    def do_eval() -> dict[str, float]:
        nonlocal best
        net.eval()
        t_eval = time.time()
        res = evaluate_gap(base, net, held, args.chunk_tokens, max_chunks=args.max_chunks)
        res["eval_s"] = round(time.time() - t_eval, 1)
        net.train()
        score = sum(res.get(f"{k}_matched", 0.0) for k in score_kinds)
        if score < best:
            best = score
            net.config.extra = {
                **{k: v for k, v in net.config.extra.items() if k.startswith("init")},
                "step": step,
                "heldout": res,
                "train_minutes": round((elapsed0 + time.time() - t0) / 60, 1),
            }
            save_checkpoint(net, out / "best")
        return res

    tr_loss, tr_kl, tr_n, t_last = 0.0, 0.0, 0, time.time()
    if step == 0:
        res = do_eval()
        logf.write(json.dumps({"step": 0, "elapsed_s": 0, **res}) + "\n")
        logf.flush()
        log.info("step 0 %s", res)
    while time.time() - t0 < budget and (args.max_steps <= 0 or step < args.max_steps):
        if mix is not None:
            cur: dict[str, Any] = {}
            samples = [mix.sample() for _ in range(args.bs)]
        else:
            cur = curriculum(step, args)
            samples = [gen.mixed(cur["max_facts"], cur["niah_prob"], cur["niah_tokens"]) for _ in range(args.bs)]
        lr_scale = min(1.0, (step + 1) / args.warmup) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps_est)))
        )
        for g, base_lr in zip(opt.param_groups, (args.lr, args.lr, args.lr * 10), strict=False):
            g["lr"] = base_lr * lr_scale
        if args.kl > 0:
            nll, gates, kl = kl_step(base, net, samples, args.chunk_tokens, max_chunks=args.max_chunks)
            loss = nll.mean() + args.kl * kl.mean() + args.l1 * gates.mean()
            tr_kl += float(kl.mean().detach())
        else:
            nll, gates = nll_pair(base, net, samples, args.chunk_tokens, grad=True, max_chunks=args.max_chunks)
            loss = nll.mean() + args.l1 * gates.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        opt.step()
        step += 1
        tr_loss += float(nll.mean().detach())
        tr_n += 1
        if step % args.log_every == 0:
            rec = {
                "step": step,
                "elapsed_s": round(elapsed0 + time.time() - t0, 1),
                "train_nll": tr_loss / tr_n,
                "grad_norm": float(gn),
                "gate_mean": float(gates.mean().detach()),
                "s_per_step": (time.time() - t_last) / tr_n,
                **cur,
            }
            if args.kl > 0:
                rec["train_kl"] = tr_kl / tr_n
            if step % args.eval_every == 0:
                rec.update(do_eval())
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log.info("%s", rec)
            tr_loss, tr_kl, tr_n, t_last = 0.0, 0.0, 0, time.time()
        if step % args.save_every == 0:
            save_state()
    save_state()
    res = do_eval()
    logf.write(
        json.dumps({"step": step, "elapsed_s": round(elapsed0 + time.time() - t0, 1), "final": True, **res}) + "\n"
    )
    logf.close()
    return out


def _mix_rngs(mix: TrainingMix) -> list[random.Random]:
    rngs = [mix.rng, mix.facts.rng, mix.fam.rng]
    if mix.prose is not None:
        rngs.append(mix.prose.rng)
    return rngs


def export(
    run_dir: str | Path, dest: str | Path, which: str = "best", *, rank: int | None = 32, max_rank: int | None = 64
) -> str:
    """Copy a run's checkpoint (``best`` or ``last``) into ``dest`` in bf16 with the inference-time ``rank``
    (components per chunk) and ``max_rank`` (per document); returns its sha256.

    >>> # export("/work/scratch_d2l/run3", "memory/checkpoints/d2l-smollm2-135m")
    """
    from memory.hyper.d2l import load_checkpoint

    src = Path(run_dir) / which
    net = load_checkpoint(src)
    if rank is not None:
        net.config.rank = rank
    net.config.max_rank = max_rank
    return save_checkpoint(net, dest, dtype=torch.bfloat16)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pmem train d2l", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", required=True, help="run directory (log.jsonl, state.pt, best/); with --export: the destination"
    )
    p.add_argument(
        "--export",
        metavar="RUN_DIR",
        default=None,
        help="instead of training, copy RUN_DIR/best into --out in bf16 (e.g. memory/checkpoints/d2l-smollm2-135m)",
    )
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of this invocation")
    p.add_argument("--resume", action="store_true", help="continue from DIR/state.pt")
    p.add_argument("--base-dir", default=None, help="a local HF model directory instead of the embedded default")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="target decoder layers (default: upper layers)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--key-rank", type=int, default=128)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--bs", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument(
        "--l1",
        type=float,
        default=0.01,
        help="L1 on the salience gates, i.e. on the norms of the generated A rows (keys are unit vectors)",
    )
    p.add_argument(
        "--kl",
        type=float,
        default=0.0,
        help="weight of the distillation term (teacher = base model with the document in its prompt)",
    )
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--total-steps", type=int, default=3000, help="cosine schedule length")
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--max-facts", type=int, default=4)
    p.add_argument("--ramp-steps", type=int, default=600)
    p.add_argument("--niah-prob", type=float, default=0.25)
    p.add_argument("--niah-max", type=int, default=256)
    p.add_argument("--eval-facts", type=int, default=48)
    p.add_argument("--eval-niah", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is far faster than 2 on a contended 2-core box)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="warm-start from a checkpoint directory (e.g. memory/checkpoints/d2l-smollm2-135m)",
    )
    p.add_argument(
        "--mix",
        default=None,
        help="train on the mixture of memory.training.d2l_mix: 'default' or weights like "
        "'family=0.4,prose=0.3,haystack=0.2,fact=0.1' (without it: the original facts/NIAH curriculum)",
    )
    p.add_argument(
        "--prose-cache",
        default=None,
        help="JSONL of real prose passages (build it with `python -m memory.training.d2l_prose OUT`)",
    )
    p.add_argument("--max-chunks", type=int, default=1, help="training documents up to this many chunks")
    p.add_argument("--eval-n", type=int, default=24, help="held-out samples per kind of the mixture")
    p.add_argument(
        "--dtype",
        default=None,
        help="base model dtype while training (default: the configured one; bfloat16 is ~3x faster on this CPU)",
    )
    p.add_argument(
        "--prose-max-words", type=int, default=130, help="training/eval prose passages up to this many words"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ... (cuda: bf16 autocast)")
    p.add_argument("--centre-keys", action="store_true", help="start the key centres at the data mean")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pmem train d2l``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.export:
        print(export(args.export, args.out))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
