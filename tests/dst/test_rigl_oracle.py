"""RigL step by step against an independent per-layer RigL written in the test (numpy, sorted by
value then position): 1,000 training steps of a small CNN, an update every 10 steps."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparseforce as sf
from dst_oracle import batches, random_masks, rigl_masks, small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, EVERY, END, FRACTION = 1000, 10, 0.75, 0.3


def _reference_run(model, masks, data, scope):
    """Plain torch: SGD on the masked gradient, weights re-masked, our own RigL at update steps."""
    names = list(masks)
    params = dict(model.named_parameters())
    masks = {n: m.clone() for n, m in masks.items()}
    with torch.no_grad():
        for n in names:
            params[n].masked_fill_(~masks[n], 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for t, (x, y) in enumerate(data, start=1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        dense = [params[n].grad.clone() for n in names]
        for n in names:
            params[n].grad.masked_fill_(~masks[n], 0)
        opt.step()
        with torch.no_grad():
            for n in names:
                params[n].masked_fill_(~masks[n], 0)
            if t % EVERY == 0 and t < END * STEPS:
                new = rigl_masks([params[n] for n in names], dense, [masks[n] for n in names], t, STEPS, END,
                                 FRACTION, scope)
                for n, m in zip(names, new):
                    reset = ~(masks[n] & m)
                    params[n].masked_fill_(reset, 0)
                    opt.state[params[n]]["momentum_buffer"].masked_fill_(reset, 0)
                    masks[n] = m
        yield t, masks, model


def _package_run(model, masks, data, scope, backend="reference"):
    masks = sf.Masks({n: m.clone() for n, m in masks.items()})
    handle = sf.apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rigl = sf.dst.RigL(model, masks, opt, total_steps=STEPS, update_every=EVERY, end=END, drop_fraction=FRACTION,
                       scope=scope, backend=backend)
    try:
        for t, (x, y) in enumerate(data, start=1):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            assert rigl.step() == (t % EVERY == 0 and t < END * STEPS)
            yield t, masks, model
    finally:
        rigl.remove()
        handle.remove()


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_rigl_matches_an_independent_rigl_step_by_step(scope):
    model = small_cnn(3)
    masks = random_masks(model, 0.3, seed=4)
    data = batches(5, STEPS if scope == "layer" else 300)
    changed = 0
    for (t, want, ref), (_, got, mine) in zip(_reference_run(copy.deepcopy(model), masks, data, scope),
                                              _package_run(copy.deepcopy(model), masks, data, scope)):
        for n in want:
            assert torch.equal(got[n], want[n]), (scope, t, n)
        if t % EVERY == 0:
            changed += sum(int((got[n] != masks[n]).sum()) for n in masks)
            for a, b in zip(ref.parameters(), mine.parameters()):
                assert torch.equal(a, b), (scope, t)
    assert changed > 0  # the masks really moved
