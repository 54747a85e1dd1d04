"""What every dynamic-sparse-training update shares: the model, masks and optimizer it is bound to,
the active counts, the selection call, and what follows it.

After the selection (one ``ops.drop_grow_masks`` call, or the sharded form) the new masks are
copied into the caller's mask tensors (in place: every holder of them sees the change), then every
weight that changed side is set to exactly 0 (the dropped ones, and the grown ones, which start at
0), and so is every optimizer state tensor of the weight's shape at those positions (SGD's
``momentum_buffer``, Adam's ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, any optimizer's
per-element state). A weight dropped and grown back in the same update never left the active set:
its value and state are kept. The weights inactive before and after are not written: the
enforcement (``apply_masks``, a masked optimizer) holds them and their state at 0, and an update
moves a few percent of the weights, so writing only those is the cheap part of an update. Scalar state (Adam's ``step``) is
per tensor and left alone. Last, the enforcement follows: ``apply_masks``' registry
(:func:`sparseforce.masks.refresh_masks`) and a masked optimizer's own masks
(``MaskedSGD``/``MaskedAdamW.refresh_masks``).
"""
from __future__ import annotations

import collections.abc

import torch
import torch.distributed as dist
from torch import nn

from .. import _checks, distributed, ops
from ..masks import Masks, refresh_masks
from ..masks.container import check_model, is_sharded
from ..optim import MaskedAdamW, MaskedSGD
from .gradients import DenseGradients, local
from .selection import sharded_drop_grow


