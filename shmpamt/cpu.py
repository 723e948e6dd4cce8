"""A CPU: one spawned process running the KVM-like worker loop over a variant.

Loop: pick a 4 KiB page, ``tdx_pamt_get``, AUG it, hold it, RECLAIM it,
``tdx_pamt_put``. Each CPU uses its own page slots within every range
(slot j belongs to CPU j % cpus) so two CPUs never AUG the same 4 KiB page:
sharing happens at the 2 MiB level, where the refcount protocol lives.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn

from shmpamt import tdx
from shmpamt.atomic import RefcountArray
from shmpamt.invariants import GET_FAILED, ViolationLog
from shmpamt.ipc import Segment, make_name
from shmpamt.kernel import Hook, Kernel, page_hpa, range_of
from shmpamt.lock import LockError, PamtLock

if TYPE_CHECKING:
    from shmpamt.kernel import PagePool
    from shmpamt.module.daemon import ModuleNames
    from shmpamt.scheduling import SchedNames
    from shmpamt.seamcall import SeamcallPort
    from shmpamt.variants.base import PamtVariant

# --- per-CPU statistics words (in one shared segment) ------------------------
ITERATIONS: Final = 0
GETS_FAILED: Final = 1
INJECTED: Final = 2
WARNINGS: Final = 3
STATE: Final = 4  # one of the STATE_* values below
WORDS_PER_CPU: Final = 8
STATE_RUNNING, STATE_DONE, STATE_FAILED = 1, 2, 3  # 0: not started yet
# global control words after the per-CPU block
STOP: Final = 0
KIND_CPUSTATS: Final = 0x43505553
MSG_BYTES: Final = 240

# exit codes of a CPU process
EXIT_OK: Final = 0
EXIT_INTERNAL: Final = 1
EXIT_MODULE: Final = 3
EXIT_LOCK: Final = 4


@dataclass(frozen=True)
class Workload:
    """What each CPU does; picklable so it can cross the spawn boundary."""

    ranges: int = 2
    pages_per_range: int = 8
    hot: float = 0.7  # probability that a pick goes to range 0, the hot range
    hold_us: int = 50  # a held page is kept 0..hold_us microseconds
    iterations: int = 0  # per CPU; 0 = until told to stop
    chaos: float = 0.0  # probability of a random delay/yield at every primitive
    chaos_us: int = 100  # longest chaos delay
    seamcall_timeout: float = 10.0  # a module that does not answer within this is hung
    use_page: bool = True  # AUG/RECLAIM the page between get and put (False: protocol only)

    def validate(self, cpus: int) -> None:
        if self.ranges < 1:
            raise ValueError("--ranges must be at least 1")
        if self.pages_per_range < cpus:
            raise ValueError(
                f"--pages-per-range ({self.pages_per_range}) must be at least --cpus ({cpus}):"
                " every CPU needs its own 4 KiB page in each range"
            )
        if self.pages_per_range > tdx.PAGES_PER_2M:
            raise ValueError(f"--pages-per-range must be at most {tdx.PAGES_PER_2M}")
        if not 0.0 <= self.hot <= 1.0 or not 0.0 <= self.chaos <= 1.0:
            raise ValueError("probabilities must be within 0..1")
        if self.hold_us < 0 or self.iterations < 0 or self.chaos_us < 0:
            raise ValueError("counts and durations must not be negative")
        if not self.seamcall_timeout > 0:  # also refuses NaN
            raise ValueError("the SEAMCALL timeout must be a positive number of seconds")


class CpuBoard:
    """Shared per-CPU counters, states and last error message, plus the stop word."""

    def __init__(self, segment: Segment, cpus: int) -> None:
        self.segment = segment
        self.name = segment.name
        self.cpus = cpus
        self.words = RefcountArray.over(segment, 0, cpus * WORDS_PER_CPU + 4)
        self._ctl = cpus * WORDS_PER_CPU
        self._msg_base = (cpus * WORDS_PER_CPU + 4) * 4

    @staticmethod
    def _size(cpus: int) -> int:
        return (cpus * WORDS_PER_CPU + 4) * 4 + cpus * MSG_BYTES

    @classmethod
    def create(cls, cpus: int, token: str) -> CpuBoard:
        return cls(Segment.create(make_name("cpus", token), KIND_CPUSTATS, cls._size(cpus)), cpus)

    @classmethod
    def attach(cls, name: str, cpus: int) -> CpuBoard:
        return cls(Segment.attach(name, KIND_CPUSTATS, cls._size(cpus)), cpus)

    def get(self, cpu: int, word: int) -> int:
        return self.words.read(cpu * WORDS_PER_CPU + word)

    def set(self, cpu: int, word: int, v: int) -> None:
        self.words.set(cpu * WORDS_PER_CPU + word, v)

    def inc(self, cpu: int, word: int) -> None:
        self.words.inc(cpu * WORDS_PER_CPU + word)

    def total(self, word: int) -> int:
        return sum(self.get(c, word) for c in range(self.cpus))

    def stop(self) -> None:
        self.words.set(self._ctl + STOP, 1)

    def stopping(self) -> bool:
        return self.words.read(self._ctl + STOP) != 0

    def reset(self) -> None:
        for w in range(len(self.words)):
            self.words.set(w, 0)

    def set_message(self, cpu: int, msg: str) -> None:
        data = msg.encode("utf-8", "replace")[: MSG_BYTES - 2]
        struct.pack_into(
            f"<H{MSG_BYTES - 2}s",
            self.segment.payload,
            self._msg_base + cpu * MSG_BYTES,
            len(data),
            data,
        )

    def message(self, cpu: int) -> str:
        n, data = struct.unpack_from(
            f"<H{MSG_BYTES - 2}s", self.segment.payload, self._msg_base + cpu * MSG_BYTES
        )
        return bytes(data[:n]).decode("utf-8", "replace")

    def close(self) -> None:
        self.words.close()
        self.segment.close()


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

    def all_names(self) -> tuple[str, ...]:
        return (self.refcounts, self.lock_sem, self.lock_owner, self.log, self.pool, self.board)


class ChaosHook:
    """KCSAN-style window widening: a random short delay or yield at a primitive."""

    def __init__(self, rng: random.Random, p: float, max_us: int) -> None:
        self._rng = rng
        self._p = p
        self._max = max_us / 1e6

    def before(self, op: str, target: int) -> None:
        r = self._rng.random()
        if r < self._p:
            if r < self._p / 2:
                os.sched_yield()
            else:
                time.sleep(self._rng.random() * self._max)

    def after(self, op: str, target: int, result: int, value: int) -> None:
        return None


def pick_page(rng: random.Random, cpu: int, cpus: int, w: Workload) -> int:
    """Physical address of a page this CPU may use, skewed toward range 0."""
    r = 0 if w.ranges == 1 or rng.random() < w.hot else rng.randrange(1, w.ranges)
    slots = range(cpu, w.pages_per_range, cpus)
    return page_hpa(r, rng.choice(slots))


def one_round(
    k: Kernel,
    variant: PamtVariant,
    hpa: int,
    hold: float,
    log: ViolationLog,
    use_page: bool = True,
) -> bool:
    """get, AUG, hold, RECLAIM, put. Returns False if the get failed."""
    before = k.injected
    err = variant.tdx_pamt_get(k, hpa)
    if err:
        # A failed get is fine only if a fault was injected into it.
        if k.injected == before:
            log.record(GET_FAILED, cpu=k.cpu, range_=range_of(hpa), a=err)
        return False
    assigned = use_page and _retry_busy(k, k.tdh_mem_page_aug, hpa) == tdx.TDX_SUCCESS
    if hold > 0:
        time.sleep(hold)
    if assigned:
        _retry_busy(k, k.tdh_phymem_page_reclaim, hpa)
    variant.tdx_pamt_put(k, hpa)
    return True


def _retry_busy(k: Kernel, leaf_call: object, hpa: int) -> int:
    """KVM retries AUG/RECLAIM while the module says BUSY (only injected here)."""
    assert callable(leaf_call)
    for _ in range(1000):
        err = int(leaf_call(hpa))
        if tdx.status_class(err) != tdx.TDX_OPERAND_BUSY:
            return err
    return err


@dataclass
class Attached:
    """One CPU process's handles on the running system."""

    refcounts: RefcountArray
    lock: PamtLock
    log: ViolationLog
    pool: PagePool
    port: SeamcallPort
    variant: PamtVariant


