"""FORCE and Iter SNIP: progressive skeletonization (de Jorge et al., ICLR 2021, Algorithm 1).

    θ0 <- the weights at call time;  m_0 <- 1
    for t = 1..T:
        k_t <- round(N · d_t)                          (exp or linear schedule)
        g   <- mean over the step's batches of ∂L/∂w at w = θ0 ⊙ m_{t-1}
        FORCE:     m_t <- top-k_t |θ0 ⊙ g|             (every weight competes; pruned ones may return)
        Iter SNIP: m_t <- top-k_t |θ0 ⊙ m_{t-1} ⊙ g|   (only survivors compete; masks nested)

SNIP is the one-step case. Only ``sparseforce.ops`` touches the scores.
"""
from __future__ import annotations

import torch

from .. import ops
from ..masks import Masks
from . import _model
from .schedules import keep_counts


def _progressive(model, data, *, sparsity, iterations, schedule, loss_fn, batches_per_iteration,
                 prunable, backend, progress, resurrect) -> Masks:
    method = "FORCE" if resurrect else "Iter SNIP"
    if isinstance(batches_per_iteration, bool) or not isinstance(batches_per_iteration, int) \
            or batches_per_iteration < 1:
        raise ValueError(f"batches_per_iteration must be an integer >= 1, got {batches_per_iteration!r}")
    params = _model.prunable_parameters(model, prunable)
    names = list(params)
    theta0 = [params[n].detach() for n in names]  # never written: the model is not modified
    n_total = sum(w.numel() for w in theta0)
    ks = keep_counts(n_total, sparsity, iterations, schedule)
    loss_fn = loss_fn or _model.default_loss
    batches = _model.BatchStream(data, _model.model_device(params))
    buffers = _model.buffer_copies(model)
    masks = [torch.ones_like(w, dtype=torch.bool) for w in theta0]

    steps = range(1, iterations + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        steps = bar = tqdm(steps, desc=method, unit="step")
    with _model.module_mode(model, train=True):
        for t in steps:
            masked = {n: w * m for n, w, m in zip(names, theta0, masks)}
            grads, loss = _model.mean_gradients(model, masked, buffers,
                                                batches.take(batches_per_iteration), loss_fn)
            try:
                masks = ops.saliency_topk_masks(theta0, grads, ks[t - 1], prev_masks=masks,
                                                resurrect=resurrect, backend=backend)
            except ops.NaNScoreError as e:
                raise ValueError(f"{method} step {t}: the saliency of {names[e.index]!r} is NaN "
                                 "(NaN/inf in its weights or gradients)") from e
            del masked, grads
            if bar is not None:
                bar.set_postfix(density=f"{ks[t - 1] / max(n_total, 1):.4g}", loss=f"{loss:.4g}")
    return Masks(dict(zip(names, masks)))


def force(model, data, sparsity, iterations=60, schedule="exp", loss_fn=None, batches_per_iteration=1,
          prunable=None, backend="auto", progress=False) -> Masks:
    """FORCE: progressive pruning in which pruned weights may come back.

    ``data``: iterable of (inputs, targets), cycled; step t uses the next
    ``batches_per_iteration`` batches. ``loss_fn(output, target)`` defaults to cross-entropy.
    The model is left exactly as it was.
    """
    return _progressive(model, data, sparsity=sparsity, iterations=iterations, schedule=schedule,
                        loss_fn=loss_fn, batches_per_iteration=batches_per_iteration, prunable=prunable,
                        backend=backend, progress=progress, resurrect=True)


def iter_snip(model, data, sparsity, iterations=60, schedule="exp", loss_fn=None, batches_per_iteration=1,
              prunable=None, backend="auto", progress=False) -> Masks:
    """Iter SNIP: progressive pruning in which a pruned weight stays pruned (nested masks)."""
    return _progressive(model, data, sparsity=sparsity, iterations=iterations, schedule=schedule,
                        loss_fn=loss_fn, batches_per_iteration=batches_per_iteration, prunable=prunable,
                        backend=backend, progress=progress, resurrect=False)


def snip(model, data, sparsity, loss_fn=None, batches_per_iteration=1, prunable=None, backend="auto",
         progress=False) -> Masks:
    """SNIP (Lee et al., 2019): keep the top-k of |θ0 ⊙ g| after a single gradient evaluation."""
    return force(model, data, sparsity, iterations=1, loss_fn=loss_fn,
                 batches_per_iteration=batches_per_iteration, prunable=prunable, backend=backend,
                 progress=progress)
