/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * The functions Python calls, included after the variant and runtime.c.
 * SHMPAMT_GET_FN / SHMPAMT_PUT_FN name the variant's helpers (and
 * SHMPAMT_TOPUP_FN / SHMPAMT_FREE_CACHE_FN its cache functions, weak: NULL
 * when it has none); a compile error in this file means the variant lacks
 * one of them or gave it a shape the rig does not know.
 */
#include <shmpamt/kernel.h>

/* ---- the helpers' shapes ------------------------------------------------- */

/*
 * The seed's int tdx_pamt_get(struct page *) and void tdx_pamt_put(struct
 * page *), or v6's pfn API: int tdx_pamt_get(kvm_pfn_t[, struct
 * tdx_pamt_cache *]) and void tdx_pamt_put(kvm_pfn_t). The shape is read
 * from the functions' types; each is called with its own type.
 */
#define SHMPAMT_IS(fn, type) __builtin_types_compatible_p(__typeof__(fn), type)
#define SHMPAMT_GET_PAGE SHMPAMT_IS(SHMPAMT_GET_FN, int(struct page *))
#define SHMPAMT_GET_PFN SHMPAMT_IS(SHMPAMT_GET_FN, int(kvm_pfn_t))
#define SHMPAMT_GET_CACHE SHMPAMT_IS(SHMPAMT_GET_FN, int(kvm_pfn_t, struct tdx_pamt_cache *))
#define SHMPAMT_PUT_PAGE SHMPAMT_IS(SHMPAMT_PUT_FN, void(struct page *))
#define SHMPAMT_PUT_PFN SHMPAMT_IS(SHMPAMT_PUT_FN, void(kvm_pfn_t))

_Static_assert(SHMPAMT_GET_PAGE || SHMPAMT_GET_PFN || SHMPAMT_GET_CACHE,
	       "shmpamt: tdx_pamt_get must be int (struct page *), int (kvm_pfn_t) "
	       "or int (kvm_pfn_t, struct tdx_pamt_cache *)");
_Static_assert(SHMPAMT_PUT_PAGE || SHMPAMT_PUT_PFN,
	       "shmpamt: tdx_pamt_put must be void (struct page *) or void (kvm_pfn_t)");

/*
 * Stand-ins of each shape. __builtin_choose_expr() picks the variant's own
 * function when its shape matches and a stand-in otherwise, so every call
 * below is made with the callee's exact type; the stand-ins are never run.
 */
static __attribute__((unused)) int shmpamt_no_get_page(struct page *page)
{
	shmpamt_bug("tdx_pamt_get(struct page *) called on a helper of another shape");
}

static __attribute__((unused)) int shmpamt_no_get_pfn(kvm_pfn_t pfn)
{
	shmpamt_bug("tdx_pamt_get(kvm_pfn_t) called on a helper of another shape");
}

static __attribute__((unused)) int shmpamt_no_get_cache(kvm_pfn_t pfn,
							 struct tdx_pamt_cache *cache)
{
	shmpamt_bug("tdx_pamt_get(kvm_pfn_t, cache) called on a helper of another shape");
}

static __attribute__((unused)) void shmpamt_no_put_page(struct page *page)
{
	shmpamt_bug("tdx_pamt_put(struct page *) called on a helper of another shape");
}

static __attribute__((unused)) void shmpamt_no_put_pfn(kvm_pfn_t pfn)
{
	shmpamt_bug("tdx_pamt_put(kvm_pfn_t) called on a helper of another shape");
}

#define SHMPAMT_AS(shape, fn, stand_in) __builtin_choose_expr(shape, fn, stand_in)

/* A weak function's address: NULL when the variant does not define it. */
static int shmpamt_defined(const void *fn)
{
	return fn != NULL;
}

/* What Python needs to know of the helpers (SHMPAMT_API_* bits). */
int shmpamt_api(void)
{
	return (SHMPAMT_GET_PFN || SHMPAMT_GET_CACHE ? SHMPAMT_API_PFN : 0) |
	       (SHMPAMT_GET_CACHE ? SHMPAMT_API_CACHE : 0) |
	       (shmpamt_defined((const void *)SHMPAMT_TOPUP_FN) ? SHMPAMT_API_TOPUP : 0) |
	       (shmpamt_defined((const void *)SHMPAMT_FREE_CACHE_FN) ? SHMPAMT_API_FREE_CACHE : 0);
}

/* ---- entry points ------------------------------------------------------- */

struct shmpamt_call_args {
	uint64_t hpa;
	struct tdx_pamt_cache *cache;
	uint64_t n;
};

typedef int64_t (*shmpamt_body_t)(struct shmpamt_call_args *args);

/*
 * Run one variant function with @ctx current. A callback that raised
 * longjmps back here (ctx->unwound set); Python then re-raises what it
 * caught. Nested entries (a scripted hook running another CPU's helper)
 * save and restore the current context and unwind target.
 */
static int64_t shmpamt_run(struct shmpamt_ctx *ctx, const char *fn, shmpamt_body_t body,
			   struct shmpamt_call_args *args)
{
	struct shmpamt_ctx *prev = shmpamt_cur;
	jmp_buf *prev_env = ctx->env;
	const char *prev_fn = ctx->in_fn;
	jmp_buf env;
	volatile int64_t ret = 0;

