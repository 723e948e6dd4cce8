"""Kernel ``atomic_t`` operations on a shared-memory array, done by hardware atomics.

Each slot is a signed 32-bit word. Value-returning read-modify-writes are one
``lock``-prefixed instruction (fetch-add) or a compare-and-exchange loop on the
shared word, executed by the ``atomics`` package's native library (patomic).
We call patomic's function pointers through cffi rather than through
``atomics``' public objects: the operation is the same instruction, but the
public wrapper costs microseconds per call, which would hide every race.

``atomic_read``/``atomic_set`` are plain aligned 32-bit loads and stores, as in
the kernel (READ_ONCE/WRITE_ONCE); on x86 they are single-copy atomic.
"""

from __future__ import annotations

import ctypes
import os
import threading
from array import array
from typing import Any, Final

import cffi
from atomics._impl.patomic import Patomic

from shmpamt.errors import IpcError
from shmpamt.machine.ipc import Segment, make_name

SEQ_CST: Final = 5  # patomic memory order: sequentially consistent
INT_MIN: Final = -(2**31)
INT_MAX: Final = 2**31 - 1
KIND_REFCOUNTS: Final = 0x52430001
SLOT_BYTES: Final = 4
MAX_SLOTS: Final = 1 << 20

_ffi = cffi.FFI()


def _fnptr(fp: Any, sig: str) -> Any:
    addr = ctypes.cast(fp, ctypes.c_void_p).value
    if not addr:
        raise RuntimeError(f"patomic has no lock-free 32-bit operation for {sig}")
    return _ffi.cast(sig, addr)


_ops = Patomic.ops(SLOT_BYTES)
# void fetch_add(obj, &arg, order, &ret)
_fa_ptr: Final = _fnptr(_ops.signed_ops.fp_fetch_add, "void(*)(int32_t*, int32_t*, int, int32_t*)")
# int cmpxchg_strong(obj, &expected, &desired, succ, fail): writes the seen value to expected
_cx_ptr: Final = _fnptr(
    _ops.xchg_ops.fp_cmpxchg_strong, "int(*)(int32_t*, int32_t*, int32_t*, int, int)"
)


def wrap32(v: int) -> int:
    """Two's-complement wrap of a Python int to the atomic_t range."""
    return ((v + 2**31) & 0xFFFFFFFF) - 2**31


class _AbiBackend:
    """patomic called through libffi: portable, ~4x slower than the shim.

    Used only where the compiled shim is missing; the loops are the same as
    the shim's C loops, so both are checked by the same reference-model tests.
    """

    name = "cffi-abi"

    def __init__(self) -> None:
        # patomic takes its operands by pointer; the scratch words must be per thread,
        # since the daemon's mailbox threads call these at the same time.
        self._tls = threading.local()

    @property
    def _c(self) -> Any:
        try:
            return self._tls.c
        except AttributeError:
            self._tls.c = _ffi.new("int32_t[2]")  # expected/old, desired/arg
            self._tls.r = _ffi.new("int32_t*")
            return self._tls.c

    @property
    def _r(self) -> Any:
        self._c  # noqa: B018  (creates this thread's scratch words)
        return self._tls.r

    def read(self, p: Any) -> int:
        return int(p[0])

    def set(self, p: Any, v: int) -> None:
        p[0] = v

    def fetch_add(self, p: Any, a: int) -> int:
        c, r = self._c, self._r
        c[1] = a
        _fa_ptr(p, c + 1, SEQ_CST, r)
        return int(r[0])

    def cmpxchg(self, p: Any, old: int, new: int) -> int:
        c = self._c
        c[0] = old
        c[1] = new
        _cx_ptr(p, c, c + 1, SEQ_CST, SEQ_CST)
        return int(c[0])

    def _loop(self, p: Any, stop: Any, step: int) -> bool:
        c = self._c
        v = int(p[0])
        c[0] = v
        while not stop(v):
            c[1] = wrap32(v + step)
            if _cx_ptr(p, c, c + 1, SEQ_CST, SEQ_CST):
                return True
            v = int(c[0])
        return False

    def add_unless(self, p: Any, a: int, u: int) -> bool:
        return self._loop(p, lambda v: v == u, a)

    def inc_not_zero(self, p: Any) -> bool:
        return self._loop(p, lambda v: v == 0, 1)

    def inc_unless_negative(self, p: Any) -> bool:
        return self._loop(p, lambda v: v < 0, 1)

    def dec_unless_positive(self, p: Any) -> bool:
        return self._loop(p, lambda v: v > 0, -1)

    def dec_if_positive(self, p: Any) -> int:
        c = self._c
        v = int(p[0])
        c[0] = v
        while True:
            d = wrap32(v - 1)
            if d < 0:
                return d
            c[1] = d
            if _cx_ptr(p, c, c + 1, SEQ_CST, SEQ_CST):
                return d
            v = int(c[0])


