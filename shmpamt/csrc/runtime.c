/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * The C side of a compiled variant: the out-of-line primitives of
 * <shmpamt/kernel.h> and the crash note. Compiled into the variant's
 * translation unit, after it; the generated source declares the two cffi
 * extern "Python" callbacks shmpamt_py_op / shmpamt_py_msg first.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <shmpamt/kernel.h>

struct shmpamt_ctx *shmpamt_cur;

static const char *const shmpamt_op_names[SHMPAMT_NR_OPS] = {
	[SHMPAMT_OP_ATOMIC_READ] = "atomic_read",
	[SHMPAMT_OP_ATOMIC_SET] = "atomic_set",
	[SHMPAMT_OP_ATOMIC_INC] = "atomic_inc",
	[SHMPAMT_OP_ATOMIC_DEC] = "atomic_dec",
	[SHMPAMT_OP_ATOMIC_INC_RETURN] = "atomic_inc_return",
	[SHMPAMT_OP_ATOMIC_DEC_RETURN] = "atomic_dec_return",
	[SHMPAMT_OP_ATOMIC_DEC_AND_TEST] = "atomic_dec_and_test",
	[SHMPAMT_OP_ATOMIC_INC_NOT_ZERO] = "atomic_inc_not_zero",
	[SHMPAMT_OP_ATOMIC_ADD_UNLESS] = "atomic_add_unless",
	[SHMPAMT_OP_ATOMIC_INC_UNLESS_NEGATIVE] = "atomic_inc_unless_negative",
	[SHMPAMT_OP_ATOMIC_DEC_UNLESS_POSITIVE] = "atomic_dec_unless_positive",
	[SHMPAMT_OP_ATOMIC_DEC_IF_POSITIVE] = "atomic_dec_if_positive",
	[SHMPAMT_OP_ATOMIC_CMPXCHG] = "atomic_cmpxchg",
	[SHMPAMT_OP_SPIN_LOCK] = "spin_lock",
	[SHMPAMT_OP_SPIN_UNLOCK] = "spin_unlock",
	[SHMPAMT_OP_ALLOC_PAGE] = "alloc_page",
	[SHMPAMT_OP_FREE_PAGE] = "__free_page",
	[SHMPAMT_OP_PAMT_ADD] = "tdh_phymem_pamt_add",
	[SHMPAMT_OP_PAMT_REMOVE] = "tdh_phymem_pamt_remove",
};

/* Python raised (an explore abort, a module failure): leave the variant's frames. */
__attribute__((noreturn)) static void shmpamt_unwind(void)
{
	shmpamt_cur->unwound = 1;
	longjmp(*shmpamt_cur->env, 1);
}

/* One Kernel primitive in Python; its result (PAMT.REMOVE: the status). */
static int64_t shmpamt_call(int op, int32_t target, int64_t a0, int64_t a1, int64_t a2)
{
	struct shmpamt_ctx *c = shmpamt_cur;
	int64_t r;

	c->last_op = op;
	c->last_target = target;
	r = shmpamt_py_op(c->handle, op, a0, a1, a2);
	if (unlikely(c->unwound))
		shmpamt_unwind();
	/* a nested entry (another CPU scripted inside a hook) restored us */
	shmpamt_cur = c;
	return r;
}

static void shmpamt_message(int kind, const char *text, uint64_t arg)
{
	struct shmpamt_ctx *c = shmpamt_cur;

	shmpamt_py_msg(c->handle, kind, text, arg);
	if (c->unwound)
		shmpamt_unwind();
	shmpamt_cur = c;
}

s32 shmpamt_atomic_py(int op, const atomic_t *v, s32 a, s32 b)
{
	int32_t idx = (int32_t)(v - (const atomic_t *)shmpamt_cur->refcounts);

	return (s32)shmpamt_call(op, idx, idx, a, b);
}

void shmpamt_pr_err(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	shmpamt_message(SHMPAMT_MSG_PR_ERR, buf, 0);
}