	ctx->env = &env;
	ctx->unwound = 0;
	ctx->in_fn = fn;
	shmpamt_cur = ctx;
	if (setjmp(env) == 0)
		ret = body(args);
	ctx->env = prev_env;
	ctx->in_fn = prev_fn;
	shmpamt_cur = prev;
	return ret;
}

static int64_t shmpamt_body_get(struct shmpamt_call_args *args)
{
	struct page guest = { .shmpamt_phys = args->hpa };
	kvm_pfn_t pfn = args->hpa >> PAGE_SHIFT;

	INIT_LIST_HEAD(&guest.lru);
	if (SHMPAMT_GET_CACHE)
		return SHMPAMT_AS(SHMPAMT_GET_CACHE, SHMPAMT_GET_FN, shmpamt_no_get_cache)(pfn,
											 args->cache);
	if (SHMPAMT_GET_PFN)
		return SHMPAMT_AS(SHMPAMT_GET_PFN, SHMPAMT_GET_FN, shmpamt_no_get_pfn)(pfn);
	return SHMPAMT_AS(SHMPAMT_GET_PAGE, SHMPAMT_GET_FN, shmpamt_no_get_page)(&guest);
}

static int64_t shmpamt_body_put(struct shmpamt_call_args *args)
{
	struct page guest = { .shmpamt_phys = args->hpa };

	INIT_LIST_HEAD(&guest.lru);
	if (SHMPAMT_PUT_PFN)
		SHMPAMT_AS(SHMPAMT_PUT_PFN, SHMPAMT_PUT_FN, shmpamt_no_put_pfn)(args->hpa >>
										 PAGE_SHIFT);
	else
		SHMPAMT_AS(SHMPAMT_PUT_PAGE, SHMPAMT_PUT_FN, shmpamt_no_put_page)(&guest);
	return 0;
}

static int64_t shmpamt_body_topup(struct shmpamt_call_args *args)
{
	return SHMPAMT_TOPUP_FN(args->cache, (unsigned long)args->n);
}

static int64_t shmpamt_body_free_cache(struct shmpamt_call_args *args)
{
	SHMPAMT_FREE_CACHE_FN(args->cache);
	return 0;
}

/* @cache: NULL (the page allocator) or the CPU's cache, for a get that takes one. */
int64_t shmpamt_entry_get(struct shmpamt_ctx *ctx, uint64_t hpa, struct tdx_pamt_cache *cache)
{
	struct shmpamt_call_args args = { .hpa = hpa, .cache = cache };

	return shmpamt_run(ctx, "tdx_pamt_get", shmpamt_body_get, &args);
}

void shmpamt_entry_put(struct shmpamt_ctx *ctx, uint64_t hpa)
{
	struct shmpamt_call_args args = { .hpa = hpa };

	shmpamt_run(ctx, "tdx_pamt_put", shmpamt_body_put, &args);
}

/* Only called when shmpamt_api() says the variant defines it. */
int64_t shmpamt_entry_topup(struct shmpamt_ctx *ctx, struct tdx_pamt_cache *cache, uint64_t n)
{
	struct shmpamt_call_args args = { .cache = cache, .n = n };

	return shmpamt_run(ctx, "tdx_topup_pamt_cache", shmpamt_body_topup, &args);
}

void shmpamt_entry_free_cache(struct shmpamt_ctx *ctx, struct tdx_pamt_cache *cache)
{
	struct shmpamt_call_args args = { .cache = cache };

	shmpamt_run(ctx, "tdx_free_pamt_cache", shmpamt_body_free_cache, &args);
}

void shmpamt_entry_init_cache(struct tdx_pamt_cache *cache)
{
	tdx_init_pamt_cache(cache);
}

/*
 * Free-running stress without a hook, protocol only: get then put on pages
 * drawn from @pages, for up to @n pairs, with no Python between them. Only
 * what needs Python anyway (SEAMCALLs, pamt_lock waits, the page pool) calls
 * back. The loop ends early when *@stop turns nonzero, when a get fails
 * (Python judges the error: an injected fault or get_failed) or when a
 * callback raised. out[0]: pairs completed; out[1]: the page of a failed get;
 * out[2]: the generator state to continue from. Returns the failed get's
 * error, else 0.
 */
int64_t shmpamt_entry_pairs(struct shmpamt_ctx *ctx, const uint64_t *pages, uint32_t npages,
			    uint64_t n, const volatile int32_t *stop, int32_t *iterations,
			    uint64_t *out)
{
	uint64_t x = out[2] ? out[2] : 0x9E3779B97F4A7C15ull;
	uint64_t done = 0;
	int64_t err = 0;

	out[1] = 0;
	while (done < n && !*stop) {
		uint64_t page;

		/* xorshift64: a page pick costs a few instructions */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		page = pages[x % npages];
		err = shmpamt_entry_get(ctx, page, NULL);
		if (ctx->unwound)
			break;
		if (err) {
			out[1] = page;
			break;
		}
		shmpamt_entry_put(ctx, page);
		if (ctx->unwound)
			break;
		done++;
		__atomic_fetch_add(iterations, 1, __ATOMIC_RELAXED);
	}
	out[0] = done;
	out[2] = x;
	return err;
}
