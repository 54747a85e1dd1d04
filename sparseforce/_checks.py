"""Argument checks shared by the Python API: one TypeError/ValueError naming the argument, raised
before any work is done."""
from __future__ import annotations

import numbers

import torch


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype)[6:]} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}" if isinstance(value, (str, bool)) else type(value).__name__


def real(name: str, value, what: str = "a real number") -> float:
    """``value`` as a float. Python and numpy reals and 0-dim real tensors are accepted alike;
    bool is refused (``True`` is far more likely a misplaced flag than the number 1)."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and value.dtype != torch.bool and not value.is_complex() and not value.is_meta:
            return float(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):  # np.floating/np.integer register here
        return float(value)
    raise TypeError(f"{name} must be {what}, got {describe(value)}")


def integer(name: str, value, minimum: int | None = None) -> int:
    """``value`` as an int: Python or numpy integers, never bool or a float (1.0 included)."""
    what = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {what}, got {value}")
    return value


def seed(value, name: str = "seed") -> int:
    """A seed: an integer in [0, 2**32), the one range every generator involved takes as it is.
    torch's CPU generator (mt19937) keeps only a seed's low 32 bits, so 2**32 would silently draw
    what 0 draws; numpy's and scikit-learn's refuse such seeds outright."""
    value = integer(name, value, 0)
    if value >= 2**32:
        raise ValueError(f"{name} must be below 2**32 (torch's CPU generator keeps only a seed's low 32 bits), "
                         f"got {value}")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return value