void shmpamt_warn(const char *cond, const char *file, int line)
{
	char buf[512];

	snprintf(buf, sizeof(buf), "WARN_ON_ONCE(%s) at %s:%d", cond, file, line);
	shmpamt_message(SHMPAMT_MSG_WARN, buf, 0);
}

void shmpamt_pr_tdx_error(const char *leaf, u64 err)
{
	shmpamt_message(SHMPAMT_MSG_TDX_ERROR, leaf, err);
}

void shmpamt_bug(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	shmpamt_py_msg(shmpamt_cur->handle, SHMPAMT_MSG_BUG, buf, 0);
	shmpamt_unwind();
}

/* ---- pamt_lock ---------------------------------------------------------- */

void shmpamt_spin_lock(spinlock_t *lock)
{
	(void)lock;
	shmpamt_call(SHMPAMT_OP_SPIN_LOCK, -1, 0, 0, 0);
}

void shmpamt_spin_unlock(spinlock_t *lock)
{
	(void)lock;
	shmpamt_call(SHMPAMT_OP_SPIN_UNLOCK, -1, 0, 0, 0);
}

/* ---- pages -------------------------------------------------------------- */

/* Descriptors of the PAMT page pool, indexed like the pool (a mem_map). */
static struct page *shmpamt_mem_map;
static uint32_t shmpamt_mem_map_pages;

#define SHMPAMT_SLOTS_PER_2M (SZ_2M / PAGE_SIZE)

/* The slot row (0 = a range's top 4 KiB slot) pool page i has in its range. */
static uint64_t shmpamt_pool_row(const struct shmpamt_ctx *c, uint64_t i)
{
	uint64_t k = i / c->pool_stride;

	return k / c->pool_ranges * c->pool_stride + i % c->pool_stride;
}

/* The pool index of hpa, the inverse of the layout in struct shmpamt_ctx; -1: none. */
static int64_t shmpamt_pool_index(const struct shmpamt_ctx *c, phys_addr_t hpa)
{
	uint64_t i, r, row;

	if (hpa % PAGE_SIZE || !c->pool_stride)
		return -1;
	if (hpa >= c->pool_base) {
		i = (hpa - c->pool_base) / PAGE_SIZE;
		if (i >= c->pool_pages)
			return -1;
		if (c->pool_ranges && shmpamt_pool_row(c, i) < c->pool_rows)
			return -1; /* that page lives in a guest range */
		return (int64_t)i;
	}
	if (!c->pool_ranges)
		return -1;
	r = hpa / SZ_2M;
	row = SHMPAMT_SLOTS_PER_2M - 1 - hpa % SZ_2M / PAGE_SIZE;
	if (r >= c->pool_ranges || row >= c->pool_rows)
		return -1;
	i = (row / c->pool_stride * c->pool_ranges + r) * c->pool_stride + row % c->pool_stride;
	return i < c->pool_pages ? (int64_t)i : -1;
}

struct page *shmpamt_pool_page(phys_addr_t hpa)
{
	struct shmpamt_ctx *c = shmpamt_cur;
	int64_t i = shmpamt_pool_index(c, hpa);
	struct page *page;

	if (i < 0)
		shmpamt_bug("%#llx is not a PAMT pool page", (unsigned long long)hpa);
	if (shmpamt_mem_map_pages < c->pool_pages) {
		free(shmpamt_mem_map);
		shmpamt_mem_map = calloc(c->pool_pages, sizeof(*shmpamt_mem_map));
		if (!shmpamt_mem_map)
			shmpamt_bug("no memory for %u page descriptors", c->pool_pages);
		shmpamt_mem_map_pages = c->pool_pages;
	}
	page = &shmpamt_mem_map[i];
	page->shmpamt_phys = hpa;
	return page;
}

struct page *shmpamt_alloc_page(gfp_t gfp)
{
	struct page *page;
	int64_t hpa;

