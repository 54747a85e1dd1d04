"""Dynamic sparse training inside a Hugging Face ``transformers.Trainer``: :class:`DSTCallback`.

    masks = sf.random(model, sparsity=0.9, distribution="erk")          # or FORCE's, SNIP's ...
    dst = sf.hf.DSTCallback("rigl", masks, update_every=50, drop_fraction=0.3)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[dst])
    trainer.train()                                    # later: trainer.train(resume_from_checkpoint=True)
    dst.masks                                          # the masks as training left them

At the start of training the callback applies the masks (:func:`sparseforce.apply_masks`, which
keeps the pruned weights at exactly 0 under the Trainer's optimizer) and builds the
:mod:`sparseforce.dst` object on the model, the masks and the Trainer's optimizer, with
``total_steps`` the Trainer's ``max_steps`` and SET's ``seed`` (unless given) the Trainer's
``seed``. It steps the object at the end of every optimizer step (after gradient accumulation:
RigL's dense gradient is then the sum over the accumulated batches). With every checkpoint the
Trainer writes, it writes the masks and the object's state next to it (``sparseforce_dst.pt``);
when the Trainer resumes from ``output_dir/checkpoint-N`` it reads them back from there, so a
resumed run goes on with the masks and schedule it left. transformers is imported with this module
only.
"""
from __future__ import annotations

import collections.abc
import os

import torch

try:
    import transformers
except ImportError:
    raise ModuleNotFoundError("sparseforce.hf needs the transformers package: pip install transformers accelerate "
                              "(or sparseforce[hf])") from None
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ._files import atomic_torch_save, load_verified
from .masks import Masks, apply_masks
from .train import dynamic

__all__ = ["DSTCallback", "DST_STATE_NAME"]

DST_STATE_NAME = "sparseforce_dst.pt"
_FORMAT = "sparseforce.hf_dst"


class DSTCallback(transformers.TrainerCallback):
    """Dynamic sparse training (``method``: ``"rigl"``, ``"set"`` or ``"gmp"``) of a Trainer's model
    under ``masks`` (an ``sf.Masks``, updated in place); ``options`` are the dst object's
    (``update_every``, ``end``, ``drop_fraction``, ``scope``, ``sparsity`` for gmp, ...), checked by
    name here and by value when training begins. ``backend``: the ops backend of the updates."""

    def __init__(self, method: str, masks, *, backend: str = "auto", **options):
        dynamic.resolve(method, options, total_steps=1, seed=0)  # an unknown method or option, now
        if not isinstance(masks, collections.abc.Mapping):
            raise TypeError(f"masks must be a sparseforce.Masks, got {type(masks).__name__}")
        self.method, self.options, self.backend = method, dict(options), backend
        self.masks = masks if isinstance(masks, Masks) else Masks(masks)
        self.dst = None  # the sparseforce.dst object, from the start of training
        self.handle = None  # apply_masks' handle: .remove() stops enforcing the masks

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        saved = self._saved_state(args, state) if state.global_step > 0 else None
        if saved is not None:
            masks = Masks(saved["masks"]["masks"])
            if list(masks) != list(self.masks) or any(masks[n].shape != m.shape for n, m in self.masks.items()):
                raise ValueError(f"{saved['path']!r} holds masks of other parameters than the callback's")
            with torch.no_grad():
                for name, m in self.masks.items():
                    m.copy_(masks[name])
        if self.dst is not None:  # a second train() call binds afresh
            self.dst.remove()
        if self.handle is not None:
            self.handle.remove()
        self.handle = apply_masks(model, self.masks)
        config = dynamic.resolve(self.method, self.options, total_steps=state.max_steps, seed=args.seed)
        # (accelerate's wrapper of the Trainer's optimizer shows the wrapped one's state)
        self.dst = dynamic.build(config, model, self.masks, optimizer, self.backend)
        if saved is not None:
            self.dst.load_state_dict(saved["state"])

    def on_step_end(self, args, state, control, **kwargs):
        self.dst.step()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            atomic_torch_save({"format": _FORMAT, "masks": self.masks.state_dict(), "state": self.dst.state_dict()},
                              os.path.join(folder, DST_STATE_NAME))

    @staticmethod
    def _saved_state(args, state) -> dict:
        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", DST_STATE_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"the Trainer resumes at step {state.global_step} but {path!r} does not exist: "
                                    "DSTCallback resumes from checkpoints it wrote in output_dir")
        saved = load_verified(path, "cpu", ValueError, "DSTCallback state")
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError(f"{path!r} is not a DSTCallback state file")
        return {**saved, "path": path}
