"""Targeted chaos counts the interleavings that happened, aims where they did not, and
never makes a correct variant look wrong; the campaign says which mode found each kind."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

from rich.console import Console

import shmpamt.api as api
from shmpamt.machine.chaos import TargetedChaos, delay_probability, window_weight
from shmpamt.machine.coverage import CODE, WindowTable, code_name, outcome_code, words_needed
from shmpamt.machine.kernel import Kernel
from shmpamt.records.results import Finding, VariantResult, zero_counts
from shmpamt.report.terminal import Report

FAULTS = "add.busy=0.1,remove.busy=0.1,aug.delay=0.2:0.001,alloc.fail=0.02"


class FakeWords:
    """The table's shared words as a plain list: one process, deterministic."""

    def __init__(self, n: int) -> None:
        self.w = [0] * n

    def read(self, i: int) -> int:
        return self.w[i]

    def set(self, i: int, v: int) -> None:
        self.w[i] = v

    def inc(self, i: int) -> None:
        self.w[i] += 1

    def inc_return(self, i: int) -> int:
        self.w[i] += 1
        return self.w[i]

    def cmpxchg(self, i: int, old: int, new: int) -> int:
        seen = self.w[i]
        if seen == old:
            self.w[i] = new
        return seen


class FakeRefcounts(FakeWords):
    """Just the refcount operations the driven kernel calls."""

    def inc_unless_negative(self, i: int) -> bool:
        if self.w[i] < 0:
            return False
        self.w[i] += 1
        return True


def _hooks(cpus: int = 2, p: float = 0.0) -> tuple[WindowTable, list[TargetedChaos], list[float]]:
    table = WindowTable(FakeWords(words_needed(cpus)), cpus)
    slept: list[float] = []
    hooks = [
        TargetedChaos(c, table, random.Random(c), p, 100, sleep=slept.append) for c in range(cpus)
    ]
    return table, hooks, slept


def test_an_op_between_two_of_another_cpus_ops_is_counted_once_per_kind() -> None:
    table, (a, b), _ = _hooks()
    a.before("atomic_read", 0)
    a.after("atomic_read", 0, 0)  # A's window (atomic_read, ?) opens on slot 0
    b.before("atomic_inc", 0)  # B lands inside it
    b.after("atomic_inc", 0, 0)
    b.before("atomic_inc", 1)  # another slot: not inside A's window
    b.after("atomic_inc", 1, 0)
    a.before("atomic_set", 0)  # A closes the window
    a.after("atomic_set", 0, 0)
    got = table.interleavings()
    # Invariant: exactly the one cross-CPU op on A's slot is recorded, keyed by A's pair.
    assert got == {("atomic_read", "atomic_set", "atomic_inc"): 1}, got
    cov = table.summary()
    # A ran (read, set); B ran (inc, inc) on slot 0 only once, then moved to slot 1 (no pair).
    assert (cov.seen, cov.hit, cov.interleavings) == (1, 1, 1), cov
    # The same intrusion again is a second count, not a new interleaving.
    b.before("atomic_inc", 0)
    a.before("atomic_set", 0)
    assert table.interleavings()[("atomic_set", "atomic_set", "atomic_inc")] == 1
    assert table.summary().interleavings == 2


def test_window_counting_through_a_kernel() -> None:
    """The hook sees what a variant's primitives do: refused fast paths get their own code."""
    table, (a, b), _ = _hooks()
    rc = FakeRefcounts(1)
    rc.w[0] = -1
    ka = Kernel(0, rc, None, None, None, hook=a)  # type: ignore[arg-type]
    kb = Kernel(1, rc, None, None, None, hook=b)  # type: ignore[arg-type]
    assert not ka.atomic_inc_unless_negative(0)  # refused: A goes to its slow path
    kb.atomic_read(0)  # B lands in A's window
    ka.atomic_set(0, 0)
    got = table.interleavings()
    assert got == {("atomic_inc_unless_negative!", "atomic_set", "atomic_read"): 1}, got


def test_outcome_codes() -> None:
    assert code_name(outcome_code("atomic_dec_if_positive", -1)) == "atomic_dec_if_positive!"
    assert code_name(outcome_code("atomic_dec_if_positive", 0)) == "atomic_dec_if_positive"
    assert code_name(outcome_code("atomic_dec_and_test", 1)) == "atomic_dec_and_test!"
    assert code_name(outcome_code("TDH.PHYMEM.PAMT.ADD", 0xC000030400000000)).endswith("!")
    assert code_name(outcome_code("spin_lock", 0)) == "spin_lock"