def _load_backend() -> Any:
    if os.environ.get("SHMPAMT_ATOMICS_BACKEND") == "abi":
        return _AbiBackend()
    try:
        from shmpamt import _atomic_shim
    except ImportError:
        return _AbiBackend()
    lib = _atomic_shim.lib
    lib.shim_init(int(_ffi.cast("uintptr_t", _fa_ptr)), int(_ffi.cast("uintptr_t", _cx_ptr)))

    class _Shim:
        name = "cffi-api-shim"
        read = lib.shim_read
        set = lib.shim_set
        fetch_add = lib.shim_fetch_add
        cmpxchg = lib.shim_cmpxchg
        add_unless = lib.shim_add_unless
        inc_not_zero = lib.shim_inc_not_zero
        inc_unless_negative = lib.shim_inc_unless_negative
        dec_unless_positive = lib.shim_dec_unless_positive
        dec_if_positive = lib.shim_dec_if_positive

    return _Shim()


_backend: Final = _load_backend()
BACKEND: Final[str] = _backend.name
_read = _backend.read
_set = _backend.set
_fadd = _backend.fetch_add
_cmpxchg = _backend.cmpxchg
_add_unless = _backend.add_unless
_inc_not_zero = _backend.inc_not_zero
_inc_unless_negative = _backend.inc_unless_negative
_dec_unless_positive = _backend.dec_unless_positive
_dec_if_positive = _backend.dec_if_positive


