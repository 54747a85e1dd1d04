"""One pass over the data: the training epoch step (``fit`` and ``sparseforce ddp``) and evaluation."""
from __future__ import annotations

import collections.abc
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _pair(batch, what: str):
    # A dict batch (a Hugging Face DataCollator's) would unpack into its first two keys.
    if isinstance(batch, collections.abc.Mapping):
        raise TypeError(f"{what} yielded a dict batch; fit and evaluate train classifiers on (inputs, targets) "
                        "pairs. Train a Hugging Face model with transformers.Trainer after sf.apply_masks(model, "
                        "masks), which keeps the pruned weights at 0")
    return batch


def _forward(model, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


class Totals:
    """Loss and correct predictions summed over an epoch's batches, on the device: reading them
    syncs a GPU, so only when needed."""

    def __init__(self, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.samples = 0

    def add(self, loss: torch.Tensor, out: torch.Tensor, targets: torch.Tensor) -> None:
        b = targets.shape[0]
        self.loss += loss.detach().double() * b
        self.correct += (out.detach().argmax(1) == targets).sum()
        self.samples += b

    @property
    def mean_loss(self) -> float:
        return float(self.loss) / self.samples

    @property
    def accuracy(self) -> float:
        return int(self.correct) / self.samples


def train_epoch(model: nn.Module, optimizer, batches, loss_fn: Callable, device,
                on_batch: Callable[[int, Totals], None] | None = None,
                after_step: Callable[[], object] | None = None) -> Totals:
    """One optimizer step per batch of ``batches`` with ``model`` in train mode; ``after_step()``
    right after each ``optimizer.step()`` (a dst object's ``step``: the masks may change there),
    ``on_batch(i, totals)`` once the batch is counted. The caller checks ``totals.samples`` (an
    empty pass is its error)."""
    model.train()
    totals = Totals(device)
    for i, batch in enumerate(batches):
        inputs, targets = _pair(batch, "train_data")
        inputs, targets = _to(inputs, device), _to(targets, device)
        out = _forward(model, inputs)
        loss = loss_fn(out, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        totals.add(loss, out, targets)
        if on_batch is not None:
            on_batch(i, totals)
    return totals


@torch.no_grad()
def evaluate(model: nn.Module, data, loss_fn: Callable | None = None, device=None) -> dict[str, float]:
    """Mean loss and top-1 accuracy of ``model`` (in eval mode) over ``data`` (a loader or any
    iterable of (inputs, targets) batches). The model's train/eval flag is restored."""
    loss_fn = loss_fn or F.cross_entropy
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    totals = Totals(device)
    try:
        for batch in data:
            inputs, targets = _pair(batch, "evaluation data")
            inputs, targets = _to(inputs, device), _to(targets, device)
            out = _forward(model, inputs)
            totals.add(loss_fn(out, targets), out, targets)
    finally:
        model.train(was_training)
    if totals.samples == 0:
        raise ValueError("evaluation data yielded no samples")
    return {"loss": totals.mean_loss, "acc": totals.accuracy}


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter lives (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

