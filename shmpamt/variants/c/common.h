/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * PAMT page-list helpers the C twins share, the counterparts of
 * shmpamt/variants/common.py. Pages are added at the list's tail so the
 * list keeps allocation order, as the Python list does: both then free,
 * and hand to PAMT.ADD, the same pages in the same order, and their
 * traces match value for value.
 */
#ifndef SHMPAMT_TWINS_COMMON_H
#define SHMPAMT_TWINS_COMMON_H

#include <shmpamt/kernel.h>

/* Give every page on the list back, leaving it empty. */
static void tdx_free_pamt_pages(struct list_head *pamt_pages)
{
	struct page *page;

	while ((page = list_first_entry_or_null(pamt_pages, struct page, lru))) {
		/* unlink first: the list never names a freed page */
		list_del(&page->lru);
		__free_page(page);
	}
}

/* Fill the list with one range's PAMT pages: 0, or -ENOMEM with nothing kept. */
static int tdx_alloc_pamt_pages(struct list_head *pamt_pages)
{
	for (int i = 0; i < tdx_nr_pamt_pages(tdx_sysinfo); i++) {
		struct page *page = alloc_page(GFP_KERNEL);

		if (!page) {
			tdx_free_pamt_pages(pamt_pages);
			return -ENOMEM;
		}
		list_add_tail(&page->lru, pamt_pages);
	}
	return 0;
}

/* PAMT.ADD found the range's PAMT already there. */
static bool tdx_hpa_range_not_free(u64 err)
{
	return (err & TDX_SEAMCALL_STATUS_MASK) == TDX_HPA_RANGE_NOT_FREE;
}

/* The module held one of its locks; the call may be retried. */
static bool tdx_operand_busy(u64 err)
{
	return (err & TDX_SEAMCALL_STATUS_MASK) == TDX_OPERAND_BUSY;
}

#endif /* SHMPAMT_TWINS_COMMON_H */
