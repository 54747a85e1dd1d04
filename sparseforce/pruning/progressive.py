"""FORCE and Iter SNIP: progressive skeletonization (de Jorge et al., ICLR 2021, Algorithm 1).

    θ0 <- the weights at call time;  m_0 <- 1
    for t = 1..T:
        k_t <- round(N · d_t)                          (exp, linear or given schedule; k_rounding)
        g   <- mean over the step's batches of ∂L/∂w at w = θ0 ⊙ m_{t-1}
        FORCE:     m_t <- top-k_t |θ0 ⊙ g|             (every weight competes; pruned ones may return)
        Iter SNIP: m_t <- top-k_t |θ0 ⊙ m_{t-1} ⊙ g|   (only survivors compete; masks nested)

SNIP is the one-step case. ``scope="layer"`` gives each layer its own k_t and ``nm=(n, m)`` keeps
n_t of every m weights at step t (see ``_scope``). Only ``sparseforce.ops`` touches the scores.
``invert=True`` keeps the lowest saliencies instead (the top-k of their negation);
``train_mode=False`` takes the gradients with the model in eval mode.
"""
from __future__ import annotations

import contextlib
import time

import torch

from .. import _checks, ops
from ..masks import Masks, format_percent
from . import _batches, _collapse, _layouts, _losses, _scope, _state
from .schedules import check_k_rounding, densities, one_step_schedule


def _progressive(model, data, *, method, sparsity, iterations, schedule, loss_fn, batches_per_iteration,
                 prunable, backend, progress, resurrect, group, seed, k_rounding, train_mode, invert, scope,
                 distribution, nm) -> Masks:
    scope, sparsity = _scope.check_scope(scope, distribution, nm, sparsity, method)
    densities(sparsity, iterations, schedule)  # checks all three before any work
    check_k_rounding(k_rounding)
    train_mode = _checks.flag("train_mode", train_mode)
    invert = _checks.flag("invert", invert)
    batches_per_iteration = _checks.integer("batches_per_iteration", batches_per_iteration, 1)
    loss_fn = _losses.check_loss_fn(loss_fn)
    seed = None if seed is None else _checks.seed(seed)
    _batches.check_data(data)
    layout = _layouts.layout(model, prunable, group, train_mode)  # one process, data-parallel or sharded
    if scope.name != "global" and not layout.segmented:
        raise NotImplementedError(f"{method}: scope='layer' and nm rank each layer on one rank, but the model is "
                                  "sharded with FSDP2; prune it unsharded (or data-parallel) and shard it after")
    # Refused before any gradient is taken; every layout's final selection runs this op on its weights.
    ops.resolve(backend, scope.op("saliency_topk_masks"), layout.device)
    keeps = _scope.keeps(scope, layout.names, layout.shapes, sparsity, iterations, schedule, k_rounding,
                         nested=not resurrect)
    with _state.own_rng(model, seed):
        masks = _steps(layout, data, keeps, method, loss_fn, batches_per_iteration, backend, progress, resurrect,
                       invert)
        result = layout.result(masks)
    _collapse.warn_collapsed(method, layout.names, layout.numels, layout.kept(masks))
    return result


def _steps(layout, data, keeps, method, loss_fn, batches_per_iteration, backend, progress, resurrect, invert):
    batches = _batches.BatchStream(data, layout.device)
    masks = [torch.ones_like(w, dtype=torch.bool) for w in layout.theta0]
    steps = range(1, len(keeps) + 1)
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
                    masks = layout.select(grads, keeps[t - 1], masks, resurrect, backend, invert)
            except ops.NaNScoreError as e:
                where = "on another rank" if e.index is None else repr(layout.names[e.index])
                raise ValueError(f"{method} step {t}: the saliency of {where} is NaN "
                                 "(NaN/inf in its weights or gradients)") from e
            del grads, step_batches
            if bar is not None:
                bar.set_postfix(density=format_percent(keeps[t - 1].total, layout.n_total), loss=f"{loss:.4g}")
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


