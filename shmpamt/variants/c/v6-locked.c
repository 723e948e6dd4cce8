/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * v6-locked.c: the v6 series without its optimisation: patch 05/11's
 * tdx_pamt_get()/tdx_pamt_put(), every refcount step inside
 * scoped_guard(spinlock, &pamt_lock), with 08/11's struct tdx_pamt_cache
 * applied (the series as posted minus 06/11). shmpamt's own transcription,
 * the C twin of shmpamt/variants/v6_locked.py.
 * Refcount = users, 0 = none.
 */
#include <shmpamt/kernel.h>

#define SHMPAMT_INITIAL_REFCOUNT 0
#define SHMPAMT_DESCRIPTION "C twin of v6-locked: 05/11 under scoped_guard, with the tdx_pamt_cache"

/* Take one page off the cache's head, or NULL once it is empty. */
static struct page *tdx_alloc_page_pamt_cache(struct tdx_pamt_cache *cache)
{
	struct page *page;

	page = list_first_entry_or_null(&cache->page_list, struct page, lru);
	if (page) {
		list_del(&page->lru);
		cache->cnt--;
	}

	return page;
}

/* A cache page when the caller gave a cache, else a fresh allocation. */
static struct page *alloc_dpamt_page(struct tdx_pamt_cache *cache)
{
	if (cache)
		return tdx_alloc_page_pamt_cache(cache);

	return alloc_page(GFP_KERNEL_ACCOUNT);
}

/* Fill the pair; on a miss hand back (to the allocator) what was taken. */
static int alloc_pamt_array(struct page **pamt_pages, struct tdx_pamt_cache *cache)
{
	int i, j;

	for (i = 0; i < TDX_DPAMT_ENTRY_PAGE_CNT; i++) {
		pamt_pages[i] = alloc_dpamt_page(cache);
		if (!pamt_pages[i])
			goto err;
	}

	return 0;
err:
	for (j = 0; j < i; j++)
		__free_page(pamt_pages[j]);
	return -ENOMEM;
}

/* Clear and release the pair: it goes to the page allocator, never a cache. */
static void free_pamt_array(struct page **pamt_pages)
{
	for (int i = 0; i < TDX_DPAMT_ENTRY_PAGE_CNT; i++) {
		/* the module may have written them: clear either way */
		tdx_quirk_reset_paddr(page_to_phys(pamt_pages[i]), PAGE_SIZE);

		__free_page(pamt_pages[i]);
	}
}

/* Orders every refcount step with its SEAMCALL. */
static DEFINE_SPINLOCK(pamt_lock);

/* Take a reference on the 2M range of @pfn, installing its PAMT on 0->1. */
int tdx_pamt_get(kvm_pfn_t pfn, struct tdx_pamt_cache *cache)
{
	struct page *pamt_pages[TDX_DPAMT_ENTRY_PAGE_CNT];
	atomic_t *pamt_refcount;
	u64 tdx_status;
	int ret;

	if (!tdx_supports_dynamic_pamt(&tdx_sysinfo))
		return 0;

	ret = alloc_pamt_array(pamt_pages, cache);
	if (ret)
		return ret;

	pamt_refcount = tdx_find_pamt_refcount(pfn);

	scoped_guard(spinlock, &pamt_lock) {
		/* Someone installed it already: join, drop the pair. */
		if (atomic_read(pamt_refcount)) {
			atomic_inc(pamt_refcount);
			goto out_free;
		}

		/* Install the pair; the count goes from 0 to 1. */
		tdx_status = tdh_phymem_pamt_add(pfn, pamt_pages);
		if (WARN_ON_ONCE(tdx_status != TDX_SUCCESS)) {
			ret = -EIO;
			goto out_free;
		}

		atomic_set(pamt_refcount, 1);
	}

	return 0;
out_free:
	free_pamt_array(pamt_pages);
	return ret;
}

/* Drop a reference; the last one removes the range's PAMT. */
void tdx_pamt_put(kvm_pfn_t pfn)
{
	struct page *pamt_pages[TDX_DPAMT_ENTRY_PAGE_CNT] = {};
	atomic_t *pamt_refcount;
	u64 tdx_status;

	if (!tdx_supports_dynamic_pamt(&tdx_sysinfo))
		return;

	pamt_refcount = tdx_find_pamt_refcount(pfn);

	scoped_guard(spinlock, &pamt_lock) {
		/* Not the last user: only the decrement. */
		if (atomic_read(pamt_refcount) > 1) {
			atomic_dec(pamt_refcount);
			return;
		}

		/* Remove the pair; the count goes from 1 to 0. */
		tdx_status = tdh_phymem_pamt_remove(pfn, pamt_pages);

		/* A failed REMOVE leaves the array undefined: leak it, loudly. */
		if (WARN_ON_ONCE(tdx_status != TDX_SUCCESS))
			return;

		atomic_set(pamt_refcount, 0);
	}

	free_pamt_array(pamt_pages);
}

/* Empty the cache into the page allocator. */
void tdx_free_pamt_cache(struct tdx_pamt_cache *cache)
{
	struct page *page;

	while ((page = tdx_alloc_page_pamt_cache(cache)))
		__free_page(page);
}
EXPORT_SYMBOL_FOR_KVM(tdx_free_pamt_cache);

/* Make sure @npages gets can be served from the cache. */
int tdx_topup_pamt_cache(struct tdx_pamt_cache *cache, unsigned long npages)
{
	if (WARN_ON_ONCE(!tdx_supports_dynamic_pamt(&tdx_sysinfo)))
		return 0;

	npages *= TDX_DPAMT_ENTRY_PAGE_CNT;

	while (cache->cnt < npages) {
		struct page *page = alloc_page(GFP_KERNEL_ACCOUNT);

		if (!page)
			return -ENOMEM;

		list_add(&page->lru, &cache->page_list);
		cache->cnt++;
	}

	return 0;
}
EXPORT_SYMBOL_FOR_KVM(tdx_topup_pamt_cache);
