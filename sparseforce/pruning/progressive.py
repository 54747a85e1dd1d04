"""FORCE and Iter SNIP: progressive skeletonization (de Jorge et al., ICLR 2021, Algorithm 1).

    θ0 <- the weights at call time;  m_0 <- 1
    for t = 1..T:
        k_t <- round(N · d_t)                          (exp, linear or given schedule; k_rounding)
        g   <- mean over the step's batches of ∂L/∂w at w = θ0 ⊙ m_{t-1}
        FORCE:     m_t <- top-k_t |θ0 ⊙ g|             (every weight competes; pruned ones may return)
        Iter SNIP: m_t <- top-k_t |θ0 ⊙ m_{t-1} ⊙ g|   (only survivors compete; masks nested)

SNIP is the one-step case. Only ``sparseforce.ops`` touches the scores. ``invert=True`` keeps the
lowest saliencies instead (the top-k of their negation); ``train_mode=False`` takes the
gradients with the model in eval mode.
"""
from __future__ import annotations

import contextlib
import time

import torch

from .. import _checks, ops
from ..masks import Masks, format_percent
from . import _batches, _collapse, _layouts, _losses, _state
from .schedules import check_k_rounding, densities, keep_counts, one_step_schedule


def _progressive(model, data, *, method, sparsity, iterations, schedule, loss_fn, batches_per_iteration,
                 prunable, backend, progress, resurrect, group, seed, k_rounding, train_mode, invert) -> Masks:
    densities(sparsity, iterations, schedule)  # checks all three before any work
    check_k_rounding(k_rounding)
    train_mode = _checks.flag("train_mode", train_mode)
    invert = _checks.flag("invert", invert)
    batches_per_iteration = _checks.integer("batches_per_iteration", batches_per_iteration, 1)
    loss_fn = _losses.check_loss_fn(loss_fn)
    seed = None if seed is None else _checks.seed(seed)
    _batches.check_data(data)
    layout = _layouts.layout(model, prunable, group, train_mode)  # one process, data-parallel or sharded
    # Refused before any gradient is taken; every layout's final selection runs this op on its weights.
    ops.resolve(backend, "saliency_topk_masks", layout.device)
    ks = keep_counts(layout.n_total, sparsity, iterations, schedule, k_rounding, nested=not resurrect)
    with _state.own_rng(model, seed):
        masks = _steps(layout, data, ks, method, loss_fn, batches_per_iteration, backend, progress, resurrect,
                       invert)
        result = layout.result(masks)
    _collapse.warn_collapsed(method, layout.names, layout.numels, layout.kept(masks))
    return result


