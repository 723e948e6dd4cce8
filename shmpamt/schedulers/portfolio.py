"""The default strategy: a rotation of complementary strategies, one per execution.

No single strategy wins everywhere: the random walk is best at shallow bugs,
PCT at depth-d ordering bugs, POS at bugs hiding among many independent steps,
and DPOR, on its turns (every other execution), works towards a proof. Executions
rotate among the members; ``current_member`` names the one running the current execution so a
report can say which strategy found each kind of failure. When the DPOR member
exhausts its space, the portfolio has verified (or, with a preemption bound,
bounded-verified) the scenario and ``new_execution()`` returns False.

Workload data: sampling members' executions use workload seed ``workload_seed +
i`` for portfolio execution i (every failure is replayable from its (seed,
steps) pair); DPOR's executions all use ``workload_seed`` itself, because its
replays must meet the same data. The portfolio serves ``next_u64`` itself, from
the current execution's seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

from shmpamt.schedulers.base import Access, BaseScheduler, Claim, SplitMix64
from shmpamt.schedulers.dpor import DPOR
from shmpamt.schedulers.faults import DEFAULT_SHARE, FaultDraw, FaultTree, kinds_of
from shmpamt.schedulers.pct import PCT
from shmpamt.schedulers.pos import POS
from shmpamt.schedulers.random_walk import RandomWalk

#: member names, in rotation order
MEMBERS: tuple[str, ...] = ("random", "pct-1", "pct-2", "pct-3", "pct-4", "pos", "dpor")


class Portfolio(BaseScheduler):
    """Round-robin over ``members``; stops early only when the DPOR member is exhausted."""

    name = "portfolio"
    #: whether the member running the current execution reads ``pending`` (set by
    #: ``new_execution``: a sampler's executions need no footprints)
    uses_pending = True

    def __init__(
        self,
        seed: int = 0,
        max_executions: int | None = None,
        workload_seed: int | None = None,
        preemption_bound: int | None = None,
        shard: tuple[int, int] = (0, 1),
        members: Sequence[str] = MEMBERS,
        faults: Mapping[str, float] | None = None,
        max_faults: int = 1,
        fault_share: float = DEFAULT_SHARE,
    ) -> None:
        """``preemption_bound`` and ``shard`` apply to the DPOR member. ``faults`` (kind ->
        probability) with ``max_faults`` > 0: the samplers inject faults on a
        ``fault_share`` of their executions, and the DPOR member, once its no-fault
        tree is done, goes on with every plan of up to ``max_faults`` faults (the
        happy path first: a short budget is spent on it)."""
        unknown = [m for m in members if m not in MEMBERS]
        if unknown or not members or len(set(members)) != len(members):
            raise ValueError(f"members must be distinct names from {', '.join(MEMBERS)}")
        super().__init__(seed if workload_seed is None else workload_seed)
        self.seed = seed
        self.max_executions = max_executions
        seeds = SplitMix64(seed ^ (shard[0] << 48))
        probabilities = dict(faults or {}) if max_faults > 0 else {}
        self.wants_fault_points = bool(probabilities)
        self._members: list[tuple[str, BaseScheduler]] = []
        for m in members:
            s = seeds.next_u64()
            member: BaseScheduler
            if m == "random":
                member = RandomWalk(seed=s, vary_workload=False)
            elif m.startswith("pct-"):
                member = PCT(depth=int(m[4:]), seed=s, vary_workload=False)
            elif m == "pos":
                member = POS(seed=s, vary_workload=False)
            elif probabilities and shard[0] == 0:
                # One job searches the fault plans, unsharded: see registry.make_scheduler.
                member = FaultTree(
                    partial(DPOR, preemption_bound, workload_seed=self._base_seed),
                    kinds_of(probabilities),
                    max_faults,
                )
            else:
                member = DPOR(preemption_bound, workload_seed=self._base_seed, shard=shard)
            if probabilities and m != "dpor":
                member = FaultDraw(member, probabilities, max_faults, fault_share, s)
            self._members.append((m, member))
        # DPOR takes every other execution: its proof is what ends a search early, and
        # the samplers still take turns in between for the deep and the lucky bugs.
        samplers = [(m, x) for m, x in self._members if m != "dpor"]
        provers = [(m, x) for m, x in self._members if m == "dpor"]
        rotation = [turn for pair in samplers for turn in (pair, *provers)]
        self._active = rotation or provers
        self._turn = 0
        self._member: BaseScheduler | None = None
        #: name of the member running the current execution ("" before the first)
        self.current_member = ""
        #: executions run by each member
        self.runs: dict[str, int] = {m: 0 for m in members}

    @property
    def finder(self) -> str:
        return self.current_member or self.name

    @property
    def dpor(self) -> DPOR | FaultTree | None:
        """The DPOR member (with faults: the fault tree around it), if there is one."""
        return next((m for _, m in self._members if isinstance(m, DPOR | FaultTree)), None)

    def board_faults(self) -> dict[int, list[tuple[int, int]]]:
        return self._member.board_faults() if self._member is not None else {}

    def saw_fault_steps(self, steps: Sequence[tuple[int, int, int, int, bool]]) -> None:
        if self._member is not None:
            self._member.saw_fault_steps(steps)

    def saw_faults(self, points: Mapping[int, Sequence[int]]) -> None:
        if self._member is not None:
            self._member.saw_faults(points)

    @property
    def reached(self) -> bool:
        """Some member's execution passed a fault point of a kind it injects."""
        return any(getattr(m, "reached", False) for _, m in self._members)

    def member(self, name: str) -> BaseScheduler:
        """One member, e.g. to read its own coverage."""
        return dict(self._members)[name]

    def _start(self) -> bool:
        if self.max_executions is not None and self.executions >= self.max_executions:
            return False
        while self._active:
            name, member = self._active[self._turn % len(self._active)]
            if member.new_execution():
                self._turn += 1
                self._member, self.current_member = member, name
                self.uses_pending = member.uses_pending
                self.halts = member.halts
                self.runs[name] += 1
                return True
            if isinstance(member, DPOR | FaultTree) and member.exhausted:
                # The search is complete: nothing another member runs can add to it.
                return False
            self._active.remove((name, member))
        return False

    def _seed_for(self, execution: int) -> int:
        if isinstance(self._member, DPOR | FaultTree):
            return self._base_seed
        return self._base_seed + execution

    def _decide(
        self, runnable: Sequence[int], current: int | None, pending: Mapping[int, Access] | None
    ) -> int:
        # Invariant: a step is only granted inside an execution some member started.
        assert self._member is not None, "next_cpu before new_execution"
        return self._member.next_cpu(runnable, current, pending)

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        return self._member.lookahead(runnable, cpu, limit) if self._member is not None else 0

    def uniform_numbers(self, limit: int) -> list[int] | None:
        return self._member.uniform_numbers(limit) if self._member is not None else None

    def scripted_choices(self, limit: int) -> list[int] | None:
        return self._member.scripted_choices(limit) if self._member is not None else None

    def follow(self, decisions: Sequence[tuple[Sequence[int], int]], cpu: int | None) -> int:
        assert self._member is not None, "follow before new_execution"
        n = len(decisions)
        kept = self._member.follow(decisions, cpu)
        # The portfolio's own record of the decisions, as next_cpu keeps it.
        self._book(decisions, self._member.steps[len(self._member.steps) - min(kept + 1, n) :])
        return kept

    def executed(self, access: Access) -> None:
        if self._member is not None:
            self._member.executed(access)

    def violated(self, step: int) -> None:
        if self._member is not None:
            self._member.violated(step)

    def end_execution(self, outcome: str, pending: Mapping[int, Access] | None = None) -> None:
        super().end_execution(outcome, pending)
        if self._member is not None:
            self._member.end_execution(outcome, pending)

    @property
    def skipped_last(self) -> bool:
        return self._member is not None and self._member.skipped_last

    @property
    def claim(self) -> Claim:
        d = self.dpor
        return d.claim if d is not None and d.exhausted else "sampled"

    def coverage(self) -> str:
        by = ", ".join(f"{m} {n}" for m, n in self.runs.items())
        d = self.dpor
        tail = f"; {d.coverage()}" if d is not None else "; sampled only (no dpor member)"
        return f"portfolio: {self.claim}: {self.executions} executions ({by}){tail}"
