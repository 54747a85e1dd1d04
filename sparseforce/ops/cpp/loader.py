"""Loads the compiled kernels of ``torch.ops.sparseforce.*``, building them on first use if needed.

``import sparseforce.ops`` (which every sparseforce function imports) already loads a prebuilt
extension (:func:`preload`, cheap), so the ops (defined by ``ops/library.py``) have their CPU
kernels from then on; building waits for first use. Order of attempts, once per process, on the first call of :func:`load`:

1. ``import sparseforce._C``: the extension ``setup.py`` built at install time.
2. A just-in-time build with ninja (``torch.utils.cpp_extension.load``) of the C++ sources
   (``csrc/`` in a source checkout, ``sparseforce/_csrc`` in a wheel) into a cache directory:
   ``$SPARSEFORCE_EXT_DIR`` if set, else torch's (``$TORCH_EXTENSIONS_DIR`` or
   ``~/.cache/torch_extensions``). A warning says so, once; later processes reuse the build.
3. Otherwise the kernels are unavailable and :func:`load` returns the reason: ``backend="auto"``
   then runs the pure-PyTorch reference (with one warning) and ``backend="cpp"`` raises
   ``BackendUnavailableError`` quoting the reason.

Environment: ``SPARSEFORCE_NO_EXT=1`` never loads compiled kernels; ``SPARSEFORCE_NO_JIT=1``
uses only the prebuilt extension; ``SPARSEFORCE_JIT_VERBOSE=1`` shows the compiler output.
"""
from __future__ import annotations

import importlib
import os
import shutil
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["load", "ExtensionWarning", "source_dir", "JIT_NAME"]

JIT_NAME = "sparseforce_C"
# Kept in step with setup.py's flags: the same code, whichever way it is built. The sources are
# C++17; the language standard is left to torch's build, which picks what its headers need.
CXX_FLAGS = ["-O3", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]


class ExtensionWarning(UserWarning):
    """The compiled kernels are being JIT-built, or cannot be loaded (the reference runs instead)."""


_LOCK = threading.Lock()
_STATE: str | None = None  # None: not tried yet; "": loaded; otherwise why it is unavailable
HOW = ""  # "prebuilt" or "jit" once loaded


def _env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def source_dir() -> Path | None:
    """Where the C++ sources are: a wheel's copy, else the checkout's csrc/."""
    package = Path(__file__).resolve().parents[2]  # sparseforce/ (this file: sparseforce/ops/cpp/)
    for d in (package / "_csrc", package.parent / "csrc"):
        if (d / "register.cpp").is_file():
            return d
    return None


def _sources(root: Path) -> list[str]:
    files = sorted(root.glob("*.cpp")) + sorted((root / "cpu").glob("*.cpp"))
    # Hook for the CUDA kernels (csrc/cuda/*.cu + their .cpp glue): JIT-built with nvcc only when
    # this torch is a CUDA build and a toolkit is found, as setup.py does.
    if _want_cuda() and (root / "cuda").is_dir():
        files += sorted((root / "cuda").glob("*.cpp")) + sorted((root / "cuda").glob("*.cu"))
    return [str(f) for f in files]


def _want_cuda() -> bool:
    if _env("SPARSEFORCE_NO_CUDA"):
        return False
    from torch.utils.cpp_extension import CUDA_HOME
    return torch.version.cuda is not None and CUDA_HOME is not None


def _ops_registered() -> bool:
    # The ops are defined from Python (ops/library.py); the extension only adds their CPU kernels.
    return torch._C._dispatch_has_kernel_for_dispatch_key("sparseforce::topk_masks", "CPU")


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx.split()[0]) if cxx else None


