"""The dense gradient RigL grows by, captured at update steps only.

``apply_masks``' gradient hook zeroes the pruned entries of every gradient, and the grow score is
the gradient of exactly those entries. So a capture hook is registered on each masked parameter
once, through :func:`sparseforce.masks.enforce.register_dense_grad_hook` (which hands it the
gradient *before* the mask is applied, whatever the order the hooks were registered in). The hook
is disarmed at every step but the update steps: it then returns at once, and nothing is copied or
kept. The object arms it (:meth:`DenseGradients.arm`) right after the step before an update step,
so during that step's backward each parameter's gradient is cloned once (summed over several
backward calls: gradient accumulation), and :meth:`DenseGradients.take` hands the copies over and
disarms it. Every gradient autograd computes for the parameters during the armed step counts
(a ``torch.autograd.grad`` call on them too, a gradient penalty's say). The hook sees each rank's
local gradient (before DDP averages ``.grad``): the caller averages the copies over the ranks.

FSDP2-sharded parameters never receive their gradient through autograd on the sharded tensor
(FSDP reduce-scatters into ``.grad``), and their masks are not enforced on the gradient
(``apply_masks`` refuses sharded masks), so their ``.grad`` shard is read instead: dense, and
already averaged over the ranks.
"""
from __future__ import annotations

import weakref

import torch

from ..masks.enforce import register_dense_grad_hook


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class DenseGradients:
    """Dense gradients of ``params`` at the steps it is armed for."""

    def __init__(self, params: list, sharded: bool):
        self._params = params
        self._sharded = sharded
        self._armed = False
        self._grads: list = [None] * len(params)
        self._handles = []
        if not sharded:
            me = weakref.ref(self)  # the parameters' hooks must not keep this object alive
            self._handles = [register_dense_grad_hook(p, _catcher(me, i)) for i, p in enumerate(params)
                             if p.requires_grad]

    def arm(self, armed: bool) -> None:
        """Capture the gradients of the next backward passes (``armed``), or not."""
        self._armed = armed
        self._grads = [None] * len(self._params)

    def catch(self, i: int, grad: torch.Tensor) -> None:
        if not self._armed:
            return
        held = self._grads[i]
        self._grads[i] = grad.detach().clone() if held is None else held.add_(grad)

    def take(self) -> list:
        """The captured gradients (None for a parameter that got none), and disarm."""
        if self._sharded:
            grads = [None if p.grad is None else local(p.grad).detach().clone() for p in self._params]
        else:
            grads = self._grads
        self.arm(False)
        return grads

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _catcher(me, i: int):
    def catch(grad: torch.Tensor) -> None:
        owner = me()
        if owner is not None:
            owner.catch(i, grad)
    return catch
