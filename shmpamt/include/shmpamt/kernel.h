/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * shmpamt's kernel flavour: just enough of the kernel's vocabulary for the
 * TDX Dynamic PAMT tdx_pamt_get()/tdx_pamt_put() helpers to compile as
 * posted, after this one include.
 *
 * Everything here is shmpamt's own implementation of the kernel's
 * documented behaviour, not kernel code. Each primitive is a scheduling
 * point of the rig: it goes through the same Kernel hook as the Python
 * variants (explore parks before it, chaos delays it, the timeline shows
 * it). With no hook, the atomics run here in C on the shared refcount
 * array through the rig's atomic shim; lock, page allocator and SEAMCALLs
 * always go through Python.
 *
 * What is missing on purpose (see docs/variants.md): real spinning,
 * interrupts, per-CPU data, memory barriers beyond the atomics' own
 * (every value-returning atomic is sequentially consistent), and any
 * atomic_t that is not a PAMT refcount.
 */
#ifndef SHMPAMT_KERNEL_H
#define SHMPAMT_KERNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <shmpamt/runtime.h>

/* ---- types ------------------------------------------------------------ */

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int8_t s8;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;
typedef u64 phys_addr_t;
typedef unsigned int gfp_t;
/* A host page frame number, as KVM hands it to the v6 helpers. */
typedef u64 kvm_pfn_t;

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define __always_unused __attribute__((unused))
#define __maybe_unused __attribute__((unused))
/* The module exports of the series: nothing to export here. */
#define EXPORT_SYMBOL_FOR_KVM(sym) extern int shmpamt_exported_##sym

/* ---- errno ------------------------------------------------------------ */

#ifndef EIO
#define EIO 5
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef EBUSY
#define EBUSY 16
#endif
#ifndef EINVAL
#define EINVAL 22
#endif

/* ---- sizes ------------------------------------------------------------ */

#define PAGE_SHIFT 12
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#define SZ_4K 0x00001000UL
#define SZ_2M 0x00200000UL
#define SZ_1G 0x40000000UL
#define PTRS_PER_PTE 512
#define ALIGN_DOWN(x, a) ((x) & ~((__typeof__(x))(a) - 1))
#define ALIGN(x, a) ALIGN_DOWN((x) + (__typeof__(x))(a) - 1, (a))
#define IS_ALIGNED(x, a) (((x) & ((__typeof__(x))(a) - 1)) == 0)
#define BIT_ULL(n) (1ULL << (n))
#define GENMASK_ULL(h, l) ((~0ULL << (l)) & (~0ULL >> (63 - (h))))

/* ---- reporting -------------------------------------------------------- */