	(void)gfp;
	hpa = shmpamt_call(SHMPAMT_OP_ALLOC_PAGE, -1, 0, 0, 0);
	if (!hpa)
		return NULL;
	page = shmpamt_pool_page((phys_addr_t)hpa);
	INIT_LIST_HEAD(&page->lru);
	return page;
}

void shmpamt_free_page(struct page *page)
{
	shmpamt_call(SHMPAMT_OP_FREE_PAGE, -1, (int64_t)page_to_phys(page), 0, 0);
}

/* ---- SEAMCALLs ---------------------------------------------------------- */

static int32_t shmpamt_range_of(u64 rcx)
{
	return (int32_t)(rcx / SZ_2M);
}

u64 shmpamt_pamt_add_list(u64 hpa_ps, struct list_head *pamt_pages)
{
	u64 rdx = 0, r8 = 0;

	if (!list_empty(pamt_pages)) {
		rdx = page_to_phys(list_first_entry(pamt_pages, struct page, lru));
		if (pamt_pages->next->next != pamt_pages)
			r8 = page_to_phys(list_entry(pamt_pages->next->next, struct page, lru));
	}
	return (u64)shmpamt_call(SHMPAMT_OP_PAMT_ADD, shmpamt_range_of(hpa_ps), (int64_t)hpa_ps,
				 (int64_t)rdx, (int64_t)r8);
}

/* PAMT.REMOVE; the module's two pages (rdx, r8) wait in the context. */
static u64 shmpamt_pamt_remove(u64 hpa_ps)
{
	return (u64)shmpamt_call(SHMPAMT_OP_PAMT_REMOVE, shmpamt_range_of(hpa_ps), (int64_t)hpa_ps,
				 0, 0);
}

u64 shmpamt_pamt_remove_list(u64 hpa_ps, struct list_head *pamt_pages)
{
	u64 err = shmpamt_pamt_remove(hpa_ps);

	if (!err) {
		int64_t out[2] = { shmpamt_cur->out1, shmpamt_cur->out2 };

		for (int i = 0; i < 2; i++) {
			if (out[i]) {
				struct page *page = shmpamt_pool_page((phys_addr_t)out[i]);

				list_add_tail(&page->lru, pamt_pages);
			}
		}
	}
	return err;
}

/* rcx for the 2M range of @pfn, as v6's pamt_2mb_arg() builds it. */
static u64 shmpamt_pfn_2m_arg(kvm_pfn_t pfn)
{
	return ALIGN_DOWN(pfn << PAGE_SHIFT, SZ_2M) | TDX_PS_2M;
}

u64 shmpamt_pamt_add_pages(kvm_pfn_t pfn, struct page **pamt_pages)
{
	u64 rcx = shmpamt_pfn_2m_arg(pfn);

	return (u64)shmpamt_call(SHMPAMT_OP_PAMT_ADD, shmpamt_range_of(rcx), (int64_t)rcx,
				 (int64_t)page_to_phys(pamt_pages[0]),
				 (int64_t)page_to_phys(pamt_pages[1]));
}

u64 shmpamt_pamt_remove_pages(kvm_pfn_t pfn, struct page **pamt_pages)
{
	u64 err = shmpamt_pamt_remove(shmpamt_pfn_2m_arg(pfn));

	if (err)
		return err;
	/* the pages travel in rdx and r8 */
	pamt_pages[0] = shmpamt_pool_page((phys_addr_t)shmpamt_cur->out1);
	pamt_pages[1] = shmpamt_pool_page((phys_addr_t)shmpamt_cur->out2);
	return TDX_SUCCESS;
}

/* ---- the crash note ----------------------------------------------------- */

/*
 * When the variant faults, say which CPU, which function and which
 * primitive it last called, on stderr and (once armed) in a buffer the
 * runner reads after the process died: a little-endian u16 length, then
 * UTF-8 text, the format of the CPU board's message slots. Only
 * async-signal-safe calls are made here.
 */
static char *shmpamt_crash_buf;
static uint32_t shmpamt_crash_size;
static char shmpamt_crash_prefix[256];
static struct sigaction shmpamt_old_actions[NSIG];
static volatile sig_atomic_t shmpamt_handling;

