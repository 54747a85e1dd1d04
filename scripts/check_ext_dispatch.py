"""Checks a built ``sparseforce._C``: importing it registers a kernel on each dispatch key for
every op the sources register for that key.

The expected (key, op) pairs are parsed from the ``TORCH_LIBRARY_IMPL(sparseforce, KEY, m)``
blocks of csrc/ (so a new op is checked without editing this file). The ops themselves are defined
from Python (``sparseforce/ops/library.py``), so ``sparseforce.ops`` is imported from the tree
beside ``--csrc`` first. Runs with only torch installed, on a machine without a GPU (registration
needs none). Used by scripts/ci_cuda_build.sh:

    python scripts/check_ext_dispatch.py --so build/lib/sparseforce/_C.so --csrc csrc --key CUDA --key CPU
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_BLOCK = re.compile(r"TORCH_LIBRARY_IMPL\s*\(\s*sparseforce\s*,\s*(\w+)\s*,\s*(\w+)\s*\)\s*\{")


def registered_impls(csrc: Path) -> dict[str, set[str]]:
    """Dispatch key -> the op names that csrc/**/*.{cpp,cu} register for it with m.impl."""
    found: dict[str, set[str]] = {}
    for path in sorted(p for p in Path(csrc).rglob("*") if p.suffix in (".cpp", ".cu")):
        text = _COMMENT.sub("", path.read_text(encoding="utf-8", errors="replace"))
        for m in _BLOCK.finditer(text):
            key, var = m[1], m[2]
            depth, end = 1, m.end()
            while depth and end < len(text):  # the block's body: up to its matching brace
                depth += (text[end] == "{") - (text[end] == "}")
                end += 1
            names = re.findall(rf'\b{var}\s*\.\s*impl\s*\(\s*"(?:sparseforce::)?(\w+)"', text[m.end():end])
            found.setdefault(key, set()).update(names)
    return found


def define_ops(csrc: Path) -> None:
    """Imports ``sparseforce.ops`` (which defines the op schemas) from the tree holding ``csrc``."""
    sys.path.insert(0, str(Path(csrc).resolve().parent))
    importlib.import_module("sparseforce.ops")


def load_extension(so: Path):
    """Imports the built module from its file (torch first: the extension links against it)."""
    import torch  # noqa: F401
    spec = importlib.util.spec_from_file_location("sparseforce._C", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_kernels(expected: dict[str, set[str]], keys: list[str]) -> list[str]:
    import torch
    missing = []
    for key in keys:
        for op in sorted(expected.get(key, ())):
            try:
                ok = torch._C._dispatch_has_kernel_for_dispatch_key(f"sparseforce::{op}", key)
            except RuntimeError:  # no schema: sparseforce/ops/library.py does not define the op
                missing.append(f"sparseforce::{op} is not defined (not in sparseforce/ops/library.py)")
                continue
            if not ok:
                missing.append(f"sparseforce::{op} has no {key} kernel")
    return missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--so", required=True, type=Path, help="the built extension (sparseforce/_C*.so)")
    parser.add_argument("--csrc", required=True, type=Path, help="the sources it was built from")
    parser.add_argument("--key", action="append", required=True, help="dispatch key to check (repeatable)")
    args = parser.parse_args(argv)

    expected = registered_impls(args.csrc)
    empty = [k for k in args.key if not expected.get(k)]
    if empty:  # a parse that finds nothing would pass vacuously
        print(f"no m.impl(...) found for {empty} under {args.csrc}", file=sys.stderr)
        return 1
    define_ops(args.csrc)
    load_extension(args.so)
    import torch
    print(f"loaded {args.so} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    for key in args.key:
        print(f"  {key}: {', '.join(sorted(expected[key]))}")
    missing = missing_kernels(expected, args.key)
    for line in missing:
        print(f"MISSING: {line}", file=sys.stderr)
    if not missing:
        print(f"every op has its kernel on {', '.join(args.key)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
