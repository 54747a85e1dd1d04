"""How long the commands take: stated once, here.

The CLI's help texts and the README's "How long things take" table are written from this table,
and tests/apps/test_durations.py holds both to it; the figures of the two full demos are also checked
against the wall time their committed ``results.json`` recorded. Measured on the machine the
committed results come from, quiet. Importing this module imports nothing else, so that
``sparseforce --help`` stays fast.
"""
from __future__ import annotations

MACHINE = "a quiet 2-core x86_64 VM"

# What the user types -> how long it takes there.
DURATIONS: dict[str, str] = {
    "pip install --no-build-isolation -e .": "about 30 s",  # the C++ extension's build, torch present
    "sparseforce demo": "about 4 minutes",
    "sparseforce demo --quick": "about 10 s",
    "sparseforce demo --dataset mnist": "about 14 minutes",
    "sparseforce demo --dataset mnist --quick": "about 10 s",
    "sparseforce bench": "about 2.5 minutes",
    "sparseforce bench --quick": "about 15 s",
    "python -m pytest -q": "about 13 minutes",
}

# Committed full runs whose recorded wall time ("seconds") the figure must round to.
RECORDED = {
    "sparseforce demo": "benchmarks/results/demo-2026-12-01/results.json",
    "sparseforce demo --dataset mnist": "benchmarks/results/demo-mnist-2026-12-07/results.json",
}


def took(command: str) -> str:
    """``"about 9 minutes on a quiet 2-core x86_64 VM"`` for ``command``, a key of :data:`DURATIONS`."""
    return f"{DURATIONS[command]} on {MACHINE}"
