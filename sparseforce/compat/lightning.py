"""Lightning callbacks on sparseforce: :class:`PruneAtStart` and :class:`ModelPruning`.

    from sparseforce.compat.lightning import PruneAtStart
    prune = PruneAtStart("force", sparsity=0.99, batches=1, iterations=60)
    trainer = lightning.pytorch.Trainer(callbacks=[prune], ...)
    trainer.fit(module, loader)                          # later: trainer.fit(module, loader, ckpt_path=...)
    prune.masks                                          # the sf.Masks training kept

``PruneAtStart`` prunes the LightningModule once, when training starts (``on_train_start``: the
strategy has set up the module and the optimizer, a checkpoint's weights and the callback's state
are restored, the train dataloader is built). It computes the masks with ``sf.prune(module,
batches, method=..., sparsity=..., **options)`` on the first ``batches`` batches of the trainer's
train dataloader, each moved to the module's device by the strategy as training batches are
(``transfer_batch_to_device`` and the batch-transfer hooks included). The batches are drawn with a
fresh iterator inside a fork of the global RNG, so the batches training sees, in their order, and
the RNG state after ``fit`` are those of a run without the callback. Then :func:`sparseforce.apply_masks`
keeps the pruned weights at exactly 0 through every step of the Lightning optimizer.

The masks and the settings go into Lightning checkpoints (the callback's ``state_dict``); a
``fit(ckpt_path=...)`` resumes with the checkpoint's masks and does not prune again, and neither
does a second ``fit`` with the same callback.

``ModelPruning`` is Lightning's ``ModelPruning`` with ``pruning_fn="l1_unstructured"`` and
``"random_unstructured"`` computed by :mod:`sparseforce.compat.prune` (exactly the amount asked,
ties by position), globally without concatenating the weights. Lightning's own class takes
``pruning_fn=sparseforce.compat.prune.L1Unstructured`` with ``use_global_unstructured=True``
(torch's ``global_unstructured`` then concatenates and our ``compute_mask`` ranks the vector); it
refuses a function such as ``sparseforce.compat.prune.l1_unstructured`` for the per-layer case, which
this subclass covers. Lightning is imported with this module only.
"""
from __future__ import annotations

import collections.abc
from functools import partial

import torch

try:
    import lightning.pytorch as pl
except ImportError:
    raise ModuleNotFoundError("sparseforce.compat.lightning needs the lightning package: pip install lightning "
                              "(or sparseforce[lightning])") from None
from lightning.pytorch.callbacks import pruning as pl_pruning

from .. import _checks
from ..masks import Masks, apply_masks
from ..pruning import METHODS, check_method, prune
from . import prune as sf_prune

__all__ = ["PruneAtStart", "ModelPruning"]

_FORMAT = "sparseforce.lightning_prune_at_start"
_PLAIN = (str, int, float, bool, type(None))


def _plain(value) -> bool:
    """Whether ``value`` goes into a checkpoint as it is (plain data that loads with weights_only)."""
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


