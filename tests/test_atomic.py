"""RefcountArray against a pure-Python model of the kernel's atomic_t operations."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmpamt.machine.atomic import BACKEND, INT_MAX, INT_MIN, RefcountArray, wrap32
from shmpamt.machine.ipc import IpcError, Segment, make_name

EDGES = [INT_MIN, INT_MIN + 1, -2, -1, 0, 1, 2, INT_MAX - 1, INT_MAX]
int32 = st.one_of(st.sampled_from(EDGES), st.integers(INT_MIN, INT_MAX))


class Model:
    """The kernel semantics, written as plainly as possible (semantics.md section 1)."""

    def __init__(self, v: int) -> None:
        self.v = v

    def apply(self, op: str, a: int, b: int) -> object:
        v = self.v
        match op:
            case "read":
                return v
            case "set":
                self.v = wrap32(a)
                return None
            case "inc" | "dec":
                self.v = wrap32(v + (1 if op == "inc" else -1))
                return None
            case "inc_return":
                self.v = wrap32(v + 1)
                return self.v
            case "dec_return":
                self.v = wrap32(v - 1)
                return self.v
            case "dec_and_test":
                self.v = wrap32(v - 1)
                return self.v == 0
            case "inc_not_zero":
                if v != 0:
                    self.v = wrap32(v + 1)
                return v != 0
            case "add_unless":
                if v != wrap32(b):
                    self.v = wrap32(v + a)
                return v != wrap32(b)
            case "inc_unless_negative":
                if v >= 0:
                    self.v = wrap32(v + 1)
                return v >= 0
            case "dec_unless_positive":
                if v <= 0:
                    self.v = wrap32(v - 1)
                return v <= 0
            case "dec_if_positive":
                d = wrap32(v - 1)
                if d >= 0:
                    self.v = d
                return d
            case "cmpxchg":
                if v == wrap32(a):
                    self.v = wrap32(b)
                return v
        raise AssertionError(op)


def call(arr: RefcountArray, op: str, a: int, b: int) -> object:
    match op:
        case "set":
            arr.set(0, a)
            return None
        case "add_unless":
            return arr.add_unless(0, a, b)
        case "cmpxchg":
            return arr.cmpxchg(0, a, b)
    return getattr(arr, op)(0)


OPS = [
    "read", "set", "inc", "dec", "inc_return", "dec_return", "dec_and_test", "inc_not_zero",
    "add_unless", "inc_unless_negative", "dec_unless_positive", "dec_if_positive", "cmpxchg",
]  # fmt: skip


@pytest.fixture(scope="module")
def arr() -> Iterator[RefcountArray]:
    a = RefcountArray.create(1)
    yield a
    a.close()


@settings(max_examples=300, deadline=None)
@given(start=int32, ops=st.lists(st.tuples(st.sampled_from(OPS), int32, int32), max_size=40))
def test_every_operation_matches_the_kernel_model(
    arr: RefcountArray, start: int, ops: list[tuple[str, int, int]]
) -> None:
    arr.set(0, start)
    model = Model(start)
    for op, a, b in ops:
        want = model.apply(op, a, b)
        got = call(arr, op, a, b)
        # Invariant: same return value and same resulting word as the kernel would give.
        assert got == want, (op, a, b)
        assert arr.read(0) == model.v, (op, a, b)


@pytest.mark.parametrize(
    ("start", "op", "ret", "after"),
    [
        (INT_MAX, "inc_return", INT_MIN, INT_MIN),
        (INT_MIN, "dec_return", INT_MAX, INT_MAX),
        (0, "dec_if_positive", -1, 0),  # returns old-1 even when it does not store
        (-5, "dec_if_positive", -6, -5),
        (1, "dec_if_positive", 0, 0),
        (INT_MIN, "dec_if_positive", INT_MAX, INT_MAX),  # int arithmetic wraps
        (0, "inc_not_zero", False, 0),
        (-1, "inc_not_zero", True, 0),
        (-1, "inc_unless_negative", False, -1),
        (INT_MAX, "inc_unless_negative", True, INT_MIN),
        (1, "dec_unless_positive", False, 1),
        (0, "dec_unless_positive", True, -1),
        (1, "dec_and_test", True, 0),
        (INT_MIN + 1, "dec_and_test", False, INT_MIN),
    ],
)
def test_edge_values(arr: RefcountArray, start: int, op: str, ret: object, after: int) -> None:
    arr.set(0, start)
    assert getattr(arr, op)(0) == ret
    assert arr.read(0) == after


def test_add_unless_and_cmpxchg_edges(arr: RefcountArray) -> None:
    arr.set(0, 1)
    assert arr.add_unless(0, -1, 1) is False and arr.read(0) == 1
    assert arr.add_unless(0, -1, 0) is True and arr.read(0) == 0
    assert arr.cmpxchg(0, 1, 7) == 0 and arr.read(0) == 0
    assert arr.cmpxchg(0, 0, -7) == 0 and arr.read(0) == -7
    arr.set(0, INT_MAX)
    assert arr.add_unless(0, 1, 0) is True and arr.read(0) == INT_MIN


def test_index_and_type_errors(arr: RefcountArray) -> None:
    with pytest.raises(IndexError, match="out of range"):
        arr.inc(1)
    with pytest.raises(IndexError):
        arr.read(-1)  # no Python negative-index wrap-around
    with pytest.raises(TypeError):
        arr.read("0")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RefcountArray.create(0)


def test_attach_by_name_shares_the_words() -> None:
    with RefcountArray.create(3, initial=-1) as a:
        b = RefcountArray.attach(a.name, 3)
        try:
            b.inc(2)
            assert a.snapshot() == [-1, -1, 0]
        finally:
            b.close()


def test_attach_errors_are_clear() -> None:
    with pytest.raises(IpcError, match="no shared memory segment"):
        RefcountArray.attach(make_name("refcounts"))
    with RefcountArray.create(4) as a, pytest.raises(IpcError, match="payload"):
        RefcountArray.attach(a.name, 5)
    with Segment.create(make_name("other"), 0x1234, 16) as s, pytest.raises(IpcError, match="kind"):
        RefcountArray.attach(s.name)


def test_attach_refuses_foreign_bytes() -> None:
    import posix_ipc

    name = make_name("foreign")
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
    try:
        with pytest.raises(IpcError, match="no shmpamt header"):
            RefcountArray.attach(name)
    finally:
        shm.close_fd()
        shm.unlink()


def test_segment_mode_is_0600() -> None:
    with RefcountArray.create(1) as a:
        st_mode = os.stat("/dev/shm/" + a.name.lstrip("/")).st_mode
        assert st_mode & 0o777 == 0o600


# --- cross-process exactness ------------------------------------------------

ROUNDS = 4000


def _hammer(name: str, worker: int, rounds: int) -> None:
    arr = RefcountArray.attach(name)
    try:
        for i in range(rounds):
            arr.inc(0)  # slot 0: pure inc/dec pairs -> returns to its start
            arr.dec(0)
            arr.inc(1)  # slot 1: counts every round
            if arr.inc_not_zero(2):  # slot 2 starts at 1, never reaches 0
                arr.dec(2)
            if arr.dec_if_positive(3) >= 0:  # slot 3: a token bucket
                arr.inc(3)
            arr.add_unless(4, 1, -1)  # slot 4: never hits -1 -> always adds
            arr.dec_and_test(5)  # slot 5: counts down
            _ = i
    finally:
        arr.close()


def test_cross_process_totals_are_exact() -> None:
    """Fails if any operation is a plain read-then-write instead of an atomic RMW."""
    workers = 4
    ctx = mp.get_context("spawn")
    with RefcountArray.create(6) as arr:
        arr.set(2, 1)
        arr.set(3, 2)
        procs = [ctx.Process(target=_hammer, args=(arr.name, w, ROUNDS)) for w in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        snap = arr.snapshot()
    # Invariant: the totals are exactly what the operations add up to.
    assert snap == [0, workers * ROUNDS, 1, 2, workers * ROUNDS, -workers * ROUNDS]


def test_abi_backend_passes_the_same_model() -> None:
    """The libffi fallback backend must give identical results to the shim."""
    code = (
        "from shmpamt.machine.atomic import RefcountArray, BACKEND\n"
        "assert BACKEND == 'cffi-abi', BACKEND\n"
        "a = RefcountArray.create(1)\n"
        "a.set(0, 0); assert a.dec_if_positive(0) == -1 and a.read(0) == 0\n"
        "a.set(0, -1); assert a.inc_not_zero(0) and a.read(0) == 0\n"
        "assert not a.inc_not_zero(0) and a.inc_unless_negative(0) and a.read(0) == 1\n"
        "assert a.dec_and_test(0) and a.cmpxchg(0, 0, 5) == 0 and a.read(0) == 5\n"
        "a.set(0, 2**31 - 1); assert a.inc_return(0) == -2**31\n"
        "assert not a.add_unless(0, 1, -2**31) and a.dec_unless_positive(0)\n"
        "a.close()\n"
    )
    env = dict(os.environ, SHMPAMT_ATOMICS_BACKEND="abi")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_fast_backend_is_in_use() -> None:
    # The benchmark targets assume the compiled shim; the ABI path is a fallback.
    assert BACKEND == "cffi-api-shim"


def test_abi_backend_is_thread_safe() -> None:
    """The daemon's mailbox threads share one backend: each thread's cmpxchg results are
    its own (shared scratch words gave ~410 wrong results per 100k calls)."""
    code = (
        "import threading\n"
        "from shmpamt.machine.atomic import RefcountArray, BACKEND; assert BACKEND == 'cffi-abi'\n"
        "a = RefcountArray.create(4)\n"
        "wrong = [0] * 4\n"
        "def work(i):\n"
        "    for n in range(25_000):\n"
        "        # slot i is this thread's alone: every cmpxchg must see its own last value\n"
        "        if a.cmpxchg(i, n, n + 1) != n or a.fetch_add(i, 0) != n + 1:\n"
        "            wrong[i] += 1\n"
        "ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "a.close()\n"
        "print(sum(wrong))\n"
    )
    env = dict(os.environ, SHMPAMT_ATOMICS_BACKEND="abi")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # Invariant: no thread ever reads another thread's operands.
    assert r.stdout.strip() == "0", r.stdout


def test_fill_sets_every_slot_and_only_those() -> None:
    with Segment.create(make_name("filltest"), 0x46494C4C, 6 * 4) as seg:
        whole = RefcountArray.over(seg, 0, 6)
        inner = RefcountArray.over(seg, 4, 4)  # slots 1..4 of the segment
        for i in range(6):
            whole.set(i, 7)
        inner.fill(-1)
        assert whole.snapshot() == [7, -1, -1, -1, -1, 7]
        inner.fill(INT_MAX + 1)  # stored as an atomic_t would store it
        assert inner.snapshot() == [INT_MIN] * 4
        inner.close()
        with pytest.raises(ValueError, match="closed"):
            inner.fill(0)
        whole.close()


def test_view_loads_what_the_atomics_store() -> None:
    """The typed view an explore CPU reads instead of calling through the binding."""
    arr = RefcountArray.create(4)
    try:
        view = arr.view()
        arr.set(1, -1)
        arr.inc(2)
        arr.cmpxchg(3, 0, INT_MIN)
        assert view.tolist() == [0, -1, 1, INT_MIN]
        assert len(view) == len(arr)
        view.release()
    finally:
        arr.close()
    with pytest.raises(ValueError, match="closed"):
        arr.view()
