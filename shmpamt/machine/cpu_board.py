"""The CPU board: per-CPU counters, states and last words, plus the stop flag.

One shared segment the runner reads while CPUs run (progress, how each CPU
ended, what it said when it failed) and writes once to tell them to stop. It
also carries the interleaving table targeted chaos fills
(:class:`~shmpamt.machine.coverage.WindowTable`), so the runner can show coverage live.
"""

from __future__ import annotations

import struct
import time
from typing import Final

from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.coverage import WindowTable, words_needed
from shmpamt.machine.ipc import ParentGone, Segment, make_name, parent_gone

ITERATIONS: Final = 0
GETS_FAILED: Final = 1
INJECTED: Final = 2
WARNINGS: Final = 3
STATE: Final = 4  # one of the STATE_* values below
DELAYS: Final = 5  # targeted chaos delays inserted
PAUSED: Final = 6  # the last fresh start (epoch) this CPU paused for
WORDS_PER_CPU: Final = 8
STATE_RUNNING, STATE_DONE, STATE_FAILED = 1, 2, 3  # 0: not started yet
# global control words after the per-CPU block
STOP: Final = 0
EPOCH: Final = 1  # the fresh start CPUs are asked to pause for
RESUME: Final = 2  # the fresh start CPUs may go on after
KIND_CPUSTATS: Final = 0x43505553
PAUSE_POLL: Final = 0.0002  # a paused CPU's look at the resume word
PARENT_LOOK: Final = 0.1  # ... and at whether the runner still lives
MSG_BYTES: Final = 240


class CpuBoard:
    """Shared per-CPU counters, states and last error message, plus the stop word."""

    def __init__(self, segment: Segment, cpus: int) -> None:
        self.segment = segment
        self.name = segment.name
        self.cpus = cpus
        self.words = RefcountArray.over(segment, 0, cpus * WORDS_PER_CPU + 4)
        self._ctl = cpus * WORDS_PER_CPU
        self._msg_base = (cpus * WORDS_PER_CPU + 4) * 4
        table_base = self._msg_base + cpus * MSG_BYTES
        self._table_words = RefcountArray.over(segment, table_base, words_needed(cpus))
        self.windows = WindowTable(self._table_words, cpus)

    @staticmethod
    def _size(cpus: int) -> int:
        return (cpus * WORDS_PER_CPU + 4) * 4 + cpus * MSG_BYTES + words_needed(cpus) * 4

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

    def address(self, cpu: int, word: int) -> int:
        """Address of one of ``cpu``'s words, for a loop in C that counts as it goes."""
        return self.words.address(cpu * WORDS_PER_CPU + word)

    def stop_address(self) -> int:
        return self.words.address(self._ctl + STOP)

    def total(self, word: int) -> int:
        return sum(self.get(c, word) for c in range(self.cpus))

    def stop(self) -> None:
        self.words.set(self._ctl + STOP, 1)

    # -- fresh starts: the runner asks, every CPU pauses between rounds, the runner resumes

    def request_epoch(self, n: int) -> None:
        self.words.set(self._ctl + EPOCH, n)

    def requested_epoch(self) -> int:
        return self.words.read(self._ctl + EPOCH)

    def resume(self, n: int) -> None:
        self.words.set(self._ctl + RESUME, n)

    def pause_if_asked(self, cpu: int, seen: int, parent: int) -> int:
        """Between rounds: if a new fresh start was asked for, say so and wait for it.

        Returns the fresh start this CPU is now in. Only the runner, ``parent``,
        resumes a paused CPU: if it dies (SIGKILL), ParentGone ends the wait instead
        of leaving an orphan that sleeps forever.
        """
        want = self.requested_epoch()
        if want == seen:
            return seen
        self.set(cpu, PAUSED, want)
        look = time.monotonic() + PARENT_LOOK
        while self.words.read(self._ctl + RESUME) != want and not self.stopping():
            time.sleep(PAUSE_POLL)
            if time.monotonic() >= look:
                if parent_gone(parent):
                    raise ParentGone(f"cpu {cpu}: runner {parent} is gone")
                look = time.monotonic() + PARENT_LOOK
        return want

    def stopping(self) -> bool:
        return self.words.read(self._ctl + STOP) != 0

    def reset(self) -> None:
        for w in range(len(self.words)):
            self.words.set(w, 0)
        for w in range(len(self._table_words)):
            self._table_words.set(w, 0)

    def set_message(self, cpu: int, msg: str) -> None:
        data = msg.encode("utf-8", "replace")[: MSG_BYTES - 2]
        struct.pack_into(
            f"<H{MSG_BYTES - 2}s",
            self.segment.payload,
            self._msg_base + cpu * MSG_BYTES,
            len(data),
            data,
        )

    def message_slot(self, cpu: int) -> memoryview:
        """The raw bytes of ``cpu``'s message (u16 length, then UTF-8), for writers in C."""
        start = self._msg_base + cpu * MSG_BYTES
        return memoryview(self.segment.payload)[start : start + MSG_BYTES]

    def message(self, cpu: int) -> str:
        n, data = struct.unpack_from(
            f"<H{MSG_BYTES - 2}s", self.segment.payload, self._msg_base + cpu * MSG_BYTES
        )
        return bytes(data[:n]).decode("utf-8", "replace")

    def close(self) -> None:
        self._table_words.close()
        self.words.close()
        self.segment.close()
