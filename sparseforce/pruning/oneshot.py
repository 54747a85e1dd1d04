"""The one-shot baselines FORCE is compared with: GraSP, SynFlow, magnitude and random.

(SNIP lives with the progressive methods: it is their one-step case.)
"""
from __future__ import annotations

import torch

from .. import ops
from ..masks import Masks
from . import _model
from .schedules import check_sparsity, keep_counts


def _k(n: int, sparsity) -> int:
    return round(n * (1.0 - check_sparsity(sparsity)))


def _select(method, names, fn, *args, **kw) -> list[torch.Tensor]:
    try:
        return fn(*args, **kw)
    except ops.NaNScoreError as e:
        raise ValueError(f"{method}: the score of {names[e.index]!r} is NaN") from e


def magnitude(model, sparsity, prunable=None, backend="auto") -> Masks:
    """Keep the k weights of largest |θ| (ties by global position)."""
    params = _model.prunable_parameters(model, prunable)
    names = list(params)
    with torch.no_grad():
        scores = [p.detach().abs() for p in params.values()]
    k = _k(sum(s.numel() for s in scores), sparsity)
    return Masks(dict(zip(names, _select("magnitude", names, ops.topk_masks, scores, k, backend=backend))))


def random(model, sparsity, seed=0, prunable=None) -> Masks:
    """Keep k weights chosen uniformly at random; the same ``seed`` gives the same masks on any device."""
    params = _model.prunable_parameters(model, prunable)
    sizes = [p.numel() for p in params.values()]
    n = sum(sizes)
    k = _k(n, sparsity)
    gen = torch.Generator().manual_seed(int(seed))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=gen)[:k]] = True
    pieces = keep.split(sizes)
    return Masks({name: piece.view(p.shape).to(p.device)
                  for (name, p), piece in zip(params.items(), pieces)})


def grasp(model, data, sparsity, loss_fn=None, batches_per_iteration=1, temperature=200.0, prunable=None,
          backend="auto") -> Masks:
    """GraSP (Wang et al., 2020): keep the top-k of θ ⊙ Hg (signed), H and g of the loss at θ.

    ``temperature`` divides the logits before the loss, as the GraSP authors' code does (200).
    g is the mean gradient over the batches; Hg is the mean over the same batches of the
    Hessian-vector product, by double backward.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    params = _model.prunable_parameters(model, prunable)
    names = list(params)
    theta = [params[n].detach() for n in names]
    base_loss = loss_fn or _model.default_loss

    def loss_t(output, target):
        return base_loss(output / temperature, target)

    stream = _model.BatchStream(data, _model.model_device(params))
    batches = stream.take(batches_per_iteration)
    buffers = _model.buffer_copies(model)
    with _model.module_mode(model, train=True):
        g, _ = _model.mean_gradients(model, dict(zip(names, theta)), buffers, batches, loss_t)
        leaves = [w.detach().requires_grad_(True) for w in theta]
        hg = [torch.zeros_like(w) for w in theta]
        for inputs, targets in batches:
            out = _model.forward(model, {**buffers, **dict(zip(names, leaves))}, inputs)
            grads = torch.autograd.grad(loss_t(out, targets), leaves, create_graph=True, allow_unused=True)
            z = sum((gi * gr).sum() for gi, gr in zip(g, grads) if gr is not None)
            if not isinstance(z, torch.Tensor) or not z.requires_grad:
                continue  # the loss does not depend on the weights twice over: Hg = 0
            for acc, h in zip(hg, torch.autograd.grad(z, leaves, allow_unused=True)):
                if h is not None:
                    acc.add_(h.detach())
    scores = [w * (h / len(batches)) for w, h in zip(theta, hg)]
    k = _k(sum(s.numel() for s in scores), sparsity)
    return Masks(dict(zip(names, _select("GraSP", names, ops.topk_masks, scores, k, backend=backend))))


def synflow(model, data=None, sparsity=0.9, iterations=100, schedule="exp", input_shape=None, prunable=None,
            backend="auto", progress=False) -> Masks:
    """SynFlow (Tanaka et al., 2020): data-free, iterative.

    Every parameter and float buffer is replaced by its absolute value (in float64, so deep nets
    do not overflow), the model runs in eval mode on one all-ones input, R = sum(output), and
    step t keeps the top-k_t of |θ ⊙ m ⊙ ∂R/∂θ| among the surviving weights. The input shape is
    ``input_shape`` or, if not given, that of one sample of the first batch of ``data``.
    """
    params = _model.prunable_parameters(model, prunable)
    names = list(params)
    device = _model.model_device(params)
    if input_shape is None:
        if data is None:
            raise ValueError("synflow needs input_shape (the shape of one sample) or data to read it from")
        inputs, _ = _model.BatchStream(data, device).next()
        if not isinstance(inputs, torch.Tensor):
            raise ValueError("synflow reads input_shape from tensor inputs; pass input_shape=")
        input_shape = tuple(inputs.shape[1:])
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)

    positive = {n: p.detach().abs().to(torch.float64) for n, p in model.named_parameters()}
    positive.update(_model.buffer_copies(model, lambda b: b.abs().to(torch.float64)))
    theta = [positive[n] for n in names]
    n_total = sum(w.numel() for w in theta)
    masks = [torch.ones_like(w, dtype=torch.bool) for w in theta]
    ks = keep_counts(n_total, sparsity, iterations, schedule)
    steps = range(iterations)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="SynFlow", unit="step")
    with _model.module_mode(model, train=False):
        for t in steps:
            leaves = [(w * m).requires_grad_(True) for w, m in zip(theta, masks)]
            out = _model.forward(model, {**positive, **dict(zip(names, leaves))}, ones)
            grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for w, g in zip(theta, grads)]
            masks = _select("SynFlow", names, ops.saliency_topk_masks, theta, grads, ks[t], prev_masks=masks,
                            resurrect=False, backend=backend)
    return Masks({n: m for n, m in zip(names, masks)})
