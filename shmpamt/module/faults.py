"""Fault injection plans: BUSY statuses, delays around the state change, allocation failures.

Everything is deterministic from one seed: the module draws from one random
stream per mailbox (seeded from ``(seed, cpu)``) and each CPU's allocator from
its own, so the same seed and the same per-CPU call sequence give the same
injected faults. Each decision consumes a fixed number of draws whatever the
outcome, so one injected fault never shifts the ones after it.

Spec syntax (comma separated ``key=value``)::

    add.busy=0.1,remove.busy=0.05,aug.delay=0.3:0.002,*.delay_after=0.1:0.001,alloc.fail=0.01

``<leaf>.busy=P`` returns TDX_OPERAND_BUSY with probability P; ``<leaf>.delay=P:S``
sleeps up to S seconds before the state change with probability P;
``<leaf>.delay_after=P:S`` likewise after it; leaves are add, remove, aug,
reclaim, or ``*`` for all four; ``alloc.fail=P`` makes ``alloc_page`` fail.
Tokens apply in order, so ``*.busy=0.1,add.busy=0`` exempts ADD.

Every number is bounded when parsed, so an accepted plan can never fail inside
the daemon: probabilities are finite and within [0, 1], delays finite and
within [0, MAX_DELAY]: with a delay before and one after each of a round's
four calls (ADD, AUG, RECLAIM, REMOVE) a round still ends within 8 s, below
both the CPUs' 10 s SEAMCALL timeout and the runner's 10 s grace for a CPU to
finish its round; past those an injected delay turns into a "hung module"
incident or a CPU killed inside pamt_lock, not a delay.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from shmpamt import tdx

#: longest injected delay, seconds: a round's 4 calls x 2 delays must end within 10 s
MAX_DELAY: Final = 1.0

LEAF_KEYS: Final[dict[str, int]] = {
    "add": tdx.TDH_PHYMEM_PAMT_ADD,
    "remove": tdx.TDH_PHYMEM_PAMT_REMOVE,
    "aug": tdx.TDH_MEM_PAGE_AUG,
    "reclaim": tdx.TDH_PHYMEM_PAGE_RECLAIM,
}

# Bits of the "injected" word of a SEAMCALL response.
INJECTED_BUSY: Final = 1
INJECTED_DELAY_BEFORE: Final = 2
INJECTED_DELAY_AFTER: Final = 4
INJECTED_KINDS: Final[dict[int, str]] = {
    INJECTED_BUSY: "busy",
    INJECTED_DELAY_BEFORE: "delay_before",
    INJECTED_DELAY_AFTER: "delay_after",
}


@dataclass(frozen=True)
class LeafFaults:
    """What may be injected into one leaf."""

    busy: float = 0.0
    delay_p: float = 0.0
    delay_max: float = 0.0
    delay_after_p: float = 0.0
    delay_after_max: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.busy or self.delay_p or self.delay_after_p)


@dataclass(frozen=True)
class Decision:
    """The faults drawn for one SEAMCALL."""

    busy: bool = False
    delay_before: float = 0.0
    delay_after: float = 0.0

    @property
    def flags(self) -> int:
        return (
            (INJECTED_BUSY if self.busy else 0)
            | (INJECTED_DELAY_BEFORE if self.delay_before > 0 else 0)
            | (INJECTED_DELAY_AFTER if self.delay_after > 0 else 0)
        )


NO_FAULT: Final = Decision()


@dataclass(frozen=True)
class FaultPlan:
    """A picklable, seeded description of the faults to inject in one run."""

    seed: int = 0
    leaves: tuple[tuple[int, LeafFaults], ...] = field(default_factory=tuple)
    alloc_fail: float = 0.0

    @classmethod
    def none(cls, seed: int = 0) -> FaultPlan:
        return cls(seed=seed)

    @classmethod
    def parse(cls, spec: str, seed: int) -> FaultPlan:
        """Parse a compact spec (see the module docstring); ValueError names the bad token."""
        per_leaf = {leaf: LeafFaults() for leaf in LEAF_KEYS.values()}
        alloc_fail = 0.0
        for raw in spec.split(","):
            token = raw.strip()
            if not token or token == "none":
                continue
            key, eq, value = token.partition("=")
            target, dot, what = key.strip().partition(".")
            if not eq or not dot:
                raise ValueError(f"fault spec token {token!r}: expected <leaf>.<kind>=<value>")
            value = value.strip()
            if target == "alloc":
                if what != "fail":
                    raise ValueError(f"fault spec token {token!r}: alloc only knows 'fail'")
                alloc_fail = _probability(value, token)
                continue
            if target == "*":
                leaves = list(LEAF_KEYS.values())
            elif target in LEAF_KEYS:
                leaves = [LEAF_KEYS[target]]
            else:
                raise ValueError(
                    f"fault spec token {token!r}: unknown leaf {target!r} "
                    f"(use {', '.join(LEAF_KEYS)}, *, alloc)"
                )
            for leaf in leaves:
                f = per_leaf[leaf]
                if what == "busy":
                    f = replace(f, busy=_probability(value, token))
                elif what in ("delay", "delay_after"):
                    p, s = _delay(value, token)
                    if what == "delay":
                        f = replace(f, delay_p=p, delay_max=s)
                    else:
                        f = replace(f, delay_after_p=p, delay_after_max=s)
                else:
                    raise ValueError(
                        f"fault spec token {token!r}: unknown kind {what!r} "
                        "(use busy, delay, delay_after)"
                    )
                per_leaf[leaf] = f
        leaves_t = tuple(sorted((k, v) for k, v in per_leaf.items() if v.active))
        return cls(seed=seed, leaves=leaves_t, alloc_fail=alloc_fail)

    # -- queries --------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return bool(self.leaves) or self.alloc_fail > 0

    def for_leaf(self, leaf: int) -> LeafFaults | None:
        for k, v in self.leaves:
            if k == leaf:
                return v
        return None

    def module_rng(self, cpu: int) -> random.Random:
        """The module's random stream for mailbox ``cpu``."""
        return random.Random(f"shmpamt:{self.seed}:module:{cpu}")

    def decide(self, rng: random.Random, leaf: int) -> Decision:
        """Draw the faults for one call of ``leaf``; five draws for a faulted leaf, none else."""
        f = self.for_leaf(leaf)
        if f is None:
            return NO_FAULT
        r_busy, r_before, s_before, r_after, s_after = (rng.random() for _ in range(5))
        if r_busy < f.busy:
            return Decision(busy=True)
        before = s_before * f.delay_max if r_before < f.delay_p else 0.0
        after = s_after * f.delay_after_max if r_after < f.delay_after_p else 0.0
        return Decision(delay_before=before, delay_after=after)

    def alloc_failer(self, cpu: int) -> Callable[[], bool]:
        """For ``Kernel(alloc_fails=...)``: True when this CPU's next alloc_page must fail."""
        p = self.alloc_fail
        if p <= 0:
            return _never
        rng = random.Random(f"shmpamt:{self.seed}:alloc:{cpu}")
        draw = rng.random

        def fails() -> bool:
            return draw() < p

        return fails

    def describe(self) -> str:
        """The plan back in spec syntax (canonical order), for reports and replay commands."""
        names = {v: k for k, v in LEAF_KEYS.items()}
        parts = []
        for leaf, f in self.leaves:
            n = names[leaf]
            if f.busy:
                parts.append(f"{n}.busy={_fmt(f.busy)}")
            if f.delay_p:
                parts.append(f"{n}.delay={_fmt(f.delay_p)}:{_fmt(f.delay_max)}")
            if f.delay_after_p:
                parts.append(f"{n}.delay_after={_fmt(f.delay_after_p)}:{_fmt(f.delay_after_max)}")
        if self.alloc_fail:
            parts.append(f"alloc.fail={_fmt(self.alloc_fail)}")
        return ",".join(parts) or "none"


