"""A system under test: refcounts, pamt_lock, page pool, violation log, TDX module.

One ``System`` owns every IPC object of a run and removes all of them on
``close`` — also after errors, Ctrl-C, or a CPU or the daemon being killed.
The daemon doubles as guardian: it knows every name and unlinks them if the
runner itself dies. It cannot guard before it is spawned, after it has stopped,
or when it dies with the runner (a kill of the process group), so the runner's
reaper (:mod:`shmpamt.machine.ipc`) removes whatever is left once the runner is gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import TracebackType

from shmpamt import tdx
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.cpu_board import CpuBoard
from shmpamt.machine.ipc import make_name, new_token, pid_alive
from shmpamt.machine.lock import PamtLock
from shmpamt.machine.pages import MAX_PAGES, PamtPagePool
from shmpamt.machine.seamcall import ModuleNames
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.daemon import TdxModule
from shmpamt.module.faults import FaultPlan
from shmpamt.records.violations import (
    LOCK_LEAKED,
    QUIESCENT_MISMATCH,
    QUIESCENT_PAMT_PRESENT,
    QUIESCENT_REFCOUNT,
)


@dataclass(frozen=True)
class SystemConfig:
    """The shape of one system; built from a validated StressConfig or Scenario."""

    cpus: int = 4
    ranges: int = 2
    pages_per_range: int = 8
    initial_refcount: int = 0
    pool_pages: int = 0  # 0 = enough for every CPU to hold two page pairs, plus the module

    def pool_size(self) -> int:
        if self.pool_pages:
            return self.pool_pages
        # Per CPU partition: every range's PAMT pair may be its pages, with the module,
        # plus two pairs in flight; and slack so that leaks show up as leaks, not as
        # allocation failures.
        per_cpu = tdx.PAMT_PAGES_PER_2M * (self.ranges + 2)
        return min(MAX_PAGES, self.cpus * per_cpu + 64)


@dataclass(frozen=True)
class SystemNames:
    """Every IPC name a CPU needs to join a running system (crosses the spawn boundary)."""

    token: str
    cpus: int
    refcounts: str
    lock_sem: str
    lock_owner: str
    log: str
    pool: str
    board: str
    module: ModuleNames
    #: pid of the process that started the system: its CPUs' parent, the only one
    #: that grants, resumes and stops them (a CPU that starts after it died must
    #: still know whom to watch: by then os.getppid() names the reaper of orphans)
    runner: int

    def all_names(self) -> tuple[str, ...]:
        return (self.refcounts, self.lock_sem, self.lock_owner, self.log, self.pool, self.board)


class System:
    """Create with :meth:`start`; attach CPUs with :attr:`names`."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or new_token()
        self._closers: list[object] = []
        self.refcounts: RefcountArray
        self.lock: PamtLock
        self.log: ViolationLog
        self.pool: PamtPagePool
        self.board: CpuBoard
        self.module: TdxModule
        self.names: SystemNames
        self.config: SystemConfig

    @classmethod
    def start(
        cls,
        config: SystemConfig,
        faults: FaultPlan,
        token: str | None = None,
        extra_names: tuple[str, ...] = (),
    ) -> System:
        """Create every IPC object and start the daemon; ``extra_names`` are guarded too."""
        s = cls(token)
        s.config = config
        try:
            s.refcounts = RefcountArray.create(
                config.ranges, make_name("refcounts", s.token), initial=config.initial_refcount
            )
            s._closers.append(s.refcounts)
            s.lock = PamtLock.create(s.token)
            s._closers.append(s.lock)
            s.log = ViolationLog.create(token=s.token)
            s._closers.append(s.log)
            s.pool = PamtPagePool.create(
                config.pool_size(),
                s.log,
                s.token,
                cpus=config.cpus,
                ranges=config.ranges,
                pages_per_range=config.pages_per_range,
            )
            s._closers.append(s.pool)
            s.board = CpuBoard.create(config.cpus, s.token)
            s._closers.append(s.board)
            own = (
                s.refcounts.name,
                *s.lock.names(),
                s.log.name,
                s.pool.name,
                s.board.name,
                *extra_names,
            )
            s.module = TdxModule.start(
                config.cpus,
                config.ranges,
                config.pages_per_range,
                s.pool,
                s.log,
                faults,
                s.token,
                extra_names=own,
            )
            s._closers.append(s.module)
            s.names = SystemNames(
                token=s.token,
                cpus=config.cpus,
                refcounts=s.refcounts.name,
                lock_sem=s.lock.sem_name,
                lock_owner=s.lock.owner_name,
                log=s.log.name,
                pool=s.pool.name,
                board=s.board.name,
                module=s.module.names,
                runner=os.getpid(),
            )
        except BaseException:
            s.close()
            raise
        return s

    # -- checks -------------------------------------------------------------------

    def check_lock(self, dead_ok: bool = False) -> bool:
        """Record lock_leaked if pamt_lock is held; True if it was. Frees it afterwards."""
        pid, cpu = self.lock.holder()
        if pid == 0 and not self.lock.is_held():
            return False
        # Invariant: at the end of a run (or when its holder is dead) nobody holds pamt_lock.
        dead = pid != 0 and not pid_alive(pid)
        if dead or not dead_ok:
            self.log.record(LOCK_LEAKED, cpu=cpu, a=pid if dead else 0)
            self.lock.force_release()
            return True
        return False

    def check_quiescent(self) -> None:
        """Every CPU is idle: refcounts back to initial, no PAMT without user, pages home."""
        st = self.module.state
        initial = self.config.initial_refcount
        held = set(st.fault_held_ranges())
        for r in range(self.config.ranges):
            if r in held:
                continue  # a CPU kept a page there because injection refused its RECLAIM
            v = self.refcounts.read(r)
            # Invariant: with nobody using range r its refcount is the variant's initial value.
            if v != initial:
                self.log.record(QUIESCENT_MISMATCH, range_=r, a=v, b=initial, c=QUIESCENT_REFCOUNT)
            # Invariant: with nobody using range r its PAMT has been removed.
            if st.pamt_present(r):
                self.log.record(QUIESCENT_MISMATCH, range_=r, c=QUIESCENT_PAMT_PRESENT)
        # Invariant: every PAMT page a CPU allocated went back to the pool or to the module.
        self.pool.check_quiescent()
        self.check_lock()

    def fresh_start(self) -> None:
        """Back to the initial state with every CPU idle between rounds (a stress epoch):
        a range a race left stuck (a leaked reference, a PAMT nobody removes) cannot
        hide the races that need it to return to 0. Statistics and the log are kept."""
        self.refcounts.fill(self.config.initial_refcount)
        self.pool.reset(counters=False)
        self.module.reset()

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        for obj in reversed(self._closers):
            try:
                obj.close()  # type: ignore[attr-defined]
            except Exception:
                continue
        self._closers.clear()

    def __enter__(self) -> System:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
