"""RigL (Evci et al., ICML 2020): drop the active weights of smallest |w|, grow the inactive ones of
largest |dense gradient|, as many as dropped."""
from __future__ import annotations

from .base import DynamicSparsity, check_fraction, check_scope, check_steps
from .schedules import cosine_fraction, drop_count
from .updater import check_backend


class RigL(DynamicSparsity):
    """Rigged Lottery dynamic sparse training, bound to ``model``, its ``masks`` and ``optimizer``.

        rigl = sf.dst.RigL(model, masks, optimizer, total_steps=T)
        for x, y in batches:                    # training step t = 1, 2, ...
            optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
            rigl.step()                         # after optimizer.step(): may update the masks

    Conventions (as RigL's): training steps count from 1 (the first ``step()`` call is step 1). An
    update happens at step t when ``t % update_every == 0`` and ``t < end * total_steps``. Per
    segment (each masked tensor with ``scope="layer"``, all of them together with
    ``scope="global"``) holding A active weights it drops d = floor(f_t * A) with
    f_t = drop_fraction / 2 * (1 + cos(pi * t / (end * total_steps))): the kept weights are the
    A - d largest |w| among the active ones, then the d largest |g| among all the others (a weight
    just dropped may come straight back) grow; ties go to the lowest position (tensor order, then
    row-major). So the count of every layer (``"layer"``) or the total (``"global"``) never
    changes: the initial per-layer budgets (ERK, uniform, FORCE's) are those of the masks given.
    The grow score g is the gradient of the training step just taken (its batch, at the weights
    before the optimizer applied it), dense over the layer: see :mod:`sparseforce.dst.gradients`
    for how it is captured at update steps only. Under DDP (a ``DistributedDataParallel`` model,
    ``process_group``, or an initialised default group of more than one rank) the captured
    gradients are averaged over the ranks first, so every rank holds the same masks even when its
    own gradients differ; FSDP2-sharded models take ``scope="global"`` only.

    Grown weights start at exactly 0 with their optimizer state reset; dropped weights and their
    state are exactly 0 (see :mod:`sparseforce.dst.updater`). ``masks`` (the ``sf.Masks`` the model
    trains under, applied with ``sf.apply_masks`` or held by a ``MaskedSGD``/``MaskedAdamW``) are
    updated in place and the enforcement follows them.

    Args:
        model: the ``nn.Module`` (or its ``DistributedDataParallel`` wrapper).
        masks: ``sf.Masks`` naming parameters of ``model``, on their devices.
        optimizer: the ``torch.optim.Optimizer`` training ``model`` (None: no state to reset).
        total_steps: the number of training steps T (>= 1).
        update_every: the update interval ΔT (>= 1; default 100).
        end: updates stop at ``end * total_steps`` (in (0, 1]; default 0.75).
        drop_fraction: the initial drop fraction (in [0, 1]; default 0.3).
        scope: ``"layer"`` (default; ``ops.drop_grow_masks(segment="tensor")``) or ``"global"``.
        backend: the ``sparseforce.ops`` backend of the selection (``"auto"``).
        process_group: the ranks to average the gradients over (default: see above).

    Every argument is checked here, before anything is changed or registered.
    """

    def __init__(self, model, masks, optimizer, *, total_steps, update_every=100, end=0.75, drop_fraction=0.3,
                 scope="layer", backend="auto", process_group=None):
        options = self._check_options(total_steps, update_every, end, drop_fraction, scope, backend)
        super().__init__(model, masks, optimizer, backend=backend, process_group=process_group, options=options)
        self._start()

    @staticmethod
    def _check_options(total_steps, update_every, end, drop_fraction, scope, backend) -> dict:
        total_steps, update_every = check_steps(total_steps, update_every)
        check_backend(backend)
        return dict(total_steps=total_steps, update_every=update_every, end=check_fraction("end", end, low_open=True),
                    drop_fraction=check_fraction("drop_fraction", drop_fraction), scope=check_scope(scope))

    def _wants_gradients(self) -> bool:
        return True

    def _grow_scores(self, t: int) -> list:
        return self._binding.dense_gradients(t)

    def _update(self, t: int) -> None:
        o = self._options
        active = self._binding.active()
        if o["scope"] == "global":
            active = [sum(active)]
        fraction = cosine_fraction(o["drop_fraction"], t, o["end"] * o["total_steps"])
        drops = [drop_count(fraction, a) for a in active]
        self._binding.update(active, drops, None, self._grow_scores(t),
                             "tensor" if o["scope"] == "layer" else "global")
