"""The shared violation log: exact counts, examples that survive floods, every process."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from shmpamt.machine.violation_log import ViolationLog
from shmpamt.records.violations import QUIESCENT_PAMT_PRESENT, VIOLATIONS, describe


def test_counts_stay_exact_and_every_kind_keeps_an_example_when_the_ring_fills() -> None:
    log = ViolationLog.create(capacity=4)
    try:
        for _ in range(50):
            log.record("get_failed", cpu=1, range_=0, a=-12)
        log.record("pamt_pages_lost", cpu=2, a=0x10000001000, b=1)
        counts = log.counts()
        assert counts["get_failed"] == 50 and counts["pamt_pages_lost"] == 1
        names = [v.name for v in log.records()]
        # Invariant: a flood of one kind never hides the example of another.
        assert "pamt_pages_lost" in names
        assert len(names) == 1 + 4 + 1  # first get_failed, ring of 4, first pamt_pages_lost
    finally:
        log.close()


def test_unknown_name_is_refused() -> None:
    log = ViolationLog.create(capacity=2)
    try:
        with pytest.raises(KeyError):
            log.record("not_a_violation")
    finally:
        log.close()


def test_every_name_has_a_readable_description() -> None:
    log = ViolationLog.create(capacity=16)
    try:
        for n in VIOLATIONS:
            log.record(n, cpu=0, range_=1, leaf=59, a=1, b=0)
        log.record("quiescent_mismatch", range_=3, c=QUIESCENT_PAMT_PRESENT)
        texts = [describe(v) for v in log.records()]
        assert len(texts) == len(VIOLATIONS) + 1
        assert all(t and t not in VIOLATIONS for t in texts)
        assert "range 3 still has its PAMT" in texts[-1]
    finally:
        log.close()


def _append(name: str, n: int) -> None:
    log = ViolationLog.attach(name)
    for i in range(n):
        log.record("add_present", cpu=i % 4, range_=0, leaf=58)
    log.close()


def test_appends_from_many_processes_are_all_counted() -> None:
    ctx = mp.get_context("spawn")
    log = ViolationLog.create(capacity=64)
    try:
        procs = [ctx.Process(target=_append, args=(log.name, 500)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert log.counts()["add_present"] == 1500
        assert len(log.records()) == 1 + 64
    finally:
        log.close()
