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
