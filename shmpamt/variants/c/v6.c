/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * v6.c: C twin of shmpamt/variants/v6.py, the sixth posting's helpers
 * (May 2026). get as v4 without the RANGE_NOT_FREE case; put takes the
 * 1->0 step with atomic_dec_and_lock(), so the last decrement and REMOVE
 * share one hold of pamt_lock. Refcount = users, 0 = none.
 */
#include <shmpamt/kernel.h>

#include "common.h"

#define SHMPAMT_INITIAL_REFCOUNT 0
#define SHMPAMT_DESCRIPTION "C twin of v6: put uses atomic_dec_and_lock, ADD failure = -EIO"

static DEFINE_SPINLOCK(pamt_lock);

static int tdx_pamt_get(struct page *page)
{
	unsigned long hpa = ALIGN_DOWN(page_to_phys(page), SZ_2M);
	atomic_t *pamt_refcount = tdx_get_pamt_refcount(hpa);
	LIST_HEAD(pamt_pages);
	int ret = 0;
	u64 err;

	/* Already backed and in use. */
	if (atomic_inc_not_zero(pamt_refcount))
		return 0;

	if (tdx_alloc_pamt_pages(&pamt_pages))
		return -ENOMEM;

	spin_lock(&pamt_lock);
	if (atomic_read(pamt_refcount)) {
		/* Installed by someone else while we allocated. */
		atomic_inc(pamt_refcount);
	} else {
		err = tdh_phymem_pamt_add(hpa | TDX_PS_2M, &pamt_pages);
		if (WARN_ON_ONCE(err)) {
			ret = -EIO;
		} else {
			atomic_set(pamt_refcount, 1);
			/* The module owns the pages now. */
			INIT_LIST_HEAD(&pamt_pages);
		}
	}
	spin_unlock(&pamt_lock);

	tdx_free_pamt_pages(&pamt_pages);
	return ret;
}

static void tdx_pamt_put(struct page *page)
{
	unsigned long hpa = ALIGN_DOWN(page_to_phys(page), SZ_2M);
	atomic_t *pamt_refcount = tdx_get_pamt_refcount(hpa);
	LIST_HEAD(pamt_pages);
	u64 err;

	/* True, with pamt_lock held, only for the 1->0 step. */
	if (!atomic_dec_and_lock(pamt_refcount, &pamt_lock))
		return;

	err = tdh_phymem_pamt_remove(hpa | TDX_PS_2M, &pamt_pages);
	if (err) {
		/* Keep the PAMT and mark the range used again. */
		atomic_set(pamt_refcount, 1);
		pr_tdx_error(TDH_PHYMEM_PAMT_REMOVE, err);
		spin_unlock(&pamt_lock);
		return;
	}
	spin_unlock(&pamt_lock);

	tdx_free_pamt_pages(&pamt_pages);
}
