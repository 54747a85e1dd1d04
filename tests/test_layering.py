"""The layering rules, checked on the source: kernels never import the pruning layer; the pruning
layer reaches kernels only through ``sparseforce.ops`` (or ``sparseforce.distributed``, the ops'
multi-rank form, which itself uses only ``sparseforce.ops``); no import circle between modules of
the package; no module reaches another's private names."""
import ast
from pathlib import Path

import sparseforce

PKG = Path(sparseforce.__file__).parent

# Today's violations outside the masks area, each with the area whose branch removes it: the lead
# empties these when merging the branches. A violation not listed fails, and so does a listed one
# that is gone (take it off the list).
CIRCLE_EDGES_ALLOWED: set = set()  # (importer, imported): an import that closes a circle
PRIVATE_USES_ALLOWED: set = set()  # (module, the private name of another module it reaches)


# --------------------------------------------------------------------------------------------
# The package's imports, read from its source. Every import counts, at module level and inside
# functions (a lazy import still closes a circle when it runs); only `if TYPE_CHECKING:` blocks,
# which never run, are left out of the circles.
# --------------------------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_modules() -> dict[str, Path]:
    """Every sparseforce module: name -> source (the compiled extension has none)."""
    found = {_module_name(p): p for p in PKG.rglob("*.py")}
    found.update({f"sparseforce.{p.name.split('.')[0]}": None for p in PKG.glob("_C*.so")})
    found.update({f"sparseforce.{p.name.split('.')[0]}": None for p in PKG.glob("_C*.pyd")})
    return found


MODULES = _all_modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST, *, type_checking: bool):
    """ast.walk, optionally without the bodies of `if TYPE_CHECKING:` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not type_checking and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES.get(module) is not None and MODULES[module].name == "__init__.py" \
        else module.rsplit(".", 1)[0]
    parts = package.split(".")
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _ours(name: str) -> bool:
    return name == "sparseforce" or name.startswith("sparseforce.")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _edges(module: str, tree: ast.AST) -> set[str]:
    """The sparseforce modules `module` imports: `from P import x` imports the module P.x when
    there is one, else P (a package's __init__); `import P.Q` imports P.Q."""
    found = set()
    for node in _walk(tree, type_checking=False):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if _ours(a.name))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            if _ours(base):
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
    found.discard(module)
    return found


def _private_uses(module: str, tree: ast.AST) -> set[str]:
    """`sparseforce.x._name` for each private name of another module that `module` reaches:
    `from x import _name`, or `x._name` on a name bound to the module x. Private *modules*
    (`from . import _checks`, `ops._registry`) are fine, and so are a private module's public names."""
    found, bound = set(), {}
    nodes = list(_walk(tree, type_checking=True))
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if _ours(a.name):
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            if not _ours(base):
                continue
            for a in node.names:
                target = f"{base}.{a.name}"
                if target in MODULES:
                    bound[a.asname or a.name] = target
                elif _private(a.name) and base != module:
                    found.add(target)
    for node in nodes:
        parts = _dotted(node) if isinstance(node, ast.Attribute) else None
        if not parts or parts[0] not in bound:
            continue
        target = bound[parts[0]]
        for attr in parts[1:-1]:
            if f"{target}.{attr}" not in MODULES:
                break  # an object's attribute, checked where that object came from
            target = f"{target}.{attr}"
        else:
            if f"{target}.{parts[-1]}" not in MODULES and _private(parts[-1]) and target != module:
                found.add(f"{target}.{parts[-1]}")
    return found


