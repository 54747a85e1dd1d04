"""The official FORCE code's pruning loop (github.com/naver/force, ``iterative_pruning``), written
out once: tests/pruning/test_conventions.py compares our masks with it bit for bit, and
benchmarks/ties_at_threshold.py records what its thresholds are at every step."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def prunable_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def official_iterative_pruning(model, loader, pruning_factor, num_steps, mode, prune_method, num_batches=1,
                               on_step=None):
    """naver/force ``iterative_pruning``: prune_method 3 = FORCE, 1 = Iter SNIP. As the official
    ``get_average_gradients``, every batch is ``next(iter(loader))`` (the first batch of a fresh
    pass: a new shuffle per batch with a shuffling DataLoader), ``num_batches`` of them per step,
    their gradients summed from 0 and divided by their count; nll_loss on the raw outputs.

    ``on_step(k, threshold, scores, mask)``, if given, sees each step's kept count, threshold,
    concatenated scores and mask. Returns the last mask, as bool tensors."""
    net_ = copy.deepcopy(model)
    original = [m.weight.detach().clone() for m in prunable_layers(net_)]
    if mode == "exp":
        steps = [np.exp(0 - ((x_ + 1) * (0 - np.log(pruning_factor)) / num_steps)) for x_ in range(num_steps)]
    else:
        steps = [1 - ((x_ + 1) * (1 - pruning_factor) / num_steps) for x_ in range(num_steps)]
    mask, hooks = None, []
    for perc in steps:
        layers = prunable_layers(net_)
        gradients, count = [0 for _ in layers], 0
        for batch_idx in range(len(loader)):
            x, y = next(iter(loader))
            net_.zero_grad()
            F.nll_loss(net_(x), y).backward()
            gradients = [acc + m.weight.grad for acc, m in zip(gradients, layers)]
            count += 1
            if batch_idx == num_batches - 1:
                break
        gradients = [g / count for g in gradients]
        weights = original if prune_method == 3 else [m.weight for m in layers]
        saliency = [torch.abs(w * g) for w, g in zip(weights, gradients)]
        if mask is not None and prune_method < 3:
            lowest = torch.cat([s.flatten() for s in saliency]).min()
            for s, m in zip(saliency, mask):
                s[m == 0.] = lowest
        for h in hooks:
            h.remove()
        # get_mask: the int(N * density) largest, kept with >= the smallest of them
        scores = torch.cat([s.flatten() for s in saliency])
        k = int(len(scores) * perc)
        threshold = torch.topk(scores, k, sorted=True)[0][-1]
        mask = [(s >= threshold).float() for s in saliency]
        if on_step is not None:
            on_step(k, threshold, scores, mask)
        if prune_method == 3:
            net_ = copy.deepcopy(model)
        hooks = []
        for layer, m in zip(prunable_layers(net_), mask):
            layer.weight.data[m == 0.] = 0.
            if prune_method != 3:
                hooks.append(layer.weight.register_hook(lambda g, m=m: g * m))
    for h in hooks:
        h.remove()
    return [m.bool() for m in mask]
