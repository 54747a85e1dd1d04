"""GraSP (Wang et al., 2020): one-shot pruning by the Hessian-gradient product θ ⊙ Hg."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .. import _checks, _prunable, ops
from ..masks import Masks
from . import _batches, _collapse, _gradients, _losses, _ranking, _scope, _state
from .schedules import check_k_rounding


GRASP_TEMPERATURE = 200.0  # the GraSP authors' code


def grasp(model, data, sparsity=None, loss_fn=None, batches_per_iteration=1, temperature=None, prunable=None,
          backend="auto", seed=None, k_rounding="round", train_mode=True, invert=False, scope="global",
          distribution=None, nm=None) -> Masks:
    """GraSP (Wang et al., 2020): keep the top-k of θ ⊙ Hg (signed), H and g of the loss at θ.

    ``temperature`` (default 200, as the GraSP authors' code) divides the logits before the
    loss: the output, or the ``.logits`` of a model output that has them (Hugging Face), which
    ``loss_fn`` then gets in a copy of the output without its ``.loss``. With dict batches and no
    ``loss_fn`` the loss is the model's own ``.loss``, computed inside the model from unscaled
    logits: GraSP uses it as it is, and an explicit ``temperature`` is then a ``ValueError``.
    g is the mean gradient over the first ``batches_per_iteration`` batches of ``data``; Hg is
    the mean over the same batches of the Hessian-vector product, by double backward. A one-shot
    iterator (a generator) with fewer batches raises ``ValueError``: pass a list or a DataLoader.
    ``seed``, ``k_rounding``, ``train_mode`` (False: H and g in eval mode, Synaptic-Flow's
    default), the caller's random state and modes (left as they were) and the
    :class:`sparseforce.LayerCollapseWarning` as :func:`sparseforce.force`. ``invert=True`` keeps
    the k lowest θ ⊙ Hg (the top-k of its negation; ties by position). ``scope`` /
    ``distribution`` / ``nm`` as :func:`sparseforce.force`: the signed scores ranked within each
    layer or each group of m.
    """
    scope, sparsity = _scope.check_scope(scope, distribution, nm, sparsity, "grasp")
    check_k_rounding(k_rounding)
    train_mode = _checks.flag("train_mode", train_mode)
    invert = _checks.flag("invert", invert)
    batches_per_iteration = _checks.integer("batches_per_iteration", batches_per_iteration, 1)
    explicit_temperature = temperature is not None
    if explicit_temperature:
        temperature = _checks.real("temperature", temperature, "a number > 0")
        if not 0 < temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    else:
        temperature = GRASP_TEMPERATURE
    base_loss = _losses.check_loss_fn(loss_fn)
    seed = None if seed is None else _checks.seed(seed)
    _batches.check_data(data)
    params = _prunable.prunable_parameters(model, prunable)
    ops.resolve(backend, scope.op("topk_masks"), _batches.model_device(params))  # refused before any work
    keep = _scope.one_step(scope, params, sparsity, k_rounding)
    names = list(params)
    theta = [params[n].detach() for n in names]

    def loss_t(output, target):
        if loss_fn is None and isinstance(target, Mapping):  # the model's own loss: nothing to scale
            if explicit_temperature:
                raise ValueError("grasp: temperature divides the logits before the loss, but with dict batches and "
                                 "no loss_fn the loss is the model's own .loss, computed from unscaled logits; "
                                 "leave temperature unset to use that loss as it is, or pass "
                                 "loss_fn(output, batch), which gets the output with .logits divided by temperature")
            return base_loss(output, target)
        return base_loss(_divide_logits(output, temperature), target)

    with _state.own_rng(model, seed):
        hg, n_batches = _hessian_gradient(model, data, params, names, theta, batches_per_iteration, loss_t,
                                          train_mode)
    scores = [w * (h / n_batches) for w, h in zip(theta, hg)]
    masks = Masks(dict(zip(names, _ranking.topk("GraSP", names, scores, keep, invert, backend))))
    return _collapse.warn_if_collapsed("GraSP", masks)


def _divide_logits(output, temperature):
    if isinstance(output, torch.Tensor):
        return output / temperature
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        # A Hugging Face ModelOutput (a dataclass and a dict): rebuilt, as its fields cannot all be
        # replaced in place; its .loss is dropped, being that of the unscaled logits.
        fields = {k: v for k, v in output.items() if k != "loss"}
        fields["logits"] = output["logits"] / temperature
        try:
            return type(output)(**fields)
        except TypeError:  # a mapping type that is not built from keywords
            return fields
    raise TypeError(f"grasp divides the logits by temperature, but the model returned {type(output).__name__}, "
                    "neither a tensor nor an output with .logits; return logits, or pass dict batches to a model "
                    "that computes its own .loss and no loss_fn")


def _hessian_gradient(model, data, params, names, theta, batches_per_iteration, loss_t, train_mode):
    """Sum over the batches of H·g (g the mean gradient), and the number of batches."""
    batches = _batches.BatchStream(data, _batches.model_device(params)).take(batches_per_iteration)
    buffers = _state.buffer_copies(model)
    with _state.module_mode(model, train=train_mode):
        g, _ = _gradients.mean_gradients(model, dict(zip(names, theta)), buffers, batches, loss_t)
        leaves = [w.detach().requires_grad_(True) for w in theta]
        hg = [torch.zeros_like(w) for w in theta]
        for inputs, targets in batches:
            out = _gradients.forward(model, {**buffers, **dict(zip(names, leaves))}, inputs)
            grads = torch.autograd.grad(loss_t(out, targets), leaves, create_graph=True, allow_unused=True)
            z = sum((gi * gr).sum() for gi, gr in zip(g, grads) if gr is not None)
            if not isinstance(z, torch.Tensor) or not z.requires_grad:
                continue  # the loss does not depend on the weights twice over: Hg = 0
            for acc, h in zip(hg, torch.autograd.grad(z, leaves, allow_unused=True)):
                if h is not None:
                    acc.add_(h.detach())
    return hg, len(batches)
