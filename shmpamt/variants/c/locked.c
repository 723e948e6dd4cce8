/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * locked.c: C twin of shmpamt/variants/locked.py, the correct baseline:
 * every get and put entirely under pamt_lock, the refcount a plain user
 * count only read and written with the lock held. ADD on 0->1, REMOVE on
 * 1->0, TDX_OPERAND_BUSY retried up to BUSY_RETRIES times.
 */
#include <shmpamt/kernel.h>

#include "common.h"

#define SHMPAMT_INITIAL_REFCOUNT 0
#define SHMPAMT_DESCRIPTION "C twin of locked: whole get/put under pamt_lock, plain refcount"

/* As in locked.py: give up only when injection makes BUSY permanent. */
#define BUSY_RETRIES 10000

static DEFINE_SPINLOCK(pamt_lock);

static u64 pamt_add_retrying(unsigned long hpa, struct list_head *pamt_pages)
{
	u64 err = tdh_phymem_pamt_add(hpa | TDX_PS_2M, pamt_pages);

	for (int i = 0; i < BUSY_RETRIES && tdx_operand_busy(err); i++)
		err = tdh_phymem_pamt_add(hpa | TDX_PS_2M, pamt_pages);
	return err;
}

static u64 pamt_remove_retrying(unsigned long hpa, struct list_head *pamt_pages)
{
	u64 err = tdh_phymem_pamt_remove(hpa | TDX_PS_2M, pamt_pages);

	for (int i = 0; i < BUSY_RETRIES && tdx_operand_busy(err); i++)
		err = tdh_phymem_pamt_remove(hpa | TDX_PS_2M, pamt_pages);
	return err;
}

static int tdx_pamt_get(struct page *page)
{
	unsigned long hpa = ALIGN_DOWN(page_to_phys(page), SZ_2M);
	atomic_t *pamt_refcount = tdx_get_pamt_refcount(hpa);
	LIST_HEAD(pamt_pages);
	int users;
	u64 err;

	spin_lock(&pamt_lock);
	users = atomic_read(pamt_refcount);
	if (users == 0) {
		/* 0->1: this get installs the PAMT. */
		if (tdx_alloc_pamt_pages(&pamt_pages)) {
			spin_unlock(&pamt_lock);
			return -ENOMEM;
		}
		err = pamt_add_retrying(hpa, &pamt_pages);
		if (err) {
			/* Nothing installed: pages back, count unchanged. */
			tdx_free_pamt_pages(&pamt_pages);
			spin_unlock(&pamt_lock);
			pr_tdx_error(TDH_PHYMEM_PAMT_ADD, err);
			return -EIO;
		}
	}
	atomic_set(pamt_refcount, users + 1);
	spin_unlock(&pamt_lock);
	return 0;
}

static void tdx_pamt_put(struct page *page)
{
	unsigned long hpa = ALIGN_DOWN(page_to_phys(page), SZ_2M);
	atomic_t *pamt_refcount = tdx_get_pamt_refcount(hpa);
	LIST_HEAD(pamt_pages);
	int users;
	u64 err;

	spin_lock(&pamt_lock);
	users = atomic_read(pamt_refcount);
	/* A put without a get is a caller bug: refuse rather than underflow. */
	if (WARN_ON_ONCE(users <= 0)) {
		spin_unlock(&pamt_lock);
		return;
	}
	if (users == 1) {
		/* 1->0: this put removes the PAMT. */
		err = pamt_remove_retrying(hpa, &pamt_pages);
		if (err) {
			/* Still installed: keep it counted. */
			spin_unlock(&pamt_lock);
			pr_tdx_error(TDH_PHYMEM_PAMT_REMOVE, err);
			return;
		}
	}
	atomic_set(pamt_refcount, users - 1);
	spin_unlock(&pamt_lock);

	tdx_free_pamt_pages(&pamt_pages);
}
