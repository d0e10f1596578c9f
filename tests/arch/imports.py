"""The package's import graph, read from the source (no import executed): module-level and
function-level ``afov_ray`` imports of every module."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "afov_ray"


@dataclass
class ModuleImports:
    name: str
    path: Path
    top: set[str] = field(default_factory=set)        # afov_ray modules imported at module level
    inner: list[tuple[int, str]] = field(default_factory=list)  # (line, module) imported inside a function


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom | ast.Import, current: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = current.split(".") if is_pkg else current.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    out = [base]
    for a in node.names:   # "from afov_ray.storage import uri" imports the module afov_ray.storage.uri
        out.append(f"{base}.{a.name}")
    return out


def scan() -> dict[str, ModuleImports]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    out: dict[str, ModuleImports] = {}
    for name, path in mods.items():
        mi = ModuleImports(name, path)
        tree = ast.parse(path.read_text())
        is_pkg = path.name == "__init__.py"
        func_nodes = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    func_nodes.add(id(sub))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            in_type_checking = False
            targets = [t for t in _resolve(node, name, is_pkg) if t.split(".")[0] == "afov_ray" and t in mods]
            for t in targets:
                if id(node) in func_nodes:
                    mi.inner.append((node.lineno, t))
                elif not in_type_checking:
                    mi.top.add(t)
        out[name] = mi
    _drop_type_checking(out)
    return out


def _drop_type_checking(mods: dict[str, ModuleImports]) -> None:
    """Imports under ``if TYPE_CHECKING:`` are not executed: remove them from the module-level set."""
    for mi in mods.values():
        tree = ast.parse(mi.path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        for t in _resolve(sub, mi.name, mi.path.name == "__init__.py"):
                            mi.top.discard(t)
