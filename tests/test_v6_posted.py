"""v6 as posted (05/11 + 06/11 + 08/11) and v6-locked (05/11): the pfn API, the PAMT
page cache, its top-up and free, the header that compiles the posted C, and the
check that a get with a topped-up cache never fails for lack of memory.

In-process checks use the fakes of test_variants; the rest drive the real
machinery (processes, daemon, shared memory) and are kept few.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_variants import RANGES, Rig, Script

import shmpamt
from shmpamt import tdx
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.kernel import POOL_BASE, page_hpa
from shmpamt.machine.lock import PamtLock
from shmpamt.records.results import VERIFIED
from shmpamt.records.violations import CACHE_GET_ENOMEM, GET_FAILED_TOPUP, Violation, describe
from shmpamt.variants.base import CachedPamtVariant, PamtCache
from shmpamt.variants.cbuild import INCLUDE_DIR
from shmpamt.variants.registry import VariantLoadError, load_variant

CACHED = ["v6", "v6.c", "v6-locked", "v6-locked.c"]
HERE = Path(__file__).resolve().parent


#: every C build of the session in one compile cache (see conftest.shared_c_cache)
pytestmark = pytest.mark.usefixtures("shared_c_cache")


@pytest.fixture
def rig_of() -> Iterator[object]:
    made: list[tuple[RefcountArray, PamtLock]] = []

    def make(spec: str) -> tuple[Rig, CachedPamtVariant]:
        v = load_variant(spec)()
        assert isinstance(v, CachedPamtVariant)
        rc = RefcountArray.create(RANGES, initial=v.initial_refcount)
        lock = PamtLock.create()
        made.append((rc, lock))
        return Rig(v, rc, lock), v

    yield make
    for rc, lock in made:
        rc.close()
        lock.close()


def _ops(s: Script, op: str) -> int:
    return sum(1 for o, _, _ in s.ops if o == op)


# --------------------------------------------------------------------------
# the cache, in-process


@pytest.mark.parametrize("spec", CACHED)
def test_topup_fills_for_n_gets_and_free_empties(spec: str, rig_of) -> None:  # type: ignore[no-untyped-def]
    rig, v = rig_of(spec)
    s = Script()
    k = rig.kernel(0, s)
    cache = v.new_pamt_cache()
    assert v.tdx_topup_pamt_cache(k, cache, 3) == 0
    assert cache.cnt == 3 * tdx.TDX_DPAMT_ENTRY_PAGE_CNT
    assert _ops(s, "alloc_page") == 6 and len(rig.pool.allocated) == 6
    # Already full: a second top-up allocates nothing.
    assert v.tdx_topup_pamt_cache(k, cache, 3) == 0
    assert _ops(s, "alloc_page") == 6
    v.tdx_free_pamt_cache(k, cache)
    assert cache.cnt == 0 and rig.pool.allocated == set()
    assert _ops(s, "free_page") == 6


@pytest.mark.parametrize("spec", CACHED)
def test_failed_topup_is_enomem_and_keeps_what_it_got(spec: str, rig_of) -> None:  # type: ignore[no-untyped-def]
    rig, v = rig_of(spec)
    calls = iter([False, True])
    k = rig.kernel(0, Script(), alloc_fails=lambda: next(calls))
    cache = v.new_pamt_cache()
    assert v.tdx_topup_pamt_cache(k, cache, 1) == -tdx.ENOMEM
    assert cache.cnt == 1 and len(rig.pool.allocated) == 1
    v.tdx_free_pamt_cache(k, cache)
    assert rig.pool.allocated == set()


@pytest.mark.parametrize("spec", CACHED)
def test_get_with_a_topped_up_cache_allocates_nothing(spec: str, rig_of) -> None:  # type: ignore[no-untyped-def]
    rig, v = rig_of(spec)
    s = Script()
    k = rig.kernel(0, s)
    cache = v.new_pamt_cache()
    assert v.tdx_topup_pamt_cache(k, cache, 1) == 0
    cached = set(rig.pool.allocated)
    before = _ops(s, "alloc_page")
    hpa = page_hpa(0, 0)
    # The page allocator fails from now on: only the cache can serve the get.
    k_failing = rig.kernel(0, s, alloc_fails=lambda: True)
    assert v.tdx_pamt_get(k_failing, hpa, cache) == 0
    assert _ops(s, "alloc_page") == before
    assert cache.cnt == 0
    # The module holds exactly the cached pair.
    assert set(rig.module.pamt[0]) == cached
    assert k_failing.tdh_mem_page_aug(hpa) == tdx.TDX_SUCCESS
    rig.unuse(k, hpa)
    rig.assert_clean()


@pytest.mark.parametrize("spec", CACHED)
def test_null_cache_means_the_page_allocator(spec: str, rig_of) -> None:  # type: ignore[no-untyped-def]
    rig, v = rig_of(spec)
    s = Script()
    k = rig.kernel(0, s)
    hpa = page_hpa(1, 0)
    assert v.tdx_pamt_get(k, hpa, None) == 0
    assert _ops(s, "alloc_page") == tdx.TDX_DPAMT_ENTRY_PAGE_CNT
    assert 1 in rig.module.pamt
    rig.put(k, hpa)
    rig.assert_clean()


@pytest.mark.parametrize("spec", CACHED)
def test_lost_race_pages_go_to_the_allocator_not_the_cache(spec: str, rig_of) -> None:  # type: ignore[no-untyped-def]
    """B installs the range's PAMT while A takes its pair: A joins and frees its pair."""
    rig, v = rig_of(spec)
    s = Script()
    ka, kb = rig.kernel(0, s), rig.kernel(1)
    a, b = page_hpa(0, 0), page_hpa(0, 1)
    cache = v.new_pamt_cache()
    assert v.tdx_topup_pamt_cache(ka, cache, 1) == 0
    a_pair = set(rig.pool.allocated)
    s.at("spin_lock", 1, lambda: rig.get(kb, b))
    assert v.tdx_pamt_get(ka, a, cache) == 0
    assert s.pending == 0
    assert rig.rc(0) == 2
    # A's pair was freed, to the pool; the cache did not get it back.
    assert cache.cnt == 0
    assert not (a_pair & rig.pool.allocated)
    assert _ops(s, "free_page") == tdx.TDX_DPAMT_ENTRY_PAGE_CNT
    rig.put(ka, a)
    rig.put(kb, b)
    rig.assert_clean()