def _fmt(v: float) -> str:
    """Short when that is exact, else repr: a replay command must rebuild the same plan."""
    short = f"{v:g}"
    return short if float(short) == v else repr(v)


def _never() -> bool:
    return False


def _number(text: str, token: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"fault spec token {token!r}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"fault spec token {token!r}: {text!r} is not finite")
    return v


def _probability(text: str, token: str) -> float:
    p = _number(text, token)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"fault spec token {token!r}: probability {text} is outside [0, 1]")
    return p


def _delay(text: str, token: str) -> tuple[float, float]:
    p_text, colon, s_text = text.partition(":")
    if not colon:
        raise ValueError(f"fault spec token {token!r}: a delay is probability:max_seconds")
    p = _probability(p_text, token)
    s = _number(s_text, token)
    if s < 0:
        raise ValueError(f"fault spec token {token!r}: negative duration {s_text}")
    if s > MAX_DELAY:
        raise ValueError(
            f"fault spec token {token!r}: delay {s_text} s is above {MAX_DELAY:g} s (a round's"
            " four calls, each delayed before and after, must end within the 10 s SEAMCALL"
            " timeout; stop the daemon with SIGSTOP to test a hung module)"
        )
    return p, s


def page_kept_by_injection(reclaim_status: int) -> bool:
    """True if a CPU must keep its page: RECLAIM still answered BUSY after every retry.

    BUSY is only ever injected (docs/design.md), so the page is assigned through
    no fault of the protocol; putting its range now would make the variant's
    PAMT.REMOVE fail as ``remove_while_in_use``. The CPU keeps the page and its
    reference instead, and ``ModuleState.fault_held_ranges`` lets the
    quiescence check skip the range.
    """
    return tdx.status_class(reclaim_status) == tdx.TDX_OPERAND_BUSY