def _jit_build() -> str | None:
    """Build and load the kernels with ninja; the reason on failure."""
    if _env("SPARSEFORCE_NO_JIT"):
        return "it was not built at install time and SPARSEFORCE_NO_JIT=1 forbids building it now"
    root = source_dir()
    if root is None:
        return "it was not built at install time and its C++ sources are not installed to build it now"
    if _compiler() is None:
        return (f"it was not built at install time and no C++ compiler ({os.environ.get('CXX', 'c++')}) "
                "is on PATH to build it now")
    from torch.utils import cpp_extension
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return "it was not built at install time and ninja, needed to build it now, is not installed"
    build_dir = os.environ.get("SPARSEFORCE_EXT_DIR") or None
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    try:
        where = build_dir or cpp_extension._get_build_directory(JIT_NAME, verbose=False)
    except Exception:  # a private helper: only for the message
        where = "torch's extension cache"
    if not (Path(where) / f"{JIT_NAME}.so").is_file():
        # Said once: later processes find the library in the cache (ninja rebuilds it silently
        # only if a source changed).
        warnings.warn(f"sparseforce: the C++ extension sparseforce._C is not installed; building it with "
                      f"ninja into {where} (about 2 minutes, once)", ExtensionWarning, stacklevel=5)
    sources = _sources(root)
    # ops_cuda.cpp registers the CUDA kernels only under this define, as setup.py passes it.
    with_cuda = any(str(f).endswith(".cu") for f in sources)
    cflags = CXX_FLAGS + (["-DSPARSEFORCE_WITH_CUDA"] if with_cuda else [])
    try:
        cpp_extension.load(name=JIT_NAME, sources=sources, extra_cflags=cflags,
                           extra_cuda_cflags=["-O3"], extra_ldflags=LD_FLAGS,
                           build_directory=build_dir, is_python_module=False,
                           verbose=_env("SPARSEFORCE_JIT_VERBOSE"))
    except Exception as exc:  # a compiler error, a missing header, ...
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        return f"building it with ninja failed ({lines[-1] if lines else type(exc).__name__})"
    return None


def _import_prebuilt() -> str | None:
    """Import the extension setup.py built; None on success, else why not."""
    try:
        importlib.import_module("sparseforce._C")
    except ModuleNotFoundError:
        return "not built at install time"
    except ImportError as exc:
        # The file is there but does not load (built against another torch?): rebuild it.
        warnings.warn(f"sparseforce: the installed extension sparseforce._C does not load ({exc}); "
                      "trying a JIT build", ExtensionWarning, stacklevel=5)
        return f"the installed sparseforce._C does not load ({exc})"
    return None


def _try_load() -> str | None:
    """Load the kernels; None on success, else the reason they are unavailable."""
    global HOW
    if _env("SPARSEFORCE_NO_EXT"):
        return "compiled kernels are disabled by SPARSEFORCE_NO_EXT=1"
    if _ops_registered():  # loaded by other means (torch.ops.load_library, a second loader)
        HOW = HOW or "preloaded"
    elif _import_prebuilt() is None:
        HOW = "prebuilt"
    else:
        reason = _jit_build()
        if reason is not None:
            return reason
        HOW = "jit"
    if not _ops_registered():
        return "the extension loaded but registered no torch.ops.sparseforce kernels"
    return None


def preload() -> None:
    """At import: load the prebuilt extension if there is one, so ``torch.ops.sparseforce.*``
    exist right after ``import sparseforce.ops``. Never builds and never warns: that waits for
    :func:`load`, on first use of the cpp backend."""
    global _STATE, HOW
    if _STATE is not None or _env("SPARSEFORCE_NO_EXT"):
        return
    with _LOCK:
        if _STATE is None and _import_quietly() and _ops_registered():
            HOW, _STATE = "prebuilt", ""


def _import_quietly() -> bool:
    try:
        importlib.import_module("sparseforce._C")
    except ImportError:
        return False
    return True


def load() -> str | None:
    """Load the compiled kernels once; None if they are usable, else why they are not."""
    global _STATE
    if _STATE is None:
        with _LOCK:
            if _STATE is None:
                reason = _try_load()
                if reason is not None:
                    warnings.warn(f"sparseforce: compiled kernels (sparseforce._C) unavailable: {reason}. "
                                  "backend='auto' falls back to the pure-PyTorch reference (slower).",
                                  ExtensionWarning, stacklevel=4)
                _STATE = reason or ""
    return _STATE or None
