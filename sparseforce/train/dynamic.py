"""Dynamic sparse training in a training loop: the method named by ``dst=`` ("rigl", "set", "gmp"),
its options checked and completed with the method's defaults before any work, and the
:mod:`sparseforce.dst` object built on a run's model, masks and optimizer.

What a checkpoint stores and a resumed run must match is the resolved form
``{"method": name, "total_steps": T, every option: its value}``, so a default that changes in a
later version cannot silently change a resumed run.
"""
from __future__ import annotations

import collections.abc
import inspect

import torch

from .._prunable import prunable_names
from ..masks import Masks

DST_METHODS = ("rigl", "set", "gmp")
_CLASSES = {"rigl": "RigL", "set": "SET", "gmp": "GradualMagnitude"}
# What the training loop binds, never an option: the run's objects, its length and its kernels.
_BOUND = ("model", "masks", "optimizer", "total_steps", "backend", "process_group")


def dst_class(method: str):
    from .. import dst

    return getattr(dst, _CLASSES[method])


def option_defaults(method: str) -> dict:
    """The options of ``method`` (keyword -> default; ``inspect.Parameter.empty`` for a required one)."""
    params = inspect.signature(dst_class(method)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _BOUND}


def check_method(dst) -> str | None:
    if dst is None:
        return None
    if not isinstance(dst, str) or dst not in DST_METHODS:
        raise ValueError(f"dst must be None or one of {', '.join(map(repr, DST_METHODS))}, got {dst!r}")
    return dst


def resolve(dst, options, *, total_steps: int, seed: int) -> dict | None:
    """``dst`` and ``dst_options`` as a checkpoint stores them (None without ``dst``). A randomized
    method's ``seed`` left out is the run's ``seed``."""
    method = check_method(dst)
    if method is None:
        if options:
            raise ValueError("dst_options given without dst: name the method, dst='rigl', 'set' or 'gmp'")
        return None
    options = {} if options is None else options
    if not isinstance(options, collections.abc.Mapping):
        raise TypeError(f"dst_options must be a dict of the {_CLASSES[method]} options, got {type(options).__name__}")
    defaults = option_defaults(method)
    for key in options:
        if key == "total_steps":
            raise ValueError("dst_options['total_steps']: the training loop computes it (epochs x batches per "
                             "epoch); leave it out")
        if key not in defaults:
            raise ValueError(f"dst_options[{key!r}] is not an option of dst={method!r}; it takes "
                             f"{', '.join(sorted(defaults))}")
    resolved = {**defaults, **({"seed": seed} if "seed" in defaults else {}), **options}
    missing = [k for k, v in resolved.items() if v is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"dst={method!r} needs dst_options[{missing[0]!r}]"
                         + (" (the target sparsity)" if missing[0] == "sparsity" else ""))
    return {"method": method, "total_steps": total_steps, **resolved}


def build(config: dict, model, masks: Masks, optimizer, backend: str, starting: Masks | None = None):
    """The dst object of a resolved ``config`` (see :func:`resolve`), bound to the run's ``masks``.

    ``starting``: a resumed run's first masks. The object is then built as it was when the run
    began (gradual magnitude pruning checks its starting counts against the masks, which it has
    pruned since), on the run's tensors holding those masks for the moment; the checkpoint's
    masks go back in afterwards, and its state is loaded by the caller."""
    options = {k: v for k, v in config.items() if k != "method"}
    if starting is None or starting is masks:
        return dst_class(config["method"])(model, masks, optimizer, backend=backend, **options)
    current = {n: m.clone() for n, m in masks.items()}
    with torch.no_grad():
        for n, m in masks.items():
            m.copy_(starting[n])
        try:
            return dst_class(config["method"])(model, masks, optimizer, backend=backend, **options)
        finally:
            for n, m in masks.items():
                m.copy_(current[n])


def check(config: dict, model, masks: Masks, backend: str) -> None:
    """Refuse what the dst object of ``config`` would refuse on ``model`` and ``masks``, before any
    work: the object is built without an optimizer and unbound at once, which changes nothing."""
    build(config, model, masks, None, backend).remove()


def dense_masks(model) -> Masks:
    """Every prunable weight kept: where gradual magnitude pruning starts when given no masks."""
    params = dict(model.named_parameters())
    return Masks({n: torch.ones_like(params[n], dtype=torch.bool) for n in prunable_names(model)})