static const int shmpamt_fatal_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };

static size_t shmpamt_append(char *dst, size_t at, size_t cap, const char *s)
{
	while (*s && at + 1 < cap)
		dst[at++] = *s++;
	dst[at] = 0;
	return at;
}

static size_t shmpamt_append_int(char *dst, size_t at, size_t cap, long v)
{
	char digits[24];
	int n = 0;
	unsigned long u = v < 0 ? (unsigned long)-v : (unsigned long)v;

	if (v < 0)
		at = shmpamt_append(dst, at, cap, "-");
	do {
		digits[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u && n < (int)sizeof(digits));
	while (n && at + 1 < cap)
		dst[at++] = digits[--n];
	dst[at] = 0;
	return at;
}

static const char *shmpamt_signal_name(int sig)
{
	switch (sig) {
	case SIGSEGV:
		return "SIGSEGV";
	case SIGBUS:
		return "SIGBUS";
	case SIGFPE:
		return "SIGFPE";
	case SIGILL:
		return "SIGILL";
	case SIGABRT:
		return "SIGABRT";
	default:
		return "a fatal signal";
	}
}

static void shmpamt_on_fatal(int sig, siginfo_t *info, void *uctx)
{
	struct shmpamt_ctx *c = shmpamt_cur;
	char note[512];
	size_t n = 0;

	(void)info;
	(void)uctx;
	if (c && !shmpamt_handling) {
		shmpamt_handling = 1;
		n = shmpamt_append(note, n, sizeof(note), shmpamt_crash_prefix);
		n = shmpamt_append(note, n, sizeof(note), shmpamt_signal_name(sig));
		n = shmpamt_append(note, n, sizeof(note), " in ");
		n = shmpamt_append(note, n, sizeof(note), c->in_fn ? c->in_fn : "the C variant");
		if (c->last_op >= 0 && c->last_op < SHMPAMT_NR_OPS) {
			n = shmpamt_append(note, n, sizeof(note), ", last primitive ");
			n = shmpamt_append(note, n, sizeof(note), shmpamt_op_names[c->last_op]);
			if (c->last_target >= 0) {
				n = shmpamt_append(note, n, sizeof(note), " on refcount ");
				n = shmpamt_append_int(note, n, sizeof(note), c->last_target);
			}
		} else {
			n = shmpamt_append(note, n, sizeof(note), ", before any primitive");
		}
		if (shmpamt_crash_buf && shmpamt_crash_size > 2) {
			size_t len = n < shmpamt_crash_size - 2 ? n : shmpamt_crash_size - 2;

			memcpy(shmpamt_crash_buf + 2, note, len);
			shmpamt_crash_buf[0] = (char)(len & 0xff);
			shmpamt_crash_buf[1] = (char)(len >> 8);
		}
		note[n < sizeof(note) - 1 ? n++ : n - 1] = '\n';
		if (write(2, note, n) < 0) {
			/* nothing left to tell it to */
		}
	}
	/* Let the previous handler (faulthandler, or the default) finish the job. */
	sigaction(sig, &shmpamt_old_actions[sig], NULL);
	if (sig == SIGABRT)
		raise(sig);
	/* a synchronous fault re-executes the faulting instruction and dies */
}

int shmpamt_arm_crash(char *buf, uint32_t size, const char *prefix)
{
	static int installed;
	struct sigaction sa;

	shmpamt_crash_buf = buf;
	shmpamt_crash_size = size;
	strncpy(shmpamt_crash_prefix, prefix, sizeof(shmpamt_crash_prefix) - 1);
	if (installed)
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = shmpamt_on_fatal;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(shmpamt_fatal_signals) / sizeof(int); i++) {
		int sig = shmpamt_fatal_signals[i];

		if (sigaction(sig, &sa, &shmpamt_old_actions[sig]))
			return -1;
	}
	installed = 1;
	return 0;
}
