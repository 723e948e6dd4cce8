"""Resolve a ``--variant`` spec to a :class:`PamtVariant` subclass.

A spec is a built-in name, ``path/to/file.py:ClassName``,
``package.module:ClassName``, or a C variant: a built-in C twin (``rfc.c``),
``path/to/file.c`` or ``path/to/file.c:prefix`` (see cvariant.py). Every CPU
process resolves the same spec string itself (spawned processes share no
Python objects), so loading must be cheap, deterministic and fail with one
readable line: :class:`VariantLoadError`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from types import ModuleType
from typing import Final

from shmpamt.errors import VariantLoadError
from shmpamt.machine.atomic import INT_MAX, INT_MIN
from shmpamt.variants.base import PamtVariant
from shmpamt.variants.cvariant import CVariant, make_class, name_of, source_of
from shmpamt.variants.kai import Kai
from shmpamt.variants.locked import Locked
from shmpamt.variants.mutants import RfcEarlyPublish, RfcLeakOnLostRace, RfcNoRecheck
from shmpamt.variants.rfc import Rfc
from shmpamt.variants.v4 import V4
from shmpamt.variants.v6 import V6
from shmpamt.variants.v6_locked import V6Locked

__all__ = ["BUILTIN", "C_TWINS", "VariantLoadError", "describe_variants", "load_variant"]


#: Built-in variants in presentation order (postings first, then mutants).
BUILTIN: Final[dict[str, type[PamtVariant]]] = {
    cls.name: cls
    for cls in (
        Rfc,
        Kai,
        Locked,
        V4,
        V6,
        V6Locked,
        RfcNoRecheck,
        RfcEarlyPublish,
        RfcLeakOnLostRace,
    )
}

#: C twins of the built-ins (shmpamt/variants/c/), compiled on first use.
C_TWINS: Final[dict[str, str]] = {
    "rfc.c": "C twin of rfc, compiled from shmpamt/variants/c/rfc.c",
    "kai.c": "C twin of kai, compiled from shmpamt/variants/c/kai.c",
    "locked.c": "C twin of locked, compiled from shmpamt/variants/c/locked.c",
    "v4.c": "C twin of v4, compiled from shmpamt/variants/c/v4.c",
    "v6.c": "C twin of v6, compiled from shmpamt/variants/c/v6.c",
    "v6-locked.c": "C twin of v6-locked, compiled from shmpamt/variants/c/v6-locked.c",
}

#: names only the built-ins may carry
_TAKEN: Final = frozenset(BUILTIN) | frozenset(C_TWINS)

# Modules loaded from files live under this prefix in sys.modules.
_FILE_MODULE_PREFIX: Final = "shmpamt_user_variant_"


def describe_variants() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in variant, in BUILTIN order, then C twins."""
    return [(name, cls.description) for name, cls in BUILTIN.items()] + list(C_TWINS.items())


def load_variant(spec: str) -> type[PamtVariant]:
    """The variant class a spec names; raises VariantLoadError, never anything else."""
    spec = spec.strip()
    if spec in BUILTIN:
        return BUILTIN[spec]
    c_source = source_of(spec, C_TWINS)
    if c_source is not None:
        return _check(make_class(c_source, name_of(c_source)), spec, builtin=spec in C_TWINS)
    if ":" not in spec:
        if spec.endswith(".py"):
            raise VariantLoadError(f"variant {spec!r}: name the class too, as {spec}:ClassName")
        raise VariantLoadError(f"unknown variant {spec!r}; built-in variants: {', '.join(BUILTIN)}")
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise VariantLoadError(
            f"variant {spec!r}: expected path/to/file.py:ClassName or package.module:ClassName"
        )
    if where.endswith(".py") or os.sep in where or "/" in where:
        module = _import_file(where)
        label = where
    else:
        module = _import_module(where)
        label = where
    return _check(_lookup(module, attr, label), f"{label}:{attr}")


