"""Gradual magnitude pruning (Zhu & Gupta, 2017), with GraNet's optional regrowth."""
from __future__ import annotations

import math

from .. import _checks
from ..pruning import keep_count, layer_counts
from .base import DynamicSparsity, check_fraction, check_scope, check_steps
from .schedules import cosine_fraction, cubic_count, drop_count, is_update, update_steps
from .updater import check_backend

DISTRIBUTIONS = ("uniform", "erk")


class GradualMagnitude(DynamicSparsity):
    """Prune from the masks' sparsity (or ``initial_sparsity``) to ``sparsity`` on a cubic schedule,
    dropping the active weights of smallest |w|.

    Updates happen at the steps t (counted from 1) with ``t % update_every == 0`` and
    ``start * total_steps <= t < end * total_steps``; there must be at least one. With n such
    steps, the j-th keeps k_j = final + round_half_up((initial - final) * (1 - j/n)^3) weights per
    segment (exact rational arithmetic: the last update keeps exactly ``final``, and no count ever
    grows). ``scope="global"`` (default): one segment, initial = the masks' active count (or
    round((1 - initial_sparsity) * N)), final = round((1 - sparsity) * N). ``scope="layer"``:
    every masked tensor its own segment, with final counts shared out by ``distribution``
    (``"uniform"`` or ``"erk"``, as :func:`sparseforce.pruning.layer_counts`) and initial counts
    the layers' active counts (or ``initial_sparsity``'s count shared out the same way).

    ``regrow_fraction`` > 0 (GraNet): an update also drops r = floor(f_t * k_j) more and grows r
    back by the largest |dense gradient| (captured as :class:`RigL` does), with f_t RigL's cosine
    decay of ``regrow_fraction``; still one ``ops.drop_grow_masks`` call. Weights, optimizer state
    and enforcement follow the masks as for :class:`RigL`.
    """

    def __init__(self, model, masks, optimizer, *, total_steps, sparsity, initial_sparsity=None, start=0.0, end=0.75,
                 update_every=100, regrow_fraction=0.0, scope="global", distribution="uniform", backend="auto",
                 process_group=None):
        total_steps, update_every = check_steps(total_steps, update_every)
        check_backend(backend)
        sparsity = check_fraction("sparsity", sparsity)
        regrow_fraction = check_fraction("regrow_fraction", regrow_fraction)
        if initial_sparsity is not None:
            initial_sparsity = check_fraction("initial_sparsity", initial_sparsity)
            if initial_sparsity > sparsity:
                raise ValueError(f"initial_sparsity={initial_sparsity} is above sparsity={sparsity}; gradual "
                                 "magnitude pruning only removes weights")
        start = _checks.real("start", start, "a number in [0, 1)")
        end = check_fraction("end", end, low_open=True)
        if not 0.0 <= start < end:
            raise ValueError(f"start must be in [0, end) = [0, {end}), got {start}")
        scope = check_scope(scope)
        if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
            error = TypeError if not isinstance(distribution, str) else ValueError
            raise error(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}, "
                        f"got {_checks.describe(distribution)}")
        if scope == "global" and distribution != "uniform":
            raise ValueError(f"distribution={distribution!r} shares the kept weights out among the layers, which "
                             "scope='global' does not; pass scope='layer' with it")
        steps = update_steps(total_steps, update_every, end * total_steps, start * total_steps)
        if not steps:
            raise ValueError(f"no step t <= total_steps={total_steps} is a multiple of update_every={update_every} "
                             f"in [start, end) * total_steps = [{start * total_steps}, {end * total_steps}): the "
                             "target sparsity would never be reached")
        options = dict(total_steps=total_steps, sparsity=sparsity, initial_sparsity=initial_sparsity, start=start,
                       end=end, update_every=update_every,
                       regrow_fraction=regrow_fraction, scope=scope,
                       distribution=distribution)
        super().__init__(model, masks, optimizer, backend=backend, process_group=process_group, options=options)
        self._steps = steps
        self._initial, self._final = self._budgets()
        self._start()

    def _budgets(self) -> tuple[list[int], list[int]]:
        o, b = self._options, self._binding
        shapes = b.shapes
        n = sum(math.prod(s) for s in shapes)
        active = b.active()
        final = keep_count(n, 1.0 - o["sparsity"])
        initial = sum(active) if o["initial_sparsity"] is None else keep_count(n, 1.0 - o["initial_sparsity"])
        if o["scope"] == "global":
            initial, final, active = [initial], [final], [sum(active)]
        else:
            final = layer_counts(shapes, final, o["distribution"])
            initial = active if o["initial_sparsity"] is None else layer_counts(shapes, initial, o["distribution"])
        for s, (a, i, f) in enumerate(zip(active, initial, final)):
            where = "the masks" if o["scope"] == "global" else f"mask {b.names[s]!r}"
            if f > i:
                raise ValueError(f"{where} keep {i} weights at the start but the target keeps {f}: gradual magnitude "
                                 "pruning only removes weights (lower sparsity, or give denser masks)")
            if i > a:
                raise ValueError(f"initial_sparsity={o['initial_sparsity']} keeps {i} weights in {where}, which "
                                 f"hold only {a} active")
        return initial, final

    def _is_update(self, t: int) -> bool:
        o = self._options
        return is_update(t, o["update_every"], o["end"] * o["total_steps"], o["start"] * o["total_steps"])

    def _wants_gradients(self) -> bool:
        return self._options["regrow_fraction"] > 0

    def kept_at(self, t: int) -> list[int]:
        """What the update at step ``t`` keeps per segment (one entry for ``scope="global"``)."""
        j = self._steps.index(t) + 1
        return [cubic_count(i, f, j, len(self._steps)) for i, f in zip(self._initial, self._final)]

    def _update(self, t: int) -> None:
        o, b = self._options, self._binding
        active = b.active()
        if o["scope"] == "global":
            active = [sum(active)]
        keeps = self.kept_at(t)
        for s, (a, k) in enumerate(zip(active, keeps)):
            if a < k:
                where = "the masks hold" if o["scope"] == "global" else f"mask {b.names[s]!r} holds"
                raise RuntimeError(f"{where} {a} active weights but step {t} keeps {k}: were the masks changed "
                                   "outside GradualMagnitude?")
        fraction = cosine_fraction(o["regrow_fraction"], t, o["end"] * o["total_steps"])
        regrow = [drop_count(fraction, k) for k in keeps]
        scores = b.dense_gradients(t) if self._wants_gradients() else b.weights()
        b.update(active, [a - k + r for a, k, r in zip(active, keeps, regrow)], regrow, scores,
                 "tensor" if o["scope"] == "layer" else "global")

    def _extra_state(self) -> dict:
        return {"initial": list(self._initial), "final": list(self._final)}

    def _load_extra_state(self, state: dict) -> None:
        initial, final = state.get("initial"), state.get("final")
        if not (isinstance(initial, list) and isinstance(final, list) and len(initial) == len(self._initial)
                and final == self._final):
            raise ValueError("state's schedule (initial and final counts) does not fit these masks")
        self._initial = [int(i) for i in initial]