void shmpamt_pr_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void shmpamt_warn(const char *cond, const char *file, int line);
void shmpamt_pr_tdx_error(const char *leaf, u64 err);
__attribute__((noreturn)) void shmpamt_bug(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

/* Counted by the rig as a warning (like Kernel.pr_err), not a scheduling point. */
#define pr_err(fmt, ...) shmpamt_pr_err(fmt, ##__VA_ARGS__)
#define pr_warn(fmt, ...) shmpamt_pr_err(fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...) ((void)0)
#define pr_debug(fmt, ...) ((void)0)
/* One warning per failed SEAMCALL, "<leaf> failed: <status name>". */
#define pr_tdx_error(leaf, err) shmpamt_pr_tdx_error(#leaf, (err))
/* Like Kernel.WARN_ON_ONCE: counted every time the condition holds. */
#define WARN_ON_ONCE(cond)                                              \
	({                                                              \
		bool __warn_c = !!(cond);                               \
		if (unlikely(__warn_c))                                 \
			shmpamt_warn(#cond, __FILE__, __LINE__);        \
		__warn_c;                                               \
	})
#define WARN_ON(cond) WARN_ON_ONCE(cond)
/* A BUG stops the run's CPU with an internal error naming the condition. */
#define BUG_ON(cond)                                                    \
	do {                                                            \
		if (unlikely(cond))                                     \
			shmpamt_bug("BUG_ON(%s) at %s:%d", #cond,       \
				    __FILE__, __LINE__);                \
	} while (0)

/* ---- lists ------------------------------------------------------------ */

struct list_head {
	struct list_head *next, *prev;
};

#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))
#define LIST_HEAD_INIT(name) { &(name), &(name) }
#define LIST_HEAD(name) struct list_head name = LIST_HEAD_INIT(name)

static inline void INIT_LIST_HEAD(struct list_head *h)
{
	h->next = h;
	h->prev = h;
}

/* Splice @n in between two adjacent entries. */
static inline void shmpamt_list_link(struct list_head *n, struct list_head *before,
				     struct list_head *after)
{
	n->prev = before;
	n->next = after;
	before->next = n;
	after->prev = n;
}

/* Insert at the front: the list is then in reverse order of insertion. */
static inline void list_add(struct list_head *n, struct list_head *head)
{
	shmpamt_list_link(n, head, head->next);
}

/* Insert at the back: the list keeps insertion order. */
static inline void list_add_tail(struct list_head *n, struct list_head *head)
{
	shmpamt_list_link(n, head->prev, head);
}

static inline void list_del(struct list_head *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
	/* Poison, so a use after list_del() faults instead of walking on. */
	e->next = NULL;
	e->prev = NULL;
}

static inline void list_del_init(struct list_head *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
	INIT_LIST_HEAD(e);
}

static inline int list_empty(const struct list_head *head)
{
	return head->next == head;
}

#define list_entry(ptr, type, member) container_of(ptr, type, member)
#define list_first_entry(head, type, member) list_entry((head)->next, type, member)
#define list_first_entry_or_null(head, type, member) \
	(list_empty(head) ? NULL : list_first_entry(head, type, member))
#define list_next_entry(pos, member) \
	list_entry((pos)->member.next, __typeof__(*(pos)), member)
#define list_for_each(pos, head) \
	for (pos = (head)->next; pos != (head); pos = pos->next)
#define list_for_each_entry(pos, head, member)                              \
	for (pos = list_first_entry(head, __typeof__(*pos), member);        \
	     &pos->member != (head); pos = list_next_entry(pos, member))
#define list_for_each_entry_safe(pos, n, head, member)                      \
	for (pos = list_first_entry(head, __typeof__(*pos), member),        \
	     n = list_next_entry(pos, member);                              \
	     &pos->member != (head); pos = n, n = list_next_entry(n, member))

/* ---- pages ------------------------------------------------------------ */

/*
 * A page descriptor. Guest pages handed to tdx_pamt_get()/put() and PAMT
 * pages from alloc_page() carry their physical address; PAMT pages live in
 * one descriptor table indexed by their place in the rig's page pool, so
 * the pages PAMT.REMOVE returns are the very descriptors that were added.
 */
struct page {
	phys_addr_t shmpamt_phys;
	struct list_head lru;
};

#define GFP_KERNEL 0x0cc0u
#define GFP_ATOMIC 0x0820u
#define __GFP_ZERO 0x100u
#define __GFP_ACCOUNT 0x400000u
#define GFP_KERNEL_ACCOUNT (GFP_KERNEL | __GFP_ACCOUNT)

static inline phys_addr_t page_to_phys(const struct page *page)
{
	return page->shmpamt_phys;
}

static inline kvm_pfn_t page_to_pfn(const struct page *page)
{
	return page->shmpamt_phys >> PAGE_SHIFT;
}

struct page *shmpamt_alloc_page(gfp_t gfp);
void shmpamt_free_page(struct page *page);
struct page *shmpamt_pool_page(phys_addr_t hpa);

/* Kernel.alloc_page(): NULL when the pool is empty or a failure is injected. */
#define alloc_page(gfp) shmpamt_alloc_page(gfp)
#define __free_page(page) shmpamt_free_page(page)
#define pfn_to_page(pfn) shmpamt_pool_page((phys_addr_t)(pfn) << PAGE_SHIFT)
#define phys_to_page(hpa) shmpamt_pool_page(hpa)

/* ---- atomic_t --------------------------------------------------------- */

/* Only the rig's refcounts (from tdx_get_pamt_refcount()) are atomic_t. */
typedef struct {
	int counter;
} atomic_t;

#define ATOMIC_INIT(i) { (i) }

extern struct shmpamt_ctx *shmpamt_cur;
s32 shmpamt_atomic_py(int op, const atomic_t *v, s32 a, s32 b);

/*
 * The refcount word behind @v, noting the primitive for the crash report.
 * NULL means "go through the Python Kernel" (a hook runs, or no shim).
 */
static inline int32_t *shmpamt_word(int op, const atomic_t *v)
{
	struct shmpamt_ctx *c = shmpamt_cur;
	uintptr_t idx = (uintptr_t)(v - (const atomic_t *)c->refcounts);

	c->last_op = op;
	c->last_target = (int32_t)idx;
	if (unlikely(idx >= c->nr_refcounts))
		shmpamt_bug("atomic_t at %p is not a PAMT refcount", (const void *)v);
	if (unlikely(c->hooked || !c->ops))
		return NULL;
	return &c->refcounts[idx];
}

static inline s32 shmpamt_add32(s32 v, s32 a)
{
	return (s32)((u32)v + (u32)a);
}

static inline int atomic_read(const atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_READ, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_READ, v, 0, 0);
	return *(volatile int32_t *)p;
}

static inline void atomic_set(atomic_t *v, int i)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_SET, v);

	if (!p)
		shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_SET, v, i, 0);
	else
		*(volatile int32_t *)p = i;
}

