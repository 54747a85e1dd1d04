"""The layer-collapse warning: layers a method left with no weights while others keep some."""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence

from ..masks import LayerCollapseWarning, Masks

_PRUNING_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    # The warning should point at the line that called the pruning function, however many
    # pruning frames (prune -> snip -> force -> ...) lie in between.
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PRUNING_DIR:
        level, frame = level + 1, frame.f_back
    return level


def warn_collapsed(method: str, names: Sequence[str], numels: Sequence[int], kept: Sequence[int]) -> None:
    """LayerCollapseWarning naming the layers left with no weights while others keep some (nothing
    kept anywhere is what sparsity=1 asks for)."""
    live = [n for n, size in zip(names, numels) if size]
    empty = [n for n, size, k in zip(names, numels, kept) if size and not k]
    if not empty or len(empty) == len(live):
        return
    shown = ", ".join(map(repr, empty[:5])) + (", ..." if len(empty) > 5 else "")
    warnings.warn(f"{method} left {len(empty)} of {len(live)} layers with no weights (layer collapse: no signal "
                  f"passes through them): {shown}; prune less or use another method",
                  LayerCollapseWarning, stacklevel=_caller_stacklevel())


def warn_if_collapsed(method: str, masks: Masks) -> Masks:
    warn_collapsed(method, list(masks), [m.numel() for m in masks.values()],
                   [int(m.count_nonzero()) for m in masks.values()])
    return masks
