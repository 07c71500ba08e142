"""`config/` sits below every other layer: nothing it imports, directly or through other
prefopt modules, reaches `evaluation/` or `tracking/` (which import `config/`; the other way
round made the package's one import cycle: config.checks -> evaluation -> tracking ->
tracking.params -> config.checks).

Read from the source with `ast`, so an import inside a function counts as well, and no module
has to be imported for the check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prefopt

PACKAGE = Path(prefopt.__file__).parent
FORBIDDEN = ("prefopt.evaluation", "prefopt.tracking")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path, known: dict[str, Path], package: str | None = None) -> set[str]:
    """The prefopt modules `path` imports anywhere in its body (a package's `__init__`
    counts for each of its submodules, as Python runs it first). `package`: the one relative
    imports start from (default: the file's own)."""
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in found if name in known and name.startswith("prefopt")}


def reachable_from(start: str, known: dict[str, Path]) -> dict[str, str]:
    """{module: the module that first imported it} for everything `start` imports, transitively."""
    seen, todo = {start: ""}, [start]
    while todo:
        current = todo.pop()
        for name in imported_modules(known[current], known):
            if name not in seen:
                seen[name] = current
                todo.append(name)
    return seen


def chain(seen: dict[str, str], end: str) -> str:
    links = [end]
    while seen[links[-1]]:
        links.append(seen[links[-1]])
    return " -> ".join(reversed(links))


def test_config_imports_nothing_from_evaluation_or_tracking():
    known = modules()
    config_modules = [name for name in known if name.startswith("prefopt.config")]
    assert "prefopt.config.checks" in config_modules
    offending = []
    for start in config_modules:
        seen = reachable_from(start, known)
        offending += [chain(seen, name) for name in seen if name.startswith(FORBIDDEN)]
    assert not offending, "config/ reaches a layer above it:\n" + "\n".join(offending)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    """The check above would pass vacuously if function-level imports were missed."""
    known = modules()
    params = imported_modules(known["prefopt.tracking.params"], known)
    assert "prefopt.config.checks" in params
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from ..tracking.runs import set_tags\n")
    found = imported_modules(source, known, package="prefopt.config")
    assert {"prefopt.tracking", "prefopt.tracking.runs"} <= found
