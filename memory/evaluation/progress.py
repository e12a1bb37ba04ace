"""Progress of long evaluations on stderr: a rich bar on a terminal, plain lines otherwise.

A rich bar draws nothing when stderr is not a terminal, so a run in the background (``nohup``, CI, a pipe)
looked hung for half an hour. Off a terminal the same progress is written as a line each time another tenth
of the work is done, or a minute has passed since the last line, whichever comes first.

>>> import io
>>> err = io.StringIO()
>>> with ProgressBar("demo", 4, stream=err) as bar:
...     for _ in range(4):
...         bar.advance(1, "items")
>>> err.getvalue().splitlines()[-1].split(" in ")[0]
'demo: items 4/4 (100%)'
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LINE_EVERY_S = 60.0
LINES_PER_RUN = 10  # a line each time another tenth is done


class ProgressBar:
    """Progress over ``total`` units of work, labelled ``label``; silent when ``enabled`` is False.

    Args:
        label: what the work is (e.g. ``"t2l eval"``); :meth:`advance` may add what is being done now.
        total: units of work in all.
        enabled: show anything at all.
        stream: where plain lines go (default: ``sys.stderr``); giving one also forces plain lines.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, max(0, int(total)), 0
        self._stream = stream
        self._rich: Any = None
        self._t0 = self._last_line = time.monotonic()
        self._parts_shown = 0  # tenths of the work reported so far
        self._enabled = enabled
        if enabled and stream is None and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._rich.add_task(label, total=self.total)
            self._rich.start()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int = 1, now: str | None = None) -> None:
        """``n`` more units done; ``now`` says what is being worked on."""
        self.done += n
        description = f"{self.label}: {now}" if now else self.label
        if self._rich is not None:
            self._rich.update(self._task, advance=n, description=description)
            return
        if not self._enabled:
            return
        fraction = self.done / self.total if self.total else 1.0
        parts = self.done * LINES_PER_RUN // self.total if self.total else LINES_PER_RUN
        clock = time.monotonic()
        if parts > self._parts_shown or clock - self._last_line >= LINE_EVERY_S:
            self._parts_shown, self._last_line = parts, clock
            stream = self._stream or sys.stderr
            stream.write(f"{description} {self.done}/{self.total} ({fraction:.0%}) in {clock - self._t0:.0f} s\n")
            stream.flush()

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
