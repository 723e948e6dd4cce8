"""SEAMCALL transport: a shared-memory mailbox per CPU and two semaphores per mailbox.

A call writes the leaf and registers into the CPU's mailbox, posts the request
semaphore and waits on the response semaphore; the daemon's thread for that
mailbox writes status, registers and an "injected" flag back and posts. The
round trip is one semaphore ping-pong plus two small ``struct`` copies, with no
pickling, so a SEAMCALL costs about what waking another process costs.

A call never hangs on a broken module: it waits in short slices and between
them checks that the daemon still lives (``ModuleDied``), and gives up after
the port's timeout (``ModuleHung``). Mailbox ``ncpus`` is the runner's
control port.

Giving up must not leave a request behind that a resumed daemon would still
execute: the caller's state (refcounts, pamt_lock) moves on as if the call
never happened, and a late execution would then be reported as the variant's
violation. So every request carries a *ticket* word that both sides change
with cmpxchg, and whoever changes it first decides:

- the caller stores ``posted(seq)`` before the request and posts;
- the daemon claims it, ``posted -> claimed``, right before the state change;
- a caller that gives up withdraws it, ``posted -> withdrawn``. If that
  succeeds the call never runs; if the daemon claimed first the call runs, and
  the caller waits for its answer (one more timeout) so it learns the result.

A caller that withdrew also marks the module *abandoned* in the mailbox
header. From then on the daemon refuses every state-changing call (the caller
gets ``ModuleHung``, nothing is executed or recorded): a CPU that abandoned
its protocol midway leaves refcounts no protocol can reconcile, exactly like a
CPU killed mid-operation, and any later call would only produce false alarms.
"""

from __future__ import annotations

import contextlib
import struct
import time
from dataclasses import dataclass
from typing import Final

import posix_ipc

from shmpamt import tdx
from shmpamt.errors import IpcError, ModuleFailure
from shmpamt.machine import kernel
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.ipc import Segment, open_semaphore, pid_alive

KIND_MAILBOX: Final = 0x4D424F58  # "MBOX"
MASK64: Final = (1 << 64) - 1
SLICE: Final = 0.05  # seconds between liveness checks while waiting for an answer

# Header: daemon pid, stop flag, number of slots, the abandoned word (int32: 1 +
# the mailbox that first gave up on a call, 0 = none), then a NUL-terminated
# message (why the daemon failed to start or hit an internal error).
HEADER: Final = struct.Struct("<qqq")
ABANDONED_OFFSET: Final = 24
MSG_OFFSET: Final = 64
MSG_BYTES: Final = 192
SLOTS_OFFSET: Final = 256
SLOT_BYTES: Final = 128  # request and response on separate cache lines
RESPONSE_OFFSET: Final = 64
# seq, leaf, rcx, rdx, r8, request flags (REQ_*)
REQUEST: Final = struct.Struct("<QQQQQQ")
TICKET_OFFSET: Final = 48  # int32 after the request, same cache line
#: request flag: the caller's scheduler chose to inject TDX_OPERAND_BUSY into this call
#: (explore's fault choices); the module answers BUSY without executing it
REQ_INJECT_BUSY: Final = 1
#: request flags of a two-step SEAMCALL: the begin step (operand checks and the
#: handler's try-locks; answered with tdx.SHMPAMT_LOCKS_HELD or the refusal) and the
#: end step (state checks, state change, every lock released; the final status)
REQ_BEGIN: Final = kernel.REQ_BEGIN
REQ_END: Final = kernel.REQ_END
SEAMCALL_STEPS_ENV: Final = kernel.SEAMCALL_STEPS_ENV
two_phase_default = kernel.two_phase_default
module_semantics = kernel.module_semantics
# seq, status, rcx, rdx, r8, injected flags
RESPONSE: Final = struct.Struct("<QQQQQQ")
#: bit of the response's flags word: the module refused the call (it was abandoned)
REFUSED: Final = 1 << 16