def test_delays_shift_toward_uncovered_racy_windows() -> None:
    read, set_ = CODE["atomic_read"], CODE["atomic_set"]
    racy = window_weight(read, set_, -1)
    assert racy == 1.0
    # Deep in a locked section is racy; the recheck right after spin_lock is not aimed at.
    assert window_weight(read, set_, 3) == 1.0 and window_weight(read, set_, 0) == 0.0
    assert window_weight(CODE["atomic_inc"], CODE["atomic_inc"], -1) < racy
    probs = [delay_probability(0.3, hits, racy) for hits in (0, 4, 40, 4000)]
    assert probs == sorted(probs, reverse=True) and probs[0] > 2 * probs[-1], probs


def test_a_fresh_racy_window_is_delayed_and_counted() -> None:
    _, (a, _), slept = _hooks(p=0.45)  # 0.45 x (0.5 + 2) > 0.95: a fresh window always waits
    for _ in range(3):
        a.before("atomic_read", 0)
        a.after("atomic_read", 0, 0)
        a.before("atomic_set", 0)
        a.after("atomic_set", 0, 0)
    assert a.delays >= 3 and len(slept) == a.delays
    assert all(100e-6 <= s <= 400e-6 for s in slept), slept


def test_stress_reports_window_coverage_and_locked_stays_clean() -> None:
    r = api.stress("locked", cpus=3, ranges=1, duration=3.0, chaos=0.3, faults=FAULTS, seed=4)
    d = r.to_dict()
    # Invariant: a correct-by-construction variant never produces a violation.
    assert not r.found and not r.incidents, d
    cov = d["window_coverage"]
    assert cov is not None and cov["windows_hit"] > 0 and cov["interleavings"] > 0, cov
    assert cov["windows_hit"] <= cov["windows_seen"] and cov["delays"] > 0, cov
    assert r.raw.operations > 50
    u = api.stress("locked", cpus=2, ranges=1, iterations=50, chaos=0.3, chaos_mode="uniform")
    assert u.to_dict()["window_coverage"] is None and not u.found


def _merged_campaign() -> Report:
    counts = zero_counts()
    stress = VariantResult(
        "kai", "stress", 7, 4, 100, 1.0, counts | {"quiescent_mismatch": 1, "add_present": 3}, {}
    )
    s1, s2 = "s7:kai:c2.r2.g1.p2.w3:1x4", "s7:kai:c2.r2.g1.p2.w5:1x6"
    f = Finding("add_present", s1, s1, 3, 0, "dpor")
    g = Finding("remove_absent", s2, s2, 5, 1, "pct")
    explore = VariantResult(
        "kai", "explore", 7, 2, 10, 1.0, counts | {"add_present": 2, "remove_absent": 1}, {},
        findings=(f, g),
    )  # fmt: skip
    return Report(results=[stress, explore], merged=True)


def test_merged_report_marks_modes_and_gives_replays() -> None:
    c = _merged_campaign()
    buf = io.StringIO()
    c.render(Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert "add_present [both]" in text and "remove_absent [explore]" in text, text
    assert "quiescent_mismatch [stress]" in text
    assert "shmpamt replay s7:kai:c2.r2.g1.p2.w5:1x6" in text
    assert "stress seed 7" in text and "not replayable" in text
    assert "1 of 1 variant(s) violate" in text
    kinds = {k["kind"]: k for k in c.to_dict()["merged"][0]["kinds"]}
    assert kinds["quiescent_mismatch"]["found_by"] == "stress"
    assert kinds["quiescent_mismatch"]["replay"] is None and kinds["quiescent_mismatch"]["note"]
    assert kinds["add_present"]["found_by"] == "both" and kinds["add_present"]["replay"]
    assert c.to_dict()["merged"][0]["stress_only"] == ["quiescent_mismatch"]


def test_mode_both_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "both.json"
    cmd = [sys.executable, "-m", "shmpamt", "stress", "--mode", "both"]
    cmd += ["--variant", "rfc-early-publish", "--duration", "5", "--seed", "3", "--chaos"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    d = json.loads(out.read_text())
    assert [v["mode"] for v in d["variants"]] == ["stress", "explore"]
    (m,) = d["merged"]
    assert m["kinds"], m
    for k in m["kinds"]:
        # Invariant: every kind found can be seen again: a replay, or the seed and a note.
        if k["found_by"] == "stress":
            assert k["replay"] is None and k["note"] and k["stress_seed"] == 3
        else:
            assert k["replay"].startswith("shmpamt replay s"), k
            assert ":rfc-early-publish:" in k["replay"], k
    assert "[explore]" in proc.stdout or "[both]" in proc.stdout
