"""Build script for sparseforce.

The compiled extension ``sparseforce._C`` (csrc/) is added by the C++/CUDA kernel work; until its
sources exist this installs the pure-Python package, whose ``reference`` backend does everything.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="sparseforce",
    version="0.1.0",
    description="Pruning at initialization (FORCE, Iter SNIP, SNIP, GraSP, SynFlow) with fused kernels",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sparseforce", "sparseforce.*"]),
    install_requires=[
        "torch>=2.4",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy>=1.24",
        "pybind11>=2.12",
        "ninja",
        "pytest-benchmark>=4",
        "tqdm>=4.60",          # progress bars for the pruning loop and training
        "scikit-learn>=1.2",   # ships the 8x8 digits data set: the offline demo data
        "pillow>=9",           # decodes Tiny-ImageNet / ImageNet JPEGs without torchvision
        "matplotlib>=3.5",     # the demo's and the benchmark runner's plots (Agg, headless)
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
    },
    entry_points={"console_scripts": ["sparseforce=sparseforce.cli:main"]},
)