class RefcountArray:
    """N ``atomic_t`` slots in a named shared-memory segment.

    ``create`` makes a new segment (this process unlinks it on ``close``);
    ``attach`` opens an existing one by name from any process.
    """

    def __init__(self, segment: Segment, offset: int = 0, n: int | None = None) -> None:
        """View ``n`` slots of ``segment`` starting ``offset`` bytes into its payload."""
        if offset % SLOT_BYTES or offset < 0:
            raise ValueError("offset must be a non-negative multiple of 4")
        avail = (segment.payload_size - offset) // SLOT_BYTES
        if n is None:
            if (segment.payload_size - offset) % SLOT_BYTES:
                raise IpcError(f"{segment.name}: payload is not a whole number of atomic_t slots")
            n = avail
        if not 0 < n <= avail:
            raise IpcError(f"{segment.name}: {n} slots do not fit at offset {offset}")
        self.segment = segment
        self.name = segment.name
        self._n = n
        base = _ffi.cast("int32_t*", segment.address + offset)
        self._base = base
        self._slots: list[Any] = [base + i for i in range(n)]
        self._offset = offset
        self._owns_segment = offset == 0 and n * SLOT_BYTES == segment.payload_size

    @classmethod
    def over(cls, segment: Segment, offset: int, n: int) -> RefcountArray:
        """Atomic words inside a segment that also holds other data (logs, mailboxes)."""
        arr = cls(segment, offset, n)
        arr._owns_segment = False
        return arr

    @classmethod
    def create(cls, n: int, name: str | None = None, initial: int = 0) -> RefcountArray:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SLOTS:
            raise ValueError(f"slot count must be an int in 1..{MAX_SLOTS}, got {n!r}")
        seg = Segment.create(name or make_name("refcounts"), KIND_REFCOUNTS, n * SLOT_BYTES)
        arr = cls(seg)
        if initial:
            for i in range(n):
                arr.set(i, initial)
        return arr

    @classmethod
    def attach(cls, name: str, n: int | None = None) -> RefcountArray:
        seg = Segment.attach(name, KIND_REFCOUNTS, None if n is None else n * SLOT_BYTES)
        return cls(seg)

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        self._n = 0
        self._slots = []
        self._base = None
        if self._owns_segment:
            self.segment.close()

    def __enter__(self) -> RefcountArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bad(self, i: object) -> Exception:
        if not self._slots:
            return ValueError(f"refcount array {self.name} is closed")
        if isinstance(i, bool) or not isinstance(i, int):
            return TypeError(f"refcount index must be an int, got {type(i).__name__}")
        return IndexError(f"refcount index {i} out of range 0..{self._n - 1}")

    # -- plain accesses (READ_ONCE / WRITE_ONCE) --------------------------
    # Each method checks the index inline: the hot path is one comparison,
    # one list index and one native call.

    def read(self, i: int) -> int:
        if 0 <= i < self._n:
            return int(_read(self._slots[i]))
        raise self._bad(i)

    def set(self, i: int, v: int) -> None:
        if 0 <= i < self._n:
            _set(self._slots[i], wrap32(v))
            return
        raise self._bad(i)

    def fill(self, v: int) -> None:
        """Every slot to ``v`` in one copy, with plain stores: only for resets while no
        other process touches the array (every CPU parked between executions). Word by
        word through the binding costs a microsecond per slot."""
        if not self._slots:
            raise self._bad(0)
        _ffi.memmove(self._base, array("i", [wrap32(v)]) * self._n, self._n * SLOT_BYTES)

    def view(self) -> memoryview:
        """The slots as a typed view: plain loads (READ_ONCE) at a fraction of a call's
        cost through the binding, for a reader that runs alone (an explore CPU);
        ``release`` it before ``close``, which cannot unmap an exported view."""
        if not self._slots:
            raise self._bad(0)
        return self.segment.payload[self._offset : self._offset + self._n * SLOT_BYTES].cast("i")

    def address(self, i: int) -> int:
        """Where slot ``i`` lives in this process, for C code that updates it directly."""
        if 0 <= i < self._n:
            return int(_ffi.cast("uintptr_t", self._slots[i]))
        raise self._bad(i)

    def snapshot(self) -> list[int]:
        """Every slot, read in one call (aligned 32-bit loads, each untorn, as ``read``);
        like any multi-slot read it is a consistent whole only while nobody writes."""
        return list(_ffi.unpack(self._base, self._n))

    # -- fetch-add family: one lock xadd -----------------------------------

    def fetch_add(self, i: int, a: int) -> int:
        if 0 <= i < self._n:
            return int(_fadd(self._slots[i], wrap32(a)))
        raise self._bad(i)

    def add(self, i: int, a: int) -> None:
        self.fetch_add(i, a)

    def inc(self, i: int) -> None:
        if 0 <= i < self._n:
            _fadd(self._slots[i], 1)
            return
        raise self._bad(i)

    def dec(self, i: int) -> None:
        if 0 <= i < self._n:
            _fadd(self._slots[i], -1)
            return
        raise self._bad(i)

    def inc_return(self, i: int) -> int:
        if 0 <= i < self._n:
            return wrap32(_fadd(self._slots[i], 1) + 1)
        raise self._bad(i)

    def dec_return(self, i: int) -> int:
        if 0 <= i < self._n:
            return wrap32(_fadd(self._slots[i], -1) - 1)
        raise self._bad(i)

    def dec_and_test(self, i: int) -> bool:
        # old == 1 <=> new == 0
        if 0 <= i < self._n:
            return bool(_fadd(self._slots[i], -1) == 1)
        raise self._bad(i)

    # -- compare-and-exchange family ---------------------------------------

    def cmpxchg(self, i: int, old: int, new: int) -> int:
        """Returns the value the word held (== old iff it stored new)."""
        if 0 <= i < self._n:
            return int(_cmpxchg(self._slots[i], wrap32(old), wrap32(new)))
        raise self._bad(i)

    def add_unless(self, i: int, a: int, u: int) -> bool:
        if 0 <= i < self._n:
            return bool(_add_unless(self._slots[i], wrap32(a), wrap32(u)))
        raise self._bad(i)

    def inc_not_zero(self, i: int) -> bool:
        if 0 <= i < self._n:
            return bool(_inc_not_zero(self._slots[i]))
        raise self._bad(i)

    def inc_unless_negative(self, i: int) -> bool:
        if 0 <= i < self._n:
            return bool(_inc_unless_negative(self._slots[i]))
        raise self._bad(i)

    def dec_unless_positive(self, i: int) -> bool:
        if 0 <= i < self._n:
            return bool(_dec_unless_positive(self._slots[i]))
        raise self._bad(i)

    def dec_if_positive(self, i: int) -> int:
        """Returns old - 1 whether or not it stored it (kernel semantics)."""
        if 0 <= i < self._n:
            return int(_dec_if_positive(self._slots[i]))
        raise self._bad(i)
