"""Masks to and from torch.ao.pruning's format (placeholder: filled in by its branch)."""
from __future__ import annotations


def read(model) -> dict:
    raise NotImplementedError("not yet")


def write(masks, model) -> None:
    raise NotImplementedError("not yet")
