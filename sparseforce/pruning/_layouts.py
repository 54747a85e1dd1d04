"""Where the gradients of a progressive pruning step come from, and who ranks the scores.

``Algorithm 1`` needs two things per step: g = mean ∂L/∂w at θ0 ⊙ m over the step's batches,
and m <- top-k of the saliency. Three layouts provide them:

* ``Replicated``: one process; gradients via ``functional_call`` on θ0 ⊙ m (the model is
  never written); ranking with ``sparseforce.ops``.
* ``DataParallel``: every rank holds all of θ0 (the model alone or wrapped in DDP) and its own
  batches; the per-rank mean gradients are averaged with one all_reduce, after which every rank
  ranks the same scores with ``sparseforce.ops`` and gets the same masks (checked at the end).
* ``Sharded``: FSDP2 (``fully_shard``): each rank holds a shard of every weight (a DTensor). The
  real forward/backward runs on the module with its local shards set to θ0 ⊙ m (FSDP gathers
  and reduce-scatters as in training), and ``sparseforce.distributed`` ranks the local shards
  against each other from all-reduced histograms: no rank ever holds all weights or scores, so
  only the global top-k is ranked (scope="layer" and nm are refused).
  The module is written during the run and restored bit for bit (weights, buffers, ``.grad``).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _prunable, distributed
from ..masks import Masks
from ..masks.container import is_sharded
from . import _batches, _gradients, _select, _state


def layout(model: nn.Module, prunable, group, train_mode: bool = True):
    """Pick the layout for ``model``: FSDP2 parameters -> Sharded, a DDP wrapper or ``group`` ->
    DataParallel, else Replicated. ``train_mode``: the modules' mode during the passes."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        group = group if group is not None else model.process_group
        model = model.module
    params = _prunable.prunable_parameters(model, prunable, check_nan=False)
    if any(is_sharded(p) for p in params.values()):
        return Sharded(model, params, group, train_mode)
    _prunable.check_no_nan(params)
    if group is not None:
        return DataParallel(model, params, group, train_mode)
    return Replicated(model, params, train_mode)


class Replicated:
    segmented = True  # ranks per layer or N:M (every weight is whole on this process)

    def __init__(self, model, params, train_mode=True):
        self.model, self.names, self.train_mode = model, list(params), train_mode
        self.theta0 = [params[n].detach() for n in self.names]  # never written
        self.shapes = [tuple(w.shape) for w in self.theta0]
        self.numels = [w.numel() for w in self.theta0]
        self.n_total = sum(self.numels)
        self.device = _batches.model_device(params)
        self.buffers = _state.buffer_copies(model)

    def kept(self, masks) -> list[int]:
        return [int(m.count_nonzero()) for m in masks]

    def __enter__(self):
        self._mode = _state.module_mode(self.model, train=self.train_mode)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    def gradients(self, masks, batches, loss_fn):
        masked = {n: w * m for n, w, m in zip(self.names, self.theta0, masks)}
        return _gradients.mean_gradients(self.model, masked, self.buffers, batches, loss_fn)

    def select(self, grads, keep, prev_masks, resurrect, backend, invert=False):
        if invert:
            return _select.inverted_saliency_topk(lambda scores, kept: _select.topk(scores, kept, backend),
                                                  self.theta0, grads, keep, prev_masks, resurrect)
        return _select.saliency_topk(self.theta0, grads, keep, prev_masks, resurrect, backend)

    def result(self, masks) -> Masks:
        return Masks(dict(zip(self.names, masks)))


class DataParallel(Replicated):
    def __init__(self, model, params, group, train_mode=True):
        super().__init__(model, params, train_mode)
        self.group = group
        distributed.check_same_on_all_ranks(
            self.theta0, "the prunable weights (θ0)", group,
            hint=": seed the initialisation the same on every rank, or wrap the model in "
                 "DistributedDataParallel first (it broadcasts rank 0's weights)")

    def gradients(self, masks, batches, loss_fn):
        grads, loss = super().gradients(masks, batches, loss_fn)
        # Equal batch counts per rank, so the mean of the ranks' means is the mean over all batches.
        distributed.all_reduce_mean_(grads, self.group)
        return grads, loss

    def result(self, masks) -> Masks:
        distributed.check_same_on_all_ranks(masks, "the masks", self.group)
        return super().result(masks)


