"""Soak: ``locked`` under chaos and fault injection for 10 minutes with 4 CPUs.

Not part of the default run (``testpaths`` is ``tests/``, and this test skips itself)::

    SHMPAMT_SOAK=1 .venv/bin/pytest stress/test_soak.py -v -o faulthandler_timeout=0   # 10 minutes
    SHMPAMT_SOAK=1 SHMPAMT_SOAK_SECONDS=60 .venv/bin/pytest stress/test_soak.py -v
    .venv/bin/pytest stress/test_soak.py -m soak -v              # same as SHMPAMT_SOAK=1

It checks what only a long run shows: no false alarm (no violation, no incident, and
quiescence judged clean at the end), no memory growth beyond ``RSS_BOUND_MIB`` in the
runner, the TDX module daemon or any CPU process after a warm-up, and nothing left in
/dev/shm. RSS is read from /proc/<pid>/status (VmRSS), sampled about 100 times.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field

import pytest

from shmpamt.config import StressConfig
from shmpamt.engine.stress import StressProgress as Progress
from shmpamt.engine.stress import run_stress
from shmpamt.machine.ipc import parse_name

SECONDS = float(os.environ.get("SHMPAMT_SOAK_SECONDS", "600"))
CPUS = 4
RANGES = 2
CHAOS = 0.3
FAULTS = "add.busy=0.1,remove.busy=0.1,aug.delay=0.2:0.001,alloc.fail=0.02"
#: growth allowed per process between the end of the warm-up and the end of the run
RSS_BOUND_MIB = 20.0
#: allocator pools, import-time caches and the violation log's pages settle in this time
WARMUP = min(60.0, max(5.0, 0.1 * SECONDS))


def _soak_requested(config: pytest.Config) -> bool:
    if os.environ.get("SHMPAMT_SOAK") == "1":
        return True
    expr = str(config.getoption("markexpr", "") or "")
    return "soak" in expr and "not soak" not in expr


@pytest.fixture(autouse=True)
def _only_on_request(request: pytest.FixtureRequest) -> None:
    if not _soak_requested(request.config):
        pytest.skip("soak runs only with SHMPAMT_SOAK=1 or -m soak")


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class RssSampler:
    """Samples the runner, the daemon and every CPU process from ``on_progress``."""

    period: float
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    _next: float = 0.0

    def __call__(self, p: Progress) -> None:
        if p.elapsed < self._next:
            return
        self._next = p.elapsed + self.period
        procs = {"runner": os.getpid()}
        for child in mp.active_children():
            if child.pid and child.name.startswith(("shmpamt-cpu", "tdx-module")):
                label = "daemon" if child.name.startswith("tdx-module") else child.name
                procs[label] = child.pid
        for label, pid in procs.items():
            # Invariant: no process was replaced mid-run (a restart would hide a leak).
            assert self.pids.setdefault(label, pid) == pid, (label, self.pids[label], pid)
            kib = _rss_kib(pid)
            if kib is not None:
                self.samples.setdefault(label, []).append((p.elapsed, kib))

    def growth_mib(self, warmup: float) -> dict[str, tuple[float, float, float]]:
        """label -> (RSS at the end of the warm-up, peak after it, growth), in MiB."""
        out = {}
        for label, series in self.samples.items():
            after = [kib for t, kib in series if t >= warmup]
            if len(after) < 2:
                continue
            base, peak = after[0], max(after)
            out[label] = (base / 1024, peak / 1024, (peak - base) / 1024)
        return out


def _objects_of(pid: int) -> list[str]:
    return [e for e in os.listdir("/dev/shm") if (p := parse_name(e)) is not None and p.pid == pid]


@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 300)
def test_locked_soaks_clean_with_bounded_memory() -> None:
    before = set(_objects_of(os.getpid()))
    sampler = RssSampler(period=max(0.5, SECONDS / 100))
    config = StressConfig("locked", cpus=CPUS, ranges=RANGES, hold_us=50, chaos=CHAOS,
                          duration=SECONDS, seed=2024, faults=FAULTS)  # fmt: skip
    t0 = time.monotonic()
    res = run_stress(config, sampler)
    took = time.monotonic() - t0

    growth = sampler.growth_mib(WARMUP)
    print(f"\nsoak: {SECONDS:g} s planned, {took:.1f} s taken, {res.operations} get/put rounds, "
          f"{res.faults_injected} faults injected")  # fmt: skip
    for label, (base, peak, grew) in sorted(growth.items()):
        print(f"  {label:14} RSS {base:7.1f} MiB after warm-up, peak {peak:7.1f}, +{grew:.1f}")

    # Invariant: a correct variant under chaos and injected faults raises no alarm at all.
    assert res.found == {}, res.to_dict()
    assert res.incidents == (), res.incidents
    assert res.quiescence_checked
    assert res.operations > 0 and res.faults_injected > 0
    # every process was sampled after the warm-up
    assert {"runner", "daemon"} <= growth.keys() and len(growth) == CPUS + 2, growth
    # Invariant: no process grows without bound over a long run.
    grown = {k: v[2] for k, v in growth.items() if v[2] > RSS_BOUND_MIB}
    assert not grown, f"RSS grew by more than {RSS_BOUND_MIB} MiB: {grown}"
    # Invariant: the run removed every IPC object it created.
    assert set(_objects_of(os.getpid())) == before
