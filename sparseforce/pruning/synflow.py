"""SynFlow (Tanaka et al., 2020): data-free and iterative, pruning by the synaptic flow |θ ⊙ ∂R/∂θ|
of an all-ones input through the absolute-valued network."""
from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch

from .. import _checks, _files, _prunable, ops
from ..masks import Masks
from . import _batches, _collapse, _gradients, _ranking, _scope, _select, _state
from .schedules import check_k_rounding, densities


def synflow(model, data=None, sparsity=None, iterations=100, schedule="exp", input_shape=None, prunable=None,
            backend="auto", progress=False, k_rounding="round", invert=False, scope="global", distribution=None,
            nm=None) -> Masks:
    """SynFlow (Tanaka et al., 2020): data-free, iterative.

    Every parameter and float buffer is replaced by its absolute value (in float64, so deep nets
    do not overflow), the model runs in eval mode on one all-ones input, R = sum(output), and
    step t keeps the top-k_t of |θ ⊙ m ⊙ ∂R/∂θ| among the surviving weights. The input shape is
    ``input_shape`` or, if not given, that of one sample of the first batch of ``data`` (a
    one-shot iterator loses that batch). Runs on a fork of torch's global random state, so the
    caller's is left as it was; warns with :class:`sparseforce.LayerCollapseWarning` as
    :func:`sparseforce.force`. The model is called with the one input positionally; R sums its
    output, or the ``.logits`` of a Hugging Face output. A model of token ids (GPT-2, BERT,
    Llama: an embedding lookup) cannot take a float input: its forward fails, and that is a
    ``ValueError`` saying so. Dict batches carry no input shape: pass ``input_shape``.
    ``schedule`` and ``k_rounding`` as :func:`sparseforce.force` (kept counts may not grow: the
    masks are nested); ``invert=True`` keeps, at each step, the k_t lowest scores among the
    survivors. ``scope`` / ``distribution`` / ``nm`` and their steps as
    :func:`sparseforce.iter_snip`'s (with ``nm``, ``sparsity`` may be left out).
    """
    scope, sparsity = _scope.check_scope(scope, distribution, nm, sparsity, "synflow")
    densities(sparsity, iterations, schedule)  # checks all three before any work
    check_k_rounding(k_rounding)
    invert = _checks.flag("invert", invert)
    if input_shape is not None:
        input_shape = _check_input_shape(input_shape)
    elif data is None:
        raise ValueError("synflow needs input_shape (the shape of one sample) or data to read it from")
    else:
        _batches.check_data(data)
    params = _prunable.prunable_parameters(model, prunable)
    ops.resolve(backend, scope.op("saliency_topk_masks"), _batches.model_device(params))  # refused before any work
    keeps = _scope.keeps(scope, list(params), [tuple(p.shape) for p in params.values()], sparsity, iterations,
                         schedule, k_rounding, nested=True)
    with _state.own_rng(model):
        masks = _synflow(model, data, keeps, input_shape, params, backend, progress, invert)
    return _collapse.warn_if_collapsed("SynFlow", masks)


def _check_input_shape(shape) -> tuple:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"input_shape must be a tuple of positive integers, got {_checks.describe(shape)}")
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape):
        raise TypeError(f"input_shape must be a tuple of positive integers, got {shape!r}")
    if any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a tuple of positive integers, got {shape!r}")
    return tuple(int(s) for s in shape)


def _synflow(model, data, keeps, input_shape, params, backend, progress, invert):
    names = list(params)
    device = _batches.model_device(params)
    if input_shape is None:
        inputs, _ = _batches.BatchStream(data, device).next()
        if isinstance(inputs, Mapping):
            raise ValueError("synflow is data-free: it feeds one all-ones float tensor positionally and reads its "
                             "shape from tensor inputs, not from dict batches; pass input_shape= (one sample's "
                             "shape, e.g. (3, 224, 224) for a ViT's pixel_values)")
        if not isinstance(inputs, torch.Tensor):
            raise ValueError("synflow reads input_shape from tensor inputs; pass input_shape=")
        input_shape = tuple(inputs.shape[1:])
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)

    positive = {n: p.detach().abs().to(torch.float64) for n, p in model.named_parameters()}
    positive.update(_state.buffer_copies(model, lambda b: b.abs().to(torch.float64)))
    theta = [positive[n] for n in names]
    masks = [torch.ones_like(w, dtype=torch.bool) for w in theta]
    steps = range(len(keeps))
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="SynFlow", unit="step")
    with _state.module_mode(model, train=False):
        for t in steps:
            leaves = [(w * m).requires_grad_(True) for w, m in zip(theta, masks)]
            out = _synflow_forward(model, {**positive, **dict(zip(names, leaves))}, ones)
            grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for w, g in zip(theta, grads)]
            if invert:
                masks = _ranking.select("SynFlow", names, _select.inverted_saliency_topk,
                                        lambda scores, kept: _select.topk(scores, kept, backend), theta, grads,
                                        keeps[t], masks, False)
            else:
                masks = _ranking.select("SynFlow", names, _select.saliency_topk, theta, grads, keeps[t], masks,
                                        False, backend)
    return Masks(dict(zip(names, masks)))


def _synflow_forward(model, tensors, ones):
    try:
        out = _gradients.forward(model, tensors, ones)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"synflow: the model's forward on an all-ones float64 input of shape {tuple(ones.shape)} "
                         f"failed ({type(exc).__name__}: {_files.first_line(exc)}); SynFlow is data-free and needs a "
                         "model taking one float tensor: a model of token ids (an embedding lookup: GPT-2, BERT, Llama) "
                         "cannot be scored this way; use force or snip with data") from exc
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"synflow sums the model's output, but it returned {type(out).__name__}, neither a tensor nor "
                    "an output with .logits")
