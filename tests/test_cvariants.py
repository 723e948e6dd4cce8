"""C variants: the twins behave step for step like the Python built-ins, and C files fail cleanly.

In-process checks script races with the fakes of test_variants (cheap, many
interleavings); the explore/replay/stress checks drive the real machinery
(processes, daemon, shared memory) and are kept few. Compiles are cached in
one directory per test session, shared by xdist workers (flock makes that safe).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from test_variants import Rig, Script

import shmpamt
from shmpamt import tdx
from shmpamt.config import Scenario
from shmpamt.explorer.session import Session
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.ipc import parse_name
from shmpamt.machine.kernel import Kernel, page_hpa
from shmpamt.machine.lock import PamtLock
from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers.random_walk import RandomWalk
from shmpamt.variants.cbuild import INCLUDE_DIR
from shmpamt.variants.cvariant import PairLoop
from shmpamt.variants.registry import C_TWINS, VariantLoadError, load_variant

TWINS = [name.removesuffix(".c") for name in C_TWINS]


#: every C build of the session in one compile cache (see conftest.shared_c_cache)
pytestmark = pytest.mark.usefixtures("shared_c_cache")


def _write(tmp_path: Path, name: str, body: str) -> Path:
    f = tmp_path / name
    f.write_text("#include <shmpamt/kernel.h>\n" + textwrap.dedent(body))
    return f


# --------------------------------------------------------------------------
# the header


def test_header_constants_match_tdx_py() -> None:
    text = (INCLUDE_DIR / "shmpamt" / "kernel.h").read_text()
    defines = dict(re.findall(r"^#define (TD[HX]_\w+) (0x[0-9A-F]+|\d+)(?:ULL)?$", text, re.M))
    assert len(defines) >= 15
    for name, value in defines.items():
        assert int(value, 0) == getattr(tdx, name), name


# --------------------------------------------------------------------------
# in-process: the twins against their Python originals under scripted races

Trace = tuple[object, ...]


def _scenario(variant: str, inject_at: tuple[str, int] | None, b_puts: bool) -> Trace:
    """CPU A gets, re-gets and puts twice; CPU B gets (and puts) just before A's chosen step."""
    v = load_variant(variant)()
    rc = RefcountArray.create(2, initial=v.initial_refcount)
    lock = PamtLock.create()
    try:
        rig = Rig(v, rc, lock)
        s = Script()
        ka, kb = rig.kernel(0, s), rig.kernel(1, s)
        a, b = page_hpa(0, 0), page_hpa(0, 1)
        results: list[int] = []

        def cpu_b() -> None:
            results.append(rig.get(kb, b))
            if b_puts and results[-1] == 0:
                rig.put(kb, b)

        if inject_at is not None:
            s.at(*inject_at, cpu_b)
        results.append(rig.get(ka, a))
        results.append(rig.get(ka, a))
        rig.put(ka, a)
        rig.put(ka, a)
        calls = [(c.leaf, c.range_, c.status) for c in rig.module.calls]
        return (
            tuple(results),
            tuple(s.ops),
            tuple(calls),
            tuple(rc.snapshot()),
            ka.warnings + kb.warnings,
            frozenset(rig.pool.allocated),
        )
    finally:
        rc.close()
        lock.close()


def _points(variant: str) -> list[tuple[str, int]]:
    """Every (op, nth) scheduling point CPU A passes alone without holding pamt_lock.

    B runs inside A's hook on the same thread, so it could never take a lock A holds.
    """
    alone = _scenario(variant, None, False)
    seen: dict[str, int] = {}
    points = []
    held = False
    for op, _, _ in alone[1]:  # type: ignore[attr-defined]
        seen[op] = seen.get(op, 0) + 1
        if not held:
            points.append((op, seen[op]))
        held = (held or op == "spin_lock") and op != "spin_unlock"
    return points


@pytest.mark.parametrize("variant", TWINS)
def test_twin_matches_python_at_every_interleaving_point(variant: str) -> None:
    points = _points(variant)
    assert points == _points(f"{variant}.c")
    for point in points:
        for b_puts in (False, True):
            py = _scenario(variant, point, b_puts)
            c = _scenario(f"{variant}.c", point, b_puts)
            assert c == py, f"{variant}.c differs from {variant} with B injected at {point}"


