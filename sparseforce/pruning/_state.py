"""What a pruning pass borrows from the caller and gives back: the modules' train/eval flags, the
buffers (BN running statistics, written by a forward in train mode) and torch's random state."""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import torch
from torch import nn


@contextlib.contextmanager
def module_mode(model: nn.Module, train: bool):
    """Switch every module to train/eval mode for the block, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def buffer_copies(model: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Private copies of the buffers: a forward in train mode updates BN statistics in place, and
    those writes must land on the copies, not on the caller's model."""
    out = {}
    for n, b in model.named_buffers():
        b = b.detach().clone()
        out[n] = transform(b) if transform is not None and b.is_floating_point() else b
    return out


@contextlib.contextmanager
def own_rng(model: nn.Module, seed=None):
    """Run the block on a fork of torch's global random state (the CPU generator and those of
    the CUDA devices the model is on), seeded with ``seed`` if given, else continuing from the
    caller's state; the caller's state is as it was afterwards. Dropout in the pruning passes
    and the shuffling of a DataLoader would otherwise change the randomness of what the caller
    does next (its training)."""
    cuda = sorted({t.device.index for t in itertools.chain(model.parameters(), model.buffers())
                   if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            # Not torch.manual_seed: it also seeds CUDA devices outside the fork, for good.
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
        yield
