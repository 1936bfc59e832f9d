"""The package's layering: its own imports sit at module top (no import hidden inside a function), they form no
cycle, and no module is over 400 lines."""
import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import clipadapt

PACKAGE = Path(clipadapt.__file__).parent
# lazy on purpose: the console command and the book tool load a subcommand's module (and torch) only when it runs
LAZY = {"cli.py", "book.py"}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules a `from ... import ...` at module top makes Python import."""
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = module.split(".") if is_package else module.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def test_the_packages_own_imports_sit_at_module_top():
    hidden = []
    for name, (path, tree) in modules().items():
        if path.name in LAZY and path.parent == PACKAGE:
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("clipadapt")):
                        hidden.append(f"{path.relative_to(PACKAGE)}:{node.lineno} in {fn.name}()")
    assert not hidden, "move these imports to the module's top:\n" + "\n".join(hidden)


def test_the_module_imports_form_no_cycle():
    mods = modules()
    graph = {}
    for name, (path, tree) in mods.items():
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                deps |= {d for d in resolve(name, path.name == "__init__.py", node) if d in mods and d != name}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        # importing a submodule first imports its packages: those edges are Python's, not a cycle of ours
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        cycle = " -> ".join(reversed(e.args[1]))
        raise AssertionError(f"import cycle, each module importing the next: {cycle}") from None


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules (400 lines at most): {long}"
