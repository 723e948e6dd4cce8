"""Schedule strings: one failing execution as one short, copy-pasteable word.

A schedule carries everything a replay needs: the variant, the scenario
parameters and the CPU chosen at every scheduling point. It is printed with
the command that replays it, saved in JSON reports, and read back by
``shmpamt replay``. Only ``[A-Za-z0-9._:-]`` appear, so it survives a shell,
a URL and a filename without quoting.

Grammar (format version 1)::

    schedule := "s1" ":" variant ":" params ":" steps
    variant  := 1*( ALNUM | "_" | "-" | "." HEX HEX )
    params   := "c" N "." "r" N "." "g" N "." "p" N "." "w" N [ "." "h" 8HEX ]
    steps    := "" | block *( "." block )
    block    := N [ "x" N ]               ; cpu, then how many steps in a row (default 1)
    N        := "0" | [1-9] *[0-9]          ; decimal, no leading zeros
    HEX      := [0-9a-f]

* ``variant``: a built-in name (``rfc-norecheck``) is written as is. Any other
  character, as in a user variant ``tests/my.py:Mine``, is written byte by byte
  of its UTF-8 as ``.`` and two lowercase hex digits: ``tests.2fmy.2epy.3aMine``.
  ``.`` never occurs in a built-in name, so plain names stay plain and the
  encoding is reversible. A variant file is named by its path relative to the
  directory the schedule was found in, or its absolute path when shorter; with
  the source hash below it replays from any directory of the same machine
  (:mod:`shmpamt.records.variant_files` says how it is found).
* ``params``: ``c`` CPUs, ``r`` get/use/put rounds per CPU, ``g`` 2 MiB ranges,
  ``p`` pages per range, ``w`` the workload seed of ``next_u64``, and for a
  variant file ``h``: the first 8 hex digits of the SHA-256 of its source, so a
  replay can say when the file changed since the schedule was found.
* ``steps``: the CPU granted each step, run-length encoded: ``0x5.1x3.0x2`` is
  cpu 0 five times, cpu 1 three times, cpu 0 twice; ``1`` alone is ``1x1``.
  Adjacent blocks of one CPU are accepted and merged. When the recorded steps
  run out before the execution ends, replay continues without preemption
  (keep the current CPU while it can run, else the lowest runnable one), which
  is what lets a minimised schedule drop its tail.

Example: ``s1:rfc-norecheck:c2.r1.g1.p1.w42:0x5.1x3.0x2``.

Format version 2 adds the faults the search injected (docs/explore.md), and is
written only when there are some, so a schedule without faults is the same
``s1`` string as before and every ``s1`` string still reads::

    schedule := "s2" ":" variant ":" params ":" steps ":" faults
    faults   := fault *( "." fault )
    fault    := N "p" N KIND          ; cpu, its fault point (0 = its first), kind
    KIND     := "a" | "r" | "u" | "c" | "m"

A CPU's fault points are its steps of PAMT.ADD (kind ``a``: add.busy), PAMT.REMOVE
(``r``: remove.busy), PAGE.AUG (``u``: aug.busy), PAGE.RECLAIM (``c``:
reclaim.busy) and alloc_page (``m``: alloc.fail), counted from its first in the
execution; ``1p3r`` injects TDX_OPERAND_BUSY into CPU 1's fourth fault point, if
that point is a PAMT.REMOVE. Example: ``s2:v6:c2.r2.g1.p2.w0:0x40.1x9:1p3r``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from shmpamt.errors import ScheduleError

_NUM: Final = r"(0|[1-9][0-9]{0,19})"
VERSION: Final = "s1"
#: the version of a schedule with injected faults
FAULTS_VERSION: Final = "s2"
#: injected outcomes, in a fixed order (the index is a fault's kind everywhere)
FAULT_KINDS: Final[tuple[str, ...]] = (
    "add.busy", "remove.busy", "aug.busy", "reclaim.busy", "alloc.fail",
)  # fmt: skip
#: one letter per kind in the string
FAULT_LETTERS: Final = "arucm"
#: how a trace note starts when the step's outcome was injected
INJECTED_NOTE: Final = "injected"
_FAULT_RE: Final = re.compile(rf"{_NUM}p{_NUM}([arucm])", re.ASCII)
#: most faults a string may carry
MAX_STRING_FAULTS: Final = 64
#: refuse to materialise absurd schedules from a hostile or mangled string
MAX_STEPS: Final = 1_000_000
MAX_CPUS: Final = 4096
_MAX_U64: Final = (1 << 64) - 1

_PLAIN: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_PARAMS_RE: Final = re.compile(
    rf"c{_NUM}\.r{_NUM}\.g{_NUM}\.p{_NUM}\.w{_NUM}(?:\.h([0-9a-f]{{8}}))?", re.ASCII
)
_SOURCE_RE: Final = re.compile(r"[0-9a-f]{8}", re.ASCII)
_BLOCK_RE: Final = re.compile(rf"{_NUM}(?:x{_NUM})?", re.ASCII)
_VARIANT_RE: Final = re.compile(r"(?:[A-Za-z0-9_-]|\.[0-9a-f]{2})+", re.ASCII)


def encode_variant(name: str) -> str:
    """The variant field for ``name`` (see the module docstring)."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ScheduleError(f"variant name {name!r} is not valid Unicode text") from e
    return "".join(chr(b) if chr(b) in _PLAIN else f".{b:02x}" for b in raw)