# Ticket encoding: t in 1..TICKET_MOD derived from seq; posted t, claimed t | CLAIMED_BIT,
# withdrawn -t. Every state of every seq is a distinct int32, 0 is "never posted".
TICKET_MOD: Final = 0x3FFFFFFF
CLAIMED_BIT: Final = 0x40000000


def posted(seq: int) -> int:
    return seq % TICKET_MOD + 1


def claimed(seq: int) -> int:
    return posted(seq) | CLAIMED_BIT


def withdrawn(seq: int) -> int:
    return -posted(seq)


@dataclass(frozen=True)
class ModuleNames:
    """Every IPC name of one TDX module; picklable, handed to spawned CPUs.

    ``two_phase``: CPUs make each PAMT SEAMCALL two requests (begin, end), so
    the module holds its entry locks between them (docs/design.md).
    """

    token: str
    ncpus: int
    nranges: int
    pages_per_range: int
    mailbox: str
    state: str
    requests: tuple[str, ...]  # ncpus + 1: one per CPU, then the control port
    responses: tuple[str, ...]
    two_phase: bool = True

    @property
    def control(self) -> int:
        """Mailbox index of the runner's control port."""
        return self.ncpus

    def all_names(self) -> tuple[str, ...]:
        return (self.mailbox, self.state, *self.requests, *self.responses)


class SeamcallError(ModuleFailure):
    """The TDX module could not answer a SEAMCALL."""


class ModuleDied(SeamcallError):
    """The daemon process is gone."""


class ModuleHung(SeamcallError):
    """The daemon lives but did not answer within the port's timeout.

    ``executed`` says what became of the call: False if it was withdrawn or
    refused (it never ran and never will), None if the daemon took it and did
    not finish it (it may still run).
    """

    def __init__(self, msg: str, executed: bool | None = False) -> None:
        super().__init__(msg)
        self.executed = executed