def _cpu_process(
    names: SystemNames,
    cpu: int,
    variant_spec: str,
    workload: Workload,
    body: Callable[[CpuBoard, Attached], None],
) -> NoReturn:
    """The life every CPU process shares: attach, run ``body``, say how it ended, exit."""
    # Ctrl-C goes to the whole process group; the runner decides when CPUs stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from shmpamt.pages import PamtPagePool
    from shmpamt.seamcall import SeamcallError, SeamcallPort
    from shmpamt.variants.registry import load_variant

    board = CpuBoard.attach(names.board, names.cpus)
    code = EXIT_INTERNAL
    attached: Attached | None = None
    try:
        log = ViolationLog.attach(names.log)
        attached = Attached(
            refcounts=RefcountArray.attach(names.refcounts),
            lock=PamtLock.attach(names.lock_sem, names.lock_owner, cpu=cpu),
            log=log,
            pool=PamtPagePool.attach(names.pool, log),
            port=SeamcallPort.attach(names.module, cpu, timeout=workload.seamcall_timeout),
            variant=load_variant(variant_spec)(),
        )
        board.set(cpu, STATE, STATE_RUNNING)
        body(board, attached)
        code = EXIT_OK
    except SeamcallError as e:
        # The module failed, not the protocol: leave pamt_lock free so the runner
        # does not mistake this exit for a lock leak.
        if attached is not None and attached.lock.held_by_me():
            with contextlib.suppress(LockError):
                attached.lock.release()
        board.set_message(cpu, str(e))  # already says "cpu N: ..."
        code = EXIT_MODULE
    except LockError as e:
        board.set_message(cpu, f"cpu {cpu}: {e}")
        code = EXIT_LOCK
    except Exception as e:  # an internal failure: say what, the runner reports it
        board.set_message(cpu, f"cpu {cpu}: internal error: {type(e).__name__}: {e}")
        code = EXIT_INTERNAL
    finally:
        board.set(cpu, STATE, STATE_DONE if code == EXIT_OK else STATE_FAILED)
    os._exit(code)  # skip atexit: a CPU owns no IPC object, the runner does


