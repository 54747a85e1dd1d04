"""Masked optimizers: train a pruned network without pruned weights creeping back.

``MaskedSGD`` and ``MaskedAdamW`` are ordinary ``torch.optim.Optimizer`` subclasses (param groups,
``state_dict``/``load_state_dict``, LR schedulers, ``zero_grad`` all behave as usual) that take
``model.named_parameters()`` and a mapping ``parameter name -> bool mask``. For every masked
parameter the pruned entries of the weight, of its gradient as the optimizer sees it, and of its
optimizer state (momentum buffer, Adam moments) are exactly 0 after every ``step()``, whatever
momentum and weight decay do. Unmasked parameters (biases, norm layers, anything not in the masks)
get the plain torch update. On the kept entries the update is that of ``torch.optim.SGD`` /
``torch.optim.AdamW`` applied to the masked gradient.

    opt = MaskedSGD(model.named_parameters(), masks, lr=0.1, momentum=0.9, weight_decay=5e-4)

The pruned weights are zeroed when the optimizer is created, so the model is the masked network
from the start, not only after the first step.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import _checks, ops
from .masks.container import Masks, check_dense, unknown_names
from .masks.report import shape_str

__all__ = ["MaskedSGD", "MaskedAdamW"]


def _hyper(name: str, value):
    """A hyperparameter >= 0: a Python/numpy real or a 0-dim tensor (kept as given, as torch's
    optimizers keep a tensor lr), checked before any parameter is touched."""
    number = _checks.real(name, value, "a number >= 0")
    if not number >= 0:
        raise ValueError(f"invalid {name}: {number} (must be >= 0)")
    return value if isinstance(value, torch.Tensor) else number


class _MaskedOptimizer(torch.optim.Optimizer):
    """Shared part: mask lookup by parameter name, validation, state enforcement."""

    # Optimizer state entries that must be 0 wherever the weight is pruned.
    _masked_state_keys: tuple[str, ...] = ()

    def __init__(self, named_params, masks, defaults: dict[str, Any]):
        if masks is None:
            masks = {}
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks must be a sparseforce.Masks or a mapping name -> bool tensor, "
                            f"got {type(masks).__name__}")
        if not isinstance(masks, Masks):
            masks = Masks(masks)  # checks dtype and names
        if masks.is_sharded:
            raise NotImplementedError(f"{type(self).__name__} does not take sharded (DTensor) masks yet; gather "
                                      "them with masks.full() on every rank and train the model with DDP")
        # Filled by add_param_group, which torch's __init__ calls once per group.
        self._wanted = dict(masks.items())
        self._names: dict[str, torch.Tensor] = {}
        self._mask_of: dict[torch.Tensor, torch.Tensor] = {}
        super().__init__(named_params, defaults)
        unknown = [n for n in self._wanted if n not in self._names]
        if unknown:
            # Only names are known here, no modules: weights of 2 or more dimensions stand for the
            # prunable ones (conv and linear), leaving out biases and norm layers.
            candidates = [n for n, p in self._names.items() if isinstance(p, torch.Tensor) and p.dim() > 1]
            raise ValueError(unknown_names(unknown, candidates or list(self._names),
                                            f"given to {type(self).__name__}"))
        with torch.no_grad():
            for p, m in self._mask_of.items():
                p.masked_fill_(~m, 0)

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults/state/param_groups; without the masks a
        # deepcopied or unpickled optimizer would silently train the pruned weights.
        state = super().__getstate__()
        state.update({k: v for k, v in self.__dict__.items() if k in ("_wanted", "_names", "_mask_of", "backend")})
        return state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if isinstance(params, torch.Tensor):
            params = [params]
        params = list(params) if params is not None else []
        param_group = {**param_group, "params": params}
        if any(not isinstance(p, tuple) for p in params):
            raise TypeError(
                f"{type(self).__name__} looks masks up by parameter name: pass "
                "model.named_parameters() (or groups whose 'params' are (name, tensor) pairs), "
                "not model.parameters()")
        for name, p in params:
            if not isinstance(name, str):
                raise TypeError(f"parameter names must be str, got {type(name).__name__}: {name!r}")
            if name in self._names:
                raise ValueError(f"parameter {name!r} is given to {type(self).__name__} twice")
            m = self._wanted.get(name)
            if m is not None:
                if not isinstance(p, torch.Tensor) or tuple(m.shape) != tuple(p.shape):
                    shape = shape_str(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                    raise ValueError(f"mask {name!r} has shape {shape_str(m.shape)} but parameter {name!r} "
                                     f"has shape {shape}")
                check_dense(f"parameter {name!r}", p)
                check_dense(f"mask {name!r}", m)
                self._mask_of[p] = m.to(p.device)
            self._names[name] = p
        super().add_param_group(param_group)

    @property
    def masks(self) -> Masks:
        """The masks this optimizer enforces, keyed by parameter name."""
        by_param = self._mask_of
        return Masks({n: by_param[p] for n, p in self._names.items() if p in by_param})

    def refresh_masks(self, masks) -> None:
        """Enforce ``masks`` (a subset of the names given at creation, same shapes) from the next
        ``step()`` on: dynamic sparse training changes the masks in place, and a mask this optimizer
        moved to its parameter's device is a copy that must follow. Neither the weights nor the
        state are touched (:mod:`sparseforce.dst` zeroes both where it drops or grows)."""
        masks = masks if isinstance(masks, Masks) else Masks(masks)
        by_name = {n: self._names.get(n) for n in masks}
        unknown = [n for n, p in by_name.items() if p is None or p not in self._mask_of]
        if unknown:
            raise ValueError(unknown_names(unknown, [n for n, p in self._names.items() if p in self._mask_of],
                                           f"masked by {type(self).__name__}"))
        for name, m in masks.items():
            held = self._mask_of[by_name[name]]
            if tuple(m.shape) != tuple(held.shape):
                raise ValueError(f"mask {name!r} has shape {shape_str(m.shape)} but {type(self).__name__} masks "
                                 f"{name!r} with shape {shape_str(held.shape)}")
        for name, m in masks.items():
            held = self._mask_of[by_name[name]]
            if held is not m:
                held.copy_(m)

    @staticmethod
    def _closure_loss(closure):
        if closure is None:
            return None
        with torch.enable_grad():  # step() runs under no_grad; the closure needs its backward
            return closure()

    def _mask(self, p: torch.Tensor) -> torch.Tensor | None:
        m = self._mask_of.get(p)
        if m is not None and m.device != p.device:
            # model.to(device) after the optimizer was built keeps the Parameter objects.
            m = self._mask_of[p] = m.to(p.device)
        return m

    @torch.no_grad()
    def _enforce_state(self) -> None:
        for p, m in self._mask_of.items():
            st = self.state.get(p)
            if not st:
                continue
            for key in self._masked_state_keys:
                v = st.get(key)
                if isinstance(v, torch.Tensor) and v.shape == m.shape:
                    v.masked_fill_(~m.to(v.device), 0)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # A state saved by an unmasked optimizer (or with other masks) may hold nonzero
        # momentum at pruned positions, which would otherwise move a pruned weight once.
        self._enforce_state()

    @staticmethod
    def _grads(group) -> tuple[list, list]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("masked optimizers do not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
        return params, grads


class MaskedSGD(_MaskedOptimizer):
    """SGD (``torch.optim.SGD`` semantics) that keeps pruned weights and their momentum at 0.

    One :func:`sparseforce.ops.masked_sgd_` call per param group updates every parameter of the
    group at once, on ``backend`` ("auto": the fastest compiled kernel for the parameters'
    device, else the pure-PyTorch reference).

    Creating it zeroes the pruned weights in place: the model is the masked network from then
    on, before any ``step()``; copy its ``state_dict()`` first if the dense weights are needed.

    Args:
        named_params: ``model.named_parameters()``, or a list of param-group dicts whose
            ``"params"`` are ``(name, tensor)`` pairs.
        masks: :class:`sparseforce.Masks` (or a mapping name -> bool tensor); every name must be
            one of ``named_params`` with the same shape, else ``ValueError`` naming it.
        lr, momentum, dampening, weight_decay, nesterov: as ``torch.optim.SGD``.
    """

    _masked_state_keys = ("momentum_buffer",)

    def __init__(self, named_params, masks, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, backend: str = "auto"):
        lr, momentum, dampening, weight_decay = (_hyper(name, v) for name, v in (
            ("lr", lr), ("momentum", momentum), ("dampening", dampening), ("weight_decay", weight_decay)))
        _checks.flag("nesterov", nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0")
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str ('auto' or a backend name), got {_checks.describe(backend)}")
        self.backend = backend
        super().__init__(named_params, masks, dict(lr=lr, momentum=momentum, dampening=dampening,
                                                   weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            params, grads = self._grads(group)
            if not params:
                continue
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            masks = [self._mask(p) for p in params]
            bufs = ops.masked_sgd_(params, grads, bufs, masks, lr=group["lr"], momentum=group["momentum"],
                                   dampening=group["dampening"], weight_decay=group["weight_decay"],
                                   nesterov=group["nesterov"], backend=self.backend)
            if group["momentum"] != 0:
                for p, b in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = b
        return loss


class MaskedAdamW(_MaskedOptimizer):
    """AdamW (``torch.optim.AdamW`` semantics, decoupled weight decay) on masked gradients.

    Same contract as :class:`MaskedSGD`; as there, creating it zeroes the pruned weights in
    place. State keys are torch's (``step``, ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``), so state dicts move between this and ``torch.optim.AdamW``.
    Pruned weights and both moments stay exactly 0. Pure PyTorch (one tensor at a time, as torch's
    own CPU path).

    ``per_element_step=True`` also keeps ``element_step``, a float32 count of the steps each weight
    has been active (4 bytes per weight, a few more elementwise operations per step), and corrects
    each weight's moments for its own count: a weight that dynamic sparse training grows (its
    state zeroed, ``element_step`` included) then takes the steps of a fresh Adam, not those of
    zero moments corrected for the tensor's age (at the default betas its first step is about
    0.57x a fresh one's in a tensor 31 steps old, 3.2x in an old one, and up to 6.5x over its
    first tens of steps). Without growth it agrees with the per-tensor step up to float32
    rounding of the corrections.
    """

    _masked_state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "element_step")

    def __init__(self, named_params, masks, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, per_element_step: bool = False):
        lr, eps, weight_decay = (_hyper(name, v) for name, v in (("lr", lr), ("eps", eps),
                                                                  ("weight_decay", weight_decay)))
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {_checks.describe(betas)}")
        betas = tuple(_checks.real("betas", b, "a pair of numbers in [0, 1)") for b in betas)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas} (each must be in [0, 1))")
        _checks.flag("amsgrad", amsgrad)
        _checks.flag("per_element_step", per_element_step)
        super().__init__(named_params, masks, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                                   amsgrad=amsgrad, per_element_step=per_element_step))

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            wd, amsgrad = group["weight_decay"], group["amsgrad"]
            per_element = group.get("per_element_step", False)  # absent from a torch.optim.AdamW state dict
            lr = lr.item() if isinstance(lr, torch.Tensor) else lr
            params, grads = self._grads(group)
            for p, g in zip(params, grads):
                m = self._mask(p)
                if m is not None:
                    g = g.masked_fill(~m, 0)
                st = self.state[p]
                if not st:
                    # A float32 tensor step, as torch keeps it, so state dicts are interchangeable.
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if amsgrad:
                        st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if per_element and "element_step" not in st:
                    # Switched on with moments of st["step"] steps: every weight has that age.
                    st["element_step"] = torch.full_like(p, float(st["step"]), dtype=torch.float32)
                exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
                st["step"] += 1
                step = float(st["step"])
                # The same operations in the same order as torch's single-tensor AdamW, so kept
                # weights agree with torch.optim.AdamW on the masked gradient.
                if wd != 0:
                    p.mul_(1 - lr * wd)
                exp_avg.lerp_(g, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                if per_element:
                    age = st["element_step"].add_(1)
                    bias_correction1 = (1 - torch.pow(beta1, age)).to(exp_avg.dtype)
                    bias_correction2_sqrt = (1 - torch.pow(beta2, age)).sqrt_().to(exp_avg.dtype)
                else:
                    bias_correction1 = 1 - beta1 ** step
                    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
                if amsgrad:
                    max_sq = st["max_exp_avg_sq"]
                    torch.maximum(max_sq, exp_avg_sq, out=max_sq)
                    denom = (max_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                else:
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                if per_element:
                    p.addcdiv_(exp_avg / bias_correction1, denom, value=-lr)
                else:
                    p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
                if m is not None:
                    # Zero gradients keep fresh moments at 0; this also covers moments loaded
                    # from an unmasked state and a pruned weight that was nonzero.
                    p.masked_fill_(~m, 0)
                    exp_avg.masked_fill_(~m, 0)
                    exp_avg_sq.masked_fill_(~m, 0)
                    if amsgrad:
                        st["max_exp_avg_sq"].masked_fill_(~m, 0)
                    if per_element:
                        st["element_step"].masked_fill_(~m, 0)  # a weight's age counts from its growth
        return loss