class Mailbox:
    """The mailbox segment: header plus ``nslots`` request/response slots."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        self.buf = segment.payload
        _, _, n = HEADER.unpack_from(self.buf, 0)
        if n < 1 or segment.payload_size != SLOTS_OFFSET + n * SLOT_BYTES:
            raise IpcError(f"{segment.name}: not a SEAMCALL mailbox")
        self.nslots = int(n)
        # Atomic view of the whole payload: tickets and the abandoned word.
        self.words = RefcountArray.over(segment, 0, segment.payload_size // 4)
        self._tickets = [self.ticket_index(s) for s in range(self.nslots)]

    @classmethod
    def create(cls, name: str, nslots: int) -> Mailbox:
        seg = Segment.create(name, KIND_MAILBOX, SLOTS_OFFSET + nslots * SLOT_BYTES)
        HEADER.pack_into(seg.payload, 0, 0, 0, nslots)
        return cls(seg)

    @classmethod
    def attach(cls, name: str) -> Mailbox:
        seg = Segment.attach(name, KIND_MAILBOX)
        try:
            return cls(seg)
        except BaseException:
            seg.close()
            raise

    @staticmethod
    def request_offset(slot: int) -> int:
        return SLOTS_OFFSET + slot * SLOT_BYTES

    @staticmethod
    def response_offset(slot: int) -> int:
        return SLOTS_OFFSET + slot * SLOT_BYTES + RESPONSE_OFFSET

    @staticmethod
    def ticket_index(slot: int) -> int:
        return (SLOTS_OFFSET + slot * SLOT_BYTES + TICKET_OFFSET) // 4

    # tickets (see the module docstring) ------------------------------------------------

    def post(
        self, slot: int, seq: int, leaf: int, rcx: int, rdx: int, r8: int, flags: int = 0
    ) -> None:
        """Write a request: ticket first, so a daemon that sees ``seq`` can claim it."""
        self.words.set(self._tickets[slot], posted(seq))
        off = self.request_offset(slot)
        try:
            REQUEST.pack_into(self.buf, off, seq, leaf, rcx, rdx, r8, flags)
        except struct.error:  # a negative or oversized register: wrap it like the hardware
            m = MASK64
            REQUEST.pack_into(self.buf, off, seq, leaf & m, rcx & m, rdx & m, r8 & m, flags & m)

    def claim(self, slot: int, seq: int) -> int:
        """The daemon takes request ``seq``; returns the ticket it found (posted(seq): taken)."""
        return self.words.cmpxchg(self._tickets[slot], posted(seq), claimed(seq))

    def withdraw(self, slot: int, seq: int) -> bool:
        """The caller takes request ``seq`` back; True if the daemon had not claimed it."""
        i = self.ticket_index(slot)
        return self.words.cmpxchg(i, posted(seq), withdrawn(seq)) == posted(seq)

    @property
    def abandoned_by(self) -> int:
        """Mailbox that first gave up on a call, or -1."""
        return self.words.read(ABANDONED_OFFSET // 4) - 1

    def set_abandoned(self, slot: int) -> None:
        # The first caller to give up is the one named; later ones change nothing.
        self.words.cmpxchg(ABANDONED_OFFSET // 4, 0, slot + 1)

    # header fields ------------------------------------------------------------------

    @property
    def daemon_pid(self) -> int:
        return int(HEADER.unpack_from(self.buf, 0)[0])

    def set_daemon_pid(self, pid: int) -> None:
        struct.pack_into("<q", self.buf, 0, pid)

    @property
    def stopping(self) -> bool:
        return bool(struct.unpack_from("<q", self.buf, 8)[0])

    def set_stopping(self) -> None:
        struct.pack_into("<q", self.buf, 8, 1)

    @property
    def message(self) -> str:
        raw = bytes(self.buf[MSG_OFFSET : MSG_OFFSET + MSG_BYTES])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def set_message(self, msg: str) -> None:
        data = msg.encode("utf-8", "replace")[: MSG_BYTES - 1] + b"\0"
        self.buf[MSG_OFFSET : MSG_OFFSET + len(data)] = data

    def close(self) -> None:
        self.buf = memoryview(b"")
        self.words.close()
        self.segment.close()


class SeamcallPort:
    """One CPU's SEAMCALL instruction: ``call(leaf, rcx, rdx, r8) -> (status, rcx, rdx, r8)``."""

    def __init__(
        self,
        mailbox: Mailbox,
        request: posix_ipc.Semaphore,
        response: posix_ipc.Semaphore,
        cpu: int,
        timeout: float,
    ) -> None:
        self.cpu = cpu
        self.timeout = timeout
        self._mailbox = mailbox
        self._buf = mailbox.buf
        self._req = request
        self._resp = response
        self._in = Mailbox.request_offset(cpu)
        self._out = Mailbox.response_offset(cpu)
        # Continue after whatever a predecessor on this mailbox posted last.
        self._seq = max(
            int(REQUEST.unpack_from(self._buf, self._in)[0]),
            int(RESPONSE.unpack_from(self._buf, self._out)[0]),
        )
        self._pid = mailbox.daemon_pid
        self._broken: SeamcallError | None = None
        #: responses that carried an injected fault (BUSY or a delay)
        self.injected = 0
        #: responses that carried an injected TDX_OPERAND_BUSY
        self.injected_busy = 0
        #: injected-fault bits of the last response (module.faults.INJECTED_*)
        self.last_injected = 0
        #: the module holds its locks across two requests per PAMT SEAMCALL
        self.two_phase = False
        if self._pid <= 0:
            raise ModuleDied("the TDX module daemon has not started")

    @classmethod
    def attach(cls, names: ModuleNames, cpu: int, timeout: float = 10.0) -> SeamcallPort:
        if not 0 <= cpu <= names.ncpus:
            raise ValueError(
                f"cpu {cpu} has no mailbox (0..{names.ncpus - 1}, {names.ncpus} = control)"
            )
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        mailbox = Mailbox.attach(names.mailbox)
        sems: list[posix_ipc.Semaphore] = []
        try:
            sems.append(open_semaphore(names.requests[cpu]))
            sems.append(open_semaphore(names.responses[cpu]))
            port = cls(mailbox, sems[0], sems[1], cpu, timeout)
            port.two_phase = names.two_phase
            return port
        except BaseException:
            for s in sems:
                s.close()
            mailbox.close()
            raise

    def call(
        self, leaf: int, rcx: int = 0, rdx: int = 0, r8: int = 0, flags: int = 0
    ) -> tuple[int, int, int, int]:
        """One SEAMCALL; ``flags`` are REQ_* request flags (0: the call as the CPU made it)."""
        if self._broken is not None:
            raise self._broken
        seq = (self._seq + 1) & MASK64
        self._seq = seq
        self._mailbox.post(self.cpu, seq, leaf, rcx, rdx, r8, flags)
        self._req.release()
        while True:
            try:
                self._resp.acquire(SLICE)
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                # SignalError: a handled signal (the runner's Ctrl-C flag) interrupted the wait
                self._wait_slow(leaf, seq)
            got, status, o_rcx, o_rdx, o_r8, flags = RESPONSE.unpack_from(self._buf, self._out)
            if got == seq:
                break
            # Invariant: a response answers the request just posted, or is an older
            # one left behind by a CPU killed mid-call on this mailbox.
            if got > seq:
                self._broken = SeamcallError(
                    f"cpu {self.cpu}: response {got} does not answer request {seq}"
                )
                raise self._broken
        if flags & REFUSED:
            self._broken = ModuleHung(self._refusal(leaf), executed=False)
            raise self._broken
        if flags:
            self.injected += 1
            self.last_injected = flags
            if status == tdx.TDX_OPERAND_BUSY:
                self.injected_busy += 1
        else:
            self.last_injected = 0
        return status, o_rcx, o_rdx, o_r8

    def _refusal(self, leaf: int) -> str:
        who = self._mailbox.abandoned_by
        return (
            f"cpu {self.cpu}: {tdx.leaf_name(leaf)} was refused, not executed: the TDX module "
            f"daemon (pid {self._pid}) did not answer cpu {who} within its timeout "
            "and is treated as hung"
        )

    def _wait_slow(self, leaf: int, seq: int) -> None:
        """Wait out the timeout; returns once the response semaphore was taken, else raises."""
        if self._wait_until(leaf, time.monotonic() + self.timeout):
            return
        name = tdx.leaf_name(leaf)
        if self._mailbox.withdraw(self.cpu, seq):
            # Invariant: a withdrawn request is never executed (the daemon's claim fails).
            self._mailbox.set_abandoned(self.cpu)
            self._broken = ModuleHung(
                f"cpu {self.cpu}: the TDX module daemon (pid {self._pid}) did not answer "
                f"{name} within {self.timeout:g} s; the call was withdrawn and never ran",
                executed=False,
            )
            raise self._broken
        # The daemon claimed the call: it runs, so wait for its result rather than
        # let the caller go on as if it had not.
        if self._wait_until(leaf, time.monotonic() + self.timeout):
            return
        self._mailbox.set_abandoned(self.cpu)
        self._broken = ModuleHung(
            f"cpu {self.cpu}: the TDX module daemon (pid {self._pid}) did not answer "
            f"{name} within {2 * self.timeout:g} s; it took the call, which may still run",
            executed=None,
        )
        raise self._broken

    def _wait_until(self, leaf: int, deadline: float) -> bool:
        """True once the response semaphore is taken, False at ``deadline``; ModuleDied."""
        while True:
            if not pid_alive(self._pid):
                try:
                    self._resp.acquire(0)  # it may have answered just before dying
                    return True
                except posix_ipc.BusyError:
                    pass
                self._broken = ModuleDied(
                    f"cpu {self.cpu}: the TDX module daemon (pid {self._pid}) died "
                    f"during {tdx.leaf_name(leaf)}"
                )
                raise self._broken
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._resp.acquire(min(SLICE, left))
                return True
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                continue

    @property
    def daemon_pid(self) -> int:
        return self._pid

    def close(self) -> None:
        for s in (self._req, self._resp):
            with contextlib.suppress(posix_ipc.ExistentialError):
                s.close()
        self._buf = memoryview(b"")
        self._mailbox.close()

    def __enter__(self) -> SeamcallPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
