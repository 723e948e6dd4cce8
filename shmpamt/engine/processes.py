"""One owner of a run's processes: start the system and its CPUs, watch, stop, account.

Stress and explore both go through :class:`Fleet`; neither spawns a process
itself. The fleet never trusts that a process is alive: every wait is bounded,
and how each process ended becomes one readable line (an *incident*) when it
was not a normal exit.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Final

from shmpamt.engine.cpu import EXIT_LOCK, EXIT_MODULE, EXIT_OK
from shmpamt.engine.system import System, SystemConfig
from shmpamt.machine.ipc import new_token, pid_alive, sigint_ignored_in_children
from shmpamt.module.faults import FaultPlan

POLL: Final = 0.1
JOIN_GRACE: Final = 10.0  # seconds a CPU gets to finish its round after "stop"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return {
        EXIT_MODULE: "stopped: the TDX module daemon failed",
        EXIT_LOCK: "stopped: pamt_lock failed",
    }.get(code, f"exited with status {code}")


class Fleet:
    """A started system plus one process per CPU; ``with Fleet.start(...) as f: ...``."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.procs: list[BaseProcess] = []
        self.incidents: list[str] = []

    @classmethod
    def start(
        cls,
        config: SystemConfig,
        target: Callable[..., None],
        args: Callable[[System, int], tuple[Any, ...]],
        faults: FaultPlan | None = None,
        token: str | None = None,
        extra_names: tuple[str, ...] = (),
    ) -> Fleet:
        """Start the system, then CPU c as ``target(*args(system, c))`` in a spawned process."""
        system = System.start(
            config, faults or FaultPlan.none(), token=token or new_token(), extra_names=extra_names
        )
        fleet = cls(system)
        try:
            ctx = mp.get_context("spawn")
            with sigint_ignored_in_children():
                for c in range(config.cpus):
                    p = ctx.Process(
                        target=target, args=args(system, c), name=f"shmpamt-cpu{c}", daemon=True
                    )
                    p.start()
                    fleet.procs.append(p)
        except BaseException:
            fleet.close()
            raise
        return fleet

    # -- watching -----------------------------------------------------------------

    def all_exited(self) -> bool:
        return all(p.exitcode is not None for p in self.procs)

    def died(self) -> bool:
        """So far (CPUs may still run): some CPU ended other than normally, or the
        daemon is gone."""
        dead = any(p.exitcode not in (None, EXIT_OK) for p in self.procs)
        return dead or not self.system.module.alive()

    def crashed(self) -> bool:
        """After ``join``: some CPU did not end normally, or the daemon is gone."""
        return self.died() or any(p.exitcode is None for p in self.procs)

    def check(self) -> str | None:
        """An incident if something died or hung mid-run (recorded), else None."""
        s = self.system
        # The most specific account first: a dead lock holder also shows up as a
        # dead CPU and as its waiters giving up.
        pid, cpu = s.lock.holder()
        if pid and not pid_alive(pid):
            return self._incident(f"cpu {cpu} (pid {pid}) died holding pamt_lock")
        if not s.module.alive():
            return self._incident("the TDX module daemon died mid-run")
        for c, p in enumerate(self.procs):
            if p.exitcode == EXIT_MODULE and s.module.alive():
                # The daemon is hung (alive, not answering): every other CPU would wait
                # out its own timeout in turn. Kill it so they all see ModuleDied now.
                s.module.stop(timeout=0.5)
                return self._incident(
                    f"the TDX module daemon hung and was killed ({s.board.message(c)})"
                )
            if p.exitcode is not None and p.exitcode != EXIT_OK:
                msg = s.board.message(c)
                return self._incident(
                    f"cpu {c} {describe_exit(p.exitcode)} mid-run" + (f" ({msg})" if msg else "")
                )
        return None

    def _incident(self, text: str) -> str:
        self.incidents.append(text)
        return text

    def cpu_failure(self) -> str | None:
        """The first CPU that has exited, described, or None (explore: any exit is a failure)."""
        for c, p in enumerate(self.procs):
            if p.exitcode is not None:
                msg = self.system.board.message(c)
                return f"cpu {c} {describe_exit(p.exitcode)}" + (f": {msg}" if msg else "")
        return None

    # -- stopping -------------------------------------------------------------------

    def join(self, grace: float = JOIN_GRACE) -> None:
        """Wait for every CPU to exit (killing stragglers), and account for how each ended."""
        s = self.system
        deadline = time.monotonic() + grace
        for c, p in enumerate(self.procs):
            if p.pid is None:
                continue
            # A CPU blocked behind a dead lock holder notices it itself (LockHolderDied);
            # record the dead holder first so the lock is free for the others to finish.
            while p.exitcode is None and time.monotonic() < deadline:
                pid, _ = s.lock.holder()
                if pid and not pid_alive(pid):
                    s.check_lock()
                p.join(POLL)
            if p.exitcode is None:
                p.kill()
                p.join(5)
                self.incidents.append(f"cpu {c} did not stop within {grace:.0f} s and was killed")
                pid, _ = s.lock.holder()
                if pid == p.pid:
                    # The rig killed it, not the variant: its lock is not the variant's leak.
                    s.lock.force_release()
        for c, p in enumerate(self.procs):
            if p.exitcode not in (EXIT_OK, None) and not any(
                f"cpu {c} " in i for i in self.incidents
            ):
                msg = s.board.message(c)
                self.incidents.append(
                    f"cpu {c} {describe_exit(p.exitcode)}" + (f": {msg}" if msg else "")
                )

    def close(self) -> None:
        """Kill whatever still runs and remove every IPC object of the run."""
        for p in self.procs:
            if p.exitcode is None:
                p.kill()
                p.join(5)
        self.system.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