def test_no_python_between_c_atomics_without_a_hook() -> None:
    """Free-running fast path: the C atomics never call back into Kernel.atomic_*."""
    v = load_variant("rfc.c")()
    rc = RefcountArray.create(1)
    lock = PamtLock.create()
    try:
        rig = Rig(v, rc, lock)
        k = rig.kernel()
        calls: list[str] = []
        for name in ("atomic_read", "atomic_inc_not_zero", "atomic_dec_and_test"):
            real = getattr(k, name)

            def spy(*args: int, _real: Callable[..., object] = real, _n: str = name) -> object:
                calls.append(_n)
                return _real(*args)

            setattr(k, name, spy)
        hpa = page_hpa(0, 0)
        assert v.tdx_pamt_get(k, hpa) == 0  # slow path: ADD
        before = len(calls)
        for _ in range(100):
            assert v.tdx_pamt_get(k, hpa) == 0
            v.tdx_pamt_put(k, hpa)
        assert len(calls) == before == 0
        assert rc.read(0) == 1
        v.tdx_pamt_put(k, hpa)
        assert rc.read(0) == 0 and not rig.module.pamt
    finally:
        rc.close()
        lock.close()


def _words(n: int) -> RefcountArray:
    """Stand-ins for the CPU board's stop and iterations words."""
    return RefcountArray.create(n)


def test_pair_loop_runs_get_and_put_in_c_and_counts_every_pair() -> None:
    """Protocol-only stress of a C variant: the whole round loop stays in C."""
    v = load_variant("rfc.c")()
    rc = RefcountArray.create(2)
    lock = PamtLock.create()
    words = _words(2)  # [stop, iterations]
    try:
        rig = Rig(v, rc, lock)
        k = rig.kernel()
        calls: list[str] = []
        real_lock = k.spin_lock

        def spy_lock() -> None:
            calls.append("spin_lock")
            real_lock()

        k.spin_lock = spy_lock  # type: ignore[method-assign]
        pages = [page_hpa(0, 0), page_hpa(1, 0)]
        loop = PairLoop(v, k, pages, words.address(0), words.address(1), seed=7)
        assert loop.run(1000) == (1000, 0, 0)
        # Invariant: every completed pair was counted where the runner reads progress.
        assert words.read(1) == 1000
        # Each pair took the slow path (the range was idle): the lock went through Python.
        assert calls.count("spin_lock") == 2 * 1000
        assert rc.snapshot() == [0, 0] and not rig.module.pamt
        words.set(0, 1)  # the runner's stop word ends the loop before the next pair
        assert loop.run(1000) == (0, 0, 0)
    finally:
        words.close()
        rc.close()
        lock.close()


def test_pair_loop_hands_a_failed_get_back_with_its_page(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        "eio.c",
        """
        static int tdx_pamt_get(struct page *page)
        {
        \treturn page_to_phys(page) >= SZ_2M ? -EIO : 0;
        }
        static void tdx_pamt_put(struct page *page)
        {
        }
        """,
    )
    v = load_variant(str(f))()
    rc = RefcountArray.create(2)
    lock = PamtLock.create()
    words = _words(2)
    try:
        k = Rig(v, rc, lock).kernel()
        loop = PairLoop(
            v, k, [page_hpa(0, 0), page_hpa(1, 0)], words.address(0), words.address(1), 3
        )
        done, err, page = loop.run(10_000)
        assert err == -5 and page == page_hpa(1, 0)
        assert done == words.read(1) < 10_000
    finally:
        words.close()
        rc.close()
        lock.close()


def test_protocol_only_stress_of_a_c_variant_counts_and_stays_clean() -> None:
    r = shmpamt.stress("locked.c", iterations=3000, cpus=2, seed=1, use_page=False, hold_us=0)
    assert r.ok and not r.incidents
    assert r.raw.operations == 6000