class Sharded:
    segmented = False  # a layer's shards lie on several ranks: only the global top-k is ranked across them

    def __init__(self, model, params, group, train_mode=True):
        self.model, self.names, self.train_mode = model, list(params), train_mode
        self.params = [params[n] for n in self.names]
        self.shapes = [tuple(p.shape) for p in self.params]  # a DTensor's shape is the global one
        mesh = None
        for n, p in params.items():
            if not is_sharded(p):
                raise ValueError(f"prunable parameter {n!r} is a plain tensor but others are DTensors; "
                                 "shard every prunable module (fully_shard) or none")
            if p.device_mesh.ndim != 1 or not all(pl.is_shard() for pl in p.placements):
                raise NotImplementedError(
                    f"prunable parameter {n!r} has placements {p.placements} on a {p.device_mesh.ndim}-D mesh; "
                    "sharded pruning supports FSDP2's 1-D Shard placements (each weight on exactly one rank)")
            if mesh is None:
                mesh = p.device_mesh
            elif p.device_mesh != mesh:
                raise ValueError(f"prunable parameter {n!r} lives on a different device mesh from the others")
        self.mesh = mesh
        self.group = group if group is not None else mesh.get_group()
        self.local = [p.to_local() for p in self.params]  # views of the shards FSDP all-gathers
        self.theta0 = [t.detach().clone() for t in self.local]
        bad = [n for n, t in zip(self.names, self.theta0) if bool(torch.isnan(t).any())]
        if distributed.any_rank(bool(bad), "a NaN check of the weights", self.group):
            raise ValueError(f"prunable parameters contain NaN on some rank (here: {bad or 'none'}); "
                             "their saliency cannot be ranked")
        self.numels = [p.numel() for p in self.params]  # a DTensor's numel is the global one
        self.n_total = sum(self.numels)
        self.device = self.theta0[0].device

    def kept(self, masks) -> list[int]:
        """Kept weights per layer over all ranks (a collective: every rank calls it)."""
        counts = torch.stack([m.count_nonzero() for m in masks]).to(
            distributed.comm_device(self.group, self.device), torch.int64)
        return distributed.all_reduce(counts, self.group, "the kept counts per layer").tolist()

    def __enter__(self):
        model = self.model
        self._mode = _state.module_mode(model, train=self.train_mode)
        self._mode.__enter__()
        self._grads = [(p, p.grad) for p in model.parameters()]
        self._buffers = [(b, b.detach().clone()) for b in model.buffers()]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for local, w in zip(self.local, self.theta0):
                local.copy_(w)
            for b, saved in self._buffers:
                b.copy_(saved)
        for p, g in self._grads:
            p.grad = g
        self._mode.__exit__(*exc)

    def gradients(self, masks, batches, loss_fn):
        with torch.no_grad():
            for local, w, m in zip(self.local, self.theta0, masks):
                local.copy_(w * m)
        for p in self.model.parameters():
            p.grad = None
        loss_sum = 0.0
        for inputs, targets in batches:
            out = self.model(**inputs) if isinstance(inputs, dict) else self.model(inputs)
            loss = loss_fn(out, targets)
            loss.backward()  # FSDP reduce-scatters: each rank gets its shard of the rank-mean
            loss_sum += float(loss.detach())
        n = len(batches)
        grads = [torch.zeros_like(w) if p.grad is None else p.grad.to_local().detach().clone().div_(n)
                 for p, w in zip(self.params, self.theta0)]
        return grads, loss_sum / n

    def select(self, grads, keep, prev_masks, resurrect, backend, invert=False):
        if invert:
            return _select.inverted_saliency_topk(
                lambda scores, kept: distributed.topk_masks(scores, kept.ks, group=self.group, backend=backend),
                self.theta0, grads, keep, prev_masks, resurrect)
        return distributed.saliency_topk_masks(self.theta0, grads, keep.ks, prev_masks=prev_masks,
                                               resurrect=resurrect, group=self.group, backend=backend)

    def result(self, masks) -> Masks:
        from torch.distributed.tensor import DTensor
        return Masks({n: DTensor.from_local(m, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(),
                                            run_check=False)
                      for n, p, m in zip(self.names, self.params, masks)})
