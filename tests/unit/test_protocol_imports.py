"""The protocol core is sans-IO: it imports no socket, ssl, asyncio, threading or sqlite3.

The AST check over our own source is the authoritative one: it follows every import of
``imgshare.protocol``'s modules, and of the ``imgshare`` modules they import, and fails
on a forbidden name or on dynamic imports that would dodge the check. The subprocess
check confirms it at run time, against a baseline interpreter that imports only the
third-party modules the package imports (``cryptography`` may load what it likes).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import imgshare

FORBIDDEN = {
    "socket",
    "ssl",
    "asyncio",
    "threading",
    "selectors",
    "sqlite3",
    "multiprocessing",
    "concurrent",
    "_thread",
    "_socket",
    "_ssl",
    "_asyncio",
    "_sqlite3",
}
#: Ways to import a module without an import statement.
DYNAMIC = {"importlib", "__import__", "import_module"}

PACKAGE_ROOT = Path(imgshare.__file__).resolve().parent
PROTOCOL = PACKAGE_ROOT / "protocol"


def module_path(name: str) -> Path | None:
    """Source file of an ``imgshare`` module, or None for anything else."""
    if name != "imgshare" and not name.startswith("imgshare."):
        return None
    parts = name.split(".")[1:]
    base = PACKAGE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise AssertionError(f"cannot find the source of {name}")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(absolute module names imported, dynamic-import names used) in one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    names: set[str] = set()
    dynamic: set[str] = set()
    for node in executed_on_import(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            # ``from imgshare.protocol import keys`` may import the submodule keys.
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in DYNAMIC:
                dynamic.add(name)
    return names, dynamic


def executed_on_import(tree: ast.Module) -> list[ast.AST]:
    """The nodes of a module that importing it can run: all but ``if TYPE_CHECKING:``
    blocks and a module-level ``__getattr__`` (PEP 562: it runs only when an attribute
    the module lacks is asked for, as ``imgshare.Client`` is, lazily; the protocol
    never asks)."""
    kept: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in {
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        }:
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__" and node in tree.body:
            continue
        kept.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return kept


def reachable_imports() -> dict[str, set[str]]:
    """Every import of every imgshare module reachable from imgshare.protocol."""
    todo = [module_name(p) for p in sorted(PROTOCOL.glob("*.py"))]
    seen: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        path = module_path(name)
        if name in seen or path is None:
            continue
        names, dynamic = imports_of(path)
        assert not dynamic, f"{name} imports dynamically ({dynamic}): the check cannot follow"
        seen[name] = names
        todo.extend(n for n in names if module_path_or_none(n) is not None)
        # A submodule import runs its parent packages' __init__ too.
        todo.extend(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))
    return seen


def module_path_or_none(name: str) -> Path | None:
    try:
        return module_path(name)
    except AssertionError:
        return None  # ``from imgshare.protocol import NEED_DATA``: a name, not a module


def test_ast_of_the_protocol_package_imports_nothing_forbidden() -> None:
    graph = reachable_imports()
    assert "imgshare.protocol.connection" in graph and "imgshare.errors" in graph
    assert (
        len([n for n in graph if n.startswith("imgshare.protocol.")])
        == len(list(PROTOCOL.glob("*.py"))) - 1
    )  # every module of the package, __init__ counted as imgshare.protocol
    offenders = {
        module: sorted(n for n in names if n.split(".")[0] in FORBIDDEN)
        for module, names in graph.items()
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def test_ast_check_would_catch_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself: every import form it must see."""
    source = tmp_path / "sample.py"
    source.write_text(
        "import os, socket as s\nfrom ssl import SSLContext\nimport asyncio.events\n"
        "def f():\n    import threading\n    from sqlite3 import connect\n"
        "x = __import__('selectors')\n"
    )
    names, dynamic = imports_of_file(source)
    assert {"socket", "ssl", "asyncio.events", "threading", "sqlite3"} <= names
    assert dynamic == {"__import__"}


def imports_of_file(path: Path) -> tuple[set[str], set[str]]:
    """``imports_of`` for a file outside the package (absolute imports only)."""
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    dynamic = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in DYNAMIC}
    return names, dynamic


def loaded_modules(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(result.stdout))


def test_importing_the_package_loads_nothing_forbidden() -> None:
    third_party = sorted(
        {
            name
            for names in reachable_imports().values()
            for name in names
            if not name.startswith("imgshare") and module_path_or_none(name) is None
        }
        - {"__future__"}
    )
    # Only real modules: ``from cryptography.x509 import oid`` lists "cryptography.x509.oid".
    baseline_code = "\n".join(
        f"try:\n    import {name}\nexcept ImportError:\n    pass" for name in third_party
    )
    baseline = loaded_modules(baseline_code)
    assert "cryptography.hazmat.primitives.ciphers.aead" in baseline
    after = loaded_modules("import imgshare.protocol")
    assert "imgshare.protocol.connection" in after
    added = {name.split(".")[0] for name in after - baseline}
    assert added & FORBIDDEN == set(), sorted(after - baseline)
    assert added <= {"imgshare"}, sorted(
        n for n in after - baseline if not n.startswith("imgshare")
    )
