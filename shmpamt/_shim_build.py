"""Build script for ``shmpamt._atomic_shim`` (cffi API mode, run by setup.py).

The shim executes no atomic instruction of its own: it only holds patomic's
function pointers (from the ``atomics`` package) and runs the kernel's
read/cmpxchg loops in C, so one kernel operation costs one Python call
instead of three or four libffi calls.
"""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void shim_init(uintptr_t fetch_add, uintptr_t cmpxchg);
    int32_t shim_read(int32_t *p);
    void shim_set(int32_t *p, int32_t v);
    int32_t shim_fetch_add(int32_t *p, int32_t a);
    int32_t shim_cmpxchg(int32_t *p, int32_t old, int32_t new_);
    int shim_add_unless(int32_t *p, int32_t a, int32_t u);
    int shim_inc_not_zero(int32_t *p);
    int shim_inc_unless_negative(int32_t *p);
    int shim_dec_unless_positive(int32_t *p);
    int32_t shim_dec_if_positive(int32_t *p);
    """
)
ffibuilder.set_source(
    "shmpamt._atomic_shim",
    r"""
#include <stdint.h>
typedef void (*fetch_fn)(volatile void *, const void *, int, void *);
typedef int (*cmpxchg_fn)(volatile void *, void *, const void *, int, int);
#define SEQ_CST 5
static fetch_fn fa;
static cmpxchg_fn cx;

void shim_init(uintptr_t fetch_add, uintptr_t cmpxchg)
{
    fa = (fetch_fn)fetch_add;
    cx = (cmpxchg_fn)cmpxchg;
}
/* two's-complement wrap without signed-overflow UB */
static inline int32_t add32(int32_t v, int32_t a)
{
    return (int32_t)((uint32_t)v + (uint32_t)a);
}
int32_t shim_read(int32_t *p) { return *(volatile int32_t *)p; }
void shim_set(int32_t *p, int32_t v) { *(volatile int32_t *)p = v; }
int32_t shim_fetch_add(int32_t *p, int32_t a)
{
    int32_t old;
    fa(p, &a, SEQ_CST, &old);
    return old;
}
int32_t shim_cmpxchg(int32_t *p, int32_t old, int32_t new_)
{
    cx(p, &old, &new_, SEQ_CST, SEQ_CST);
    return old; /* unchanged on success, the seen value on failure */
}
int shim_add_unless(int32_t *p, int32_t a, int32_t u)
{
    int32_t c = *(volatile int32_t *)p, n;
    do {
        if (c == u)
            return 0;
        n = add32(c, a);
    } while (!cx(p, &c, &n, SEQ_CST, SEQ_CST));
    return 1;
}
int shim_inc_not_zero(int32_t *p) { return shim_add_unless(p, 1, 0); }
int shim_inc_unless_negative(int32_t *p)
{
    int32_t c = *(volatile int32_t *)p, n;
    do {
        if (c < 0)
            return 0;
        n = add32(c, 1);
    } while (!cx(p, &c, &n, SEQ_CST, SEQ_CST));
    return 1;
}
int shim_dec_unless_positive(int32_t *p)
{
    int32_t c = *(volatile int32_t *)p, n;
    do {
        if (c > 0)
            return 0;
        n = add32(c, -1);
    } while (!cx(p, &c, &n, SEQ_CST, SEQ_CST));
    return 1;
}
int32_t shim_dec_if_positive(int32_t *p)
{
    int32_t c = *(volatile int32_t *)p, n;
    do {
        n = add32(c, -1);
        if (n < 0)
            break;
    } while (!cx(p, &c, &n, SEQ_CST, SEQ_CST));
    return n;
}
""",
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
