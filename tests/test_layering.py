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
