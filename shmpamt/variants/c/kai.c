/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * kai.c: C twin of shmpamt/variants/kai.py, the reviewer's sketch in the
 * seed thread read literally. Refcount -1 = PAMT absent (the initial
 * value), otherwise users - 1. tdx_pamt_add() runs with pamt_lock held by
 * its caller and returns >0 (already present), 0 (added) or <0 (error).
 */
#include <shmpamt/kernel.h>

#include "common.h"

#define SHMPAMT_INITIAL_REFCOUNT -1
#define SHMPAMT_DESCRIPTION "C twin of kai: refcount -1 = absent, inc_unless_negative / dec_if_positive"

static DEFINE_SPINLOCK(pamt_lock);

static int tdx_pamt_add(unsigned long hpa, struct list_head *pamt_pages)
{
	u64 err;

	hpa = ALIGN_DOWN(hpa, SZ_2M);

	err = tdh_phymem_pamt_add(hpa | TDX_PS_2M, pamt_pages);
	if (!err)
		return 0;
	/* Another get added it first: our pages are unused. */
	if (tdx_hpa_range_not_free(err))
		return 1;
	pr_tdx_error(TDH_PHYMEM_PAMT_ADD, err);
	return -EIO;
}

static int tdx_pamt_get(struct page *page)
{
	unsigned long hpa = page_to_phys(page);
	atomic_t *pamt_refcount;
	LIST_HEAD(pamt_pages);
	int ret;

	pamt_refcount = tdx_get_pamt_refcount(hpa);

	/* PAMT present: the refcount is not -1. */
	if (atomic_inc_unless_negative(pamt_refcount))
		return 0;

	if (tdx_alloc_pamt_pages(&pamt_pages))
		return -ENOMEM;

	spin_lock(&pamt_lock);
	ret = tdx_pamt_add(hpa, &pamt_pages);
	if (ret >= 0)
		atomic_inc(pamt_refcount, 0); /* as the sketch writes it */
	spin_unlock(&pamt_lock);

	/* Lost the race, or failed: the pages were not used. */
	if (ret)
		tdx_free_pamt_pages(&pamt_pages);

	return ret >= 0 ? 0 : ret;
}

static void tdx_pamt_put(struct page *page)
{
	unsigned long hpa = ALIGN_DOWN(page_to_phys(page), SZ_2M);
	atomic_t *pamt_refcount;
	LIST_HEAD(pamt_pages);
	u64 err;

	pamt_refcount = tdx_get_pamt_refcount(hpa);

	/* Not the last user. */
	if (atomic_dec_if_positive(pamt_refcount) >= 0)
		return;

	spin_lock(&pamt_lock);

	/* Gets came in meanwhile: keep the PAMT (our count stays). */
	if (atomic_read(pamt_refcount) > 0) {
		spin_unlock(&pamt_lock);
		return;
	}

	/* The sketch does not look at REMOVE's status. */
	err = tdh_phymem_pamt_remove(hpa | TDX_PS_2M, &pamt_pages);
	(void)err;
	atomic_set(pamt_refcount, -1);
	spin_unlock(&pamt_lock);

	tdx_free_pamt_pages(&pamt_pages);
}