/* Kai's sketch writes atomic_inc(v, 0); the extra argument is ignored. */
#define atomic_inc(v, ...) shmpamt_atomic_inc(v)
static inline void shmpamt_atomic_inc(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_INC, v);

	if (!p)
		shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_INC, v, 0, 0);
	else
		shmpamt_cur->ops->fetch_add(p, 1);
}

static inline void atomic_dec(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_DEC, v);

	if (!p)
		shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_DEC, v, 0, 0);
	else
		shmpamt_cur->ops->fetch_add(p, -1);
}

static inline int atomic_inc_return(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_INC_RETURN, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_INC_RETURN, v, 0, 0);
	return shmpamt_add32(shmpamt_cur->ops->fetch_add(p, 1), 1);
}

static inline int atomic_dec_return(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_DEC_RETURN, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_DEC_RETURN, v, 0, 0);
	return shmpamt_add32(shmpamt_cur->ops->fetch_add(p, -1), -1);
}

static inline bool atomic_dec_and_test(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_DEC_AND_TEST, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_DEC_AND_TEST, v, 0, 0);
	/* the old value was 1 exactly when the new one is 0 */
	return shmpamt_cur->ops->fetch_add(p, -1) == 1;
}

static inline bool atomic_inc_not_zero(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_INC_NOT_ZERO, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_INC_NOT_ZERO, v, 0, 0);
	return shmpamt_cur->ops->inc_not_zero(p);
}

static inline bool atomic_add_unless(atomic_t *v, int a, int u)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_ADD_UNLESS, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_ADD_UNLESS, v, a, u);
	return shmpamt_cur->ops->add_unless(p, a, u);
}

static inline bool atomic_inc_unless_negative(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_INC_UNLESS_NEGATIVE, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_INC_UNLESS_NEGATIVE, v, 0, 0);
	return shmpamt_cur->ops->inc_unless_negative(p);
}

static inline bool atomic_dec_unless_positive(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_DEC_UNLESS_POSITIVE, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_DEC_UNLESS_POSITIVE, v, 0, 0);
	return shmpamt_cur->ops->dec_unless_positive(p);
}

/* old - 1, whether or not it was stored (stored only when >= 0) */
static inline int atomic_dec_if_positive(atomic_t *v)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_DEC_IF_POSITIVE, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_DEC_IF_POSITIVE, v, 0, 0);
	return shmpamt_cur->ops->dec_if_positive(p);
}

/* the value seen; equal to @old exactly when @new was stored */
static inline int atomic_cmpxchg(atomic_t *v, int old, int new_)
{
	int32_t *p = shmpamt_word(SHMPAMT_OP_ATOMIC_CMPXCHG, v);

	if (!p)
		return shmpamt_atomic_py(SHMPAMT_OP_ATOMIC_CMPXCHG, v, old, new_);
	return shmpamt_cur->ops->cmpxchg(p, old, new_);
}

/* ---- pamt_lock -------------------------------------------------------- */

/* Every spinlock_t stands for the rig's one pamt_lock (a process-shared lock). */
typedef struct {
	int shmpamt_unused;
} spinlock_t;

#define __SPIN_LOCK_UNLOCKED(name) { 0 }
#define DEFINE_SPINLOCK(name) spinlock_t name = __SPIN_LOCK_UNLOCKED(name)

void shmpamt_spin_lock(spinlock_t *lock);
void shmpamt_spin_unlock(spinlock_t *lock);
#define spin_lock(lock) shmpamt_spin_lock(lock)
#define spin_unlock(lock) shmpamt_spin_unlock(lock)
#define spin_lock_init(lock) ((void)(lock))

