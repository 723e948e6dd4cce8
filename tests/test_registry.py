"""Variant specs: built-in names, user files and modules, and one-line errors for bad ones."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from shmpamt.variants.base import PamtVariant
from shmpamt.variants.registry import (
    BUILTIN,
    C_TWINS,
    VariantLoadError,
    describe_variants,
    load_variant,
)

EXPECTED_ORDER = [
    "rfc",
    "kai",
    "locked",
    "v4",
    "v6",
    "v6-locked",
    "rfc-norecheck",
    "rfc-early-publish",
    "rfc-leak-on-lost-race",
]

GOOD_BODY = """
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtVariant


class Mine(PamtVariant):
    name = "mine"
    description = "test variant"
    initial_refcount = 3

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        return 0

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        pass
"""


def write(tmp_path: Path, text: str, name: str = "v.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(spec: str) -> str:
    with pytest.raises(VariantLoadError) as info:
        load_variant(spec)
    msg = str(info.value)
    # Invariant: a bad spec is explained in exactly one line.
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# -- built-ins ---------------------------------------------------------------


def test_builtin_order_is_stable() -> None:
    assert list(BUILTIN) == EXPECTED_ORDER
    # The C twins follow the Python built-ins in the listing.
    assert [n for n, _ in describe_variants()] == EXPECTED_ORDER + list(C_TWINS)


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_every_builtin_loads_by_name(name: str) -> None:
    cls = load_variant(name)
    assert cls is BUILTIN[name]
    assert issubclass(cls, PamtVariant) and cls.name == name
    assert cls.description and cls.source
    assert cls.initial_refcount == (-1 if name == "kai" else 0)
    # Implements both halves (not the base's NotImplementedError).
    assert cls.tdx_pamt_get is not PamtVariant.tdx_pamt_get
    assert cls.tdx_pamt_put is not PamtVariant.tdx_pamt_put


def test_describe_variants_gives_one_line_each() -> None:
    for name, desc in describe_variants():
        assert desc == (BUILTIN[name].description if name in BUILTIN else C_TWINS[name])
        assert desc and "\n" not in desc


def test_builtin_loads_by_module_path() -> None:
    assert load_variant("shmpamt.variants.rfc:Rfc") is BUILTIN["rfc"]
    assert load_variant("shmpamt.variants.mutants:rfc-norecheck") is BUILTIN["rfc-norecheck"]


# -- user variants -------------------------------------------------------------


def test_file_variant_loads_by_class_and_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_BODY)
    cls = load_variant(f"{path}:Mine")
    assert issubclass(cls, PamtVariant)
    assert cls.name == "mine" and cls.initial_refcount == 3
    assert load_variant(f"{path}:mine").__name__ == "Mine"


def test_file_variant_by_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, GOOD_BODY, "rel.py")
    monkeypatch.chdir(tmp_path)
    assert load_variant("rel.py:Mine").name == "mine"
    assert load_variant("./rel.py:Mine").name == "mine"


def test_module_variant_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "shmpamt_test_pkg_ok"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write(pkg, GOOD_BODY, "impl.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_variant("shmpamt_test_pkg_ok.impl:Mine").name == "mine"
    finally:
        for mod in [m for m in sys.modules if m.startswith("shmpamt_test_pkg_ok")]:
            del sys.modules[mod]


# -- bad specs -------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones() -> None:
    msg = load_error("rfc2")
    assert "unknown variant 'rfc2'" in msg
    assert all(name in msg for name in EXPECTED_ORDER)


def test_file_without_class_part(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_BODY)
    assert ":ClassName" in load_error(str(path))
    assert "expected" in load_error(f"{path}:")


def test_missing_file(tmp_path: Path) -> None:
    msg = load_error(f"{tmp_path}/nope.py:Mine")
    assert "nope.py does not exist" in msg


def test_folder_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "dir.py").mkdir()
    assert "not a regular file" in load_error(f"{tmp_path}/dir.py:Mine")


def test_file_that_raises_on_import(tmp_path: Path) -> None:
    path = write(tmp_path, "import os\n\nx = 1 / 0\n")
    msg = load_error(f"{path}:Mine")
    assert "importing it raised ZeroDivisionError" in msg
    assert "(line 3)" in msg
    # A failed import leaves no half-made module behind.
    assert not any(str(path) in str(getattr(m, "__file__", "")) for m in list(sys.modules.values()))


def test_file_with_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "class Mine(:\n    pass\n")
    msg = load_error(f"{path}:Mine")
    assert "SyntaxError" in msg and "line 1" in msg


def test_file_that_exits_on_import(tmp_path: Path) -> None:
    path = write(tmp_path, "import sys\nsys.exit(3)\n")
    assert "SystemExit" in load_error(f"{path}:Mine")


def test_missing_class_names_the_ones_there(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_BODY)
    msg = load_error(f"{path}:Theirs")
    assert "no attribute 'Theirs'" in msg and "Mine" in msg


def test_missing_class_in_a_file_without_variants(tmp_path: Path) -> None:
    path = write(tmp_path, "X = 1\n")
    assert "defines no PamtVariant subclass" in load_error(f"{path}:Mine")


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("def Mine():\n    pass\n", "of type function"),
        ("class Mine:\n    pass\n", "class Mine"),
        ("Mine = 42\n", "of type int"),
    ],
)
def test_not_a_subclass(tmp_path: Path, body: str, what: str) -> None:
    path = write(tmp_path, body)
    msg = load_error(f"{path}:Mine")
    assert what in msg and "not a subclass of shmpamt.variants.base.PamtVariant" in msg


def test_base_class_itself_is_refused() -> None:
    assert "base class itself" in load_error("shmpamt.variants.base:PamtVariant")


def test_missing_name(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_BODY.replace('name = "mine"', 'name = ""'))
    assert "has no name" in load_error(f"{path}:Mine")


@pytest.mark.parametrize("value", ['"0"', "True", "2**31", "-(2**31) - 1", "0.5"])
def test_bad_initial_refcount(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, GOOD_BODY.replace("initial_refcount = 3", f"initial_refcount = {value}"))
    assert "initial_refcount must be a 32-bit int" in load_error(f"{path}:Mine")


def test_unimplemented_method(tmp_path: Path) -> None:
    body = GOOD_BODY.split("    def tdx_pamt_put")[0]
    path = write(tmp_path, body)
    assert "does not implement tdx_pamt_put()" in load_error(f"{path}:Mine")


def test_module_that_does_not_exist() -> None:
    msg = load_error("shmpamt_no_such_pkg.impl:Mine")
    assert "shmpamt_no_such_pkg.impl not found" in msg and "PYTHONPATH" in msg


def test_module_whose_import_fails_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "shmpamt_test_pkg_bad"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "impl.py").write_text("import shmpamt_missing_dependency\n")
    (pkg / "boom.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        # A missing dependency is not "module not found" for the variant itself.
        msg = load_error("shmpamt_test_pkg_bad.impl:Mine")
        assert "importing it raised ModuleNotFoundError" in msg
        assert "shmpamt_missing_dependency" in msg
        msg = load_error("shmpamt_test_pkg_bad.boom:Mine")
        assert "RuntimeError: boom" in msg and "boom.py:1" in msg
    finally:
        for mod in [m for m in sys.modules if m.startswith("shmpamt_test_pkg_bad")]:
            del sys.modules[mod]