def test_exception_in_a_hook_unwinds_the_c_code() -> None:
    """An explore abort raised at a scheduling point leaves C and reaches the caller intact."""

    class Abort(BaseException):
        pass

    v = load_variant("locked.c")()
    rc = RefcountArray.create(1)
    lock = PamtLock.create()
    try:
        rig = Rig(v, rc, lock)
        s = Script()

        def boom() -> None:
            raise Abort

        s.at("TDH.PHYMEM.PAMT.ADD", 1, boom)
        k = rig.kernel(0, s)
        with pytest.raises(Abort):
            v.tdx_pamt_get(k, page_hpa(0, 0))
        # The same context is usable afterwards.
        lock.release()
        s2 = Script()
        k2 = rig.kernel(1, s2)
        assert v.tdx_pamt_get(k2, page_hpa(0, 1)) == 0
    finally:
        rc.close()
        lock.close()


# --------------------------------------------------------------------------
# loading errors: one line


def test_syntax_error_is_one_line_naming_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "bad.c", "static int tdx_pamt_get(struct page *p)\n{\n\treturn 0\n}\n")
    with pytest.raises(VariantLoadError) as e:
        load_variant("bad.c")
    msg = str(e.value)
    assert "\n" not in msg
    assert re.fullmatch(r"variant file bad\.c does not compile: bad\.c:4: expected ';' .*", msg)
    with pytest.raises(ValueError, match=r"bad\.c:4:"):
        shmpamt.stress("bad.c", iterations=1)


def test_missing_function_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "half.c", "static int tdx_pamt_get(struct page *p)\n{\n\treturn 0;\n}\n")
    with pytest.raises(VariantLoadError, match=r"^variant file half\.c does not define "):
        load_variant("half.c")
    with pytest.raises(VariantLoadError, match=r"does not define mine_tdx_pamt_get\(\)$"):
        load_variant("half.c:mine")
    with pytest.raises(VariantLoadError, match=r"^variant file gone\.c does not exist$"):
        load_variant("gone.c")


# --------------------------------------------------------------------------
# the real machinery


@pytest.mark.parametrize("variant", ["rfc", "kai", "v4"])
def test_explore_gives_same_verdict_and_schedule(variant: str) -> None:
    kw = {"strategy": "random", "executions": 40, "seed": 5, "minimize": False}
    py = shmpamt.explore(variant, **kw)  # type: ignore[arg-type]
    c = shmpamt.explore(f"{variant}.c", **kw)  # type: ignore[arg-type]
    assert c.verdict == py.verdict
    assert [Schedule.parse(s).steps for s in c.schedules] == [
        Schedule.parse(s).steps for s in py.schedules
    ]


@pytest.mark.parametrize("variant", ["rfc", "kai"])
def test_replayed_schedule_gives_the_same_trace(variant: str) -> None:
    found = shmpamt.explore(variant, strategy="pct", executions=200, seed=3)
    assert found.schedules, f"{variant} should fail within 200 executions"
    schedule = Schedule.parse(found.schedules[0])
    traces = []
    for name in (variant, f"{variant}.c"):
        s = dataclasses.replace(schedule, variant=name)
        with Session(Scenario.of(s)) as session:
            ex = session.replay(s)
        traces.append(([(e.cpu, e.op, e.target, e.before, e.after, e.result) for e in ex.trace],
                       [getattr(v, "name", v) for v in ex.violations]))  # fmt: skip
    assert traces[0] == traces[1]
    replayed = shmpamt.replay(dataclasses.replace(schedule, variant=f"{variant}.c").encode())
    assert found.findings[0].kind in replayed.verdict


@pytest.mark.parametrize("variant", ["rfc", "kai", "locked", "v4", "v6", "v6-locked"])
def test_every_twin_takes_the_same_steps_under_random_schedules(variant: str) -> None:
    """Same scheduler seed, same workload: the C twin's trace equals the Python one's."""
    traces = []
    for name in (variant, f"{variant}.c"):
        with Session(Scenario(name)) as session:
            runs = []
            sched = RandomWalk(seed=7, max_executions=5)
            while sched.new_execution():
                ex = session.execute(sched)
                runs.append(
                    [(e.cpu, e.op, e.target, e.before, e.after, e.result) for e in ex.trace]
                )
            traces.append(runs)
    # Invariant: the twins are the same protocol, step for step and value for value.
    assert traces[0] == traces[1]


