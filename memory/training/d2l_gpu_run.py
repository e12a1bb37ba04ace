"""A time-boxed Doc-to-LoRA training run from the shipped checkpoint, then export: the script for a GPU.

``python -m memory.training.d2l_gpu_run --minutes 20 --out RUN [--device cuda] [--export-to DIR]``

1. builds the real-prose passage cache (``RUN/prose.jsonl``) unless it exists;
2. trains with the issue-12 mixture (compositional families, real prose, haystacks, the distillation term),
   warm-started from the shipped checkpoint, resumable (``RUN/state.pt``), logging the held-out matched vs
   shuffled gap of every kind in ``RUN/log.jsonl``; on CUDA with bf16 autocast and a larger batch;
3. exports ``RUN/best`` in bf16 to ``--export-to`` (default ``RUN/export``), ready to be evaluated with
   ``pmem eval d2l --checkpoint DIR`` and ``pmem eval qa --checkpoint DIR`` before it replaces the shipped one.

On the CPU (``--device cpu --max-steps 2 --bs 2``) it runs the same path for a few steps (a test of the script).

>>> build_parser().parse_args(["--out", "r"]).device in ("cuda", "cpu")
True
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from memory.hyper.d2l import DEFAULT_CHECKPOINT

log = logging.getLogger(__name__)

MIX = "family=0.35,prose=0.25,continue=0.1,haystack=0.15,fact=0.1,niah=0.05"


def build_parser() -> argparse.ArgumentParser:
    import torch

    p = argparse.ArgumentParser(prog="python -m memory.training.d2l_gpu_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run directory (log.jsonl, state.pt, best/, last/, export/)")
    p.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bs", type=int, default=None, help="batch (default: 64 on CUDA, 8 on the CPU)")
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--init", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--export-to", default=None)
    p.add_argument("--prose-cache", default=None, help="default: RUN/prose.jsonl, built when missing")
    p.add_argument("--no-man", action="store_true", help="build the prose cache without manual pages")
    p.add_argument("--eval-n", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from memory.training import d2l, d2l_prose

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.prose_cache) if args.prose_cache else out / "prose.jsonl"
    if not cache.is_file():
        log.info("building the prose cache %s", cache)
        log.info("%s", d2l_prose.build_cache(cache, man=not args.no_man))
    cuda = args.device.startswith("cuda")
    bs = args.bs or (64 if cuda else 8)
    eval_n = args.eval_n or (48 if cuda else 4)
    targs = [
        "--out",
        str(out),
        "--minutes",
        str(args.minutes),
        "--resume",
        "--init",
        args.init,
        "--mix",
        MIX,
        "--prose-cache",
        str(cache),
        "--max-chunks",
        "4" if cuda else "2",
        "--chunk-tokens",
        "128",
        "--bs",
        str(bs),
        "--kl",
        "0.3",
        "--lr",
        "3e-4",
        "--warmup",
        "20",
        "--total-steps",
        "3000" if cuda else "800",
        "--eval-n",
        str(eval_n),
        "--eval-facts",
        str(eval_n // 2),
        "--eval-niah",
        str(max(2, eval_n // 4)),
        "--eval-every",
        "100" if cuda else "2",
        "--log-every",
        "10" if cuda else "1",
        "--save-every",
        "100" if cuda else "2",
        "--threads",
        str(os.cpu_count() if cuda else 1),
        "--device",
        args.device,
        "--dtype",
        "bfloat16",
        "--max-steps",
        str(args.max_steps),
    ]
    d2l.train(d2l.build_parser().parse_args(targs))
    dest = Path(args.export_to) if args.export_to else out / "export"
    sha = d2l.export(out, dest)
    summary = {
        "run": str(out),
        "export": str(dest),
        "sha256": sha,
        "last_log": (out / "log.jsonl").read_text().strip().splitlines()[-1],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
