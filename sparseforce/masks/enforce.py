"""Masks enforced during training: :func:`apply_masks` zeroes the pruned weights and keeps them zero
under any torch optimizer until the returned :class:`MaskHandle` is removed; :func:`refresh_masks`
makes it enforce new masks (dynamic sparse training), and :func:`register_dense_grad_hook` shows a
parameter's gradients before its hook masks them."""
from __future__ import annotations

import collections.abc
import threading
import weakref
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from .container import Masks, check_dense, check_model

__all__ = ["MaskHandle", "apply_masks", "refresh_masks", "register_dense_grad_hook"]


class _Entry:
    """The pruned-positions mask of one parameter, shared by its grad hook and the step hook."""

    __slots__ = ("pruned", "active", "dense_hooks")

    def __init__(self, pruned: torch.Tensor, dense_hooks: list):
        self.pruned = pruned  # True where the weight is pruned
        self.active = True
        self.dense_hooks = dense_hooks  # the parameter's list in _DENSE_HOOKS (shared, not copied)

    def pruned_on(self, device: torch.device) -> torch.Tensor:
        # The parameter can move after apply_masks (model.to("cuda") keeps the Parameter
        # object and swaps its data), so follow it instead of failing inside a hook.
        if self.pruned.device != device:
            self.pruned = self.pruned.to(device)
        return self.pruned


# Parameter -> _Entry. Keyed by identity and held weakly so the registry never keeps a model
# alive; torch's WeakIdKeyDictionary is used rather than weakref.WeakKeyDictionary because
# the latter relies on key `==`, which for tensors is elementwise.
_REGISTRY: "WeakIdKeyDictionary" = WeakIdKeyDictionary()
_LOCK = threading.RLock()
_STEP_HOOK = None  # RemovableHandle of the global optimizer step post-hook, while needed
# Parameter -> the functions of register_dense_grad_hook, called by the masking hook before it masks.
_DENSE_HOOKS: "WeakIdKeyDictionary" = WeakIdKeyDictionary()


def _make_grad_hook(entry: _Entry):
    # Closes over the entry only (never the parameter) so no reference cycle pins the parameter.
    def hook(grad: torch.Tensor) -> Optional[torch.Tensor]:
        if not entry.active:
            return None
        for fn in tuple(entry.dense_hooks):
            fn(grad)
        # Zero gradients mean momentum / Adam moments of pruned weights stay exactly zero,
        # so the optimizer state is as if those weights did not exist.
        return grad.masked_fill(entry.pruned_on(grad.device), 0)

    return hook


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    # The gradient hook alone is not enough: decoupled weight decay only scales (0 stays 0),
    # but optimizer state from before apply_masks, noise-injecting or custom optimizers, and
    # gradients written to .grad directly all bypass it. Re-masking after every step makes
    # "pruned weights are exactly zero after step()" hold for any optimizer.
    if not _REGISTRY:
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                entry = _REGISTRY.get(p)
                if entry is not None and entry.active:
                    p.masked_fill_(entry.pruned_on(p.device), 0)


def _ensure_step_hook() -> None:
    global _STEP_HOOK
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_after_optimizer_step)


def _maybe_drop_step_hook() -> None:
    global _STEP_HOOK
    if _STEP_HOOK is not None and not _REGISTRY:
        _STEP_HOOK.remove()
        _STEP_HOOK = None


class MaskHandle:
    """Returned by :func:`apply_masks`; ``remove()`` stops enforcing the masks.

    Removing does not restore pruned weights (their values are gone); they simply become
    trainable again. Also usable as a context manager.
    """

    def __init__(self, records: list, names: list):
        # records: (weakref to parameter, entry, grad-hook RemovableHandle)
        self._records = records
        self.names = tuple(names)

    @property
    def active(self) -> bool:
        return any(entry.active for _, entry, _ in self._records)

    def remove(self) -> None:
        with _LOCK:
            for pref, entry, hook_handle in self._records:
                entry.active = False
                if hook_handle is not None:
                    hook_handle.remove()
                p = pref()
                if p is not None and _REGISTRY.get(p) is entry:
                    del _REGISTRY[p]
            self._records = []
            _maybe_drop_step_hook()

    def __enter__(self) -> "MaskHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"MaskHandle({len(self.names)} parameters, {state})"


