"""Every argument of sparseforce.dst checked in the constructor with one clear line, nothing the
caller owns changed, no hook left behind; load_state_dict's refusals."""
from __future__ import annotations

import pytest
import torch

import sparseforce as sf
from sparseforce.masks import enforce
from dst_oracle import random_masks, small_cnn

GOOD = dict(total_steps=1000)


def _setup(density=0.4):
    model = small_cnn(0)
    masks = sf.Masks(random_masks(model, density, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, masks, opt


def _snapshot(model, masks):
    return ([p.detach().clone() for p in model.parameters()], {n: m.clone() for n, m in masks.items()})


CASES = [
    # (method, positional override, keywords, error, message fragment)
    ("RigL", {"model": "not a model"}, {}, TypeError, "model must be a torch.nn.Module"),
    ("RigL", {"masks": [1, 2]}, {}, TypeError, "masks must be a sparseforce.Masks"),
    ("RigL", {"masks": {}}, {}, ValueError, "masks is empty"),
    ("RigL", {"masks": {"nope.weight": torch.ones(3, dtype=torch.bool)}}, {}, ValueError, "masks do not fit"),
    ("RigL", {"masks": {"0.weight": torch.ones(6, 1, 3, 3)}}, {}, TypeError, "must have dtype torch.bool"),
    ("RigL", {"optimizer": "sgd"}, {}, TypeError, "optimizer must be a torch.optim.Optimizer"),
    ("RigL", {}, {"total_steps": 0}, ValueError, "total_steps must be an integer >= 1"),
    ("RigL", {}, {"total_steps": 10.0}, TypeError, "total_steps must be an integer"),
    ("RigL", {}, {"update_every": 0}, ValueError, "update_every must be an integer >= 1"),
    ("RigL", {}, {"end": 0.0}, ValueError, r"end must be in \(0, 1\]"),
    ("RigL", {}, {"end": 1.5}, ValueError, r"end must be in \(0, 1\]"),
    ("RigL", {}, {"drop_fraction": -0.1}, ValueError, r"drop_fraction must be in \[0, 1\]"),
    ("RigL", {}, {"drop_fraction": "0.3"}, TypeError, "drop_fraction must be a number"),
    ("RigL", {}, {"scope": "row"}, ValueError, "scope must be one of 'layer', 'global'"),
    ("RigL", {}, {"scope": 1}, TypeError, "scope must be one of"),
    ("RigL", {}, {"backend": "fastest"}, ValueError, "backend must be 'auto' or one of"),
    ("RigL", {}, {"backend": 0}, TypeError, "backend must be 'auto' or a backend name"),
    ("RigL", {}, {"process_group": "world"}, TypeError, "process_group must be a torch.distributed.ProcessGroup"),
    ("SET", {}, {"seed": -1}, ValueError, "seed must be an integer >= 0"),
    ("SET", {}, {"seed": 2**32}, ValueError, "seed must be below 2\\*\\*32"),
    ("SET", {}, {"seed": 1.0}, TypeError, "seed must be an integer"),
    ("GradualMagnitude", {}, {"sparsity": 1.5}, ValueError, r"sparsity must be in \[0, 1\]"),
    ("GradualMagnitude", {}, {"sparsity": 0.9, "initial_sparsity": 0.95}, ValueError, "initial_sparsity=0.95 is above"),
    ("GradualMagnitude", {}, {"sparsity": 0.9, "start": 0.8}, ValueError, r"start must be in \[0, end\)"),
    ("GradualMagnitude", {}, {"sparsity": 0.9, "start": "0"}, TypeError, "start must be a number"),
    ("GradualMagnitude", {}, {"sparsity": 0.9, "distribution": "erk"}, ValueError, "pass scope='layer' with it"),
    ("GradualMagnitude", {}, {"sparsity": 0.9, "scope": "layer", "distribution": "random"}, ValueError,
     "distribution must be one of 'uniform', 'erk'"),
    ("GradualMagnitude", {}, {"sparsity": 0.9, "update_every": 800}, ValueError, "the target sparsity would never"),
    ("GradualMagnitude", {}, {"sparsity": 0.9, "regrow_fraction": 2}, ValueError, r"regrow_fraction must be in"),
    ("GradualMagnitude", {}, {"sparsity": 0.3}, ValueError, "the masks keep .* weights at the start but the target"),
    ("GradualMagnitude", {}, {"sparsity": 0.9, "initial_sparsity": 0.1}, ValueError,
     "initial_sparsity=0.1 keeps .* which hold only"),
    ("GradualMagnitude", {}, {"sparsity": 0.7, "scope": "layer", "distribution": "erk"}, ValueError,
     "mask '.*' keep"),
]


@pytest.mark.parametrize("method,positional,kw,error,message", CASES,
                         ids=[f"{c[0]}-{'-'.join(list(c[1]) + list(c[2]))}" for c in CASES])
def test_argument_errors_are_one_line_and_change_nothing(method, positional, kw, error, message):
    model, masks, opt = _setup()
    handle = sf.apply_masks(model, masks)
    before = _snapshot(model, masks)
    args = {"model": model, "masks": masks, "optimizer": opt, **positional}
    kwargs = {**GOOD, **kw}
    if method == "GradualMagnitude":
        kwargs.setdefault("sparsity", 0.9)
    with pytest.raises(error, match=message) as info:
        getattr(sf.dst, method)(args["model"], args["masks"], args["optimizer"], **kwargs)
    if not str(info.value).startswith("masks do not fit"):  # Masks.check's shared message lists each problem
        assert "\n" not in str(info.value)
    after = _snapshot(model, masks)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert all(torch.equal(before[1][n], after[1][n]) for n in masks)
    assert all(not enforce._DENSE_HOOKS.get(p, []) for p in model.parameters())  # no capture registered
    handle.remove()


def test_tied_parameters_named_twice_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight
    masks = {"0.weight": torch.rand(4, 4) < 0.5}
    masks["1.weight"] = masks["0.weight"].clone()
    with pytest.raises(ValueError, match="masks '0.weight' and '1.weight' name the same \\(tied\\) parameter"):
        sf.dst.RigL(model, masks, None, total_steps=10, backend="reference")


def test_an_update_step_without_a_gradient_is_refused_clearly():
    model, masks, opt = _setup()
    rigl = sf.dst.RigL(model, masks, opt, total_steps=10, update_every=1, backend="reference")
    opt.step()
    with pytest.raises(RuntimeError, match="no gradient reached the masked parameters during step 1"):
        rigl.step()


def test_load_state_dict_refuses_another_method_or_other_options():
    model, masks, opt = _setup()
    rigl = sf.dst.RigL(model, masks, opt, total_steps=100, backend="reference")
    state = rigl.state_dict()
    with pytest.raises(TypeError, match="state must be a dict from RigL.state_dict"):
        rigl.load_state_dict([1])
    with pytest.raises(ValueError, match="state was saved with update_every=100, but this RigL has update_every=50"):
        sf.dst.RigL(model, masks, opt, total_steps=100, update_every=50, backend="reference").load_state_dict(state)
    with pytest.raises(ValueError, match="state is RigL's, not SET's"):
        sf.dst.SET(model, masks, opt, total_steps=100, backend="reference").load_state_dict(state)
    with pytest.raises(ValueError, match=r"state\['step'\] must be an integer >= 0"):
        rigl.load_state_dict({**state, "step": -1})
    assert rigl.steps_taken == 0


def test_the_enforcement_helpers_check_their_arguments():
    model, masks, opt = _setup()
    handle = sf.apply_masks(model, masks)
    with pytest.raises(ValueError, match="masks do not fit"):
        sf.masks.refresh_masks(model, {"nope": torch.ones(2, dtype=torch.bool)})
    assert sf.masks.refresh_masks(model, masks) == list(masks)
    handle.remove()
    assert sf.masks.refresh_masks(model, masks) == []  # nothing under apply_masks any more
    with pytest.raises(ValueError, match="needs a tensor that requires grad"):
        enforce.register_dense_grad_hook(torch.zeros(3), lambda g: None)
    masked = sf.MaskedSGD(model.named_parameters(), masks, lr=0.1)
    with pytest.raises(ValueError, match=r"has shape \(3\) but MaskedSGD masks"):
        masked.refresh_masks({"0.weight": torch.ones(3, dtype=torch.bool)})
