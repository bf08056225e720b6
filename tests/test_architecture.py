"""The house rules that a reader of docs/architecture.md relies on, checked on the source.

Every `import` of an npdc module, at the top of a file or inside a function, is read with `ast`:
an import may point to its own floor or one below it, never above, and the modules may not import
each other in a circle. No module is longer than 400 lines.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "npdc"

# bottom to top: a module may import its own floor and the floors before it
FLOORS = (
    ("ground", ("npdc", "npdc.errors", "npdc.threads", "npdc.atomic", "npdc.limits", "npdc.jobs",
                "npdc.process", "npdc.paths", "npdc.progress", "npdc.cluster")),
    ("kernels", ("npdc.kernels",)),
    ("engine", ("npdc.engine",)),
    ("io", ("npdc.io",)),
    ("compress", ("npdc.compress",)),
    ("codec", ("npdc.codec",)),
    ("runtime", ("npdc.runtime",)),
    ("score", ("npdc.score",)),
    ("report", ("npdc.report", "npdc.plots")),
    ("evaluate", ("npdc.evaluate",)),
    ("pipeline", ("npdc.pipeline",)),
    ("api", ("npdc.api",)),
    ("cli", ("npdc.cli", "npdc.__main__")),
)
MAX_LINES = 400
# the one import that points up: the package re-exports the public API lazily, inside its module
# __getattr__, so `import npdc` loads nothing above the ground (tests/test_api.py checks that)
LAZY_REEXPORT = ("npdc", "npdc.api")


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module):
    """Index of the floor `module` lives on (the longest matching prefix wins)."""
    best, index = -1, None
    for i, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "npdc" and module.startswith(prefix + "."))
            if inside and len(prefix) > best:
                best, index = len(prefix), i
    if index is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS and docs/architecture.md")
    return index


def _resolve(name, modules):
    """The npdc module an imported name refers to: itself if a module, else its parent."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path, modules):
    """(imported npdc module, line) for every import in the file, function-local ones included."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "npdc" or name.startswith("npdc."):
                target = _resolve(name, modules)
                if target and target != me:
                    found.append((target, node.lineno))
    return found


def all_modules():
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def graph():
    modules = all_modules()
    return {m: imports_of(p, modules) for m, p in modules.items()}


def test_every_module_is_on_a_floor():
    for module in all_modules():
        floor(module)


def test_no_import_points_up_a_floor():
    upward = [f"{m}:{line} imports {target} ({FLOORS[floor(target)][0]} is above "
              f"{FLOORS[floor(m)][0]})"
              for m, edges in graph().items() for target, line in edges
              if floor(target) > floor(m) and (m, target) != LAZY_REEXPORT]
    assert not upward, "\n".join(upward)


def find_cycle(edges):
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for target in sorted(set(edges.get(m, ()))):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    edges = {m: [t for t, _ in targets if t != "npdc"] for m, targets in graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_can_fail():
    """The rules catch what they are for: a cycle, an upward import, an unknown module."""
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert floor("npdc.kernels.conv") < floor("npdc.engine.net") < floor("npdc.cli")
    with pytest.raises(AssertionError, match="no floor"):
        floor("npdc.attic")


def test_relative_and_function_local_imports_are_seen(tmp_path, monkeypatch):
    source = PACKAGE / "engine" / "net.py"
    found = {t for t, _ in imports_of(source, all_modules())}
    assert "npdc.engine.images" in found
    fake = PACKAGE / "kernels" / "conv.py"
    text = "def f():\n    from npdc.report import layer_table\n    from ..engine import net\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: text)
    found = {t for t, _ in imports_of(fake, all_modules())}
    assert found == {"npdc.report", "npdc.engine.net"}


def test_no_module_is_longer_than_400_lines():
    long = {m: n for m, p in all_modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_package_says_what_belongs_in_it():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) >= 2, f"{init} needs a docstring saying what it holds"