def _steps(layout, data, ks, method, loss_fn, batches_per_iteration, backend, progress, resurrect, invert):
    batches = _batches.BatchStream(data, layout.device)
    masks = [torch.ones_like(w, dtype=torch.bool) for w in layout.theta0]
    steps = range(1, len(ks) + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        steps = bar = tqdm(steps, desc=method, unit="step")
    with layout:
        for t in steps:
            step_batches = batches.take(batches_per_iteration)
            with _phase("gradients", layout.device):
                grads, loss = layout.gradients(masks, step_batches, loss_fn)
            try:
                with _phase("selection", layout.device):
                    masks = layout.select(grads, ks[t - 1], masks, resurrect, backend, invert)
            except ops.NaNScoreError as e:
                where = "on another rank" if e.index is None else repr(layout.names[e.index])
                raise ValueError(f"{method} step {t}: the saliency of {where} is NaN "
                                 "(NaN/inf in its weights or gradients)") from e
            del grads, step_batches
            if bar is not None:
                bar.set_postfix(density=format_percent(ks[t - 1], layout.n_total), loss=f"{loss:.4g}")
    return masks


_PROFILE: dict | None = None


@contextlib.contextmanager
def profile():
    """Seconds spent per phase of every FORCE / Iter SNIP step run inside the block, summed:
    ``{"gradients": ..., "selection": ..., "steps": n}`` ("gradients": θ0 ⊙ m, forward and
    backward; "selection": the top-k). Synchronizes the GPU around each phase, so use it to
    measure, not in production runs."""
    global _PROFILE
    outer, _PROFILE = _PROFILE, {"gradients": 0.0, "selection": 0.0, "steps": 0}
    try:
        yield _PROFILE
    finally:
        _PROFILE = outer


@contextlib.contextmanager
def _phase(name, device):
    if _PROFILE is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _PROFILE[name] += time.perf_counter() - start
    _PROFILE["steps"] += name == "selection"


def force(model, data, sparsity, iterations=60, schedule="exp", loss_fn=None, batches_per_iteration=1,
          prunable=None, backend="auto", progress=False, group=None, seed=None, k_rounding="round",
          train_mode=True, invert=False) -> Masks:
    """FORCE: progressive pruning in which pruned weights may come back.

    ``data``: an iterable of (inputs, targets) batches; step t uses the next
    ``batches_per_iteration`` of them, starting the iterable again when it runs out (a list, a
    DataLoader). A one-shot iterator (a generator) is not cached in memory: running out of it
    raises ``ValueError``, so pass a list or a DataLoader. ``loss_fn(output, target)`` defaults
    to cross-entropy. A batch may be a dict (a Hugging Face ``DataCollator``'s): the model is
    called with it as keyword arguments, ``loss_fn`` gets the dict as ``target``, and the
    default loss is the output's ``.loss``. The model is left exactly as it was.

    ``schedule``: ``"exp"``, ``"linear"`` or the sequence of per-step densities itself (then
    ``iterations`` is its length, see :mod:`sparseforce.pruning.schedules`). ``k_rounding``: how a
    density becomes a kept count, ``"round"`` (default), ``"floor"`` (the official FORCE code),
    ``"ceil"``, ``"synflow"`` (Synaptic-Flow) or a callable ``k_rounding(n, density) -> int``.
    ``train_mode=False`` takes the gradients with the model in eval mode (BatchNorm then
    normalizes with its running statistics, dropout is off); the caller's modes are restored
    either way. ``invert=True`` keeps the k *lowest* saliencies (the inverted sanity check of
    Frankle et al., ICLR 2021): the top-k of -|θ0 ⊙ g|, so among equal scores the lowest global
    position still wins.

    The caller's random state is left as it was too: the passes (dropout) and the iteration of
    ``data`` (a shuffling DataLoader) draw from a fork of torch's global RNG (CPU and the
    model's CUDA devices), seeded with ``seed`` (an integer in [0, 2**32)), or with None continuing
    from the caller's state
    (the same state, the same masks). Warns with :class:`sparseforce.LayerCollapseWarning`
    when a layer is left with no weights while others keep some.

    Distributed (every rank calls it with its own ``data``): ``group=`` a process group, or a
    model wrapped in ``DistributedDataParallel``, averages each step's gradients over the ranks
    and gives every rank the same masks; a model sharded with FSDP2 (``fully_shard``) is pruned
    shard by shard with the exact global top-k, and its masks are DTensors sharded like the
    weights.
    """
    return _progressive(model, data, method="FORCE", sparsity=sparsity, iterations=iterations, schedule=schedule,
                        loss_fn=loss_fn, batches_per_iteration=batches_per_iteration, prunable=prunable,
                        backend=backend, progress=progress, resurrect=True, group=group, seed=seed,
                        k_rounding=k_rounding, train_mode=train_mode, invert=invert)


def iter_snip(model, data, sparsity, iterations=60, schedule="exp", loss_fn=None, batches_per_iteration=1,
              prunable=None, backend="auto", progress=False, group=None, seed=None, k_rounding="round",
              train_mode=True, invert=False) -> Masks:
    """Iter SNIP: progressive pruning in which a pruned weight stays pruned (nested masks).

    ``data``, ``seed``, ``schedule``, ``k_rounding``, ``train_mode``, the random state, the
    collapse warning and distributed use as :func:`force`: a one-shot iterator (a generator) is
    not cached, running out of it raises ``ValueError``; pass a list or a DataLoader to have it
    started again. A schedule whose kept counts grow is refused (the masks are nested).
    ``invert=True`` keeps, at each step, the k_t lowest saliencies among the survivors (still
    nested).
    """
    return _progressive(model, data, method="Iter SNIP", sparsity=sparsity, iterations=iterations,
                        schedule=schedule, loss_fn=loss_fn, batches_per_iteration=batches_per_iteration,
                        prunable=prunable, backend=backend, progress=progress, resurrect=False, group=group,
                        seed=seed, k_rounding=k_rounding, train_mode=train_mode, invert=invert)


def snip(model, data, sparsity, loss_fn=None, batches_per_iteration=1, prunable=None, backend="auto",
         progress=False, group=None, seed=None, k_rounding="round", train_mode=True, invert=False,
         schedule="exp") -> Masks:
    """SNIP (Lee et al., 2019): keep the top-k of |θ0 ⊙ g| after a single gradient evaluation
    (the mean gradient over the first ``batches_per_iteration`` batches of ``data``).

    ``data``, ``seed``, ``k_rounding``, ``train_mode``, ``invert``, the random state, the
    collapse warning and distributed use as :func:`force`: a one-shot iterator (a generator)
    with fewer batches raises ``ValueError``; pass a list or a DataLoader.

    ``schedule``: the one step's density. A name (``"exp"``, ``"linear"``: both are the final
    density 1 - ``sparsity`` for one step) or a sequence of **one** density, used as given (it
    must agree with 1 - ``sparsity`` to 1e-9). That reproduces another implementation's kept
    count exactly: the official FORCE code's SNIP (``--num_steps 1``) keeps
    ``int(N * exp(-log(1/d)))``, and that float is not always d (N = 1000, d = 0.1 keeps 100
    where ``k_rounding="floor"`` of 1 - 0.9 keeps 99), so pass
    ``schedule=official_force_densities(d, 1), k_rounding="floor"``. A sequence of more than one
    density is a ``ValueError``: that is :func:`force` or :func:`iter_snip` with ``iterations=``.
    """
    schedule = one_step_schedule(schedule, "snip")
    return _progressive(model, data, method="SNIP", sparsity=sparsity, iterations=1, schedule=schedule,
                        loss_fn=loss_fn, batches_per_iteration=batches_per_iteration, prunable=prunable,
                        backend=backend, progress=progress, resurrect=True, group=group, seed=seed,
                        k_rounding=k_rounding, train_mode=train_mode, invert=invert)
