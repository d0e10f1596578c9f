"""The package's layering (docs/architecture.md), read from the source: no import circle, no arrow from a
lower layer to a higher one, no hidden (function-level) imports between our own modules, one writer /
plotter / Ray start-up, and every package saying what it owns."""

from __future__ import annotations

import ast
import re

from tests.arch.imports import PKG, scan

# lowest first; a module may import from its own layer and from lower layers only
LAYERS = [
    ["afov_ray", "afov_ray.errors", "afov_ray.config", "afov_ray.log", "afov_ray.cli", "afov_ray.reaper"],
    ["afov_ray.storage", "afov_ray.runtime"],
    ["afov_ray.geometry"],
    ["afov_ray.datasets", "afov_ray.viz"],
    ["afov_ray.teachers", "afov_ray.models", "afov_ray.losses", "afov_ray.afi", "afov_ray.eval"],
    ["afov_ray.train", "afov_ray.serving"],
    ["afov_ray.pipeline"],
    ["afov_ray.tune", "afov_ray.demo"],
]
# optional sparse engines are imported on demand (they need compiled packages)
LAZY_ALLOWED = {"afov_ray.models.engines"}


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and n.count(".") > depth:
                best, depth = i, n.count(".")
    assert best is not None, f"module {module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


def test_every_module_has_a_layer():
    for name in scan():
        layer_of(name)


def test_no_arrow_from_a_lower_layer_to_a_higher_one():
    bad = []
    for name, mi in scan().items():
        for target in mi.top | {t for _, t in mi.inner}:
            if layer_of(target) > layer_of(name):
                bad.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle_between_modules():
    mods = scan()
    graph = {n: {t for t in mi.top if t in mods and t != n} for n, mi in mods.items()}
    # a package's __init__ importing its own submodules is not a cycle of the code's logic
    for n in graph:
        graph[n] = {t for t in graph[n] if not (t.startswith(n + ".") and mods[n].path.name == "__init__.py")}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def strong(v, counter=[0]):  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_function_level_imports_of_our_own_modules():
    bad = [f"{mi.path.relative_to(PKG.parent)}:{line} imports {t} inside a function"
           for name, mi in scan().items() if not any(name.startswith(a) for a in LAZY_ALLOWED)
           for line, t in mi.inner]
    assert not bad, "\n".join(bad)


def _sources():
    return {p: p.read_text() for p in PKG.rglob("*.py")}


def test_one_atomic_writer_and_one_ray_start():
    """os.replace / rename-into-place lives in storage/atomic.py only; ray.init in runtime.py only."""
    for path, src in _sources().items():
        rel = str(path.relative_to(PKG.parent))
        if rel != "afov_ray/storage/atomic.py":
            assert "os.replace(" not in src and ".rename(" not in src, f"{rel} renames files itself"
        if rel != "afov_ray/runtime.py":
            assert not re.search(r"\bray\.init\(", src), f"{rel} starts Ray itself (use afov_ray.runtime.init_ray)"


def test_every_package_says_what_it_owns():
    for init in PKG.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 30, f"{init.relative_to(PKG.parent)} needs a docstring saying what it owns"


def test_no_reference_outside_the_repository():
    """The product stands alone: no file cites the team's private notes or a machine path."""
    root = PKG.parent
    patterns = re.compile(r"afov-reference\.md|install-notes\.md|anchors\.md|design\.md|\.\./shared|/work/")
    files = [p for p in root.rglob("*") if p.is_file()
             and (p.suffix in {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt"} or p.name == "Dockerfile")
             and not any(part in (".venv", ".git", "outputs", "node_modules") for part in p.parts)
             and p.relative_to(root).parts[:2] != ("tests", "data")]
    hits = [f"{p.relative_to(root)}:{i + 1}" for p in files for i, line in enumerate(p.read_text(errors="ignore").splitlines())
            if patterns.search(line) and p.name != "test_architecture.py"]
    assert not hits, "files refer outside the repository:\n" + "\n".join(hits[:40])
