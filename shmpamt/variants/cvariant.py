"""A variant written in C: the compiled helpers behind the usual PamtVariant interface.

The C code runs with a per-Kernel context (``struct shmpamt_ctx``): the
refcount array's address, the atomic shim's function pointers and a handle on
a :class:`_Bridge`. Without a hook the atomics run in C on the shared words;
with one (explore, chaos) every atomic, like every lock, page and SEAMCALL
primitive always, calls back into the very :class:`Kernel` method a Python
variant would call, so scheduling points and traces are the same.

A Python exception raised inside a callback (an explore abort, a module
failure) cannot cross C frames: the callback stores it, the C side longjmps
back to its entry point, and :meth:`CVariant._raise` re-raises it here.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Final

from shmpamt import tdx
from shmpamt.errors import VariantLoadError
from shmpamt.machine.atomic import BACKEND
from shmpamt.machine.kernel import POOL_BASE, Kernel
from shmpamt.variants import cbuild
from shmpamt.variants.base import CachedPamtVariant, PamtCache, PamtVariant

_U64: Final = (1 << 64) - 1

#: shim function -> field of struct shmpamt_atomic_ops
_SHIM_OPS: Final = (
    "fetch_add",
    "cmpxchg",
    "add_unless",
    "inc_not_zero",
    "inc_unless_negative",
    "dec_unless_positive",
    "dec_if_positive",
)


class CVariantBug(RuntimeError):
    """The C code broke the rig's rules (BUG_ON, an atomic_t that is no refcount)."""