def check_backend(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be 'auto' or a backend name, got {_checks.describe(backend)}")
    return backend


class Binding:
    """A model's masked parameters, their masks (updated in place) and the optimizer; every
    argument checked before anything is registered or changed."""

    def __init__(self, model, masks, optimizer, backend, process_group):
        ddp_group = None
        if isinstance(model, nn.parallel.DistributedDataParallel):
            ddp_group = model.process_group
            model = model.module
        check_model(model)
        if not isinstance(masks, collections.abc.Mapping):
            raise TypeError(f"masks must be a sparseforce.Masks (or a mapping name -> bool tensor), "
                            f"got {_checks.describe(masks)}")
        masks = masks if isinstance(masks, Masks) else Masks(masks)
        if not len(masks):
            raise ValueError("masks is empty: there is nothing to update")
        masks.check(model)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {_checks.describe(optimizer)}")
        self.backend = check_backend(backend)
        params = dict(model.named_parameters(remove_duplicate=False))
        self.names = list(masks)
        self.params = [params[n] for n in self.names]
        self.masks = [masks[n] for n in self.names]
        seen = {}
        for name, p in zip(self.names, self.params):
            if id(p) in seen:  # one tensor would be updated twice, the second time from the first's result
                raise ValueError(f"masks {seen[id(p)]!r} and {name!r} name the same (tied) parameter; keep one of them")
            seen[id(p)] = name
        self.sharded = any(is_sharded(p) for p in self.params)
        for name, p, m in zip(self.names, self.params, self.masks):
            if is_sharded(p) != self.sharded or is_sharded(m) != self.sharded:
                raise ValueError(f"mask {name!r} and its parameter must both be DTensors (FSDP2) or both plain "
                                 "tensors, like every other masked parameter")
            if self.sharded and m.placements != p.placements:
                raise ValueError(f"mask {name!r} is sharded as {m.placements} but its parameter as {p.placements}")
            if local(m).device != local(p).device:
                raise ValueError(f"mask {name!r} is on {local(m).device} but its parameter on {local(p).device}; "
                                 "move the masks first (masks.to(device))")
        # The sharded selection runs ops.topk_masks on each rank's shards.
        ops.resolve_name(backend, "topk_masks" if self.sharded else "drop_grow_masks", local(self.params[0]).device)
        self.group = _group(process_group, ddp_group, self.params if self.sharded else None)
        self.model, self.mask_map, self.optimizer = model, masks, optimizer
        self.gradients = None

    def capture_gradients(self) -> None:
        """Register the dense-gradient capture (last: after every check passed)."""
        self.gradients = DenseGradients(self.params, self.sharded)

    @property
    def shapes(self) -> list:
        return [tuple(p.shape) for p in self.params]  # a DTensor's shape is the global one

    def active(self) -> list[int]:
        """Active weights per tensor (over every rank's shards when sharded: a collective)."""
        counts = torch.stack([local(m).count_nonzero() for m in self.masks]).cpu()
        if self.sharded:
            device = local(self.params[0]).device
            counts = distributed.all_reduce(counts.to(distributed.comm_device(self.group, device)), self.group,
                                            "the active counts per tensor").cpu()
        return [int(c) for c in counts]

    def dense_gradients(self, step: int) -> list:
        """The captured gradients of this step, averaged over the ranks (the same on every rank)."""
        grads = self.gradients.take()
        if all(g is None for g in grads):
            raise RuntimeError(f"no gradient reached the masked parameters during step {step}: call "
                               "loss.backward() before optimizer.step() and the update's step() at every step")
        grads = [torch.zeros_like(local(p)) if g is None else g for g, p in zip(grads, self.params)]
        if self.group is not None and not self.sharded:
            distributed.all_reduce_mean_(grads, self.group)
        return grads

    def weights(self) -> list:
        return [local(p).detach() for p in self.params]

    def update(self, active, drops, grows, scores, segment: str) -> None:
        """Select (per segment: of ``active[s]`` weights ``drops[s]`` drop, ``grows[s]`` grow;
        None: as many as drop), then apply."""
        weights, old = self.weights(), [local(m) for m in self.masks]
        if self.sharded:
            grow = drops[0] if grows is None else grows[0]
            new = sharded_drop_grow(weights, scores, old, active[0] - drops[0], grow, self.group, self.backend)
        else:
            if segment == "global":  # the op takes one count for the one segment
                drops, grows = drops[0], None if grows is None else grows[0]
            new = ops.drop_grow_masks(weights, scores, old, drops, grows, segment=segment, backend=self.backend)
            if self.group is not None:
                distributed.check_same_on_all_ranks(
                    new, "the masks after the update", self.group,
                    hint=": the weights must be the same on every rank (wrap the model in DistributedDataParallel)")
        with torch.no_grad():
            for p, m, n in zip(self.params, old, new):
                # Only the weights that changed side (dropped, or grown) are written: the others
                # inactive are 0 already (the enforcement keeps them so), and an update changes a
                # few percent of the weights, so their positions cost less than a pass over every
                # weight and state tensor.
                changed = _Positions(m ^ n)
                changed.zero(local(p))
                m.copy_(n)
                self._reset_state(p, changed)
        self.refresh()

    def _reset_state(self, p, positions: "_Positions") -> None:
        """Zero ``p``'s per-element optimizer state at ``positions``."""
        state = self.optimizer.state.get(p) if self.optimizer is not None else None
        for v in (state or {}).values():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape == p.shape:
                positions.zero(local(v))

    def refresh(self) -> None:
        if self.sharded:
            return  # neither apply_masks nor the masked optimizers take sharded masks: see enforce()
        refresh_masks(self.model, self.mask_map)
        if isinstance(self.optimizer, (MaskedSGD, MaskedAdamW)):
            self.optimizer.refresh_masks(self.mask_map)

    def enforce(self) -> None:
        """Sharded masks only: zero the inactive weights and their state (nothing else does)."""
        with torch.no_grad():
            for p, m in zip(self.params, self.masks):
                # Most weights are inactive: one masked fill, not a list of their positions.
                inactive = _Positions(~local(m), by_mask=True)
                inactive.zero(local(p))
                self._reset_state(p, inactive)

    def remove(self) -> None:
        if self.gradients is not None:
            self.gradients.remove()


class _Positions:
    """The True entries of a bool tensor, to zero in tensors of its shape: by their flat indices
    where a tensor is contiguous (few positions: cheaper than a pass over every element), by the
    mask itself where it is not (a channels-last weight, say) or where most entries are True
    (``by_mask``)."""

    def __init__(self, where: torch.Tensor, by_mask: bool = False):
        self.where = where
        self.flat = None if by_mask else where.reshape(-1).nonzero().view(-1)

    def zero(self, t: torch.Tensor) -> None:
        if self.flat is not None and t.is_contiguous():
            t.view(-1).index_fill_(0, self.flat, 0)
        else:
            t.masked_fill_(self.where, 0)


def _group(process_group, ddp_group, sharded_params):
    if process_group is not None:
        if not dist.is_available() or not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(f"process_group must be a torch.distributed.ProcessGroup or None, "
                            f"got {_checks.describe(process_group)}")
        return process_group
    if sharded_params is not None:
        return sharded_params[0].device_mesh.get_group()
    if ddp_group is not None:
        return ddp_group
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None
