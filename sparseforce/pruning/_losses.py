"""The loss a pruning method differentiates: the caller's ``loss_fn`` or the default one."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .. import _checks


def check_loss_fn(loss_fn):
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError("loss_fn must be None or a callable loss_fn(output, target) (target: the dict itself for "
                        f"dict batches), got {_checks.describe(loss_fn)}")
    return loss_fn or default_loss


def output_loss(output):
    """The loss a model computed itself (``output.loss`` of a Hugging Face ``ModelOutput``, or
    ``output["loss"]``), or None."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def default_loss(output, target):
    """Cross-entropy of the output (logits) against the targets of a pair batch; for a dict batch
    (``target`` is the batch), the loss the model computed itself, as Hugging Face models do
    when the batch holds ``labels``."""
    if isinstance(target, Mapping):
        loss = output_loss(output)
        if loss is None:
            raise ValueError(f"the model's output ({type(output).__name__}) has no .loss: with dict batches the "
                             "default loss is the one the model computes itself (Hugging Face models do when the "
                             "batch holds 'labels'); add 'labels' to the batches or pass loss_fn(output, batch)")
        if loss.dim() != 0:
            raise ValueError(f"the model's .loss has shape {tuple(loss.shape)}, not a scalar; pass "
                             "loss_fn(output, batch)")
        return loss
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the default loss is cross-entropy on the model's output, a tensor of logits, but the "
                        f"model returned {type(output).__name__}; pass loss_fn(output, target), or dict batches "
                        "with 'labels' to a model that returns its own .loss (Hugging Face)")
    return F.cross_entropy(output, target)