def _signed64(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v >> 63 else v


OpFn = Callable[[int, int, int], int]


class _Bridge:
    """One Kernel as the C code sees it: its context and the Python ends of the callbacks."""

    def __init__(self, module: ModuleType, k: Kernel, label: str) -> None:
        ffi, lib = module.ffi, module.lib
        self.k = k
        self.label = label
        self.pending: BaseException | None = None
        self.handle = ffi.new_handle(self)
        address, n = k.refcount_words()
        ctx = ffi.new("struct shmpamt_ctx *")
        ctx.refcounts = ffi.cast("int32_t *", address)
        ctx.nr_refcounts = n
        ctx.ops = _native_ops(module)
        ctx.handle = self.handle
        layout = k.pool_layout
        ctx.pool_base = POOL_BASE
        ctx.pool_pages = layout.npages
        ctx.pool_stride = layout.stride
        ctx.pool_ranges = layout.ranges
        ctx.pool_rows = layout.rows
        ctx.cpu = k.cpu
        ctx.last_op = -1
        ctx.last_target = -1
        ctx.hooked = int(k.hooked)
        self.ctx = ctx
        self.entry_get = lib.shmpamt_entry_get
        self.entry_put = lib.shmpamt_entry_put
        self.entry_topup = lib.shmpamt_entry_topup
        self.entry_free_cache = lib.shmpamt_entry_free_cache
        self.null = ffi.NULL
        self.table = self._table(lib)

    def _table(self, lib: Any) -> list[OpFn]:
        k = self.k

        def remove(hpa_ps: int, _a: int, _b: int) -> int:
            pages: list[int] = []
            err = k.tdh_phymem_pamt_remove(hpa_ps, pages)
            pages += [0, 0]
            # The two pages travel back in the context; the status is the result.
            self.ctx.out1, self.ctx.out2 = pages[0], pages[1]
            return _signed64(err)

        def atomic_set(v: int, a: int, _b: int) -> int:
            k.atomic_set(v, a)
            return 0

        def atomic_inc(v: int, _a: int, _b: int) -> int:
            k.atomic_inc(v)
            return 0

        def atomic_dec(v: int, _a: int, _b: int) -> int:
            k.atomic_dec(v)
            return 0

        def spin_lock(_v: int, _a: int, _b: int) -> int:
            k.spin_lock()
            return 0

        def spin_unlock(_v: int, _a: int, _b: int) -> int:
            k.spin_unlock()
            return 0

        def free_page(hpa: int, _a: int, _b: int) -> int:
            k.free_page(hpa)
            return 0

        fns: dict[str, OpFn] = {
            "atomic_read": lambda v, a, b: k.atomic_read(v),
            "atomic_set": atomic_set,
            "atomic_inc": atomic_inc,
            "atomic_dec": atomic_dec,
            "atomic_inc_return": lambda v, a, b: k.atomic_inc_return(v),
            "atomic_dec_return": lambda v, a, b: k.atomic_dec_return(v),
            "atomic_dec_and_test": lambda v, a, b: int(k.atomic_dec_and_test(v)),
            "atomic_inc_not_zero": lambda v, a, b: int(k.atomic_inc_not_zero(v)),
            "atomic_add_unless": lambda v, a, b: int(k.atomic_add_unless(v, a, b)),
            "atomic_inc_unless_negative": lambda v, a, b: int(k.atomic_inc_unless_negative(v)),
            "atomic_dec_unless_positive": lambda v, a, b: int(k.atomic_dec_unless_positive(v)),
            "atomic_dec_if_positive": lambda v, a, b: k.atomic_dec_if_positive(v),
            "atomic_cmpxchg": lambda v, a, b: k.atomic_cmpxchg(v, a, b),
            "spin_lock": spin_lock,
            "spin_unlock": spin_unlock,
            "alloc_page": lambda v, a, b: k.alloc_page() or 0,
            "free_page": free_page,
            "pamt_add": lambda hpa_ps, rdx, r8: _signed64(
                k.tdh_phymem_pamt_add(hpa_ps, [p for p in (rdx, r8) if p])
            ),
            "pamt_remove": remove,
        }
        table: list[OpFn | None] = [None] * len(cbuild.OPS)
        for op in cbuild.OPS:
            table[getattr(lib, f"SHMPAMT_OP_{op.upper()}")] = fns[op]
        # Invariant: every op code the C side can send has a handler.
        assert all(f is not None for f in table)
        return [f for f in table if f is not None]

    def fail(self, e: BaseException) -> None:
        """Keep ``e`` for the entry point to re-raise; C unwinds when the callback returns."""
        self.pending = e
        self.ctx.unwound = 1

    def message(self, kind: int, text: str, arg: int) -> None:
        """pr_err / WARN / pr_tdx_error / BUG from C."""
        k = self.k
        if kind == _MSG["pr_err"]:
            k.pr_err(text.rstrip("\n"))
        elif kind == _MSG["warn"]:
            k.WARN_ON_ONCE(True, text)
        elif kind == _MSG["tdx_error"]:
            k.pr_err(f"{text} failed: {tdx.status_name(arg)}")
        else:
            self.fail(CVariantBug(f"C variant {self.label}: {text}"))


_MSG: dict[str, int] = {}
_native_cache: dict[str, Any] = {}


def _native_ops(module: ModuleType) -> Any:
    """The shim's functions as a ``struct shmpamt_atomic_ops *``, or NULL without the shim."""
    ffi = module.ffi
    if BACKEND != "cffi-api-shim":
        return ffi.NULL
    ops = _native_cache.get(module.__name__)
    if ops is None:
        from shmpamt import _atomic_shim

        sffi, slib = _atomic_shim.ffi, _atomic_shim.lib
        ops = ffi.new("struct shmpamt_atomic_ops *")
        for field in _SHIM_OPS:
            addr = int(sffi.cast("uintptr_t", sffi.addressof(slib, f"shim_{field}")))
            setattr(ops, field, ffi.cast(ffi.typeof(getattr(ops, field)), addr))
        _native_cache[module.__name__] = ops
    return ops


def _install_callbacks(module: ModuleType) -> None:
    """Bind the module's extern "Python" callbacks (once per module and process)."""
    ffi, lib = module.ffi, module.lib
    if getattr(module, "_shmpamt_bound", False):
        return
    for m in cbuild.MESSAGES:
        _MSG[m] = getattr(lib, f"SHMPAMT_MSG_{m.upper()}")

    def shmpamt_py_op(handle: Any, op: int, a0: int, a1: int, a2: int) -> int:
        b: _Bridge = ffi.from_handle(handle)
        try:
            return b.table[op](a0, a1, a2)
        except BaseException as e:
            b.fail(e)
            return 0

    def shmpamt_py_msg(handle: Any, kind: int, text: Any, arg: int) -> None:
        b: _Bridge = ffi.from_handle(handle)
        try:
            b.message(kind, ffi.string(text).decode("utf-8", "replace"), arg)
        except BaseException as e:
            b.fail(e)

    ffi.def_extern(name="shmpamt_py_op")(shmpamt_py_op)
    ffi.def_extern(name="shmpamt_py_msg")(shmpamt_py_msg)
    module._shmpamt_bound = True  # type: ignore[attr-defined]
    _arm(module)


# -- the crash note ------------------------------------------------------------

_crash_buffer: Any = None  # the armed buffer (kept alive here), or None: stderr only
_crash_prefix = ""
_loaded: list[ModuleType] = []


def arm_crash_report(buffer: Any, cpu: int) -> None:
    """Where a C variant crash in this process is described, besides stderr.

    ``buffer``: a writable buffer (e.g. a memoryview of the CPU board's message
    slot) that receives, if the C code faults, a little-endian u16 length then
    UTF-8 text such as ``cpu 1: C variant helpers.c crashed: SIGSEGV in
    tdx_pamt_put, last primitive atomic_dec_and_test on refcount 0``; ``None``
    keeps stderr only. Call it in the CPU process, before or after loading.
    """
    global _crash_buffer, _crash_prefix
    _crash_buffer = buffer
    _crash_prefix = f"cpu {cpu}: "
    for module in _loaded:
        _arm(module)


def _arm(module: ModuleType) -> None:
    ffi, lib = module.ffi, module.lib
    label = getattr(module, "_shmpamt_label", "?")
    prefix = f"{_crash_prefix}C variant {label} crashed: ".encode()
    if _crash_buffer is None:
        lib.shmpamt_arm_crash(ffi.NULL, 0, prefix)
    else:
        buf = ffi.from_buffer(_crash_buffer, require_writable=True)
        module._shmpamt_crash_buf = buf  # type: ignore[attr-defined]
        lib.shmpamt_arm_crash(buf, len(buf), prefix)
    if module not in _loaded:
        _loaded.append(module)


# -- the variant class ---------------------------------------------------------


class CVariant(PamtVariant):
    """Base of the classes :func:`make_class` builds; ``_module`` is the compiled helpers."""

    _module: ClassVar[ModuleType]
    _label: ClassVar[str]

    def __init__(self) -> None:
        # Per-process and per-Kernel plumbing, not protocol state.
        self._bridges: weakref.WeakKeyDictionary[Kernel, _Bridge] = weakref.WeakKeyDictionary()
        self._last: _Bridge | None = None

    def _bridge(self, k: Kernel) -> _Bridge:
        # A Kernel's hook is fixed when it is built, so the bridge's is too.
        b = self._bridges.get(k)
        if b is None:
            b = self._bridges[k] = _Bridge(self._module, k, self._label)
            if not _crash_prefix:
                # Until the runner arms a buffer, at least stderr names the CPU.
                arm_crash_report(None, k.cpu)
        self._last = b
        return b

    def _raise(self, b: _Bridge) -> None:
        e, b.pending = b.pending, None
        b.ctx.unwound = 0
        assert e is not None
        raise e

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        b = self._last
        if b is None or b.k is not k:
            b = self._bridge(k)
        r: int = b.entry_get(b.ctx, page, b.null if cache is None else _c_cache(cache))
        if b.pending is not None:
            self._raise(b)
        return r

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        b = self._last
        if b is None or b.k is not k:
            b = self._bridge(k)
        b.entry_put(b.ctx, page)
        if b.pending is not None:
            self._raise(b)


class CPamtCache(PamtCache):
    """A C variant's ``struct tdx_pamt_cache``: its pages live in C (``c``), which
    the C helpers fill and drain; ``cnt`` reads the C struct."""

    def __init__(self, module: ModuleType) -> None:
        self.page_list = []  # unused: the list is the C struct's
        self.c = module.ffi.new("struct tdx_pamt_cache *")
        module.lib.shmpamt_entry_init_cache(self.c)

    @property
    def cnt(self) -> int:
        return int(self.c.cnt)

    @cnt.setter
    def cnt(self, value: int) -> None:
        self.c.cnt = value


def _c_cache(cache: PamtCache) -> Any:
    # Invariant: a C get is only handed caches its own class made.
    assert isinstance(cache, CPamtCache), "a C variant takes only its own caches"
    return cache.c


class CachedCVariant(CVariant, CachedPamtVariant):
    """A C variant whose get is v6's ``tdx_pamt_get(kvm_pfn_t, struct tdx_pamt_cache *)``."""

    def new_pamt_cache(self) -> PamtCache:
        return CPamtCache(self._module)

    def tdx_topup_pamt_cache(self, k: Kernel, cache: PamtCache, npages: int) -> int:
        b = self._last
        if b is None or b.k is not k:
            b = self._bridge(k)
        r: int = b.entry_topup(b.ctx, _c_cache(cache), npages)
        if b.pending is not None:
            self._raise(b)
        return r

    def tdx_free_pamt_cache(self, k: Kernel, cache: PamtCache) -> None:
        b = self._last
        if b is None or b.k is not k:
            b = self._bridge(k)
        b.entry_free_cache(b.ctx, _c_cache(cache))
        if b.pending is not None:
            self._raise(b)


class PairLoop:
    """Free-running, protocol-only rounds of a C variant with no Python between them.

    Under stress without a hook, faults or AUG/RECLAIM, a Python round is pure
    overhead around two C calls: here the get/put loop itself runs in C
    (``shmpamt_entry_pairs``), on pages drawn from ``pages`` (sampled by the
    caller with the workload's own distribution), counting into the CPU
    board's ``iterations`` word and watching its stop word.
    """

    def __init__(
        self,
        variant: CVariant,
        k: Kernel,
        pages: list[int],
        stop_address: int,
        iterations_address: int,
        seed: int,
    ) -> None:
        if not pages:
            raise ValueError("PairLoop needs at least one page")
        ffi = variant._module.ffi
        self._variant = variant
        self._bridge = variant._bridge(k)
        self._fn = variant._module.lib.shmpamt_entry_pairs
        self._pages = ffi.new("uint64_t[]", pages)
        self._npages = len(pages)
        self._stop = ffi.cast("int32_t *", stop_address)
        self._iterations = ffi.cast("int32_t *", iterations_address)
        self._out = ffi.new("uint64_t[3]")
        # xorshift64 must not start at zero
        self._out[2] = (seed & _U64) or 1

    def run(self, n: int) -> tuple[int, int, int]:
        """Up to ``n`` get+put pairs: (pairs completed, error of a failed get or 0, its page)."""
        b = self._bridge
        err: int = self._fn(
            b.ctx, self._pages, self._npages, n, self._stop, self._iterations, self._out
        )
        if b.pending is not None:
            self._variant._raise(b)
        return int(self._out[0]), err, int(self._out[1])


def make_class(src: cbuild.CSource, name: str, description: str = "") -> type[CVariant]:
    """Compile (or fetch from the cache) ``src`` and wrap it as a PamtVariant subclass."""
    module = cbuild.load(src)
    module._shmpamt_label = name  # type: ignore[attr-defined]
    _install_callbacks(module)
    lib = module.lib
    text = module.ffi.string(lib.shmpamt_description()).decode("utf-8", "replace")
    initial = int(lib.shmpamt_initial_refcount)
    api = int(lib.shmpamt_api())
    base: type[CVariant] = CVariant
    if api & lib.SHMPAMT_API_CACHE:
        for bit, fn in (
            (lib.SHMPAMT_API_TOPUP, src.topup_fn),
            (lib.SHMPAMT_API_FREE_CACHE, src.free_cache_fn),
        ):
            if not api & bit:
                raise VariantLoadError(
                    f"variant file {src.label}: {src.get_fn}() takes a struct tdx_pamt_cache "
                    f"but the file does not define {fn}()"
                )
        base = CachedCVariant
    attrs: dict[str, object] = {
        "name": name,
        "description": description or text or f"C variant from {src.label}",
        "initial_refcount": initial,
        "source": str(src.path),
        "_module": module,
        "_label": name,
        "__module__": __name__,
    }
    cls = type(f"CVariant_{module.__name__}", (base,), attrs)
    return cls


def source_of(spec: str, twins: dict[str, str]) -> cbuild.CSource | None:
    """The C source a spec names (``rfc.c``, ``path/x.c``, ``path/x.c:prefix``), or None."""
    if spec in twins:
        return cbuild.CSource(cbuild.TWINS_DIR / spec, spec, "")
    where, sep, prefix = spec.rpartition(":")
    if sep and where.endswith(".c"):
        if not prefix.isidentifier():
            raise VariantLoadError(f"variant {spec!r}: the prefix after ':' must be a C identifier")
        return cbuild.CSource(Path(where).resolve(), where, f"{prefix}_")
    if spec.endswith(".c"):
        return cbuild.CSource(Path(spec).resolve(), spec, "")
    return None


def name_of(src: cbuild.CSource) -> str:
    """A C variant's name: its file name, plus ``:prefix`` when one was given."""
    base = src.path.name
    return f"{base}:{src.prefix[:-1]}" if src.prefix else base


if sys.platform != "linux":  # pragma: no cover
    raise ImportError("C variants need Linux (POSIX signals, flock, a C compiler)")