def force(model, data, sparsity=None, iterations=60, schedule="exp", loss_fn=None, batches_per_iteration=1,
          prunable=None, backend="auto", progress=False, group=None, seed=None, k_rounding="round",
          train_mode=True, invert=False, scope="global", distribution=None, nm=None) -> Masks:
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

    Which weights compete: ``scope="global"`` (default) ranks every prunable weight against every
    other. ``scope="layer"`` gives each layer its own budget, shared out by ``distribution``:
    ``"uniform"`` (default: every layer at the overall density), ``"erk"`` (Erdős–Rényi-Kernel) or
    a dict naming every prunable layer with its density in [0, 1], taken as relative densities
    (targets ∝ density × size, scaled to the k of ``sparsity``: densities whose size-weighted mean
    is 1 - sparsity are kept as given); the counts are those of
    :func:`sparseforce.pruning.layer_counts` (largest remainder, exactly k in all). ``nm=(n, m)``
    keeps n of every m consecutive weights along each prunable tensor's input dimension (the
    tensor viewed as (dim 0, rest); 2:4 is what sparse tensor cores accelerate): ``sparsity`` may
    be left out, as it is 1 - n/m (one that disagrees is an error), and a layer whose rows are not
    a multiple of m is an error naming it. Within a layer or group the ranking rules are the global
    ones. Over the steps: with ``scope="layer"`` step t's density d_t applies to every layer (its
    kept count k_t shared out as above at each step); with ``nm`` step t keeps
    n_t = max(n, round(m·d_t)) of every m (``k_rounding``'s rounding), exactly n at the last step,
    so every step is itself an N:M pattern. A model sharded with FSDP2 takes the global scope only.

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
                        k_rounding=k_rounding, train_mode=train_mode, invert=invert, scope=scope,
                        distribution=distribution, nm=nm)


def iter_snip(model, data, sparsity=None, iterations=60, schedule="exp", loss_fn=None, batches_per_iteration=1,
              prunable=None, backend="auto", progress=False, group=None, seed=None, k_rounding="round",
              train_mode=True, invert=False, scope="global", distribution=None, nm=None) -> Masks:
    """Iter SNIP: progressive pruning in which a pruned weight stays pruned (nested masks).

    ``data``, ``seed``, ``schedule``, ``k_rounding``, ``train_mode``, the random state, the
    collapse warning and distributed use as :func:`force`: a one-shot iterator (a generator) is
    not cached, running out of it raises ``ValueError``; pass a list or a DataLoader to have it
    started again. A schedule whose kept counts grow is refused (the masks are nested).
    ``invert=True`` keeps, at each step, the k_t lowest saliencies among the survivors (still
    nested).

    ``scope`` / ``distribution`` / ``nm`` as :func:`force`, with masks that stay nested: under
    ``nm`` the n_t never grow, so each step keeps n_t of the n_{t-1} survivors of every group; under
    ``scope="layer"`` a layer's count never grows either (going back from the last step, which keeps
    the final counts exactly, a layer keeps at least its next step's count, and the units this adds
    to k_t come back from the layers furthest above theirs: largest remainder alone can move a unit
    between layers as k_t falls).
    """
    return _progressive(model, data, method="Iter SNIP", sparsity=sparsity, iterations=iterations,
                        schedule=schedule, loss_fn=loss_fn, batches_per_iteration=batches_per_iteration,
                        prunable=prunable, backend=backend, progress=progress, resurrect=False, group=group,
                        seed=seed, k_rounding=k_rounding, train_mode=train_mode, invert=invert, scope=scope,
                        distribution=distribution, nm=nm)


def snip(model, data, sparsity=None, loss_fn=None, batches_per_iteration=1, prunable=None, backend="auto",
         progress=False, group=None, seed=None, k_rounding="round", train_mode=True, invert=False,
         schedule="exp", scope="global", distribution=None, nm=None) -> Masks:
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
    ``scope`` / ``distribution`` / ``nm`` as :func:`force` (one step: the final counts).
    """
    schedule = one_step_schedule(schedule, "snip")
    return _progressive(model, data, method="SNIP", sparsity=sparsity, iterations=1, schedule=schedule,
                        loss_fn=loss_fn, batches_per_iteration=batches_per_iteration, prunable=prunable,
                        backend=backend, progress=progress, resurrect=True, group=group, seed=seed,
                        k_rounding=k_rounding, train_mode=train_mode, invert=invert, scope=scope,
                        distribution=distribution, nm=nm)
