/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * rfc.c: C twin of shmpamt/variants/rfc.py, the RFC helpers as posted
 * (May 2025). Same atomics, lock operations and SEAMCALLs in the same
 * order; refcount = users of the range, 0 = none.
 */
#include <shmpamt/kernel.h>

#include "common.h"

#define SHMPAMT_INITIAL_REFCOUNT 0
#define SHMPAMT_DESCRIPTION "C twin of rfc: inc_not_zero / dec_and_test fast paths, lock + recheck"

static DEFINE_SPINLOCK(pamt_lock);

/* The locked 0->1 step of a slow get. */
static int tdx_pamt_add(atomic_t *pamt_refcount, unsigned long hpa, struct list_head *pamt_pages)
{
	u64 err;

	hpa = ALIGN_DOWN(hpa, SZ_2M);

	spin_lock(&pamt_lock);

	/* Someone else took the range while we allocated: join them. */
	if (atomic_read(pamt_refcount) != 0) {
		atomic_inc(pamt_refcount);
		spin_unlock(&pamt_lock);
		tdx_free_pamt_pages(pamt_pages);
		return 0;
	}

	err = tdh_phymem_pamt_add(hpa | TDX_PS_2M, pamt_pages);

	/* On failure the module kept none of the pages. */
	if (err)
		tdx_free_pamt_pages(pamt_pages);

	/* RANGE_NOT_FREE: a put reached 0 but has not removed yet; count it as won. */
	if (err && !tdx_hpa_range_not_free(err)) {
		spin_unlock(&pamt_lock);
		pr_tdx_error(TDH_PHYMEM_PAMT_ADD, err);
		return -EIO;
	}

	atomic_set(pamt_refcount, 1);
	spin_unlock(&pamt_lock);
	return 0;
}

static int tdx_pamt_get(struct page *page)
{
	unsigned long hpa = page_to_phys(page);
	atomic_t *pamt_refcount;
	LIST_HEAD(pamt_pages);

	if (!tdx_supports_dynamic_pamt(tdx_sysinfo))
		return 0;

	pamt_refcount = tdx_get_pamt_refcount(hpa);
	WARN_ON_ONCE(atomic_read(pamt_refcount) < 0);

	/* The range already has users. */
	if (atomic_inc_not_zero(pamt_refcount))
		return 0;

	if (tdx_alloc_pamt_pages(&pamt_pages))
		return -ENOMEM;

	return tdx_pamt_add(pamt_refcount, hpa, &pamt_pages);
}

static void tdx_pamt_put(struct page *page)
{
	unsigned long hpa = ALIGN_DOWN(page_to_phys(page), SZ_2M);
	atomic_t *pamt_refcount;
	LIST_HEAD(pamt_pages);
	u64 err;

	if (!tdx_supports_dynamic_pamt(tdx_sysinfo))
		return;

	pamt_refcount = tdx_get_pamt_refcount(hpa);
	/* Other users remain. */
	if (!atomic_dec_and_test(pamt_refcount))
		return;

	spin_lock(&pamt_lock);

	/* A get took the range again between our decrement and the lock. */
	if (atomic_read(pamt_refcount) != 0) {
		spin_unlock(&pamt_lock);
		return;
	}

	err = tdh_phymem_pamt_remove(hpa | TDX_PS_2M, &pamt_pages);
	spin_unlock(&pamt_lock);

	if (err) {
		pr_tdx_error(TDH_PHYMEM_PAMT_REMOVE, err);
		return;
	}

	tdx_free_pamt_pages(&pamt_pages);
}
