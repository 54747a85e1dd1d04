"""The masks' report: per-layer densities and per-row kept counts as tables, and the percentages
every report shows.

Conventions: a set of masks with no elements at all (no masks, or only 0-element masks) has
density 1.0 and sparsity 0.0, nothing has been pruned; the same holds per layer for a 0-element
mask. This keeps ``per_layer()`` and logging total functions instead of raising on edge cases.
Densities are shown in percent everywhere (``per_layer()``'s table, ``repr``, the CLI), with two
significant digits of the smaller of the density and the sparsity: 24 kept of 2.4 M is "0.0010%",
one pruned of 3 M "99.999967%".
"""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple

__all__ = ["LayerCollapseWarning", "LayerDensity", "LayerTable", "RowStats", "RowTable", "format_percent",
           "safe_density", "shape_str"]


def shape_str(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def safe_density(kept: int, numel: int) -> float:
    # 0/0 is defined as "nothing pruned" (see the module's docstring).
    return 1.0 if numel == 0 else kept / numel


def format_percent(part: int, whole: int) -> str:
    """``part / whole`` in percent, with two significant digits of the smaller of it and its
    complement (at least one decimal), so a share that is not 0 or 1 never reads "0%" or
    "100%": ``format_percent(24, 2_400_000) == "0.0010%"``. ``0 / 0`` is "100%" (nothing pruned)."""
    if part == whole:
        return "100%"
    if part == 0:
        return "0%"
    p = 100.0 * part / whole
    # Rounded to two significant digits first, so 0.00099999 counts as 0.0010, not 0.00100.
    smaller = float(f"{min(p, 100.0 - p):.2g}")
    decimals = max(1, 1 - math.floor(math.log10(smaller)))
    return f"{p:.{decimals}f}%"


class LayerCollapseWarning(UserWarning):
    """Pruning left a layer with no weights at all while others keep some (*layer collapse*): no
    signal passes through that layer, so the pruned network cannot learn. :meth:`Masks.collapsed`
    lists such layers."""


# --------------------------------------------------------------------------------------------
# per-layer report
# --------------------------------------------------------------------------------------------


class LayerDensity(NamedTuple):
    name: str
    shape: tuple
    numel: int
    kept: int
    density: float

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density


class LayerTable(list):
    """A list of :class:`LayerDensity` rows whose ``str()`` is an aligned text table."""

    @property
    def total(self) -> LayerDensity:
        numel = sum(r.numel for r in self)
        kept = sum(r.kept for r in self)
        return LayerDensity("total", (), numel, kept, safe_density(kept, numel))

    def __str__(self) -> str:
        header = ("name", "shape", "numel", "kept", "density", "sparsity")
        total = self.total
        def shares(r):
            if r.numel == 0:  # nothing to prune: density 100%, sparsity 0%
                return "100%", "0%"
            return format_percent(r.kept, r.numel), format_percent(r.numel - r.kept, r.numel)

        body = [(r.name, shape_str(r.shape), f"{r.numel:,}", f"{r.kept:,}", *shares(r)) for r in self]
        foot = ("total", "", f"{total.numel:,}", f"{total.kept:,}", *shares(total))
        return _table(header, body, foot, left=2)

    def __repr__(self) -> str:
        return f"LayerTable({list.__repr__(self)})"


# --------------------------------------------------------------------------------------------
# per-row report
# --------------------------------------------------------------------------------------------


class RowStats(NamedTuple):
    """The kept counts of one mask's rows (the mask viewed as (dim 0, the rest flattened), as the
    row and N:M selections view it): ``min`` / ``max`` / ``mean`` kept per row and the number of
    ``empty`` rows (nothing kept: an output unit cut off). A mask with no rows reads 0 everywhere."""
    name: str
    rows: int
    row_length: int
    kept: int
    min: int
    max: int
    empty: int

    @property
    def mean(self) -> float:
        return self.kept / self.rows if self.rows else 0.0


class RowTable(list):
    """A list of :class:`RowStats` whose ``str()`` is an aligned text table; the total row counts
    the rows of every mask together (its row length is left blank: the masks' differ)."""

    @property
    def total(self) -> RowStats:
        full = [r for r in self if r.rows]
        return RowStats("total", sum(r.rows for r in self), 0, sum(r.kept for r in self),
                        min((r.min for r in full), default=0), max((r.max for r in full), default=0),
                        sum(r.empty for r in self))

    def __str__(self) -> str:
        header = ("name", "rows", "row length", "min kept", "mean kept", "max kept", "empty rows")

        def cells(r, length):
            if not r.rows:
                return (r.name, "0", length, "-", "-", "-", "0")
            return (r.name, f"{r.rows:,}", length, f"{r.min:,}", f"{r.mean:,.2f}", f"{r.max:,}", f"{r.empty:,}")

        body = [cells(r, f"{r.row_length:,}") for r in self]
        return _table(header, body, cells(self.total, ""), left=1)

    def __repr__(self) -> str:
        return f"RowTable({list.__repr__(self)})"


def _table(header: tuple, body: list, foot: tuple, left: int) -> str:
    """Rows of cells as aligned text between rules: the first ``left`` columns (names, shapes)
    left-aligned, which read best so, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *body, foot]) for i in range(len(header))]

    def fmt(row) -> str:
        cells = [c.ljust(w) for c, w in zip(row[:left], widths)]
        cells += [c.rjust(w) for c, w in zip(row[left:], widths[left:])]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(tuple("-" * w for w in widths)))
    return "\n".join([fmt(header), rule, *(fmt(r) for r in body), rule, fmt(foot)])
