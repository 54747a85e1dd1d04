"""The model the past-2^31 cases of ``sparseforce bench`` build (FORCE in ``bench``,
``global_unstructured`` in ``bench_compat``)."""
from __future__ import annotations

import torch

WIDE_WIDTH, WIDE_DEPTH = 32768, 2  # 2 · 32768² + 10 · 32768 = 2,147,811,328 weights: just past 2^31


def wide_mlp(width: int = WIDE_WIDTH, depth: int = WIDE_DEPTH, classes: int = 10, dtype=torch.bfloat16,
             device="cpu") -> torch.nn.Sequential:
    """``depth`` square ``width``-wide Linear layers and a classifier: the fewest layers that hold
    more than 2^31 weights, so the global top-k has to work with 64-bit positions."""
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width, bias=False, dtype=dtype, device=device), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, classes, dtype=dtype, device=device))
    return torch.nn.Sequential(*layers)


def wide_mlp_params(width: int = WIDE_WIDTH, depth: int = WIDE_DEPTH, classes: int = 10) -> int:
    """The number of weights (prunable: the Linear weights) of :func:`wide_mlp`."""
    return depth * width * width + classes * width