def _dotted(node: ast.AST):
    """["a", "b", "c"] for the expression a.b.c, None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _imports(path: Path) -> set[str]:
    """Absolute names of the sparseforce modules a file imports (relative imports resolved)."""
    module = _module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in found if _ours(n)}


def test_kernels_never_import_the_pruning_layer():
    above = ("sparseforce.pruning", "sparseforce.masks", "sparseforce.optim", "sparseforce.train",
             "sparseforce.distributed", "sparseforce.demo", "sparseforce.cli", "sparseforce.bench")
    for path in (PKG / "ops").rglob("*.py"):
        bad = [n for n in _imports(path) if n.startswith(above)]
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_pruning_reaches_kernels_only_through_ops():
    allowed_kernel_paths = {"sparseforce.ops", "sparseforce.distributed"}
    for path in list((PKG / "pruning").rglob("*.py")) + [PKG / "distributed.py"]:
        for name in _imports(path):
            if name.startswith("sparseforce.ops.") and name not in ("sparseforce.ops._schema",
                                                                     "sparseforce.ops._schema.NaNScoreError"):
                raise AssertionError(f"{path.relative_to(PKG)} reaches into {name}; use sparseforce.ops")
            assert not name.startswith("sparseforce.ops.cpp.loader"), f"{path.relative_to(PKG)} imports the extension"
            if name.startswith("sparseforce.ops"):
                assert name.split(".")[1] in {n.split(".")[1] for n in allowed_kernel_paths}


def test_the_readme_names_only_kernel_sources_that_exist():
    # was: a `histogram.cu` in the code layout; radix_histogram's kernels live in select.cu
    import re
    root = PKG.parent
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]  # the README and the docs site
    readme = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    ours = {p.name for p in (root / "csrc").rglob("*") if p.is_file()}
    cuda_headers = {"cuda_bf16.h", "cuda_fp16.h", "cuda_runtime.h"}
    named = set(re.findall(r"`([A-Za-z0-9_]+\.(?:cu|cuh|cpp|h))`", readme)) - cuda_headers
    assert named and named <= ours, sorted(named - ours)


def test_every_public_submodule_is_an_attribute_loaded_on_first_access():
    """`sf.models.resnet50()` as `torch.optim.SGD`: was an AttributeError for every subpackage but
    ops, distributed and ablations. Each in a fresh process, so nothing imported it before."""
    import subprocess
    import sys
    import sparseforce
    pkg = Path(sparseforce.__file__).parent
    public = sorted(p.stem if p.is_file() else p.name for p in pkg.iterdir()
                    if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").is_file()))
    assert {"models", "optim", "data", "masks", "train", "pruning", "ops"} <= set(public)
    code = ("import sys, sparseforce as sf\n"
            "assert 'torch' not in sys.modules, 'import sparseforce imported torch'\n"
            f"for name in {public!r}:\n"
            "    mod = getattr(sf, name)\n"
            "    assert mod is sys.modules['sparseforce.' + name], name\n"
            "    assert name in dir(sf), name\n"
            "assert callable(sf.models.resnet50) and callable(sf.optim.MaskedSGD)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=pkg.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def _sources():
    """(module name, its syntax tree) for every module of the package with a Python source."""
    return [(name, ast.parse(path.read_text(encoding="utf-8"))) for name, path in sorted(MODULES.items())
            if path is not None]


def _strongly_connected(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _a_circle(graph: dict, component: list) -> list:
    """One circle through the first module of a strongly connected component, for the message."""
    members, start = set(component), component[0]
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & members):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append(path + [nxt])
    return component


def test_no_import_circle_between_modules_of_the_package():
    graph = {name: _edges(name, tree) for name, tree in _sources()}
    together = {m: tuple(c) for c in _strongly_connected(graph) for m in c}
    gone = sorted(e for e in CIRCLE_EDGES_ALLOWED if e[1] not in graph.get(e[0], ()) or
                  together.get(e[0]) is None or e[1] not in together[e[0]])
    assert not gone, f"no longer in a circle, take them off CIRCLE_EDGES_ALLOWED: {gone}"
    for importer, imported in CIRCLE_EDGES_ALLOWED:
        graph[importer].discard(imported)
    circles = [" -> ".join(_a_circle(graph, c)) for c in _strongly_connected(graph)]
    assert not circles, "import circles (a module importing a package imports its __init__):\n" + "\n".join(circles)


def test_no_module_imports_another_modules_private_names():
    found = {(name, use) for name, tree in _sources() for use in _private_uses(name, tree)}
    gone = sorted(PRIVATE_USES_ALLOWED - found)
    assert not gone, f"fixed, take them off PRIVATE_USES_ALLOWED: {gone}"
    new = sorted(found - PRIVATE_USES_ALLOWED)
    assert not new, "private names reached across modules (make them public where they belong, or import " \
                    "their private module):\n" + "\n".join(f"{m} uses {u}" for m, u in new)
