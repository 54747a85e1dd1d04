"""The dynamic-sparse-training cases of ``sparseforce bench``: one RigL update, and its cost against
a training step.

One RigL update on a model's prunable weights (ERK masks at 90 % sparsity, random fp32 weights,
random dense gradients, 30 % of each layer's active weights dropped and as many grown): the
selection, then the zeroing that keeps the masked-training invariant (dropped weights and their
momentum at 0; a grown weight starts at 0 and with zero momentum because, being inactive until now,
both already are 0, so multiplying by the new mask is the whole zeroing).

Today's practice, the PyTorch ports (rigl-torch, Dettmers' sparse_learning, sparsimony): per layer
a ``topk`` on |w| of the active weights (inactive ones at +inf) for the d to drop, a ``topk`` on
|g| of the others (the kept ones at -inf) for the d to grow, both scattered into the mask, then
the weight and the momentum buffer multiplied by it. The installed sparsimony package, when it
imports here, is timed as it ships (its own model copy, masks and ERK budgets).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import ops
from ._prunable import prunable_parameters
from .bench_case import Case, Unavailable, text_table
from .dst import RigL
from .optim import MaskedSGD
from .pruning import random as random_masks

SPARSITY, DROP_FRACTION, UPDATE_EVERY = 0.9, 0.3, 100
# Read w, g, the mask and the momentum buffer; write the mask, w and the buffer: once each.
UPDATE_BYTES_PER_WEIGHT = 4 + 4 + 1 + 4 + 1 + 4 + 4


def _count(build: Callable[[], torch.nn.Module]) -> int:
    with torch.device("meta"):  # shapes only
        return sum(p.numel() for p in prunable_parameters(build(), check_nan=False).values())


def rigl_state(build: Callable[[], torch.nn.Module], device) -> dict:
    """``build()`` on ``device`` with ERK masks at 90 % (``sf.random``, seed 0) on its prunable
    weights, random fp32 values in them and in their momentum buffers (0 where inactive), random
    dense gradients, each layer's drop count. Seeded: every impl of a case starts from the same
    state."""
    model = build().to(device)
    params = list(prunable_parameters(model, check_nan=False).values())
    mask_map = random_masks(model, sparsity=SPARSITY, distribution="erk", seed=0)
    masks = list(mask_map.values())
    gen = torch.Generator(device=device).manual_seed(1)
    weights = [p.detach() for p in params]
    with torch.no_grad():
        for w, m in zip(weights, masks):
            w.copy_(torch.randn(w.shape, generator=gen, device=device) * m)
    grads, bufs = ([torch.randn(m.shape, generator=gen, device=device) for m in masks] for _ in range(2))
    torch._foreach_mul_(bufs, masks)
    drops = [math.floor(DROP_FRACTION * int(m.count_nonzero())) for m in masks]
    return {"model": model, "params": params, "mask_map": mask_map, "weights": weights, "grads": grads,
            "masks": masks, "bufs": bufs, "drops": drops}


def port_rigl_update(weights, grads, masks, bufs, drops) -> None:
    """One RigL update as the PyTorch ports write it, in place: per layer, ``topk`` of the d
    smallest |w| among the active weights (dropped), ``topk`` of the d largest |g| among the rest
    (grown; a weight just dropped may come back), scattered into the mask; then the weight and the
    momentum buffer multiplied by the new mask."""
    for w, g, m, b, d in zip(weights, grads, masks, bufs, drops):
        flat = m.view(-1)
        drop_score = torch.where(flat, w.view(-1).abs(), math.inf)
        flat.scatter_(0, drop_score.topk(d, largest=False).indices, False)
        grow_score = torch.where(flat, -math.inf, g.view(-1).abs())
        flat.scatter_(0, grow_score.topk(d).indices, True)
        w.mul_(m)
        b.mul_(m)


def fused_rigl_update(state: dict, backend: str) -> Callable[[], None]:
    """The update on our op: every layer's drop and grow in one ``ops.drop_grow_masks`` call
    (in place: out = the masks), then one ``_foreach_mul_`` each for the weights and buffers."""
    w, g, m, b, d = (state[k] for k in ("weights", "grads", "masks", "bufs", "drops"))

    def update():
        ops.drop_grow_masks(w, g, m, d, segment="tensor", out=m, backend=backend)
        torch._foreach_mul_(w, m)
        torch._foreach_mul_(b, m)
    return update


RIGL = "sf.dst.RigL"


def rigl_impl(backend: str) -> str:
    return f"{RIGL} [{backend}]"


def dst_rigl_update(state: dict, backend: str) -> Callable[[], None]:
    """``sf.dst.RigL.step()`` at an update step (one every step, drop fraction 0.3), the momentum
    buffers held by a ``torch.optim.SGD``. Autograd first delivers the dense gradients to the
    parameters (``torch.autograd.grad`` of the parameters by themselves) so RigL's capture copies
    them as in training: the copy is part of what an update costs."""
    params, grads = state["params"], state["grads"]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for p, b in zip(params, state["bufs"]):
        opt.state[p]["momentum_buffer"] = b
    rigl = RigL(state["model"], state["mask_map"], opt, total_steps=2**40, update_every=1,
                drop_fraction=DROP_FRACTION, backend=backend)

    def update():
        torch.autograd.grad(params, params, grads)
        rigl.step()
    return update


def our_update(impl: str, state: dict) -> Callable[[], None]:
    """Our update as ``impl`` names it: a backend of the op, or ``rigl_impl(backend)``."""
    if impl.startswith(RIGL):
        return dst_rigl_update(state, impl[len(RIGL) + 2:-1])
    return fused_rigl_update(state, impl)


def sparsimony_update(build: Callable[[], torch.nn.Module], device) -> Callable[[], None]:
    """sparsimony's ``RigL.step()`` at an update step (a constant drop fraction of 0.3 at every
    step), on its own copy of the model with its own ERK masks at 90 % and random dense gradients
    in its gradient buffers. :class:`Unavailable` (with the reason) when it does not import or
    does not run beside this torch."""
    try:
        from sparsimony.distributions.base import ERKDistribution
        from sparsimony.dst.rigl import RigL
        from sparsimony.schedulers.base import ConstantScheduler
    except ImportError as e:
        raise Unavailable(f"sparsimony not importable ({e})") from e
    try:
        model = build().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        rigl = RigL(scheduler=ConstantScheduler(DROP_FRACTION, t_end=2**62, delta_t=1),
                    distribution=ERKDistribution(), optimizer=opt, sparsity=SPARSITY, init_method=None)
        rigl.prepare(model, [{"tensor_fqn": n} for n in prunable_parameters(model, check_nan=False)])
        gen = torch.Generator(device=device).manual_seed(1)
        for config in rigl.groups:
            buf = getattr(config["module"].parametrizations, config["tensor_name"])[0].dense_grad
            buf.copy_(torch.randn(buf.shape, generator=gen, device=device))
        rigl.step()  # proves it runs here before it is timed
    except Exception as e:  # noqa: BLE001 - any failure of the third-party package means "does not run here"
        raise Unavailable(f"sparsimony does not run here: {type(e).__name__}: {str(e).splitlines()[0][:100]}") from e
    return rigl.step


def rigl_update_case(layers: str, build: Callable[[], torch.nn.Module], backends=()) -> Case:
    """One RigL update on ``build()``'s prunable weights: the ports' per-layer ``topk``, sparsimony
    when it runs, and ours as each of ``backends`` names it (:func:`our_update`)."""
    n = _count(build)

    def make(impl, device):
        if impl == "sparsimony":
            return sparsimony_update(build, device)
        state = rigl_state(build, device)
        if impl == "baseline":
            return lambda: port_rigl_update(state["weights"], state["grads"], state["masks"], state["bufs"],
                                            state["drops"])
        return our_update(impl, state)

    return Case(f"rigl-update {layers} ERK {SPARSITY:.0%} drop={DROP_FRACTION:.0%}", layers, torch.float32, n,
                n * UPDATE_BYTES_PER_WEIGHT, ["baseline", "sparsimony", *backends], make)


TRAIN_STEP = "train-step"


def update_cost_case(layers: str, build: Callable[[], torch.nn.Module], model_and_batch: Callable, batch: int,
                     backends=()) -> Case:
    """One masked training step (zero_grad, forward, backward, ``MaskedSGD`` step with momentum 0.9
    and weight decay 5e-4 under the ERK masks) beside one RigL update on every backend: the update
    runs once every ``UPDATE_EVERY`` steps, so its share of training is update / 100 / step
    (:func:`format_update_cost`)."""
    def make(impl, device):
        if impl != TRAIN_STEP:
            return our_update(impl, rigl_state(build, device))
        model, x, y = model_and_batch(batch, device)
        masks = random_masks(model, sparsity=SPARSITY, distribution="erk", seed=0)
        opt = MaskedSGD(model.named_parameters(), masks, lr=0.1, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return step

    return Case(f"rigl-cost {layers} b={batch} every={UPDATE_EVERY}", layers, torch.float32, _count(build),
                float("nan"), [TRAIN_STEP, *backends], make, kind="update-cost")


def format_update_cost(rows: list[dict]) -> str:
    """Per update-cost case and backend: the update's time, the step's, and the update's share of
    the training time when it runs every ``UPDATE_EVERY`` steps (target: at most 1 %)."""
    header = ["RigL update vs training", "update", "update time", "train step", f"update / {UPDATE_EVERY} steps",
              "target <= 1 %"]
    lines = []
    for r in rows:
        if r.get("kind") != "update-cost" or r["impl"] == TRAIN_STEP:
            continue
        step = next((s for s in rows if s["case"] == r["case"] and s["impl"] == TRAIN_STEP), {})
        if "median_s" not in r or "median_s" not in step:
            continue
        share = r["median_s"] / UPDATE_EVERY / step["median_s"]
        lines.append([r["case"], r["impl"], f"{r['median_s'] * 1e3:,.2f} ms", f"{step['median_s'] * 1e3:,.1f} ms",
                      f"{share:.3%}", "met" if share <= 0.01 else "MISSED"])
    return text_table(header, lines) if lines else ""


def dst_cases(layers: str, build: Callable[[], torch.nn.Module], model_and_batch: Callable, batch: int,
              backends=()) -> list[Case]:
    """The update on our op on every backend in ``backends`` and as ``sf.dst.RigL`` on the first
    compiled one (the reference is there to check, not to train with); its cost against a step."""
    fast = [b for b in backends if b != "reference"][:1] or list(backends[:1])
    ours = [*fast, *map(rigl_impl, fast)]
    return [rigl_update_case(layers, build, backends=[*backends, *map(rigl_impl, fast)]),
            update_cost_case(layers, build, model_and_batch, batch, backends=ours)]
