"""The segmented selection cases of ``sparseforce bench``: per-layer, per-row and 2:4 masks, each
timed against today's practice and every backend, next to the floor (read the fp32 scores once,
write the bool masks once: 5 bytes per element).

Today's practice, exact k as ours: a ``kthvalue`` per layer and ``>=`` (the faster of the usual
two; ``topk`` per layer + scatter is timed beside it), ``topk(k, dim=1)`` + scatter per row, and
``topk(2)`` over the weight viewed as groups of four + scatter for 2:4.
"""
from __future__ import annotations

import math

import torch

from . import ops
from .bench_case import Case


def _scores(shapes, device) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(s, generator=gen, device=device) for s in shapes]


def _scatter_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest of each row of the 2-D ``x`` (all of it when 1-D)."""
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, x.topk(k, dim=-1).indices, True)


def layer_case(layers: str, shapes: list[tuple[int, ...]], density: float = 0.5, backends=()) -> Case:
    n = sum(math.prod(s) for s in shapes)
    ks = [max(1, round(math.prod(s) * density)) for s in shapes]

    def make(impl, device):
        scores = _scores(shapes, device)
        if impl == "baseline":
            return lambda: [s >= s.reshape(-1).kthvalue(s.numel() - k + 1).values for s, k in zip(scores, ks)]
        if impl == "topk":
            return lambda: [_scatter_topk(s.reshape(-1), k).view(s.shape) for s, k in zip(scores, ks)]
        return lambda: ops.segmented_topk_masks(scores, ks, backend=impl)

    return Case(f"layer-topk {layers} float32 k={density:.0%}", layers, torch.float32, n, n * 5,
                ["baseline", "topk", *backends], make)


def row_case(layers: str, shape: tuple[int, int], density: float = 0.5, backends=()) -> Case:
    k = max(1, round(shape[1] * density))

    def make(impl, device):
        (x,) = _scores([shape], device)
        if impl == "baseline":
            return lambda: _scatter_topk(x, k)
        return lambda: ops.segmented_topk_masks([x], [k], segment="row", backend=impl)

    return Case(f"row-topk {layers} float32 k={density:.0%}", layers, torch.float32, math.prod(shape),
                math.prod(shape) * 5, ["baseline", *backends], make)


def nm_case(layers: str, shape: tuple[int, int], n: int = 2, m: int = 4, backends=()) -> Case:
    def make(impl, device):
        (x,) = _scores([shape], device)
        if impl == "baseline":
            return lambda: _scatter_topk(x.view(-1, m), n).view(shape)
        return lambda: ops.segmented_topk_masks([x], None, segment=("nm", n, m), backend=impl)

    return Case(f"nm-{n}:{m} {layers} float32", layers, torch.float32, math.prod(shape), math.prod(shape) * 5,
                ["baseline", *backends], make)


def segmented_cases(model: str, model_shapes, linear: str, linear_shape, backends=()) -> list[Case]:
    """Per-layer selection over the model's layers; per-row and 2:4 over one Linear weight."""
    return [layer_case(model, model_shapes, backends=backends), row_case(linear, linear_shape, backends=backends),
            nm_case(linear, linear_shape, backends=backends)]