def test_only_v6_gets_on_a_present_range_without_touching_the_cache(rig_of) -> None:  # type: ignore[no-untyped-def]
    """06/11's fast path joins before taking pages; 05/11 alone always takes a pair."""
    drained = {}
    for spec in CACHED:
        rig, v = rig_of(spec)
        k = rig.kernel(0)
        assert rig.get(k, page_hpa(0, 0)) == 0
        cache = v.new_pamt_cache()
        assert v.tdx_topup_pamt_cache(k, cache, 1) == 0
        assert v.tdx_pamt_get(k, page_hpa(0, 1), cache) == 0
        drained[spec] = cache.cnt == 0
        v.tdx_free_pamt_cache(k, cache)
        rig.put(k, page_hpa(0, 1))
        rig.put(k, page_hpa(0, 0))
        rig.assert_clean()
    assert drained == {"v6": False, "v6.c": False, "v6-locked": True, "v6-locked.c": True}


@pytest.mark.parametrize("spec", CACHED)
def test_failed_remove_warns_and_keeps_the_pamt(spec: str, rig_of) -> None:  # type: ignore[no-untyped-def]
    rig, _ = rig_of(spec)
    k = rig.kernel(0)
    hpa = page_hpa(0, 0)
    assert rig.get(k, hpa) == 0
    rig.module.inject[tdx.TDH_PHYMEM_PAMT_REMOVE] = [tdx.TDX_OPERAND_BUSY]
    rig.put(k, hpa)
    assert k.warnings == 1
    assert 0 in rig.module.pamt and rig.rc(0) == 1
    assert not rig.lock.is_held()


# --------------------------------------------------------------------------
# the header: what the posted C needs, and C files of the other shapes


def _write(tmp_path: Path, name: str, body: str) -> Path:
    f = tmp_path / name
    f.write_text("#include <shmpamt/kernel.h>\n" + textwrap.dedent(body))
    return f


