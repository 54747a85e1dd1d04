"""The one-shot baselines FORCE is compared with: GraSP, SynFlow, magnitude and random.

(SNIP lives with the progressive methods: it is their one-step case.)
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from .. import _checks, ops
from ..masks import Masks
from . import _model
from . import _select as _select_mod
from .schedules import check_k_rounding, check_sparsity, densities, keep_count, keep_counts


def _k(n: int, sparsity: float, k_rounding) -> int:
    return keep_count(n, 1.0 - sparsity, k_rounding)


def _topk(method, names, scores, k, invert, backend) -> list[torch.Tensor]:
    # Inverted: the top-k of the negated scores (-0.0 equals +0.0, ties still by position).
    if invert:
        scores = [s.neg() for s in scores]
    return _select(method, names, ops.topk_masks, scores, k, backend=backend)


def _select(method, names, fn, *args, **kw) -> list[torch.Tensor]:
    try:
        return fn(*args, **kw)
    except ops.NaNScoreError as e:
        raise ValueError(f"{method}: the score of {names[e.index]!r} is NaN") from e


def magnitude(model, sparsity, prunable=None, backend="auto", k_rounding="round", invert=False) -> Masks:
    """Keep the k weights of largest |θ| (ties by global position); ``invert=True`` keeps the k
    smallest. ``k_rounding`` as :func:`sparseforce.force`. Warns with
    :class:`sparseforce.LayerCollapseWarning` when a layer is left with no weights."""
    sparsity = check_sparsity(sparsity)
    check_k_rounding(k_rounding)
    invert = _checks.flag("invert", invert)
    params = _model.prunable_parameters(model, prunable)
    _model.check_backend(backend, "topk_masks", params)
    names = list(params)
    k = _k(sum(p.numel() for p in params.values()), sparsity, k_rounding)
    with torch.no_grad():
        scores = [p.detach().abs() for p in params.values()]
    masks = Masks(dict(zip(names, _topk("magnitude", names, scores, k, invert, backend))))
    return _model.warn_if_collapsed("magnitude", masks)


def random(model, sparsity, seed=0, prunable=None, distribution="global", k_rounding="round") -> Masks:
    """Keep k weights chosen at random; the same ``seed`` (an integer in [0, 2**32)) gives the
    same masks on any device. Uses its own generator: the global random state is not touched.

    ``distribution`` says how the k kept weights are spread over the layers:

    * ``"global"``: uniformly at random over all prunable weights together (each layer's count
      is itself random);
    * ``"uniform"``: every layer keeps its share of the overall density d = k/N,
      round(n_l·d) up to the apportionment of :func:`layer_counts`;
    * ``"erk"``: Erdős–Rényi-Kernel (Evci et al., 2020): layer densities proportional to
      (sum of the layer's dimensions) / (product of them), layers that would exceed density 1
      kept dense (see :func:`layer_counts`).

    For ``"uniform"`` and ``"erk"`` the per-layer counts sum to exactly k and each layer's kept
    positions are uniformly random within the layer. ``k_rounding`` (how k comes from the
    density) as :func:`sparseforce.force`. Warns with
    :class:`sparseforce.LayerCollapseWarning` when a layer is left with no weights."""
    sparsity = check_sparsity(sparsity)
    check_k_rounding(k_rounding)
    seed = _checks.seed(seed)
    distribution = _check_distribution(distribution)
    params = _model.prunable_parameters(model, prunable)
    sizes = [p.numel() for p in params.values()]
    k = _k(sum(sizes), sparsity, k_rounding)
    pieces = _random_keep([tuple(p.shape) for p in params.values()], k, distribution,
                          torch.Generator().manual_seed(seed))
    masks = Masks({name: piece.view(p.shape).to(p.device)
                   for (name, p), piece in zip(params.items(), pieces)})
    return _model.warn_if_collapsed("random", masks)


DISTRIBUTIONS = ("global", "uniform", "erk")


def _check_distribution(distribution) -> str:
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        error = TypeError if not isinstance(distribution, str) else ValueError
        raise error(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}, "
                    f"got {_checks.describe(distribution)}")
    return distribution


def _random_keep(shapes, k: int, distribution: str, gen: torch.Generator) -> list[torch.Tensor]:
    """One flat CPU bool tensor per shape, k True in all, drawn from ``gen``."""
    sizes = [math.prod(s) for s in shapes]
    if distribution == "global":
        n = sum(sizes)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=gen)[:k]] = True
        return list(keep.split(sizes))
    pieces = []
    for n, c in zip(sizes, layer_counts(shapes, k, distribution)):
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=gen)[:c]] = True
        pieces.append(keep)
    return pieces


def layer_counts(shapes, k: int, distribution: str) -> list[int]:
    """How many weights each layer of the given shapes keeps, for k kept overall (a pure
    function: no tensors, exact integer arithmetic).

    * ``"uniform"``: layer l's target is t_l = k·n_l/N (n_l its number of weights, N the sum),
      i.e. every layer at the overall density k/N.
    * ``"erk"``: t_l = b·s_l/S with s_l the sum of the layer's dimensions (a conv
      c_out×c_in×kh×kw: c_out + c_in + kh + kw; a linear: n_out + n_in) and S their sum over the
      layers still competing, b the budget left to them: density t_l/n_l ∝ s_l/n_l, the ERK
      formula, scaled so the targets sum to k. A layer whose target exceeds n_l is kept dense,
      and the others are rescaled to the rest of the budget, until none exceeds its size.

    Targets become integers by largest-remainder apportionment: each layer gets floor(t_l), and
    the units still missing to reach k go one each to the layers of largest fractional part
    (ties: the earlier layer). So the counts sum to exactly k, each is within one of its target,
    and none exceeds its layer's size.
    """
    _check_distribution(distribution)
    if distribution == "global":
        raise ValueError("distribution 'global' has no fixed per-layer counts: each layer's count is random")
    shapes = [tuple(int(d) for d in s) or (1,) for s in shapes]  # a scalar counts as one weight
    sizes = [math.prod(s) for s in shapes]
    k = _checks.integer("k", k, 0)
    if k > sum(sizes):
        raise ValueError(f"k must be at most the number of weights, {sum(sizes)}, got {k}")
    weights = sizes if distribution == "uniform" else [sum(s) for s in shapes]
    counts = [0] * len(shapes)
    competing = list(range(len(shapes)))
    budget = k
    while True:
        total = sum(weights[i] for i in competing)
        dense = [i for i in competing if budget * weights[i] > total * sizes[i]]
        if not dense:
            break
        for i in dense:
            counts[i] = sizes[i]
        budget -= sum(sizes[i] for i in dense)
        competing = [i for i in competing if i not in dense]
    if competing and total:
        shares = [divmod(budget * weights[i], total) for i in competing]
        for i, (whole, _) in zip(competing, shares):
            counts[i] = whole
        missing = budget - sum(whole for whole, _ in shares)
        by_remainder = sorted(range(len(competing)), key=lambda j: (-shares[j][1], j))
        for j in by_remainder[:missing]:
            counts[competing[j]] += 1
    return counts


GRASP_TEMPERATURE = 200.0  # the GraSP authors' code


def grasp(model, data, sparsity, loss_fn=None, batches_per_iteration=1, temperature=None, prunable=None,
          backend="auto", seed=None, k_rounding="round", train_mode=True, invert=False) -> Masks:
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
    the k lowest θ ⊙ Hg (the top-k of its negation; ties by global position).
    """
    sparsity = check_sparsity(sparsity)
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
    base_loss = _model.check_loss_fn(loss_fn)
    seed = None if seed is None else _checks.seed(seed)
    _model.check_data(data)
    params = _model.prunable_parameters(model, prunable)
    _model.check_backend(backend, "topk_masks", params)
    names = list(params)
    theta = [params[n].detach() for n in names]
    k = _k(sum(w.numel() for w in theta), sparsity, k_rounding)

    def loss_t(output, target):
        if loss_fn is None and isinstance(target, Mapping):  # the model's own loss: nothing to scale
            if explicit_temperature:
                raise ValueError("grasp: temperature divides the logits before the loss, but with dict batches and "
                                 "no loss_fn the loss is the model's own .loss, computed from unscaled logits; "
                                 "leave temperature unset to use that loss as it is, or pass "
                                 "loss_fn(output, batch), which gets the output with .logits divided by temperature")
            return base_loss(output, target)
        return base_loss(_divide_logits(output, temperature), target)

    with _model.own_rng(model, seed):
        hg, n_batches = _hessian_gradient(model, data, params, names, theta, batches_per_iteration, loss_t,
                                          train_mode)
    scores = [w * (h / n_batches) for w, h in zip(theta, hg)]
    masks = Masks(dict(zip(names, _topk("GraSP", names, scores, k, invert, backend))))
    return _model.warn_if_collapsed("GraSP", masks)


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
    batches = _model.BatchStream(data, _model.model_device(params)).take(batches_per_iteration)
    buffers = _model.buffer_copies(model)
    with _model.module_mode(model, train=train_mode):
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
    return hg, len(batches)