class PruneAtStart(pl.Callback):
    """Prune the LightningModule with sparseforce's ``method`` (a name in ``sf.pruning.METHODS``)
    to ``sparsity`` when training starts, on the first ``batches`` batches of the train dataloader,
    and keep the pruned weights at 0 through training. ``options`` are the method's own keywords
    (``iterations``, ``schedule``, ``loss_fn``, ``prunable``, ``scope``, ``nm``, ...), checked by name
    here and by value when it runs; ``backend`` picks the ops backend. ``masks`` holds the
    ``sf.Masks`` from then on; ``handle`` is ``apply_masks``' handle while ``fit`` runs (it is removed
    when ``fit`` ends: call ``sf.apply_masks(module, callback.masks)`` to train on outside Lightning)."""

    def __init__(self, method: str = "force", sparsity=None, *, batches: int = 1, backend: str = "auto", **options):
        entry = check_method(method)
        unknown = sorted(set(options) - set(entry.options))
        if unknown:
            raise ValueError(f"PruneAtStart: {method} takes no option {', '.join(map(repr, unknown))}; its options "
                             f"are {sorted(set(entry.options) - {'backend'})}")
        if "backend" in entry.options:
            options["backend"] = backend
        elif backend != "auto":
            raise ValueError(f"PruneAtStart: {method} runs no kernel backend, got backend={backend!r}")
        if sparsity is None:
            if options.get("nm") is None:
                raise ValueError("PruneAtStart needs sparsity= (the fraction of prunable weights to remove), or "
                                 "nm=(n, m) for a method that ranks scores")
        else:
            sparsity = _checks.real("sparsity", sparsity)  # a float, as the checkpoint records it
            if not 0 <= sparsity <= 1:
                raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        self.method, self.sparsity, self.options = method, sparsity, options
        self.batches = _checks.integer("batches", batches, 1)
        self.masks = None  # sf.Masks, from the start of training
        self.handle = None

    def settings(self) -> dict:
        """What the checkpoint records besides the masks: the method, sparsity, batches and the
        method's options (defaults filled in) that are plain data and decide the masks (not a
        ``loss_fn`` or a ``prunable`` predicate; not ``backend`` or ``progress``: every backend
        gives the same masks)."""
        options = {**METHODS[self.method].options, **self.options}
        plain = {k: v for k, v in options.items() if _plain(v) and k not in ("backend", "progress")}
        return {"method": self.method, "sparsity": self.sparsity, "batches": self.batches, "options": plain}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.masks is None:
            self.masks = self._prune(trainer, pl_module)
        self.masks = self.masks.to(pl_module.device)  # a checkpoint's are on the CPU
        if self.handle is not None:  # a second fit binds afresh
            self.handle.remove()
        self.handle = apply_masks(pl_module, self.masks)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Enforcement is for Lightning's optimizer steps: once fit ends (or fails) its global step
        # hook and its hold on the module go; the weights stay 0 until changed, and the next fit
        # binds again.
        if stage == "fit" and self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Masks:
        entry, options = METHODS[self.method], dict(self.options)
        if trainer.world_size > 1 and "group" in entry.options and options.get("group") is None:
            # each rank draws its own batches: the gradients are averaged so that every rank gets the same masks
            options["group"] = torch.distributed.group.WORLD
        if not entry.takes_data:
            return prune(pl_module, method=self.method, sparsity=self.sparsity, **options)
        return prune(pl_module, self._draw(trainer, pl_module), method=self.method, sparsity=self.sparsity, **options)

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list:
        """The first ``batches`` batches of the train dataloader as training would receive them,
        leaving the global RNG (hence the sampler's shuffle for training) as it was."""
        loader = trainer.train_dataloader
        if loader is None or isinstance(loader, (collections.abc.Mapping, list, tuple)):
            raise TypeError("PruneAtStart draws its batches from one train dataloader, got "
                            f"{'none' if loader is None else type(loader).__name__ + ' of dataloaders'}")
        if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0:
            raise ValueError("PruneAtStart draws its batches with a fresh iterator of the train dataloader, which a "
                             "DataLoader with persistent_workers=True shares with training; turn them off")
        device = pl_module.device
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        drawn = []
        with torch.random.fork_rng(devices=cuda):
            for batch in loader:
                drawn.append(trainer.strategy.batch_to_device(batch, device))
                if len(drawn) == self.batches:
                    break
        if len(drawn) < self.batches:
            raise ValueError(f"PruneAtStart(batches={self.batches}): the train dataloader gave only {len(drawn)}")
        return drawn

    def state_dict(self) -> dict:
        if self.masks is None:
            return {}
        return {"format": _FORMAT, **self.settings(), "masks": self.masks.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if state_dict.get("format") != _FORMAT:
            raise ValueError("the checkpoint's state for PruneAtStart is not one it wrote")
        mine, saved = self.settings(), state_dict
        pairs = [(key, saved.get(key), mine[key]) for key in ("method", "sparsity", "batches")]
        pairs += [(key, saved["options"][key], value) for key, value in mine["options"].items()
                  if key in saved["options"]]  # the options recorded on both sides
        for key, then, now in pairs:
            if then != now:
                raise ValueError(f"the checkpoint was pruned with {key}={then!r}, this PruneAtStart has {key}={now!r}")
        self.masks = Masks(state_dict["masks"]["masks"])


_EXACT_METHODS = {"l1_unstructured": sf_prune.L1Unstructured, "random_unstructured": sf_prune.RandomUnstructured}
_EXACT_FUNCTIONS = {"l1_unstructured": sf_prune.l1_unstructured, "random_unstructured": sf_prune.random_unstructured}


class ModelPruning(pl_pruning.ModelPruning):
    """Lightning's ``ModelPruning`` (the same arguments) with the unstructured methods on the exact
    selection: ``pruning_fn="l1_unstructured"`` / ``"random_unstructured"`` prune per layer with
    :func:`sparseforce.compat.prune.l1_unstructured` / ``random_unstructured``, and global pruning
    (with these or torch's ``L1Unstructured`` / ``RandomUnstructured`` classes) goes through
    :func:`sparseforce.compat.prune.global_unstructured`, which concatenates nothing. The structured
    methods are Lightning's. ``backend`` picks the ops backend."""

    def __init__(self, pruning_fn, *args, backend: str = "auto", **kwargs):
        self.backend = backend  # read while Lightning's __init__ resolves pruning_fn
        super().__init__(pruning_fn, *args, **kwargs)

    # The two hooks of Lightning's class where a pruning function is chosen and where the global
    # one runs; everything else (schedules, lottery ticket, logging, checkpoints) is Lightning's.
    def _create_pruning_fn(self, pruning_fn: str, **kwargs):
        chosen = super()._create_pruning_fn(pruning_fn, **kwargs)
        if pruning_fn not in _EXACT_METHODS:
            return chosen
        if self._use_global_unstructured:
            return _EXACT_METHODS[pruning_fn]
        return partial(_EXACT_FUNCTIONS[pruning_fn], backend=self.backend, **kwargs)

    def _apply_global_pruning(self, amount) -> None:
        sf_prune.global_unstructured(self._parameters_to_prune, pruning_method=self.pruning_fn, backend=self.backend,
                                     **self._resolve_global_kwargs(amount))