/*
 * scoped_guard(spinlock, &lock) { ... }: the block runs with @lock held, and
 * every way out of it (its end, break, return, goto) releases the lock, by
 * the compiler's cleanup attribute on a variable the for statement declares.
 */
typedef spinlock_t *shmpamt_guard_spinlock_t;

static inline shmpamt_guard_spinlock_t shmpamt_guard_spinlock_enter(spinlock_t *lock)
{
	spin_lock(lock);
	return lock;
}

static inline void shmpamt_guard_spinlock_exit(shmpamt_guard_spinlock_t *held)
{
	if (*held)
		spin_unlock(*held);
}

#define scoped_guard(kind, ...)                                                     \
	for (shmpamt_guard_##kind##_t shmpamt_scope                                 \
		     __attribute__((cleanup(shmpamt_guard_##kind##_exit))) =         \
		     shmpamt_guard_##kind##_enter(__VA_ARGS__),                      \
		     *shmpamt_scope_done = NULL;                                     \
	     !shmpamt_scope_done; shmpamt_scope_done = (void *)1)

/*
 * Decrement unless that would reach 0; otherwise take @lock and decrement:
 * true (lock held) exactly when this call took @v to 0. Built from the
 * hooked primitives in the same order as Kernel.atomic_dec_and_lock.
 */
static inline bool atomic_dec_and_lock(atomic_t *v, spinlock_t *lock)
{
	if (atomic_add_unless(v, -1, 1))
		return false;
	spin_lock(lock);
	if (atomic_dec_and_test(v))
		return true;
	spin_unlock(lock);
	return false;
}

/* ---- TDX -------------------------------------------------------------- */

/* SEAMCALL leaves */
#define TDH_MEM_PAGE_AUG 6
#define TDH_PHYMEM_PAGE_RECLAIM 28
#define TDH_PHYMEM_PAMT_ADD 58
#define TDH_PHYMEM_PAMT_REMOVE 59

/* page size in the low bits of rcx */
#define TDX_PS_4K 0
#define TDX_PS_2M 1
#define TDX_PS_1G 2

/* status words: bit 63 = error, the upper 32 bits = the class */
#define TDX_ERROR BIT_ULL(63)
#define TDX_SEAMCALL_STATUS_MASK 0xFFFFFFFF00000000ULL
#define TDX_SUCCESS 0ULL
/* the TDX module's own codes (intel/tdx-module tdx_error_codes_defs.h) */
#define TDX_OPERAND_INVALID 0xC000010000000000ULL
#define TDX_OPERAND_ADDR_RANGE_ERROR 0xC000010100000000ULL
#define TDX_OPERAND_BUSY 0x8000020000000000ULL
#define TDX_PAGE_METADATA_INCORRECT 0xC000030000000000ULL
#define TDX_PAGE_NOT_FREE 0xC000030300000000ULL
#define TDX_HPA_RANGE_NOT_FREE 0xC000030400000000ULL
#define TDX_NO_PAMT_PAGE_PAIR 0xC000030500000000ULL
#define TDX_PAMT_PAGE_NOT_EMPTY 0xC000030600000000ULL
#define TDX_MISSING_PAMT_PAGE_PAIR 0x8000030800000000ULL
#define TDX_SW_ERROR (TDX_ERROR | GENMASK_ULL(47, 40))

struct tdx_sys_info_tdmr {
	u16 pamt_4k_entry_size;
};

struct tdx_sys_info {
	struct tdx_sys_info_tdmr tdmr;
};

/*
 * The emulated module: Dynamic PAMT, 16-byte 4K PAMT entries. An array of
 * one, so that KVM's spelling (tdx_sysinfo, a pointer) and arch/x86's
 * (&tdx_sysinfo, the address of the struct) both name it.
 */
static const struct tdx_sys_info tdx_sysinfo[1] = { { .tdmr = { .pamt_4k_entry_size = 16 } } };

/* tdx_sysinfo or &tdx_sysinfo as a struct pointer; any other type is an error. */
#define shmpamt_sysinfo_ptr(s)                                                 \
	_Generic((s),                                                          \
		const struct tdx_sys_info(*)[1]: (const struct tdx_sys_info *)(s), \
		default: (s))

static inline bool shmpamt_supports_dynamic_pamt(const struct tdx_sys_info *sysinfo)
{
	(void)sysinfo;
	return true;
}
#define tdx_supports_dynamic_pamt(s) shmpamt_supports_dynamic_pamt(shmpamt_sysinfo_ptr(s))

/* PAMT pages one 2M range needs: 512 entries of 16 bytes = two 4K pages. */
static inline int shmpamt_nr_pamt_pages(const struct tdx_sys_info *sysinfo)
{
	return sysinfo->tdmr.pamt_4k_entry_size * PTRS_PER_PTE / PAGE_SIZE;
}
#define tdx_nr_pamt_pages(s) shmpamt_nr_pamt_pages(shmpamt_sysinfo_ptr(s))

/* The same count as the v6 series spells it (a constant there). */
#define TDX_DPAMT_ENTRY_PAGE_CNT 2

/* The refcount of the 2M range holding @hpa (guest memory starts at 0). */
static inline atomic_t *tdx_get_pamt_refcount(unsigned long hpa)
{
	return (atomic_t *)shmpamt_cur->refcounts + hpa / SZ_2M;
}

/* v6's lookup by page frame number: the range is pfn >> (21 - 12). */
static inline atomic_t *tdx_find_pamt_refcount(unsigned long pfn)
{
	return tdx_get_pamt_refcount(pfn << PAGE_SHIFT);
}

/*
 * The kernel clears a page the module may have written. The rig keeps no
 * page contents, so nothing is cleared and no step is taken; a call that is
 * not whole pages is a BUG.
 */
static inline void tdx_quirk_reset_paddr(unsigned long base, unsigned long size)
{
	BUG_ON(!IS_ALIGNED(base, PAGE_SIZE) || !size || !IS_ALIGNED(size, PAGE_SIZE));
}

/*
 * v6 08/11: PAMT pages allocated ahead, outside any lock, for gets made
 * under one. The variant defines tdx_topup_pamt_cache() and
 * tdx_free_pamt_cache() (the series has them in tdx.c); the rig calls them
 * for a tdx_pamt_get(kvm_pfn_t, struct tdx_pamt_cache *).
 */
struct tdx_pamt_cache {
	struct list_head page_list;
	int cnt;
};

static inline void tdx_init_pamt_cache(struct tdx_pamt_cache *cache)
{
	INIT_LIST_HEAD(&cache->page_list);
	cache->cnt = 0;
}

void tdx_free_pamt_cache(struct tdx_pamt_cache *cache);
int tdx_topup_pamt_cache(struct tdx_pamt_cache *cache, unsigned long npages);

/*
 * The SEAMCALL wrappers, in the two shapes the postings use, told apart by
 * the page argument:
 *
 * tdh_phymem_pamt_add(hpa | TDX_PS_2M, &list): PAMT.ADD of that 2M range
 * with the first two pages of the list (rdx, r8); the list is left as it is.
 * tdh_phymem_pamt_remove(hpa | TDX_PS_2M, &list): PAMT.REMOVE; on success
 * the module's two pages (rdx, then r8) are added at the list's tail.
 *
 * tdh_phymem_pamt_add(pfn, pages) (v6, pages a struct page *[2]): PAMT.ADD
 * of the 2M range of @pfn with pages[0], pages[1]. tdh_phymem_pamt_remove(
 * pfn, pages): PAMT.REMOVE; on success pages[0], pages[1] are the module's.
 *
 * Each returns the status word.
 */
u64 shmpamt_pamt_add_list(u64 hpa_ps, struct list_head *pamt_pages);
u64 shmpamt_pamt_remove_list(u64 hpa_ps, struct list_head *pamt_pages);
u64 shmpamt_pamt_add_pages(kvm_pfn_t pfn, struct page **pamt_pages);
u64 shmpamt_pamt_remove_pages(kvm_pfn_t pfn, struct page **pamt_pages);

#define tdh_phymem_pamt_add(arg, pages)                                         \
	_Generic((pages),                                                      \
		struct list_head *: shmpamt_pamt_add_list,                     \
		struct page **: shmpamt_pamt_add_pages)((arg), (pages))
#define tdh_phymem_pamt_remove(arg, pages)                                      \
	_Generic((pages),                                                      \
		struct list_head *: shmpamt_pamt_remove_list,                  \
		struct page **: shmpamt_pamt_remove_pages)((arg), (pages))

#endif /* SHMPAMT_KERNEL_H */
