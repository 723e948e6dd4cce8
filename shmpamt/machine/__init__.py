"""The emulated machine's primitives: shared-memory segments and their names,
hardware atomics on refcounts, pamt_lock, the SEAMCALL transport, the PAMT page
pool, the kernel primitives a variant calls, chaos, the violation log, the janitor."""