def apply_masks(model: nn.Module, masks: Union[Masks, Mapping[str, torch.Tensor]]) -> MaskHandle:
    """Zero the pruned weights of ``model`` in place and keep them zero during training.

    Two mechanisms, both installed per parameter:

    * a gradient hook that zeroes the gradient of pruned entries, so optimizer state
      (momentum buffers, Adam moments) of pruned weights never becomes nonzero for an
      optimizer created after this call;
    * a global optimizer step post-hook that re-zeroes pruned entries of every masked
      parameter an optimizer owns after each ``step()``, whatever that optimizer does.

    Masks are validated against the model (names and shapes) and moved to each parameter's
    device before anything is modified. Applying masks again to a parameter that is already
    masked replaces the earlier mask. Parameters tied under several names must be given equal
    masks. Returns a :class:`MaskHandle`.
    """
    check_model(model)
    if not isinstance(masks, collections.abc.Mapping):
        raise TypeError(f"masks must be a sparseforce.Masks or a mapping name -> bool tensor, "
                        f"got {type(masks).__name__}")
    if not isinstance(masks, Masks):
        masks = Masks(masks)
    if masks.is_sharded:
        raise NotImplementedError("apply_masks does not take sharded (DTensor) masks yet; gather them with "
                                  "masks.full() on every rank and train the model with DDP")
    masks.check(model)

    params = dict(model.named_parameters(remove_duplicate=False))
    for name, mask in masks.items():
        check_dense(f"parameter {name!r}", params[name])
        check_dense(f"mask {name!r}", mask)
    # Resolve everything first so that a failure (conflicting tied masks, device transfer)
    # leaves the model untouched.
    plan: dict = {}  # id(param) -> (param, pruned, name)
    for name, mask in masks.items():
        p = params[name]
        pruned = (~mask).to(p.device)
        prev = plan.get(id(p))
        if prev is not None:
            if not torch.equal(prev[1], pruned):
                raise ValueError(f"parameters {prev[2]!r} and {name!r} are the same tensor "
                                 f"(tied weights) but were given different masks")
            continue
        plan[id(p)] = (p, pruned, name)

    records = []
    with _LOCK, torch.no_grad():
        for p, pruned, _name in plan.values():
            p.masked_fill_(pruned, 0)
            # A gradient already computed (masks applied between backward and step) must not
            # leak into the next update either.
            if p.grad is not None:
                p.grad.masked_fill_(pruned.to(p.grad.device), 0)
            old = _REGISTRY.get(p)
            if old is not None:
                old.active = False  # superseded: its grad hook becomes a no-op
            entry = _Entry(pruned, _dense_hooks_of(p))
            # Frozen parameters get no gradient (and torch refuses the hook); the step hook
            # still covers them if they are unfrozen later.
            hook_handle = (p.register_hook(_make_grad_hook(entry)) if p.requires_grad
                           else None)
            _REGISTRY[p] = entry
            records.append((weakref.ref(p), entry, hook_handle))
        _ensure_step_hook()
    return MaskHandle(records, [name for _, _, name in plan.values()])


def _dense_hooks_of(p: torch.Tensor) -> list:
    hooks = _DENSE_HOOKS.get(p)
    if hooks is None:
        hooks = _DENSE_HOOKS[p] = []
    return hooks


def refresh_masks(model: nn.Module, masks: Union[Masks, Mapping[str, torch.Tensor]]) -> list:
    """Make :func:`apply_masks` enforce ``masks`` from now on for the parameters it already masks
    (dynamic sparse training changes the masks in place; the enforced copy must follow).

    Only the enforcement changes (the gradient hook and the step hook use the new masks); the
    weights are not touched, and parameters that no active :func:`apply_masks` masks are skipped.
    Unknown names or other shapes are a ``ValueError`` before anything changes. Returns the names
    refreshed.
    """
    check_model(model)
    masks = masks if isinstance(masks, Masks) else Masks(masks)
    masks.check(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    refreshed = []
    with _LOCK:
        for name, mask in masks.items():
            p = params[name]
            entry = _REGISTRY.get(p)
            if entry is not None and entry.active:
                # A new tensor, swapped in whole, so a hook never sees a half-written mask.
                entry.pruned = (~mask).to(p.device)
                refreshed.append(name)
    return refreshed


class _DenseHookHandle:
    """``remove()`` stops calling the function given to :func:`register_dense_grad_hook`."""

    def __init__(self, hooks: list, fn, tensor_handle):
        self._hooks, self._fn, self._tensor_handle = hooks, fn, tensor_handle

    def remove(self) -> None:
        with _LOCK:
            if self._fn in self._hooks:
                self._hooks.remove(self._fn)
            self._tensor_handle.remove()


def register_dense_grad_hook(param: torch.Tensor, fn) -> _DenseHookHandle:
    """Call ``fn(grad)`` with every gradient autograd delivers for ``param``, as computed: before
    :func:`apply_masks`' hook zeroes its pruned entries, whether the masks were applied before or
    after this call, or never. ``fn`` must not modify ``grad``; it is called once per gradient.

    Tensor hooks run in the order they were registered, so a hook of its own registered after
    :func:`apply_masks` would see the masked gradient: the masking hook calls ``fn`` itself while
    it is active, and ``fn``'s own tensor hook calls it only when no active mask covers ``param``.
    Returns a handle whose ``remove()`` undoes this.
    """
    if not isinstance(param, torch.Tensor) or not param.requires_grad:
        raise ValueError("register_dense_grad_hook needs a tensor that requires grad")
    pref = weakref.ref(param)  # the hook must not keep the parameter alive

    def unmasked(grad: torch.Tensor) -> None:
        p = pref()
        entry = _REGISTRY.get(p) if p is not None else None
        if entry is None or not entry.active:
            fn(grad)

    with _LOCK:
        hooks = _dense_hooks_of(param)
        hooks.append(fn)
        return _DenseHookHandle(hooks, fn, param.register_hook(unmasked))