def decode_variant(field: str) -> str:
    if not field:
        raise ScheduleError("the variant field is empty")
    if not _VARIANT_RE.fullmatch(field):
        bad = next((c for c in field if c not in _PLAIN and c != "."), None)
        if bad is not None:
            raise ScheduleError(f"variant field {field!r} contains {bad!r}")
        raise ScheduleError(
            f"variant field {field!r}: '.' must be followed by two lowercase hex digits"
        )
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i] == ".":
            b = int(field[i + 1 : i + 3], 16)
            if chr(b) in _PLAIN:
                raise ScheduleError(
                    f"variant field {field!r}: .{b:02x} stands for {chr(b)!r}, write it plainly"
                )
            out.append(b)
            i += 3
        else:
            out.append(ord(field[i]))
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScheduleError(f"variant field {field!r} does not decode as UTF-8") from e


@dataclass(frozen=True)
class Schedule:
    """One execution: variant, scenario and the CPU granted at each scheduling point."""

    variant: str
    cpus: int
    rounds: int
    ranges: int
    pages: int
    seed: int
    steps: tuple[int, ...] = ()
    #: short hash of a variant file's source ("" for built-ins and modules)
    source: str = ""
    #: injected faults: (cpu, its fault point, kind index in FAULT_KINDS), sorted
    faults: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.faults, tuple) or self.faults != tuple(sorted(set(self.faults))):
            object.__setattr__(self, "faults", tuple(sorted(set(map(tuple, self.faults)))))
        if len(self.faults) > MAX_STRING_FAULTS:
            raise ScheduleError(f"{len(self.faults)} faults: more than {MAX_STRING_FAULTS}")
        for f in self.faults:
            if (
                len(f) != 3
                or any(type(x) is not int for x in f)
                or not 0 <= f[0] < self.cpus
                or not 0 <= f[1] <= _MAX_U64
                or not 0 <= f[2] < len(FAULT_KINDS)
            ):
                raise ScheduleError(f"fault {f!r} is not (cpu, fault point, kind) of this scenario")
        if self.source and not _SOURCE_RE.fullmatch(self.source):
            raise ScheduleError(f"source hash {self.source!r} is not 8 lowercase hex digits")
        if not isinstance(self.steps, tuple):
            object.__setattr__(self, "steps", tuple(self.steps))
        if not isinstance(self.variant, str) or not self.variant:
            raise ScheduleError("the variant name is empty")
        encode_variant(self.variant)
        for what, value, lo, hi in (
            ("cpus", self.cpus, 1, MAX_CPUS),
            ("rounds", self.rounds, 1, _MAX_U64),
            ("ranges", self.ranges, 1, _MAX_U64),
            ("pages", self.pages, 1, _MAX_U64),
            ("seed", self.seed, 0, _MAX_U64),
        ):
            if type(value) is not int or not lo <= value <= hi:
                raise ScheduleError(f"{what} must be an integer in [{lo}, {hi}], not {value!r}")
        if len(self.steps) > MAX_STEPS:
            raise ScheduleError(f"{len(self.steps)} steps is more than the {MAX_STEPS} allowed")
        for i, cpu in enumerate(self.steps):
            # Invariant: every step names one of the scenario's CPUs.
            if type(cpu) is not int or not 0 <= cpu < self.cpus:
                raise ScheduleError(f"step {i} names cpu {cpu!r}, but there are {self.cpus} CPUs")

    # -- the string form ---------------------------------------------------------

    def encode(self) -> str:
        params = f"c{self.cpus}.r{self.rounds}.g{self.ranges}.p{self.pages}.w{self.seed}"
        if self.source:
            params += f".h{self.source}"
        steps = ".".join(f"{c}x{n}" if n > 1 else f"{c}" for c, n in self.blocks())
        head = f"{encode_variant(self.variant)}:{params}:{steps}"
        if not self.faults:
            return f"{VERSION}:{head}"
        faults = ".".join(f"{c}p{p}{FAULT_LETTERS[k]}" for c, p, k in self.faults)
        return f"{FAULTS_VERSION}:{head}:{faults}"

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def parse(cls, s: str) -> Schedule:
        """The schedule a string stands for; ScheduleError for anything malformed."""
        if not isinstance(s, str):
            raise ScheduleError(f"a schedule is a string, not {type(s).__name__}")
        s = s.strip()
        parts = s.split(":")
        # The version decides the rest of the grammar: a later one may add fields.
        known = (VERSION, FAULTS_VERSION)
        if len(parts) > 1 and parts[0] not in known and re.fullmatch(r"s[0-9]{1,3}", parts[0]):
            raise ScheduleError(
                f"unsupported schedule format {parts[0]!r} (this shmpamt reads "
                f"{VERSION!r} and {FAULTS_VERSION!r})"
            )
        faults: list[tuple[int, int, int]] = []
        if parts[0] == FAULTS_VERSION:
            if len(parts) != 5:
                raise ScheduleError(
                    "expected 5 ':'-separated fields (s2:variant:params:steps:faults), "
                    f"got {len(parts)}"
                )
            faults_field = parts.pop()
            for i, token in enumerate(faults_field.split(".")):
                f = _FAULT_RE.fullmatch(token)
                if f is None:
                    raise ScheduleError(
                        f"fault {i} {token[:30]!r} is not <cpu>p<point><kind>, e.g. 1p3r"
                    )
                faults.append((int(f.group(1)), int(f.group(2)), FAULT_LETTERS.index(f.group(3))))
                if len(faults) > MAX_STRING_FAULTS:
                    raise ScheduleError(f"more than the {MAX_STRING_FAULTS} faults allowed")
            parts[0] = VERSION
        if len(parts) != 4:
            raise ScheduleError(
                f"expected 4 ':'-separated fields (version:variant:params:steps), got {len(parts)}"
            )
        version, variant_field, params, steps_field = parts
        if version != VERSION:
            raise ScheduleError(
                f"unsupported schedule format {version[:20]!r} (this shmpamt reads {VERSION!r})"
            )
        variant = decode_variant(variant_field)
        m = _PARAMS_RE.fullmatch(params)
        if m is None:
            raise ScheduleError(
                f"scenario field {params[:60]!r} is not c<cpus>.r<rounds>.g<ranges>.p<pages>"
                ".w<seed> (decimal, no leading zeros), e.g. c2.r1.g1.p1.w42"
            )
        cpus, rounds, ranges, pages, seed = (int(g) for g in m.groups()[:5])
        source = m.group(6) or ""
        steps: list[int] = []
        if steps_field:
            for i, block in enumerate(steps_field.split(".")):
                b = _BLOCK_RE.fullmatch(block)
                if b is None:
                    raise ScheduleError(
                        f"step block {i} {block[:30]!r} is not <cpu> or <cpu>x<count>, e.g. 0x5"
                    )
                cpu = int(b.group(1))
                count = 1 if b.group(2) is None else int(b.group(2))
                if count < 1:
                    raise ScheduleError(f"step block {i} {block!r} repeats cpu {cpu} zero times")
                if len(steps) + count > MAX_STEPS:
                    raise ScheduleError(f"more than the {MAX_STEPS} steps allowed")
                if cpu >= cpus:
                    raise ScheduleError(
                        f"step block {i} {block!r} names cpu {cpu}, "
                        f"but the scenario has {cpus} CPUs"
                    )
                steps.extend([cpu] * count)
        for c, _, _ in faults:
            if c >= cpus:
                raise ScheduleError(f"a fault names cpu {c}, but the scenario has {cpus} CPUs")
        return cls(variant, cpus, rounds, ranges, pages, seed, tuple(steps), source, tuple(faults))

    def replay_command(self) -> str:
        return f"shmpamt replay {self.encode()}"

    # -- shape -------------------------------------------------------------------

    def blocks(self) -> tuple[tuple[int, int], ...]:
        """Run-length blocks ``(cpu, count)``; adjacent blocks have different CPUs."""
        out: list[tuple[int, int]] = []
        for cpu in self.steps:
            if out and out[-1][0] == cpu:
                out[-1] = (cpu, out[-1][1] + 1)
            else:
                out.append((cpu, 1))
        return tuple(out)

    def context_switches(self) -> int:
        """Steps whose CPU differs from the previous step's."""
        return sum(1 for a, b in zip(self.steps, self.steps[1:], strict=False) if a != b)

    def preemptions(self) -> int:
        """Context switches away from a CPU that takes another step later.

        The string does not record which CPUs were runnable, so this stands in
        for the scheduler's definition (switching away from a still-runnable
        CPU): a CPU that runs again later evidently still had work. A switch
        away from a CPU blocked on pamt_lock counts too; a switch away from a
        CPU that runs again only after the recorded steps (replay's default
        continuation) does not.
        """
        last = {cpu: i for i, cpu in enumerate(self.steps)}
        return sum(
            1
            for i in range(1, len(self.steps))
            if self.steps[i] != self.steps[i - 1] and last[self.steps[i - 1]] > i
        )

    def with_steps(self, steps: tuple[int, ...] | list[int]) -> Schedule:
        """The same variant and scenario with other steps."""
        return replace(self, steps=tuple(steps))

    def with_faults(self, faults: Sequence[tuple[int, int, int]]) -> Schedule:
        """The same schedule with other injected faults."""
        return replace(self, faults=tuple(sorted(faults)))

    def fault_names(self) -> tuple[str, ...]:
        """The injected kinds, e.g. ("remove.busy",), in the order of the faults."""
        return tuple(FAULT_KINDS[k] for _, _, k in self.faults)

    @staticmethod
    def steps_from_blocks(blocks: Sequence[tuple[int, int]]) -> tuple[int, ...]:
        return tuple(cpu for cpu, n in blocks for _ in range(n))
