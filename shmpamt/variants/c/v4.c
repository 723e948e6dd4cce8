/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * v4.c: C twin of shmpamt/variants/v4.py, the fourth posting's helpers
 * (Nov 2025). Refcount = users, 0 = none. The source's guarded scope is
 * unrolled: every early exit unlocks first and frees the pages after.
 */
#include <shmpamt/kernel.h>

#include "common.h"

#define SHMPAMT_INITIAL_REFCOUNT 0
#define SHMPAMT_DESCRIPTION "C twin of v4: dec_and_test outside the lock, REMOVE failure re-increments"

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
		/* Installed while we allocated: count ourselves in. */
		atomic_inc(pamt_refcount);
	} else {
		err = tdh_phymem_pamt_add(hpa | TDX_PS_2M, &pamt_pages);
		if (!err) {
			atomic_set(pamt_refcount, 1);
			/* The module owns the pages now. */
			INIT_LIST_HEAD(&pamt_pages);
		} else if (tdx_hpa_range_not_free(err)) {
			/* Still present from a put that has not removed yet. */
			atomic_set(pamt_refcount, 1);
		} else {
			pr_tdx_error(TDH_PHYMEM_PAMT_ADD, err);
			ret = -EIO;
		}
	}
	spin_unlock(&pamt_lock);

	/* Leaving the scope: free whatever the module did not take. */
	tdx_free_pamt_pages(&pamt_pages);
	return ret;
}

static void tdx_pamt_put(struct page *page)
{
	unsigned long hpa = ALIGN_DOWN(page_to_phys(page), SZ_2M);
	atomic_t *pamt_refcount = tdx_get_pamt_refcount(hpa);
	LIST_HEAD(pamt_pages);
	u64 err;

	/* Not the last user. */
	if (!atomic_dec_and_test(pamt_refcount))
		return;

	spin_lock(&pamt_lock);
	/* Taken again by a get since our decrement. */
	if (atomic_read(pamt_refcount)) {
		spin_unlock(&pamt_lock);
		return;
	}

	err = tdh_phymem_pamt_remove(hpa | TDX_PS_2M, &pamt_pages);
	if (err) {
		/* Undo our decrement; the pages stay with the module. */
		atomic_inc(pamt_refcount);
		pr_tdx_error(TDH_PHYMEM_PAMT_REMOVE, err);
		spin_unlock(&pamt_lock);
		return;
	}
	spin_unlock(&pamt_lock);

	tdx_free_pamt_pages(&pamt_pages);
}
