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

#: The layers, lowest first. A module may import modules of its own folder (the
#: cycle test keeps those honest) and modules of lower layers, never of its own layer's
#: other folders or of a higher layer. A folder is named by its package; a module at the
#: package root by its own name.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("shmpamt.errors", "shmpamt.tdx", "shmpamt._shim_build"),  # leaves: no shmpamt import
    ("shmpamt.records",),  # violation catalogue, executions, results, schedule strings, db
    ("shmpamt.schedulers",),  # strategies: light, they see only footprints
    ("shmpamt.machine",),  # the emulated machine's primitives: shared memory, atomics, lock
    ("shmpamt.module", "shmpamt.variants"),  # the TDX module emulator; the protocols
    ("shmpamt.config",),  # one validated configuration per mode
    ("shmpamt.engine",),  # process lifetimes: the system, CPUs, free-running stress
    ("shmpamt.explorer",),  # controlled scheduling: board, hook, controller, search
    ("shmpamt.report",),  # the terminal report and timelines
    ("shmpamt.api",),  # the public functions
    ("shmpamt.campaign",),  # campaign matrix and its Dask glue (a client of api)
    ("shmpamt.cli", "shmpamt.pytest_plugin"),  # the front ends
    ("shmpamt", "shmpamt.__main__"),  # the package's lazy public face
)

#: (importing module, imported module) pairs allowed inside functions, and why; checked
#: exactly, so an entry that no longer matches any import fails too
LAZY_OK = {
    # `shmpamt --help` and usage errors must not load cffi, posix_ipc or the atomics binding
    ("shmpamt.cli.app", "shmpamt.api"),
    ("shmpamt.cli.app", "shmpamt.report.timeline"),
    # the command traps Ctrl-C before the CLI's imports start (shmpamt.cli.entry)
    ("shmpamt.cli.entry", "shmpamt.cli.app"),
    ("shmpamt.cli.entry", "shmpamt.cli.common"),
    # the campaign command: Dask and the rig load only when it runs (`shmpamt --help` stays
    # light)
    ("shmpamt.cli.campaign", "shmpamt.api"),
    ("shmpamt.cli.campaign", "shmpamt.campaign.cluster"),
    ("shmpamt.cli.campaign", "shmpamt.cli.proofs"),
    # pytest loads every installed plugin in every run: it stays light until a fixture is used
    ("shmpamt.pytest_plugin", "shmpamt.api"),
    ("shmpamt.pytest_plugin", "shmpamt.machine.ipc"),
}


def _folder(module: str) -> str:
    """The layer unit a module belongs to: its folder's package, or itself at the root."""
    for layer in LAYERS:
        for unit in sorted(layer, key=len, reverse=True):
            if unit == "shmpamt":
                continue
            if module == unit or module.startswith(unit + "."):
                return unit
    return "shmpamt" if module in {"shmpamt", "shmpamt.__main__"} else module


def _rank(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS")


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
    ancestors = {here.rsplit(".", k)[0] for k in range(1, here.count(".") + 1)}
    top -= {here, *ancestors}
    inner -= {here, *ancestors}
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


def test_function_level_imports_are_exactly_the_documented_ones() -> None:
    _, inner = _graph()
    found = {(m, n) for m, ns in inner.items() for n in ns}
    # Invariant: every import hidden in a function has its reason on the list, and every
    # entry on the list is still an import somewhere (no stale entries).
    assert found == LAZY_OK, (sorted(found - LAZY_OK), sorted(LAZY_OK - found))


def test_every_module_is_in_a_layer() -> None:
    top, _ = _graph()
    for module in top:
        _rank(_folder(module))


def test_imports_go_down_the_layers() -> None:
    top, inner = _graph()
    wrong = []
    for module in sorted(top):
        here = _folder(module)
        for dep in sorted(top[module] | inner[module]):
            there = _folder(dep)
            # Invariant: an import stays in its folder or goes to a strictly lower layer.
            if there != here and _rank(there) >= _rank(here):
                wrong.append(f"{module} -> {dep}")
    assert not wrong, wrong


def test_catalogues_are_light() -> None:
    """The CLI, plugin and report list violations and strategies without cffi/posix_ipc."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import shmpamt.records.violations, shmpamt.schedulers.registry, shmpamt.config\n"
        "print([m for m in ('cffi', '_cffi_backend', 'posix_ipc', 'atomics') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_engine_calls_only_what_the_scheduler_protocol_declares() -> None:
    """A strategy written against :class:`Scheduler` works in the controller: every
    attribute the explorer reads from a scheduler is a member of the Protocol."""
    from shmpamt.schedulers.base import Scheduler

    declared = set(Scheduler.__annotations__) | {
        n for n in vars(Scheduler) if not n.startswith("_")
    }
    used: set[str] = set()
    for path in (PKG / "explorer").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id in {"scheduler", "sched"}) or (
                isinstance(owner, ast.Attribute) and owner.attr == "scheduler"
            ):
                used.add(node.attr)
    # Invariant: the Protocol covers the interface the engine uses.
    assert used, "the scan found no scheduler calls: it no longer sees the explorer"
    assert used <= declared, sorted(used - declared)
