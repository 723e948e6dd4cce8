/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * The two functions Python calls, included after the variant and
 * runtime.c. SHMPAMT_GET_FN / SHMPAMT_PUT_FN name the variant's helpers;
 * a compile error in this file means the variant lacks one of them or
 * gave it another signature than the seed patch's.
 */
#include <shmpamt/kernel.h>

/* ---- entry points ------------------------------------------------------- */

/*
 * Run one helper with @ctx current. A callback that raised longjmps back
 * here (ctx->unwound set); Python then re-raises what it caught. Nested
 * entries (a scripted hook running another CPU's helper) save and restore
 * the current context and unwind target.
 */
int64_t shmpamt_entry_get(struct shmpamt_ctx *ctx, uint64_t hpa)
{
	struct shmpamt_ctx *prev = shmpamt_cur;
	jmp_buf *prev_env = ctx->env;
	const char *prev_fn = ctx->in_fn;
	struct page guest = { .shmpamt_phys = hpa };
	jmp_buf env;
	volatile int64_t ret = 0;

	INIT_LIST_HEAD(&guest.lru);
	ctx->env = &env;
	ctx->unwound = 0;
	ctx->in_fn = "tdx_pamt_get";
	shmpamt_cur = ctx;
	if (setjmp(env) == 0)
		ret = SHMPAMT_GET_FN(&guest);
	ctx->env = prev_env;
	ctx->in_fn = prev_fn;
	shmpamt_cur = prev;
	return ret;
}

void shmpamt_entry_put(struct shmpamt_ctx *ctx, uint64_t hpa)
{
	struct shmpamt_ctx *prev = shmpamt_cur;
	jmp_buf *prev_env = ctx->env;
	const char *prev_fn = ctx->in_fn;
	struct page guest = { .shmpamt_phys = hpa };
	jmp_buf env;

	INIT_LIST_HEAD(&guest.lru);
	ctx->env = &env;
	ctx->unwound = 0;
	ctx->in_fn = "tdx_pamt_put";
	shmpamt_cur = ctx;
	if (setjmp(env) == 0)
		SHMPAMT_PUT_FN(&guest);
	ctx->env = prev_env;
	ctx->in_fn = prev_fn;
	shmpamt_cur = prev;
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
		err = shmpamt_entry_get(ctx, page);
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
