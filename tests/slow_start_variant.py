"""locked, but CPU 1's process takes 60 s to import it: a CPU that is still starting up
when the run ends (as on a loaded machine, or with many CPUs and a short run)."""

from __future__ import annotations

import multiprocessing
import time

from shmpamt.variants.locked import Locked

if multiprocessing.current_process().name == "shmpamt-cpu1":
    time.sleep(60)


class SlowStart(Locked):
    name = "slow-start"
