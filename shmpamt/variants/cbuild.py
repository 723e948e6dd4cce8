"""Compile a C variant with cffi (API mode) once per source, and load it anywhere.

Every CPU process resolves the variant spec itself, so compiling must happen
once and loading must be cheap: the extension module is cached under
``$SHMPAMT_CACHE_DIR`` (else ``$XDG_CACHE_HOME/shmpamt``, else
``~/.cache/shmpamt``) by a hash of everything that goes into it, built under an
exclusive ``flock`` and published with an atomic ``rename``, so concurrent
processes (CPUs, xdist workers) either wait or find the finished file, never a
half-written one.

cffi writes the C source; we run the compiler ourselves so its first error can
be turned into one line (``file:line: message``) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

import cffi

from shmpamt.errors import VariantLoadError
from shmpamt.machine.kernel import PRIMITIVES
from shmpamt.records.variant_files import cache_root

_PACKAGE: Final = Path(__file__).resolve().parent.parent
INCLUDE_DIR: Final = _PACKAGE / "include"
CSRC_DIR: Final = _PACKAGE / "csrc"
TWINS_DIR: Final = Path(__file__).resolve().parent / "c"

#: Kernel primitives C reaches through the Python bridge, in op-code order
#: (the values come from runtime.h through the compiled module).
OPS: Final = (
    *PRIMITIVES,
    "pamt_add",
    "pamt_remove",
)
MESSAGES: Final = ("pr_err", "warn", "tdx_error", "bug")

CFLAGS: Final = (
    "-std=gnu11",
    "-O2",
    "-g",
    "-fPIC",
    "-fno-strict-aliasing",
    "-fno-strict-overflow",
    # A missing helper must be an error at compile time, not at dlopen().
    "-Werror=implicit-function-declaration",
    "-Werror=implicit-int",
)

_CDEF: Final = (
    """
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
    int32_t *refcounts;
    uint32_t nr_refcounts;
    int hooked;
    const struct shmpamt_atomic_ops *ops;
    void *handle;
    uint64_t pool_base;
    uint32_t pool_pages;
    uint32_t pool_stride, pool_ranges, pool_rows;
    int cpu;
    int last_op;
    int32_t last_target;
    int unwound;
    int64_t out1, out2;
    ...;
};
extern "Python" int64_t shmpamt_py_op(void *, int, int64_t, int64_t, int64_t);
extern "Python" void shmpamt_py_msg(void *, int, const char *, uint64_t);
struct tdx_pamt_cache {
    int cnt;
    ...;
};
int64_t shmpamt_entry_get(struct shmpamt_ctx *ctx, uint64_t hpa, struct tdx_pamt_cache *cache);
void shmpamt_entry_put(struct shmpamt_ctx *ctx, uint64_t hpa);
int64_t shmpamt_entry_topup(struct shmpamt_ctx *ctx, struct tdx_pamt_cache *cache, uint64_t n);
void shmpamt_entry_free_cache(struct shmpamt_ctx *ctx, struct tdx_pamt_cache *cache);
void shmpamt_entry_init_cache(struct tdx_pamt_cache *cache);
int shmpamt_api(void);
int64_t shmpamt_entry_pairs(struct shmpamt_ctx *ctx, const uint64_t *pages, uint32_t npages,
                            uint64_t n, const volatile int32_t *stop, int32_t *iterations,
                            uint64_t *out);
int shmpamt_arm_crash(char *buf, uint32_t size, const char *prefix);
static const int shmpamt_initial_refcount;
const char *shmpamt_description(void);
"""
    + "".join(f"#define SHMPAMT_OP_{op.upper()} ...\n" for op in OPS)
    + "".join(f"#define SHMPAMT_MSG_{m.upper()} ...\n" for m in MESSAGES)
    + "".join(f"#define SHMPAMT_API_{a} ...\n" for a in ("PFN", "CACHE", "TOPUP", "FREE_CACHE"))
)

_ERROR_RE: Final = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:\d+:)? (?:fatal )?error: (?P<msg>.*)$", re.M
)


@dataclass(frozen=True)
class CSource:
    """One C variant: the file, the prefix of its function names, how to call it."""

    path: Path  # absolute
    label: str  # as the user wrote it, for messages
    prefix: str  # "" or "name_" in front of every looked-up name

    @property
    def get_fn(self) -> str:
        return f"{self.prefix}tdx_pamt_get"

    @property
    def put_fn(self) -> str:
        return f"{self.prefix}tdx_pamt_put"

    @property
    def topup_fn(self) -> str:
        return f"{self.prefix}tdx_topup_pamt_cache"

    @property
    def free_cache_fn(self) -> str:
        return f"{self.prefix}tdx_free_pamt_cache"


def cache_dir() -> Path:
    return cache_root() / "cvariants"


def _generated_source(src: CSource) -> str:
    p = src.prefix
    return f"""
