"""The package's shape: imports go one way, from the front ends down to the primitives.

Built from the source with ``ast`` (nothing is imported): every module-level
import of a ``shmpamt`` module is an edge; the graph must have no cycle, and
an import inside a function is allowed only where it buys a documented
start-up cost (the list below says which and why).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "shmpamt"

#: (importing module, imported module) pairs allowed inside functions, and why
LAZY_OK = {
    # `shmpamt --help` and usage errors must not load cffi, posix_ipc or the atomics binding
    ("shmpamt.cli", "shmpamt.api"),
    ("shmpamt.cli", "shmpamt.timeline"),
    # the command traps Ctrl-C before the CLI's imports start (shmpamt.entry)
    ("shmpamt.entry", "shmpamt.cli"),
    # the campaign command: Dask and the rig load only when it runs (`shmpamt --help` stays
    # light); it uses cli.py's helpers, and cli.py registers it, so that import waits too
    ("shmpamt.cli_campaign", "shmpamt.api"),
    ("shmpamt.cli_campaign", "shmpamt.cli"),
    ("shmpamt.cli_campaign", "shmpamt.cluster"),
    # pytest loads every installed plugin in every run: it stays light until a fixture is used
    ("shmpamt.pytest_plugin", "shmpamt.api"),
    ("shmpamt.pytest_plugin", "shmpamt.ipc"),
    # the compiled shim is optional: the pure-libffi backend works without it
    ("shmpamt.atomic", "shmpamt._atomic_shim"),
    # the strategy registry builds only the strategy asked for
    ("shmpamt.schedulers.registry", "shmpamt.schedulers.dfs"),
    ("shmpamt.schedulers.registry", "shmpamt.schedulers.pct"),
    ("shmpamt.schedulers.registry", "shmpamt.schedulers.random_walk"),
}
#: modules below the engine must never import these (the arrows go one way)
FRONT = {
    "shmpamt.cli",
    "shmpamt.cli_campaign",
    "shmpamt.cli_db",
    "shmpamt.cluster",
    "shmpamt.pytest_plugin",
    "shmpamt.api",
}
#: the package's public face and ``python -m shmpamt`` sit above everything
FACE = {"shmpamt", "shmpamt.__main__", "shmpamt.entry"}
ENGINE = {
    "shmpamt.engine.processes",
    "shmpamt.engine.stress",
    "shmpamt.engine.explore",
    "shmpamt.engine.jobs",
    "shmpamt.engine.footprint",
    "shmpamt.engine.regress",
}


def _name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = PKG.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(tree: ast.Module, here: str) -> tuple[set[str], set[str]]:
    """(module-level shmpamt imports, function-level shmpamt imports)."""
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module:
                base = child.module
                names = [base]
                # `from shmpamt import tdx` imports the submodule shmpamt.tdx
                names += [f"{base}.{a.name}" for a in child.names]
            for n in names:
                if n.startswith("shmpamt") and _is_module(n):
                    (inner if func else top).add(n)
            visit(child, func)

    visit(tree, False)
    top.discard(here)
    inner.discard(here)
    return top, inner


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    top, inner = {}, {}
    for path in PKG.rglob("*.py"):
        name = _name(path)
        t, i = _imports(ast.parse(path.read_text()), name)
        top[name], inner[name] = t - {"shmpamt"}, i - {"shmpamt"}
    return top, inner


def test_no_import_cycle() -> None:
    top, _ = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def dfs(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(top.get(n, ())):
            # Invariant: following imports never leads back to a module on the current path.
            assert state.get(m) != 1, "import cycle: " + " -> ".join([*path[path.index(m) :], m])
            if m not in state:
                dfs(m)
        path.pop()
        state[n] = 2

    for n in sorted(top):
        if n not in state:
            dfs(n)


def test_function_level_imports_are_only_the_documented_ones() -> None:
    _, inner = _graph()
    found = {(m, n) for m, ns in inner.items() for n in ns}
    assert found <= LAZY_OK, sorted(found - LAZY_OK)


def test_arrows_go_one_way() -> None:
    top, inner = _graph()
    for module in top:
        deps = top[module] | inner[module]
        if module in FACE:
            continue
        if module not in FRONT:
            assert not deps & FRONT, (module, deps & FRONT)
        if module not in FRONT and module not in ENGINE and module != "shmpamt.engine":
            assert not deps & ENGINE, (module, deps & ENGINE)


def test_catalogues_are_light() -> None:
    """The CLI, plugin and report list violations and strategies without cffi/posix_ipc."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import shmpamt.violations, shmpamt.schedulers.registry, shmpamt.config\n"
        "print([m for m in ('cffi', '_cffi_backend', 'posix_ipc', 'atomics') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