def synflow(model, data=None, sparsity=0.9, iterations=100, schedule="exp", input_shape=None, prunable=None,
            backend="auto", progress=False, k_rounding="round", invert=False) -> Masks:
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
    survivors.
    """
    densities(sparsity, iterations, schedule)  # checks all three before any work
    check_k_rounding(k_rounding)
    invert = _checks.flag("invert", invert)
    if input_shape is not None:
        input_shape = _check_input_shape(input_shape)
    elif data is None:
        raise ValueError("synflow needs input_shape (the shape of one sample) or data to read it from")
    else:
        _model.check_data(data)
    params = _model.prunable_parameters(model, prunable)
    _model.check_backend(backend, "saliency_topk_masks", params)
    ks = keep_counts(sum(p.numel() for p in params.values()), sparsity, iterations, schedule, k_rounding,
                     nested=True)
    with _model.own_rng(model):
        return _model.warn_if_collapsed("SynFlow", _synflow(model, data, ks, input_shape, params, backend, progress,
                                                            invert))


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


def _synflow(model, data, ks, input_shape, params, backend, progress, invert):
    names = list(params)
    device = _model.model_device(params)
    if input_shape is None:
        inputs, _ = _model.BatchStream(data, device).next()
        if isinstance(inputs, Mapping):
            raise ValueError("synflow is data-free: it feeds one all-ones float tensor positionally and reads its "
                             "shape from tensor inputs, not from dict batches; pass input_shape= (one sample's "
                             "shape, e.g. (3, 224, 224) for a ViT's pixel_values)")
        if not isinstance(inputs, torch.Tensor):
            raise ValueError("synflow reads input_shape from tensor inputs; pass input_shape=")
        input_shape = tuple(inputs.shape[1:])
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)

    positive = {n: p.detach().abs().to(torch.float64) for n, p in model.named_parameters()}
    positive.update(_model.buffer_copies(model, lambda b: b.abs().to(torch.float64)))
    theta = [positive[n] for n in names]
    masks = [torch.ones_like(w, dtype=torch.bool) for w in theta]
    steps = range(len(ks))
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="SynFlow", unit="step")
    with _model.module_mode(model, train=False):
        for t in steps:
            leaves = [(w * m).requires_grad_(True) for w, m in zip(theta, masks)]
            out = _synflow_forward(model, {**positive, **dict(zip(names, leaves))}, ones)
            grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for w, g in zip(theta, grads)]
            if invert:
                masks = _select("SynFlow", names, _select_mod.inverted_saliency_topk, ops.topk_masks, theta, grads,
                                ks[t], masks, False, backend=backend)
            else:
                masks = _select("SynFlow", names, ops.saliency_topk_masks, theta, grads, ks[t], prev_masks=masks,
                                resurrect=False, backend=backend)
    return Masks(dict(zip(names, masks)))


def _synflow_forward(model, tensors, ones):
    try:
        out = _model.forward(model, tensors, ones)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"synflow: the model's forward on an all-ones float64 input of shape {tuple(ones.shape)} "
                         f"failed ({type(exc).__name__}: {_first_line(exc)}); SynFlow is data-free and needs a model "
                         "taking one float tensor: a model of token ids (an embedding lookup: GPT-2, BERT, Llama) "
                         "cannot be scored this way; use force or snip with data") from exc
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"synflow sums the model's output, but it returned {type(out).__name__}, neither a tensor nor "
                    "an output with .logits")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