#include <shmpamt/kernel.h>
static int64_t shmpamt_py_op(void *, int, int64_t, int64_t, int64_t);
static void shmpamt_py_msg(void *, int, const char *, uint64_t);
/* v6's cache functions, if the file defines them (NULL otherwise) */
__attribute__((weak)) int {src.topup_fn}(struct tdx_pamt_cache *, unsigned long);
__attribute__((weak)) void {src.free_cache_fn}(struct tdx_pamt_cache *);
#include "{src.path}"
#ifndef {p}SHMPAMT_INITIAL_REFCOUNT
#define {p}SHMPAMT_INITIAL_REFCOUNT 0
#endif
#ifndef {p}SHMPAMT_DESCRIPTION
#define {p}SHMPAMT_DESCRIPTION ""
#endif
static const int shmpamt_initial_refcount = {p}SHMPAMT_INITIAL_REFCOUNT;
const char *shmpamt_description(void) {{ return {p}SHMPAMT_DESCRIPTION; }}
#define SHMPAMT_GET_FN {src.get_fn}
#define SHMPAMT_PUT_FN {src.put_fn}
#define SHMPAMT_TOPUP_FN {src.topup_fn}
#define SHMPAMT_FREE_CACHE_FN {src.free_cache_fn}
#include "{CSRC_DIR / "runtime.c"}"
#include "{CSRC_DIR / "entry.c"}"
"""


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def _key(src: CSource, source: bytes) -> str:
    """Hash of every input of the build; a change to any of them is a new module."""
    h = hashlib.sha256()
    for part in (
        source,
        str(src.path).encode(),
        src.prefix.encode(),
        _CDEF.encode(),
        " ".join(CFLAGS).encode(),
        " ".join(_compiler()).encode(),
        cffi.__version__.encode(),
        sys.version.encode(),
        str(sysconfig.get_config_var("EXT_SUFFIX")).encode(),
    ):
        h.update(part)
        h.update(b"\0")
    for d in (INCLUDE_DIR, CSRC_DIR):
        for f in sorted(d.rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(d)).encode())
                h.update(f.read_bytes())
    # Headers next to the variant (the twins' common.h, a reviewer's own).
    for f in sorted(src.path.parent.glob("*.h")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:24]


def load(src: CSource) -> ModuleType:
    """The compiled cffi module of ``src``: from this process, the cache, or a fresh build."""
    try:
        source = src.path.read_bytes()
    except FileNotFoundError:
        raise VariantLoadError(f"variant file {src.label} does not exist") from None
    except IsADirectoryError:
        raise VariantLoadError(f"variant file {src.label} is not a regular file") from None
    except OSError as e:
        raise VariantLoadError(f"variant file {src.label}: {e.strerror}") from None
    name = f"_shmpamt_cv_{_key(src, source)}"
    if name in sys.modules:
        return sys.modules[name]
    suffix = str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")
    where = cache_dir()
    target = where / f"{name}{suffix}"
    if not target.exists():
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VariantLoadError(f"cannot create the C variant cache {where}: {e}") from None
        with _locked(where / f"{name}.lock"):
            # Another process may have built it while we waited for the lock.
            if not target.exists():
                _build(src, name, where, target)
    return _import(name, target, src)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(src: CSource, name: str, where: Path, target: Path) -> None:
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    ffi.set_source(name, _generated_source(src))
    with tempfile.TemporaryDirectory(dir=where, prefix=f"{name}.build.") as tmp:
        c_file = Path(tmp) / f"{name}.c"
        with contextlib.redirect_stdout(io.StringIO()):  # cffi says 'generating ...'
            ffi.emit_c_code(str(c_file))
        out = Path(tmp) / target.name
        cmd = [
            *_compiler(),
            *CFLAGS,
            "-shared",
            f"-I{sysconfig.get_paths()['include']}",
            f"-I{INCLUDE_DIR}",
            "-o",
            str(out),
            str(c_file),
        ]
        env = dict(os.environ, LC_ALL="C")  # plain quotes in diagnostics
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        except OSError as e:
            raise VariantLoadError(
                f"variant file {src.label}: cannot run the C compiler {cmd[0]}: {e.strerror}"
            ) from None
        if proc.returncode != 0:
            raise VariantLoadError(_first_error(src, proc.stderr + proc.stdout))
        # rename() is atomic: others see no file or the whole file.
        os.replace(out, target)


def _first_error(src: CSource, output: str) -> str:
    """One line for a failed build: the compiler's first error, by file and line."""
    m = _ERROR_RE.search(output)
    if m is None:
        first = next((ln.strip() for ln in output.splitlines() if ln.strip()), "no output")
        return f"variant file {src.label} does not build: {first}"
    file, line = m["file"], m["line"]
    msg = re.sub(r"\s*\[-W[^\]]*\]$", "", m["msg"]).strip()
    # The helpers' names are spelled in the generated file's SHMPAMT_*_FN macros
    # and called from entry.c: an error at either is about the helpers themselves.
    if os.path.abspath(file) == str(CSRC_DIR / "entry.c") or os.path.basename(file).startswith(
        "_shmpamt_cv_"
    ):
        for fn in (src.get_fn, src.put_fn):
            if f"implicit declaration of function '{fn}'" in msg or f"'{fn}' undeclared" in msg:
                return f"variant file {src.label} does not define {fn}()"
        return (
            f"variant file {src.label}: expected int {src.get_fn}(struct page *) and "
            f"void {src.put_fn}(struct page *), or v6's int {src.get_fn}(kvm_pfn_t[, "
            f"struct tdx_pamt_cache *]) and void {src.put_fn}(kvm_pfn_t) ({msg})"
        )
    shown = src.label if os.path.abspath(file) == str(src.path) else _short(file)
    return f"variant file {src.label} does not compile: {shown}:{line}: {msg}"


def _short(path: str) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def _import(name: str, target: Path, src: CSource) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(target))
    spec = importlib.util.spec_from_file_location(name, target, loader=loader)
    if spec is None:
        raise VariantLoadError(f"variant file {src.label}: cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    try:
        loader.exec_module(module)
    except ImportError as e:
        raise VariantLoadError(f"variant file {src.label}: loading {target} failed: {e}") from None
    sys.modules[name] = module
    return module