def test_stress_runs_a_c_twin() -> None:
    r = shmpamt.stress("locked.c", iterations=200, cpus=2, seed=1)
    assert r.ok and not r.incidents
    assert r.raw.operations == 400


def test_segfault_in_put_is_an_incident_naming_the_cpu(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        "crash.c",
        """
        static DEFINE_SPINLOCK(pamt_lock);
        static int tdx_pamt_get(struct page *page)
        {
        \tatomic_inc(tdx_get_pamt_refcount(page_to_phys(page)));
        \treturn 0;
        }
        static void tdx_pamt_put(struct page *page)
        {
        \tstruct page *volatile none = NULL;
        \tvolatile u64 hpa;
        \tatomic_dec(tdx_get_pamt_refcount(page_to_phys(page)));
        \thpa = page_to_phys(none);
        \t(void)hpa;
        }
        """,
    )
    r = shmpamt.stress(str(f), iterations=5, cpus=2, seed=1)
    assert r.incidents
    assert any(re.search(r"\bcpu [01]\b", i) for i in r.incidents), r.incidents
    # the C runtime left its last words on the board: the fault, the function, the primitive
    assert any("SIGSEGV in tdx_pamt_put" in i and "last primitive" in i for i in r.incidents), (
        r.incidents
    )


def test_crash_note_names_cpu_function_and_last_primitive(tmp_path: Path) -> None:
    """In a process that arms a buffer, a fault leaves a note there (and on stderr)."""
    f = _write(
        tmp_path,
        "crash.c",
        """
        static int tdx_pamt_get(struct page *page) { return 0; }
        static void tdx_pamt_put(struct page *page)
        {
        \tstruct page *volatile none = NULL;
        \tvolatile u64 hpa;
        \tatomic_dec_and_test(tdx_get_pamt_refcount(page_to_phys(page)));
        \thpa = page_to_phys(none);
        \t(void)hpa;
        }
        """,
    )
    note = tmp_path / "note.bin"
    note.write_bytes(bytes(240))
    script = textwrap.dedent(
        f"""
        import mmap, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_variants import Rig
        from shmpamt.machine.atomic import RefcountArray
        from shmpamt.machine.lock import PamtLock
        from shmpamt.variants.cvariant import arm_crash_report
        from shmpamt.variants.registry import load_variant
        v = load_variant({str(f)!r})()
        with open({str(note)!r}, "r+b") as fh:
            buf = mmap.mmap(fh.fileno(), 240)
        arm_crash_report(memoryview(buf), 3)
        rc = RefcountArray.create(1, initial=1)
        lock = PamtLock.create()
        k = Rig(v, rc, lock).kernel(3)
        try:
            v.tdx_pamt_put(k, 0)
        finally:
            rc.close()
            lock.close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    # The crashed process could not unlink its segments: do it for it.
    for n in os.listdir("/dev/shm"):
        p = parse_name(n)
        if p is not None and p.pid == proc.pid:
            os.unlink(os.path.join("/dev/shm", n))
    assert proc.returncode == -11, stderr
    raw = note.read_bytes()
    text = raw[2 : 2 + int.from_bytes(raw[:2], "little")].decode()
    assert text == (
        "cpu 3: C variant crash.c crashed: SIGSEGV in tdx_pamt_put,"
        " last primitive atomic_dec_and_test on refcount 0"
    )
    assert text in stderr


def test_kernel_words_are_the_refcount_array() -> None:
    rc = RefcountArray.create(3)
    lock = PamtLock.create()
    try:
        k = Kernel(0, rc, lock, None, None)  # type: ignore[arg-type]
        addr, n = k.refcount_words()
        assert n == 3 and addr == rc.segment.address
        assert not k.hooked
    finally:
        rc.close()
        lock.close()
