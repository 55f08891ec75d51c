"""The package layering of docs/architecture.md, checked on the source: imports go one way.

    core <- data <- items, metrics <- encoders, losses, index <- nextitem, ctr, detect <- attack
         <- serve <- cli (and the top-level `userseq/__init__.py`)

A package may import only packages of a lower layer (every import counts, including those inside
functions), never a `_private` name of another package, and no two modules may import each other
in a cycle at import time. A failure names the edge to remove.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "userseq"

LAYERS = {
    "core": 0,
    "data": 1,
    "items": 2, "metrics": 2,
    "encoders": 3, "losses": 3, "index": 3,
    "nextitem": 4, "ctr": 4, "detect": 4, "generative": 4, "context": 4,
    "attack": 5, "export": 5,
    "serve": 6,
    "cli": 7, "__init__": 7, "__main__": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(imported module, imported names, line, at module level) for every userseq import in a
    file."""
    module = _module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("userseq"):
                    found.append((a.name, [], node.lineno, id(node) in top))
            continue
        else:
            continue
        if target == "userseq" or target.startswith("userseq."):
            found.append((target, names, node.lineno, id(node) in top))
    return found


def _files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {_package(_module_name(f)) for f in _files()}
    assert packages - set(LAYERS) == set(), (
        "add the new package to LAYERS (and to docs/architecture.md)"
    )


def test_imports_go_one_way():
    bad = []
    for f in _files():
        src_pkg = _package(_module_name(f))
        for target, _names, line, _ in _imports(f):
            dst_pkg = _package(target)
            if target == "userseq":  # `from userseq import X`: X lives in the top-level package
                dst_pkg = "__init__"
            if dst_pkg != src_pkg and LAYERS[dst_pkg] >= LAYERS[src_pkg]:
                bad.append(f"{f.relative_to(SRC.parent)}:{line}: {src_pkg} -> {dst_pkg} ({target})")
    assert bad == [], "upward or sideways imports:\n" + "\n".join(bad)


def test_no_private_names_across_packages():
    bad = []
    for f in _files():
        src_pkg = _package(_module_name(f))
        for target, names, line, _ in _imports(f):
            if _package(target) == src_pkg:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{f.relative_to(SRC.parent)}:{line}: imports {target}.{n}")
    assert bad == [], "private names imported from another package:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    """Module-level imports only (a function-level import runs later and cannot deadlock)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(f) for f in _files()}
    for f in _files():
        m = _module_name(f)
        deps = graph.setdefault(m, set())
        for target, names, _, at_top in _imports(f):
            if not at_top:
                continue
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in modules and cand != m:
                    deps.add(cand)
                    break
    cycles = []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_planted_upward_import(tmp_path, monkeypatch):
    """The checks are not vacuous: an upward import in a scratch copy of a package is reported."""
    import shutil

    fake = tmp_path / "userseq"
    shutil.copytree(SRC / "core", fake / "core")
    (fake / "__init__.py").write_text("")
    (fake / "core" / "planted.py").write_text("from userseq.serve.app import create_app\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    try:
        test_imports_go_one_way()
    except AssertionError as e:
        assert "core -> serve" in str(e)
    else:
        raise AssertionError("the planted upward import was not reported")


def test_the_public_api_resolves_and_is_documented():
    import re

    import userseq

    api = (SRC.parents[1] / "docs" / "api.md").read_text()
    missing = []
    for name in userseq.__all__:
        assert getattr(userseq, name) is not None, name
        if name != "__version__" and not re.search(rf"\b{name}\b", api):
            missing.append(name)
    assert missing == [], f"public names missing from docs/api.md: {missing}"
