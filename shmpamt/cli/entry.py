"""The ``shmpamt`` command's entry point: signals are trapped before anything heavy loads.

Importing the CLI (click, rich, the configuration) takes a few hundred
milliseconds; a Ctrl-C in that window must still end in a one-line, exit-130
stop (with the partial JSON report the command promises), not in a
KeyboardInterrupt traceback from the middle of an import.
"""

from __future__ import annotations

import signal
from types import FrameType


def main() -> None:
    early: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, note)
    from shmpamt.cli import app, common

    for signum in early:
        common.INTERRUPT(signum, None)
    app.main()
