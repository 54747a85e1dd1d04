"""Masked optimizers: pruned weights and their state stay exactly 0; kept weights follow torch."""
import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sparseforce.ops as ops
from sparseforce import Masks
from sparseforce.optim import MaskedAdamW, MaskedSGD



pytestmark = pytest.mark.usefixtures("one_thread")


# The backends MaskedSGD can end up on for CPU tensors (backend="auto" picks the first).
SGD_BACKENDS = [b for b in ops.AUTO_ORDER["cpu"] if b in ops.available_backends("cpu", "masked_sgd_")]

SGD_CONFIGS = {
    "momentum+wd": dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
    "nesterov+wd": dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
    "plain": dict(lr=0.1),
}
ADAMW_CONFIGS = {
    "adamw": dict(lr=3e-3, weight_decay=0.05),
    "amsgrad": dict(lr=3e-3, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6 * 16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.max_pool2d(x, 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def make(seed=0, density=0.3):
    torch.manual_seed(seed)
    net = Net()
    g = torch.Generator().manual_seed(seed + 100)
    masks = Masks({n: torch.rand(p.shape, generator=g) < density for n, p in net.named_parameters()
                   if n.endswith("weight") and p.dim() > 1})
    return net, masks


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


def train_steps(net, opt, n, seed=0, mask_grads=None, sched=None):
    for x, y in batches(n, seed):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        if mask_grads is not None:
            for name, p in net.named_parameters():
                if name in mask_grads:
                    p.grad.mul_(mask_grads[name])
        opt.step()
        if sched is not None:
            sched.step()


def masked_optimizer(kind, net, masks, cfg, backend="auto"):
    if kind == "sgd":
        return MaskedSGD(net.named_parameters(), masks, backend=backend, **cfg)
    return MaskedAdamW(net.named_parameters(), masks, **cfg)


ZERO = ([pytest.param("sgd", SGD_CONFIGS[n], b, id=f"sgd-{n}-{b}") for n in ("momentum+wd", "nesterov+wd")
         for b in SGD_BACKENDS]
        + [pytest.param("adamw", c, "auto", id=n) for n, c in ADAMW_CONFIGS.items()])
ALL = ([pytest.param("sgd", c, b, id=f"sgd-{n}-{b}") for n, c in SGD_CONFIGS.items() for b in SGD_BACKENDS]
       + [pytest.param("adamw", c, "auto", id=n) for n, c in ADAMW_CONFIGS.items()])


@pytest.mark.parametrize("kind,cfg,backend", ZERO)
def test_pruned_weights_and_state_stay_exactly_zero_for_1000_steps(kind, cfg, backend):
    net, masks = make()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    # Pruned entries start nonzero: the optimizer itself must zero them, not the test.
    assert all(bool((before[n][~m] != 0).any()) for n, m in masks.items())
    opt = masked_optimizer(kind, net, masks, cfg, backend)
    params = dict(net.named_parameters())
    for n, m in masks.items():
        assert bool((params[n][~m] == 0).all()), f"{n}: pruned weights not zeroed at construction"
    train_steps(net, opt, 1000)
    for n, m in masks.items():
        p = params[n]
        assert torch.count_nonzero(p[~m]) == 0, f"{n}: pruned weights moved"
        # (a few kept weights may feed dead ReLUs and legitimately never move)
        assert (p[m] != before[n][m]).float().mean() > 0.5, f"{n}: kept weights did not train"
        state = opt.state[p]
        keys = ["momentum_buffer"] if kind == "sgd" else ["exp_avg", "exp_avg_sq"] + (
            ["max_exp_avg_sq"] if cfg.get("amsgrad") else [])
        for k in keys:
            assert torch.count_nonzero(state[k][~m]) == 0, f"{n}: {k} nonzero at pruned entries"
            assert torch.count_nonzero(state[k][m]) > 0
    for n, p in params.items():
        assert torch.isfinite(p).all()
        if n not in masks:  # biases and BN: ordinary, unmasked updates
            assert bool((p != before[n]).any())


def synthetic_steps(params, opt, n, seed, masks_by_param=None, sched=None):
    """Feed the same random gradients to both sides, so rounding differences between backends
    cannot be amplified by the training dynamics; gradients are nonzero at pruned entries."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            grad = torch.randn(p.shape, generator=g)
            if masks_by_param is not None and p in masks_by_param:
                grad = grad * masks_by_param[p]
            p.grad = grad
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("kind,cfg,backend", ALL)
def test_kept_weights_match_torch_on_masked_gradients(kind, cfg, backend):
    net, masks = make(seed=1)
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    opt = masked_optimizer(kind, net, masks, cfg, backend)
    ref_opt = (torch.optim.SGD if kind == "sgd" else torch.optim.AdamW)(ref.parameters(), **cfg)
    # LR schedulers drive both the same way.
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [40, 80], gamma=0.3)
    ref_sched = torch.optim.lr_scheduler.MultiStepLR(ref_opt, [40, 80], gamma=0.3)
    rnamed = dict(ref.named_parameters())
    synthetic_steps(list(net.parameters()), opt, 120, seed=3, sched=sched)
    synthetic_steps(list(ref.parameters()), ref_opt, 120, seed=3, sched=ref_sched,
                    masks_by_param={rnamed[n]: m.float() for n, m in masks.items()})
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg["lr"] * 0.09)
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{n}: {m}")
        if n in masks:
            assert torch.count_nonzero(p[~masks[n]]) == 0


@pytest.mark.parametrize("kind,cfg", [("sgd", SGD_CONFIGS["nesterov+wd"]), ("adamw", ADAMW_CONFIGS["adamw"])])
def test_training_matches_torch_on_masked_gradients(kind, cfg):
    # Real gradients through a BN/ReLU network; short, because any rounding difference is
    # amplified from step to step once the weights feed back into the gradients.
    net, masks = make(seed=1)
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    opt = masked_optimizer(kind, net, masks, cfg)
    ref_opt = (torch.optim.SGD if kind == "sgd" else torch.optim.AdamW)(ref.parameters(), **cfg)
    train_steps(net, opt, 15, seed=3)
    train_steps(ref, ref_opt, 15, seed=3, mask_grads={n: m.float() for n, m in masks.items()})
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{n}: {m}")


def test_param_groups_keep_their_own_hyperparameters():
    net, masks = make(seed=2)
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    named = list(net.named_parameters())
    weights = [(n, p) for n, p in named if n.endswith("weight")]
    others = [(n, p) for n, p in named if not n.endswith("weight")]
    opt = MaskedSGD([{"params": weights, "weight_decay": 1e-2}, {"params": others, "lr": 0.01}], masks,
                    lr=0.1, momentum=0.9)
    rnamed = dict(ref.named_parameters())
    ref_opt = torch.optim.SGD([{"params": [rnamed[n] for n, _ in weights], "weight_decay": 1e-2},
                               {"params": [rnamed[n] for n, _ in others], "lr": 0.01}], lr=0.1, momentum=0.9)
    train_steps(net, opt, 50)
    train_steps(ref, ref_opt, 50, mask_grads={n: m.float() for n, m in masks.items()})
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("kind,cfg", [("sgd", SGD_CONFIGS["nesterov+wd"]), ("adamw", ADAMW_CONFIGS["amsgrad"])])
def test_state_dict_round_trip_continues_identically(kind, cfg):
    net, masks = make(seed=4)
    opt = masked_optimizer(kind, net, masks, cfg)
    train_steps(net, opt, 30, seed=5)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    other, _ = make(seed=99)  # different weights: everything must come from the state dicts
    other.load_state_dict(saved["model"])
    other_opt = masked_optimizer(kind, other, masks, dict(cfg, lr=123.0))
    other_opt.load_state_dict(saved["opt"])
    assert other_opt.param_groups[0]["lr"] == cfg["lr"]
    train_steps(net, opt, 30, seed=6)
    train_steps(other, other_opt, 30, seed=6)
    for (n, p), q in zip(net.named_parameters(), other.parameters()):
        assert torch.equal(p, q), n
    for p, q in zip(net.parameters(), other.parameters()):
        for k, v in opt.state[p].items():
            assert torch.equal(v, other_opt.state[q][k]), k


def test_loading_an_unmasked_state_cannot_revive_pruned_weights():
    net, masks = make(seed=5)
    plain = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    train_steps(net, plain, 5)  # momentum is nonzero everywhere, pruned entries included
    opt = MaskedSGD(net.named_parameters(), masks, lr=0.1, momentum=0.9)
    opt.load_state_dict(plain.state_dict())
    params = dict(net.named_parameters())
    for n, m in masks.items():
        assert torch.count_nonzero(opt.state[params[n]]["momentum_buffer"][~m]) == 0
    train_steps(net, opt, 3)
    for n, m in masks.items():
        assert torch.count_nonzero(params[n][~m]) == 0


@pytest.mark.parametrize("cls", [MaskedSGD, MaskedAdamW])
def test_masks_that_do_not_fit_are_refused_with_the_tensor_name(cls):
    net, masks = make()
    bad = dict(masks)
    bad["fc3.weight"] = torch.ones(4, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'fc3\.weight'"):
        cls(net.named_parameters(), bad, lr=0.1)
    bad = dict(masks)
    bad["fc1.weight"] = torch.ones(32, 95, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'fc1\.weight'.*\(32, 95\).*\(32, 96\)"):
        cls(net.named_parameters(), bad, lr=0.1)
    with pytest.raises(TypeError, match="named_parameters"):
        cls(net.parameters(), masks, lr=0.1)
    with pytest.raises(TypeError, match="bool"):
        cls(net.named_parameters(), {"fc1.weight": torch.ones(32, 96)}, lr=0.1)
    # nothing was zeroed by the refused constructions
    assert torch.count_nonzero(net.fc1.weight) == net.fc1.weight.numel()


def test_parameters_without_masks_are_plain_sgd_and_masks_are_exposed():
    net, masks = make(seed=6)
    opt = MaskedSGD(net.named_parameters(), {}, lr=0.1, momentum=0.9)
    ref = copy.deepcopy(net)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    train_steps(net, opt, 20)
    train_steps(ref, ref_opt, 20)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    opt = MaskedSGD(net.named_parameters(), masks, lr=0.1)
    assert opt.masks == masks


@pytest.mark.parametrize("kind,cfg", [("sgd", SGD_CONFIGS["momentum+wd"]), ("adamw", ADAMW_CONFIGS["adamw"])])
def test_a_deepcopied_optimizer_still_enforces_its_masks(kind, cfg):
    net, masks = make(seed=7)
    opt = masked_optimizer(kind, net, masks, cfg)
    train_steps(net, opt, 3)
    net2, opt2 = copy.deepcopy((net, opt))
    train_steps(net2, opt2, 20)
    params = dict(net2.named_parameters())
    for n, m in masks.items():
        assert torch.count_nonzero(params[n][~m]) == 0
    assert opt2.masks == masks


# ---------------------------------------------------------------- issue 12: argument checks

@pytest.mark.parametrize("cls, kw, error", [
    (MaskedSGD, dict(lr="0.1"), TypeError),
    (MaskedSGD, dict(lr=None), TypeError),
    (MaskedSGD, dict(lr=-1.0), ValueError),
    (MaskedSGD, dict(lr=float("nan")), ValueError),
    (MaskedSGD, dict(lr=True), TypeError),
    (MaskedSGD, dict(momentum="0.9"), TypeError),
    (MaskedSGD, dict(dampening=None), TypeError),
    (MaskedSGD, dict(weight_decay=[0.1]), TypeError),
    (MaskedSGD, dict(nesterov="yes", momentum=0.9), TypeError),
    (MaskedSGD, dict(backend=3), TypeError),
    (MaskedAdamW, dict(lr=None), TypeError),
    (MaskedAdamW, dict(lr="1e-3"), TypeError),
    (MaskedAdamW, dict(eps=None), TypeError),
    (MaskedAdamW, dict(betas=0.9), TypeError),
    (MaskedAdamW, dict(betas=(0.9,)), TypeError),
    (MaskedAdamW, dict(betas=(0.9, "0.99")), TypeError),
    (MaskedAdamW, dict(betas=(0.9, 1.0)), ValueError),
    (MaskedAdamW, dict(weight_decay="0"), TypeError),
    (MaskedAdamW, dict(amsgrad=None), TypeError),
])
def test_hyperparameters_of_the_wrong_kind_are_refused_by_name(cls, kw, error):
    net, masks = make()
    name = next(iter(kw))
    with pytest.raises(error, match=rf"\b{name}\b"):
        cls(net.named_parameters(), masks, **{"lr": 0.1, **kw})


@pytest.mark.parametrize("cls", [MaskedSGD, MaskedAdamW])
def test_hyperparameters_may_be_numpy_or_tensor_scalars(cls):
    import numpy as np
    net, masks = make()
    cls(net.named_parameters(), masks, lr=np.float32(0.1), weight_decay=np.float64(0.0))
    cls(net.named_parameters(), masks, lr=torch.tensor(0.1))


@pytest.mark.parametrize("cls", [MaskedSGD, MaskedAdamW])
def test_masks_of_another_model_are_summed_up_in_one_short_message(cls):
    net, masks = make()
    other = Masks({f"module.{n}": m for n, m in masks.items()})
    with pytest.raises(ValueError) as ei:
        cls(net.named_parameters(), other, lr=0.1)
    msg = str(ei.value)
    assert len(msg.splitlines()) == 1 and "3 masks name no parameter" in msg and "'module.conv.weight'" in msg
    suggested = msg.split("similar", 1)[1]
    assert "'conv.weight'" in suggested and "'bn.weight'" not in suggested and ".bias" not in suggested, msg


@pytest.mark.parametrize("cls", [MaskedSGD, MaskedAdamW])
def test_masked_meta_and_sparse_parameters_are_refused(cls):
    net, masks = make()
    with torch.device("meta"):
        meta = Net()
    with pytest.raises(ValueError, match=r"'conv.weight'.*meta device"):
        cls(meta.named_parameters(), masks, lr=0.1)
    net.fc1.weight = nn.Parameter(net.fc1.weight.detach().to_sparse())
    with pytest.raises(ValueError, match=r"'fc1.weight'.*sparse"):
        cls(net.named_parameters(), masks, lr=0.1)
    with pytest.raises(ValueError, match=r"mask 'conv.weight'.*meta device"):
        cls(make()[0].named_parameters(), masks.to("meta"), lr=0.1)


@pytest.mark.parametrize("cls", [MaskedSGD, MaskedAdamW])
def test_creating_the_optimizer_zeroes_pruned_weights_in_place_and_its_docstring_says_so(cls):
    lin = torch.nn.Linear(4, 3)
    weight, before = lin.weight, lin.weight.detach().clone()
    mask = torch.tensor([[True, False, True, False]] * 3)
    cls(lin.named_parameters(), {"weight": mask}, lr=0.1)
    assert lin.weight is weight and torch.equal(weight.detach(), before * mask)
    # was: said only in the module's docstring, not where help(MaskedSGD) looks
    assert "creating it zeroes the pruned weights in place" in " ".join(cls.__doc__.split()).lower()