def test_scoped_guard_unlocks_on_every_way_out_and_both_sysinfo_spellings(
    tmp_path: Path, rig_of
) -> None:  # type: ignore[no-untyped-def]
    """A pfn-API variant without a cache: get returns from inside the guard."""
    _write(
        tmp_path,
        "guard.c",
        """
        static DEFINE_SPINLOCK(lock);

        static int tdx_pamt_get(kvm_pfn_t pfn)
        {
            atomic_t *rc = tdx_find_pamt_refcount(pfn);
            struct page *pages[TDX_DPAMT_ENTRY_PAGE_CNT];

            if (!tdx_supports_dynamic_pamt(&tdx_sysinfo) ||
                tdx_nr_pamt_pages(tdx_sysinfo) != TDX_DPAMT_ENTRY_PAGE_CNT)
                return -EINVAL;
            scoped_guard(spinlock, &lock) {
                if (atomic_read(rc)) {
                    atomic_inc(rc);
                    return 0;
                }
                pages[0] = alloc_page(GFP_KERNEL_ACCOUNT);
                pages[1] = alloc_page(GFP_KERNEL_ACCOUNT);
                if (tdh_phymem_pamt_add(pfn, pages) != TDX_SUCCESS)
                    return -EIO;
                atomic_set(rc, 1);
            }
            return 0;
        }

        static void tdx_pamt_put(kvm_pfn_t pfn)
        {
            atomic_t *rc = tdx_find_pamt_refcount(pfn);
            struct page *pages[TDX_DPAMT_ENTRY_PAGE_CNT] = {};

            scoped_guard(spinlock, &lock) {
                if (atomic_read(rc) > 1) {
                    atomic_dec(rc);
                    break;
                }
                if (WARN_ON_ONCE(tdh_phymem_pamt_remove(pfn, pages) != TDX_SUCCESS))
                    return;
                atomic_set(rc, 0);
                for (int i = 0; i < TDX_DPAMT_ENTRY_PAGE_CNT; i++) {
                    tdx_quirk_reset_paddr(page_to_phys(pages[i]), PAGE_SIZE);
                    __free_page(pages[i]);
                }
            }
        }
        """,
    )
    cls = load_variant(str(tmp_path / "guard.c"))
    assert not issubclass(cls, CachedPamtVariant)
    v = cls()
    rc = RefcountArray.create(RANGES, initial=0)
    lock = PamtLock.create()
    try:
        rig = Rig(v, rc, lock)
        s = Script()
        k = rig.kernel(0, s)
        a, b = page_hpa(1, 0), page_hpa(1, 1)
        assert rig.get(k, a) == 0  # the end of the guarded block
        assert rig.get(k, b) == 0  # return inside it
        assert not lock.is_held()
        rig.put(k, b)  # break out of it
        assert not lock.is_held()
        rig.put(k, a)  # the end of it
        ops = [o for o, _, _ in s.ops if o in ("spin_lock", "spin_unlock")]
        assert ops == ["spin_lock", "spin_unlock"] * 4
        rig.assert_clean()
    finally:
        rc.close()
        lock.close()


def test_a_get_taking_a_cache_needs_the_cache_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path,
        "nocache.c",
        """
        int tdx_pamt_get(kvm_pfn_t pfn, struct tdx_pamt_cache *cache) { return 0; }
        void tdx_pamt_put(kvm_pfn_t pfn) { }
        void tdx_free_pamt_cache(struct tdx_pamt_cache *cache) { }
        """,
    )
    with pytest.raises(
        VariantLoadError,
        match=r"^variant file nocache\.c: tdx_pamt_get\(\) takes a struct tdx_pamt_cache but "
        r"the file does not define tdx_topup_pamt_cache\(\)$",
    ):
        load_variant("nocache.c")


def test_a_get_of_another_shape_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path,
        "shape.c",
        """
        static int tdx_pamt_get(int pfn) { return 0; }
        static void tdx_pamt_put(kvm_pfn_t pfn) { }
        """,
    )
    with pytest.raises(VariantLoadError) as e:
        load_variant("shape.c")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("variant file shape.c: expected int tdx_pamt_get(struct page *)")
    assert "int tdx_pamt_get(kvm_pfn_t[, struct tdx_pamt_cache *])" in msg


# --------------------------------------------------------------------------
# the check, and the real machinery


