"""One owner of a run's processes: start the system and its CPUs, watch, stop, account.

Stress and explore both go through :class:`Fleet`; neither spawns a process
itself. The fleet never trusts that a process is alive: every wait is bounded,
and how each process ended becomes one readable line (an *incident*) when it
was not a normal exit. A normal exit is status 0 *and* the CPU's own word that
its loop ended (``STATE_DONE`` on the board): a variant that calls ``exit(0)``
stops its CPU with status 0 too, and that is an incident like any other death.
The fleet also owns every process a CPU starts (:mod:`shmpamt.machine.children`):
whatever of theirs still runs after the CPUs stopped is killed and reported.
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
from shmpamt.machine import children
from shmpamt.machine.cpu_board import STATE, STATE_DONE
from shmpamt.machine.ipc import new_token, pid_alive
from shmpamt.module.faults import FaultPlan

POLL: Final = 0.1
JOIN_GRACE: Final = 10.0  # seconds a CPU gets to finish its round after "stop"


def describe_exit(code: int | None, done: bool = True) -> str:
    """How a CPU ended; ``done``: it said its loop ended (only then is status 0 normal)."""
    if code is None:
        return "did not exit"
    if code == EXIT_OK and not done:
        return "exited on its own with status 0 before the run ended"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return {
        EXIT_MODULE: "stopped: the TDX module daemon failed",
        EXIT_LOCK: "stopped: pamt_lock failed",
    }.get(code, f"exited with status {code}")


def _cpus(cs: list[int]) -> str:
    """``cpu 3``, or ``cpus 0-2, 5`` (runs of consecutive numbers shortened)."""
    runs: list[list[int]] = []
    for c in sorted(cs):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return ("cpu " if len(cs) == 1 else "cpus ") + text


class Fleet:
    """A started system plus one process per CPU; ``with Fleet.start(...) as f: ...``."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.procs: list[BaseProcess] = []
        self.incidents: list[str] = []
        #: what the report should say that is not an incident
        self.notes: list[str] = []
        #: CPUs that were still starting up when the run stopped (killed by join)
        self.unstarted: set[int] = set()
        self.descendants: children.Descendants | None = None

    @classmethod
    def start(
        cls,
        config: SystemConfig,
        target: Callable[..., None],
        args: Callable[[System, int], tuple[Any, ...]],
        faults: FaultPlan | None = None,
        token: str | None = None,
        extra_names: tuple[str, ...] = (),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Fleet:
        """Start the system, then CPU c as ``target(*args(system, c))`` in a spawned process.

        Once ``should_stop`` (a Ctrl-C, looked at after each CPU) the rest are not
        started: the caller stops the run at its first look anyway.
        """
        system = System.start(
            config, faults or FaultPlan.none(), token=token or new_token(), extra_names=extra_names
        )
        fleet = cls(system)
        try:
            # After the system: its daemon, the reaper and multiprocessing's resource
            # tracker are children from before, not strays.
            fleet.descendants = children.Descendants()
            ctx = mp.get_context("spawn")
            for c in range(config.cpus):
                p = ctx.Process(
                    target=target, args=args(system, c), name=f"shmpamt-cpu{c}", daemon=True
                )
                with children.sigint_held():
                    p.start()
                fleet.procs.append(p)
                children.started(p.pid or 0)
                if should_stop():  # a Ctrl-C held back while p started is handled by now
                    break
        except BaseException:
            fleet.close()
            raise
        return fleet

    # -- watching -----------------------------------------------------------------

    def all_exited(self) -> bool:
        return all(p.exitcode is not None for p in self.procs)

    def ended_normally(self, c: int) -> bool:
        """CPU ``c`` exited with status 0 after its loop ended (not, say, by a variant's
        ``os._exit(0)`` or C ``exit(0)``, which skip the CPU's last word)."""
        p = self.procs[c]
        return p.exitcode == EXIT_OK and self.system.board.get(c, STATE) == STATE_DONE

    def _failed(self, c: int) -> bool:
        # A CPU stopped before it started touched nothing: quiescence stays knowable.
        if c in self.unstarted:
            return False
        return self.procs[c].exitcode is not None and not self.ended_normally(c)

    def _describe(self, c: int) -> str:
        p = self.procs[c]
        return describe_exit(p.exitcode, self.system.board.get(c, STATE) == STATE_DONE)

    def died(self) -> bool:
        """So far (CPUs may still run): some CPU ended other than normally, or the
        daemon is gone."""
        dead = any(self._failed(c) for c in range(len(self.procs)))
        return dead or not self.system.module.alive()

    def crashed(self) -> bool:
        """After ``join``: some CPU did not end normally, or the daemon is gone."""
        return self.died() or any(p.exitcode is None for p in self.procs)

    def check(self) -> str | None:
        """An incident if something died or hung mid-run (recorded), else None."""
        s = self.system
        # The most specific account first: a dead lock holder also shows up as a
        # dead CPU and as its waiters giving up.
        held = self._dead_holder()
        if held:
            return held
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
            if self._failed(c):
                msg = s.board.message(c)
                return self._incident(
                    f"cpu {c} {self._describe(c)} mid-run" + (f" ({msg})" if msg else "")
                )
        return None

    def _dead_holder(self) -> str | None:
        """An incident naming pamt_lock's holder if it is dead (recorded), else None.

        Both ``check`` and ``join`` meet a dead holder, whichever polls first; either
        way the report says which CPU it was and how it died, not only that it died.
        """
        pid, cpu = self.system.lock.holder()
        if not pid or pid_alive(pid):
            return None
        text = f"cpu {cpu} (pid {pid}) died holding pamt_lock"
        seen = [i for i in self.incidents if i.startswith(text)]
        if seen:
            return seen[0]
        for c, p in enumerate(self.procs):
            if p.pid == pid:
                # It is dead, so this returns at once; it reaps the process, and only
                # then is its exit status (a SIGKILL, a crash) known.
                p.join(1)
                if p.exitcode is not None:
                    text += f" (it {self._describe(c)})"
        return self._incident(text)

    def _incident(self, text: str) -> str:
        self.incidents.append(text)
        return text

    def cpu_failure(self) -> str | None:
        """The first CPU that has exited, described, or None (explore: any exit is a failure)."""
        for c, p in enumerate(self.procs):
            if p.exitcode is not None:
                msg = self.system.board.message(c)
                return f"cpu {c} {self._describe(c)}" + (f": {msg}" if msg else "")
        return None

    # -- stopping -------------------------------------------------------------------

    def join(self, grace: float = JOIN_GRACE) -> None:
        """Wait for every CPU to exit (killing stragglers), and account for how each ended."""
        s = self.system
        deadline = time.monotonic() + grace
        # One still starting up (importing, attaching) holds nothing: it need not finish.
        unstarted = [
            c for c, p in enumerate(self.procs) if p.exitcode is None and s.board.get(c, STATE) == 0
        ]
        for c in unstarted:
            self.procs[c].kill()
        self.unstarted.update(unstarted)
        for c, p in enumerate(self.procs):
            if p.pid is None:
                continue
            if c in unstarted:
                p.join(5)
                if s.board.get(c, STATE) != 0:
                    # It began its loop just as it was killed (the stop and its start
                    # crossed): it may have been mid-round, so it counts as killed.
                    unstarted.remove(c)
                    self.unstarted.discard(c)
                    self.incidents.append(f"cpu {c} was stopped just as it started its rounds")
                    if s.lock.holder()[0] == p.pid:
                        s.lock.force_release()  # the rig killed it: not the variant's leak
                continue
            # A CPU blocked behind a dead lock holder notices it itself (LockHolderDied);
            # record the dead holder first so the lock is free for the others to finish.
            while p.exitcode is None and time.monotonic() < deadline:
                if self._dead_holder():
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
        if unstarted:
            # Not an incident: the run was shorter than their start-up (or was stopped
            # early), and the others tested what they could; a run in which no CPU did
            # anything says so itself.
            self.notes.append(
                f"{_cpus(unstarted)} of {len(self.procs)} had not started when the run stopped"
            )
        # Every CPU may have exited before anyone polled the lock (its waiters saw the
        # dead holder and gave up): name the holder now, before the generic accounts.
        self._dead_holder()
        for c in range(len(self.procs)):
            if c in unstarted:
                continue
            if self._failed(c) and not any(f"cpu {c} " in i for i in self.incidents):
                msg = s.board.message(c)
                self.incidents.append(f"cpu {c} {self._describe(c)}" + (f": {msg}" if msg else ""))
        self._sweep()

    def _sweep(self) -> None:
        """Kill whatever the CPUs started that still runs: each is an incident."""
        if self.descendants is None:
            return
        for stray in self.descendants.sweep():
            self.incidents.append(
                f"{stray}, started by a CPU, was still running after the run and was killed"
            )

    def close(self) -> None:
        """Kill whatever still runs and remove every IPC object of the run."""
        try:
            for p in self.procs:
                if p.exitcode is None:
                    p.kill()
                    p.join(5)
            self._sweep()
        finally:
            for p in self.procs:
                children.ended(p.pid or 0)
            if self.descendants is not None:
                self.descendants.close()
                self.descendants = None
            self.system.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
