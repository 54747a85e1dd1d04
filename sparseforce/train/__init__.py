"""Train a pruned network with the paper's recipe, with resumable, crash-safe checkpoints.

    from sparseforce.train import fit, get_splits
    train, val, test = get_splits("cifar10", "data/")
    result = fit(model, masks, train, val, test, recipe="cifar", out_dir="runs/vgg_force")
    # after a crash or preemption, the same call with resume=True continues where it stopped

Recipes (de Jorge et al., ICLR 2021, appendix; the FORCE authors' code):

* ``"cifar"``: SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 divided by 10 at epochs
  150 and 250, 350 epochs; 10 % of the training set held out for validation; random crop
  (4 px padding) and horizontal flip.
* ``"tinyimagenet"``: the same with 300 epochs and milestones 150 and 225.

Asking for a different number of epochs scales the milestones with it (350 -> 35 epochs puts
them at 15 and 25) unless ``milestones=`` is given.

What ``fit`` writes to ``out_dir``:

* ``checkpoint.pt`` after every epoch: model, optimizer, scheduler, masks, completed epochs,
  the training history, the RNG states (torch CPU and CUDA, numpy, Python ``random``) and the
  states of the data loader's generators (shuffling and augmentation). It is written to a
  temporary file, fsynced and renamed over the previous one, so a crash at any moment leaves
  either the previous checkpoint or the new one, never a truncated file (a temporary file that a
  killed process left is removed by the next write). Reading it back checks the zip checksum of
  every stored tensor and every field, and raises :class:`CheckpointError` naming the file (and
  the field) for anything a run cannot continue from.
* ``log.jsonl`` and ``log.csv``: one row per epoch (lr, train/val/test loss and accuracy, time),
  rewritten from the checkpoint's history so they never disagree with it.
* ``result.json`` when training ends: the last epoch's row and the best-validation row.

``resume=True`` restores all of that; on CPU (``num_workers=0``, same thread count) the weights
after the remaining epochs are bit-identical to those of an uninterrupted run.

Dynamic sparse training (``dst="rigl" | "set" | "gmp"``, :mod:`sparseforce.dst`) steps its object
after every optimizer step; the checkpoint then also holds its settings (resolved, in the config),
its state and the masks it started from, so a run killed anywhere resumes bit-identical too.
"""
from __future__ import annotations

from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, CHECKPOINT_VERSION, CheckpointError, load_checkpoint
from .epoch import evaluate
from .fitting import FitResult, fit
from .loaders import get_splits
from .recipes import RECIPES, Recipe

__all__ = ["Recipe", "RECIPES", "FitResult", "CheckpointError", "fit", "evaluate", "get_splits",
           "load_checkpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CHECKPOINT_NAME"]
