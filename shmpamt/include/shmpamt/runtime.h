/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * The contract between a compiled C variant and shmpamt's Python side.
 *
 * Not for variant authors: include <shmpamt/kernel.h> instead. One context
 * exists per (C variant, Kernel) pair; the entry points make it current
 * for the duration of one tdx_pamt_get()/tdx_pamt_put() call, so the
 * kernel-style primitives in kernel.h need no context argument.
 */
#ifndef SHMPAMT_RUNTIME_H
#define SHMPAMT_RUNTIME_H

#include <setjmp.h>
#include <stdint.h>

/* Primitive codes: the index of each Kernel method in the Python dispatch
 * table and in the crash note's name table. */
#define SHMPAMT_OP_ATOMIC_READ 0
#define SHMPAMT_OP_ATOMIC_SET 1
#define SHMPAMT_OP_ATOMIC_INC 2
#define SHMPAMT_OP_ATOMIC_DEC 3
#define SHMPAMT_OP_ATOMIC_INC_RETURN 4
#define SHMPAMT_OP_ATOMIC_DEC_RETURN 5
#define SHMPAMT_OP_ATOMIC_DEC_AND_TEST 6
#define SHMPAMT_OP_ATOMIC_INC_NOT_ZERO 7
#define SHMPAMT_OP_ATOMIC_ADD_UNLESS 8
#define SHMPAMT_OP_ATOMIC_INC_UNLESS_NEGATIVE 9
#define SHMPAMT_OP_ATOMIC_DEC_UNLESS_POSITIVE 10
#define SHMPAMT_OP_ATOMIC_DEC_IF_POSITIVE 11
#define SHMPAMT_OP_ATOMIC_CMPXCHG 12
#define SHMPAMT_OP_SPIN_LOCK 13
#define SHMPAMT_OP_SPIN_UNLOCK 14
#define SHMPAMT_OP_ALLOC_PAGE 15
#define SHMPAMT_OP_FREE_PAGE 16
#define SHMPAMT_OP_PAMT_ADD 17
#define SHMPAMT_OP_PAMT_REMOVE 18
#define SHMPAMT_NR_OPS 19

/* shmpamt_api() bits: what shape the variant's helpers have. */
#define SHMPAMT_API_PFN 1 /* get and put take a kvm_pfn_t */
#define SHMPAMT_API_CACHE 2 /* get takes a struct tdx_pamt_cache * */
#define SHMPAMT_API_TOPUP 4 /* tdx_topup_pamt_cache() is defined */
#define SHMPAMT_API_FREE_CACHE 8 /* tdx_free_pamt_cache() is defined */

/* Message kinds for shmpamt_py_msg(). */
#define SHMPAMT_MSG_PR_ERR 0
#define SHMPAMT_MSG_WARN 1
#define SHMPAMT_MSG_TDX_ERROR 2
#define SHMPAMT_MSG_BUG 3

/* The shim's functions (shmpamt._atomic_shim), called directly when no hook runs. */
struct shmpamt_atomic_ops {
	int32_t (*fetch_add)(int32_t *p, int32_t a);
	int32_t (*cmpxchg)(int32_t *p, int32_t old, int32_t new_);
	int (*add_unless)(int32_t *p, int32_t a, int32_t u);
	int (*inc_not_zero)(int32_t *p);
	int (*inc_unless_negative)(int32_t *p);
	int (*dec_unless_positive)(int32_t *p);
	int32_t (*dec_if_positive)(int32_t *p);
};

struct shmpamt_ctx {
	/* the shared refcount array, and how many atomic_t it holds */
	int32_t *refcounts;
	uint32_t nr_refcounts;
	/* nonzero: every atomic goes through the Python Kernel (and its hook) */
	int hooked;
	/* NULL when the shim is missing: atomics then always go through Python */
	const struct shmpamt_atomic_ops *ops;
	/* the Python bridge object (a cffi handle) */
	void *handle;
	/*
	 * The PAMT page pool's layout (for pfn_to_page), as machine/pool_layout.py
	 * has it: page i is the (i / stride)-th page of partition i % stride; those
	 * go round the first pool_ranges 2 MiB ranges, pool_rows of them per range
	 * from the range's top 4 KiB slot down, and the rest at pool_base + i pages.
	 */
	uint64_t pool_base;
	uint32_t pool_pages;
	uint32_t pool_stride, pool_ranges, pool_rows;
	int cpu;
	/* the last primitive entered and its refcount index, for the crash note */
	int last_op;
	int32_t last_target;
	/* "tdx_pamt_get" or "tdx_pamt_put" while one runs */
	const char *in_fn;
	/* set by a callback that raised: C unwinds to the entry point */
	int unwound;
	/* PAMT.REMOVE's two pages (rdx, r8), left here by the callback */
	int64_t out1, out2;
	/* the entry point's unwind target (private) */
	jmp_buf *env;
};

#endif /* SHMPAMT_RUNTIME_H */