def cpu_main(
    names: SystemNames,
    cpu: int,
    variant_spec: str,
    workload: Workload,
    seed: int,
    fault_spec: str,
) -> None:
    """Entry point of a free-running CPU process (spawned)."""
    from shmpamt.module.faults import FaultPlan

    def loop(board: CpuBoard, a: Attached) -> None:
        faults = FaultPlan.parse(fault_spec, seed)
        rng = random.Random(f"{seed}:cpu{cpu}")
        hook: Hook | None = None
        if workload.chaos > 0:
            hook = ChaosHook(random.Random(f"{seed}:chaos{cpu}"), workload.chaos, workload.chaos_us)
        k = Kernel(
            cpu,
            a.refcounts,
            a.lock,
            a.pool,
            a.port,
            hook=hook,
            alloc_fails=faults.alloc_failer(cpu),
        )
        done = 0
        hold_max = workload.hold_us / 1e6
        while not board.stopping():
            if workload.iterations and done >= workload.iterations:
                break
            hpa = pick_page(rng, cpu, names.cpus, workload)
            if not one_round(k, a.variant, hpa, rng.random() * hold_max, a.log, workload.use_page):
                board.inc(cpu, GETS_FAILED)
            done += 1
            board.inc(cpu, ITERATIONS)
            board.set(cpu, INJECTED, k.injected)
            board.set(cpu, WARNINGS, k.warnings)

    _cpu_process(names, cpu, variant_spec, workload, loop)


def cpu_explore_main(
    names: SystemNames,
    sched: SchedNames,
    cpu: int,
    variant_spec: str,
    workload: Workload,
    rounds: int,
) -> None:
    """Entry point of a CPU process in explore mode: one step per grant."""
    from shmpamt.scheduling import (
        CMD_EXIT,
        CMD_START,
        DONE,
        IDLE,
        W_STATE,
        Aborted,
        ExploreHook,
        SchedBoard,
        workload_rng,
    )

    def loop(board: CpuBoard, a: Attached) -> None:
        sb = SchedBoard.attach(sched)
        hook = ExploreHook(sb, cpu, a.refcounts)
        k = Kernel(cpu, a.refcounts, a.lock, a.pool, a.port, hook=hook)
        while True:
            cmd, arg = hook.wait_command()
            if cmd == CMD_EXIT:
                return
            if cmd != CMD_START:
                continue  # an abort that reached an idle CPU: nothing to unwind
            rng = workload_rng(arg, cpu)
            k.injected = 0
            state = DONE
            try:
                for _ in range(rounds):
                    one_round(k, a.variant, pick_page(rng, cpu, names.cpus, workload), 0.0, a.log)
                    board.inc(cpu, ITERATIONS)
            except Aborted as stop:
                if stop.cmd == CMD_EXIT:
                    return
                state = IDLE
            sb.set(cpu, W_STATE, state)

    _cpu_process(names, cpu, variant_spec, workload, loop)
