"""The command line shared by benchmarks that also draw a plot (``python -m bench.NAME``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(
    name: str, doc: str, run: Callable[[bool], dict[str, Any]], plot: Callable[[dict[str, Any], Any], None]
) -> None:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--plot", help="write a PNG here")
    p.add_argument(
        "--from-json", help=f"plot a saved result (e.g. from `pmem bench {name} --output`) instead of running"
    )
    args = p.parse_args()
    if args.from_json:
        plot(json.loads(Path(args.from_json).read_text()), args.plot or Path(args.from_json).with_suffix(".png"))
        return
    result = {
        "bench": name,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        **run(args.quick),
    }
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result))