def test_cache_get_enomem_is_described() -> None:
    v = Violation(CACHE_GET_ENOMEM, cpu=1, range=0, leaf=-1, ts_ns=0, a=-tdx.ENOMEM, b=0)
    assert describe(v) == (
        "tdx_pamt_get on range 0 by cpu 1 returned -12 although its cache had been topped up for it"
    )
    t = Violation("get_failed", cpu=0, range=1, leaf=-1, ts_ns=0, a=-12, b=0, c=GET_FAILED_TOPUP)
    assert describe(t).startswith("tdx_topup_pamt_cache before a get on range 1 by cpu 0")


def test_a_get_that_ignores_its_cache_is_caught_under_alloc_faults() -> None:
    """The planted slip (get allocates although its cache holds a pair) shows only
    as cache_get_enomem; v6 itself, under the same faults, shows nothing."""
    kw = {"iterations": 150, "cpus": 2, "seed": 1, "faults": "alloc.fail=0.3"}
    slip = shmpamt.stress(f"{HERE / 'cache_variants.py'}:CacheBypass", **kw)
    assert slip.verdict == {CACHE_GET_ENOMEM}
    for spec in ("v6", "v6.c"):
        r = shmpamt.stress(spec, **kw)
        assert r.ok and not r.found, spec


@pytest.mark.parametrize("spec", ["v6", "v6-locked.c"])
def test_stress_with_fresh_starts_finds_no_cached_page_leaked(spec: str) -> None:
    """Each fresh start judges quiescence: the CPUs free their caches before pausing."""
    r = shmpamt.stress(spec, iterations=400, cpus=2, seed=3, epoch=0.05)
    assert r.ok and not r.found
    assert any("fresh starts" in n for n in r.raw.notes)


@pytest.mark.parametrize("variant", ["v6", "v6-locked"])
def test_posted_c_gives_the_python_verdict_under_dpor(variant: str) -> None:
    """2 CPUs x 2 rounds: the C transcription and the Python one are both verified."""
    kw = {"strategy": "dpor", "budget": 400, "seed": 1, "jobs": 1}
    py = shmpamt.explore(variant, **kw)  # type: ignore[arg-type]
    c = shmpamt.explore(f"{variant}.c", **kw)  # type: ignore[arg-type]
    assert py.ok and c.ok
    assert c.verdict == py.verdict == frozenset()
    assert py.raw.explore is not None and c.raw.explore is not None
    assert py.raw.explore.claim == c.raw.explore.claim == VERIFIED
    # Same classes of interleavings: the twins take the same steps.
    assert py.raw.explore.executions == c.raw.explore.executions


def test_pool_pages_hold_the_cache() -> None:
    """A cached page is an ordinary pool page (POOL_BASE and up), owned by its CPU."""
    v = load_variant("v6")()
    assert isinstance(v, CachedPamtVariant)
    c = v.new_pamt_cache()
    assert isinstance(c, PamtCache) and c.cnt == 0 and c.page_list == []
    assert page_hpa(1, 511) < POOL_BASE


def _header_identifiers() -> set[str]:
    """Every name kernel.h gives a variant: macros, typedefs, structs, functions."""
    text = (INCLUDE_DIR / "shmpamt" / "kernel.h").read_text()
    found: set[str] = set()
    for pattern in (
        r"^#define\s+(\w+)",
        r"^typedef\s+[^;{]*?\b(\w+);",
        r"^typedef struct \{[^}]*\}\s*(\w+);",
        r"^static (?:inline |const )?[\w\s\*]*?\b(\w+)\s*[\(\[]",
        r"^struct (\w+) \{",
        r"^(?:u64|void|int|s32|struct page \*)\s*\*?(\w+)\(",
    ):
        found |= set(re.findall(pattern, text, re.M | re.S))
    # The rig's own plumbing (shmpamt_*) and the include guard are not for variants.
    return {n for n in found if not n.lower().startswith("shmpamt")}


def test_variants_md_lists_every_identifier_the_header_provides() -> None:
    names = _header_identifiers()
    # Invariant: the extraction sees the header's v6 additions (it is not vacuous).
    assert {"kvm_pfn_t", "scoped_guard", "tdx_pamt_cache", "tdx_find_pamt_refcount"} <= names
    doc = (HERE.parent / "docs" / "variants.md").read_text()
    section = doc.split("### What `<shmpamt/kernel.h>` provides")[1].split("\n### ")[0]
    spans = re.findall(r"`([^`]+)`", section)
    missing = sorted(n for n in names if not any(re.search(rf"\b{n}\b", s) for s in spans))
    assert missing == []
