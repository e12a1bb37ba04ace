"""The held-out suites of issue 12 for one or more D2L checkpoints, side by side (JSON on stdout).

``python -m bench.d2l_suites [--quick] [--sections many_fact,prose,prose_niah] CKPT [CKPT ...]``

Set ``PMEM_D2L_PROSE_CACHE`` to a passage cache (``python -m memory.training.d2l_prose OUT``) to draw the prose
suites from every held-out source (package docs, docstrings, man pages); without it they come from the
standard library's docstrings. See :func:`memory.evaluation.d2l.new_suites`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.d2l_suites", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sections", default="many_fact,prose,prose_niah")
    p.add_argument("-o", "--output", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from memory.evaluation.d2l import new_suites
    from memory.hyper.d2l import checkpoint_sha256, load_checkpoint
    from memory.models import load_base_model

    base = load_base_model()
    out = {"quick": a.quick, "prose_cache": os.environ.get("PMEM_D2L_PROSE_CACHE"), "results": {}}
    for ck in a.checkpoints:
        t0 = time.perf_counter()
        net = load_checkpoint(ck, base)
        res = new_suites(base, net, a.quick, sections=tuple(a.sections.split(",")))
        out["results"][ck] = {"sha256": checkpoint_sha256(ck), "seconds": round(time.perf_counter() - t0, 1), **res}
    text = json.dumps(out, indent=1, default=str)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
