"""The layering rule, checked on the source: kernels never import the pruning layer, and the
pruning layer reaches kernels only through ``sparseforce.ops`` (or ``sparseforce.distributed``,
the ops' multi-rank form, which itself uses only ``sparseforce.ops``)."""
import ast
from pathlib import Path

import sparseforce

PKG = Path(sparseforce.__file__).parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the sparseforce modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in found if n == "sparseforce" or n.startswith("sparseforce.")}


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
            assert not name.startswith("sparseforce._ext"), f"{path.relative_to(PKG)} imports the extension"
            if name.startswith("sparseforce.ops"):
                assert name.split(".")[1] in {n.split(".")[1] for n in allowed_kernel_paths}


def test_the_readme_names_only_kernel_sources_that_exist():
    # was: a `histogram.cu` in the code layout; radix_histogram's kernels live in select.cu
    import re
    root = PKG.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    ours = {p.name for p in (root / "csrc").rglob("*") if p.is_file()}
    cuda_headers = {"cuda_bf16.h", "cuda_fp16.h", "cuda_runtime.h"}
    named = set(re.findall(r"`([A-Za-z0-9_]+\.(?:cu|cuh|cpp|h))`", readme)) - cuda_headers
    assert named and named <= ours, sorted(named - ours)
