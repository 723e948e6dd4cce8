"""Variants that misbehave as processes (importable by file into CPU processes).

Each is ``locked`` (correct) plus one hostile act, so whatever the run reports
beyond "clean" comes from that act. The forking ones write each stray's pid
into the folder named by ``SHMPAMT_TEST_STRAYS``, so a test can check it is gone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from shmpamt.machine.kernel import Kernel
from shmpamt.variants.locked import Locked


class GetExitsZero(Locked):
    """locked, but the fifth get ends its CPU process with status 0, as a finished CPU
    would (after some honest rounds, so the run did test something)."""

    name = "get-exits-zero"
    gets = 0

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        GetExitsZero.gets += 1
        if GetExitsZero.gets == 5:
            os._exit(0)
        return super().tdx_pamt_get(k, page)


def _note_and_sleep() -> None:
    """The stray's life: say who it is, then outlive any run (it never returns)."""
    folder = Path(os.environ["SHMPAMT_TEST_STRAYS"])
    (folder / str(os.getpid())).write_text("stray\n")
    time.sleep(120)
    os._exit(0)


class ForksChild(Locked):
    """locked, but each CPU's first get forks a child that sleeps on after the run."""

    name = "forks-child"
    forked = False

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        if not ForksChild.forked:
            ForksChild.forked = True
            if os.fork() == 0:
                _note_and_sleep()
        return super().tdx_pamt_get(k, page)


class ForksDaemon(Locked):
    """locked, but each CPU's first get starts a daemon the classic way: fork, setsid,
    fork again and let the middle process exit, so the stray is orphaned at once and
    sits in a session of its own."""

    name = "forks-daemon"
    forked = False

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        if not ForksDaemon.forked:
            ForksDaemon.forked = True
            middle = os.fork()
            if middle == 0:
                os.setsid()
                if os.fork() == 0:
                    _note_and_sleep()
                os._exit(0)
            os.waitpid(middle, 0)
        return super().tdx_pamt_get(k, page)