def _import_file(path: str) -> ModuleType:
    full = os.path.abspath(path)
    if not os.path.exists(full):
        raise VariantLoadError(f"variant file {path} does not exist")
    if not os.path.isfile(full):
        raise VariantLoadError(f"variant file {path} is not a regular file")
    # One stable module name per file, so classes pickle/compare the same way
    # every time a process loads it.
    mod_name = _FILE_MODULE_PREFIX + hashlib.sha1(full.encode()).hexdigest()[:16]
    loader_spec = importlib.util.spec_from_file_location(mod_name, full)
    if loader_spec is None or loader_spec.loader is None:
        raise VariantLoadError(
            f"variant file {path} cannot be imported as Python (is it a .py file?)"
        )
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(mod_name, None)
        raise VariantLoadError(
            f"variant file {path}: importing it raised {_describe(e, full)}"
        ) from None
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise VariantLoadError(
                f"variant module {name} not found (is it installed or on PYTHONPATH?)"
            ) from None
        raise VariantLoadError(
            f"variant module {name}: importing it raised {_describe(e, None)}"
        ) from None
    except (Exception, SystemExit) as e:
        raise VariantLoadError(
            f"variant module {name}: importing it raised {_describe(e, None)}"
        ) from None


def _describe(e: BaseException, path: str | None) -> str:
    """``Type: message (where)`` on one line; for a file, the deepest line of that file."""
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if not isinstance(e, SyntaxError):  # its message already names file and line
        frames = traceback.extract_tb(e.__traceback__)
        if path is not None:
            mine = [f for f in frames if os.path.abspath(f.filename) == path]
            if mine:
                text += f" (line {mine[-1].lineno})"
        elif frames:
            text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return " ".join(text.split())


def _lookup(module: ModuleType, attr: str, label: str) -> object:
    """The attribute, or the one PamtVariant subclass whose ``name`` is ``attr``."""
    if hasattr(module, attr):
        return getattr(module, attr)
    by_name = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, PamtVariant) and obj.name == attr
    ]
    if len(by_name) == 1:
        return by_name[0]
    found = sorted(
        n
        for n, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, PamtVariant) and obj is not PamtVariant
    )
    hint = (
        f"; variant classes there: {', '.join(found)}"
        if found
        else "; it defines no PamtVariant subclass"
    )
    raise VariantLoadError(f"variant {label} has no attribute {attr!r}{hint}")


def _check(obj: object, label: str, *, builtin: bool = False) -> type[PamtVariant]:
    """Reject anything the runner could not use, before any process is spawned.

    ``builtin``: ``obj`` is one of the C twins, which may carry their own names (a
    built-in Python class may too, however its spec names it).
    """
    if not isinstance(obj, type) or not issubclass(obj, PamtVariant):
        raise VariantLoadError(
            f"variant {label} is {_kind(obj)}, not a subclass of shmpamt.variants.base.PamtVariant"
        )
    if obj is PamtVariant:
        raise VariantLoadError(f"variant {label} is the PamtVariant base class itself; subclass it")
    if not isinstance(obj.name, str) or not obj.name.strip():
        raise VariantLoadError(
            f"variant {label} has no name (set the class attribute name = '...')"
        )
    # Invariant: a variant's name says which protocol ran (report rows, the database's
    # keys); a user variant that took a built-in's name would pass for it.
    if not builtin and obj.name.strip() in _TAKEN and BUILTIN.get(obj.name) is not obj:
        what = "file name" if issubclass(obj, CVariant) else "name"
        raise VariantLoadError(
            f"variant {label} calls itself {obj.name.strip()!r}, the name of a built-in "
            f"variant: give it a {what} of its own"
        )
    rc = obj.initial_refcount
    if isinstance(rc, bool) or not isinstance(rc, int) or not INT_MIN <= rc <= INT_MAX:
        raise VariantLoadError(
            f"variant {label}: initial_refcount must be a 32-bit int, got {rc!r}"
        )
    for method in ("tdx_pamt_get", "tdx_pamt_put"):
        if getattr(obj, method) is getattr(PamtVariant, method):
            raise VariantLoadError(f"variant {label} does not implement {method}()")
    return obj


def _kind(obj: object) -> str:
    if isinstance(obj, type):
        return f"class {obj.__name__}"
    return f"an object of type {type(obj).__name__}"
