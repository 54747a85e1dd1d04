"""The pruning methods against independent computations on tiny nets."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseforce as sf
from conftest import flat64, flat_bool, oracle_keep
from sparseforce.models import get_model
from sparseforce.pruning import densities, keep_counts


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def batches(n, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def prunable(model):
    return [(n, p) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]


def record_steps(monkeypatch):
    """Record every mask the progressive loop selects, without changing it."""
    from sparseforce.pruning import progressive
    steps = []
    real = progressive.ops.saliency_topk_masks

    def spy(*args, **kw):
        out = real(*args, **kw)
        steps.append([m.clone() for m in out])
        return out

    monkeypatch.setattr(progressive.ops, "saliency_topk_masks", spy)
    return steps


# ---------------------------------------------------------------- schedules

def test_exp_and_linear_schedules():
    d = 0.01
    np.testing.assert_allclose(densities(0.99, 4, "exp"), [d ** 0.25, d ** 0.5, d ** 0.75, d])
    np.testing.assert_allclose(densities(0.99, 4, "linear"), [1 - 0.99 / 4, 1 - 0.99 / 2, 1 - 0.99 * 3 / 4, d])
    assert densities(0.9, 7, "linear")[-1] == pytest.approx(0.1, abs=0) or densities(0.9, 7, "linear")[-1] == 1 - 0.9
    assert keep_counts(1000, 0.99, 2, "exp") == [100, 10]
    assert keep_counts(1000, 0.5, 1) == [500]
    assert keep_counts(10, 0.75, 1) == [round(2.5)] == [2]  # Python rounding: half to even
    ks = keep_counts(23_467_712, 0.995, 60)
    assert ks[-1] == round(23_467_712 * 0.005) and all(a >= b for a, b in zip(ks, ks[1:]))
    with pytest.raises(ValueError, match="schedule must be one of"):
        densities(0.5, 3, "cosine")
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        densities(0.5, 0)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\]"):
        densities(1.5, 3)


# ---------------------------------------------------------------- SNIP / FORCE / Iter SNIP

def independent_snip(model, data, k):
    net = copy.deepcopy(model).train()
    grads = [torch.zeros_like(p) for _, p in prunable(net)]
    for x, y in data:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        for acc, (_, p) in zip(grads, prunable(net)):
            acc.add_(p.grad)
    scores = [(p.detach() * (g / len(data))).abs() for (_, p), g in zip(prunable(net), grads)]
    return oracle_keep(flat64(scores), k)


@pytest.mark.parametrize("bpi", [1, 2])
def test_force_with_one_iteration_is_snip(bpi):
    model, data = tiny_cnn(), batches(bpi)
    n = sum(p.numel() for _, p in prunable(model))
    for sparsity in (0.5, 0.9, 0.99):
        k = round(n * (1 - sparsity))
        want = independent_snip(model, data, k)
        got_force = sf.force(model, data, sparsity=sparsity, iterations=1, batches_per_iteration=bpi)
        got_snip = sf.snip(model, data, sparsity=sparsity, batches_per_iteration=bpi)
        np.testing.assert_array_equal(flat_bool(list(got_force.values())), want)
        np.testing.assert_array_equal(flat_bool(list(got_snip.values())), want)
        assert got_force.num_kept() == k


def test_iter_snip_masks_are_nested_and_exact(monkeypatch):
    steps = record_steps(monkeypatch)
    model, data = tiny_cnn(), batches(3)
    masks = sf.iter_snip(model, data, sparsity=0.98, iterations=6)
    n = sum(p.numel() for _, p in prunable(model))
    assert [int(flat_bool(s).sum()) for s in steps] == keep_counts(n, 0.98, 6)
    for before, after in zip(steps, steps[1:]):
        assert not (flat_bool(after) & ~flat_bool(before)).any()
    np.testing.assert_array_equal(flat_bool(list(masks.values())), flat_bool(steps[-1]))


def revival_net():
    # o = (b1 + b2)·a·x. At full weights a's gradient b1 + b2 nearly cancels, so a is pruned
    # first; once a is gone the b's see h = 0 and score 0, and a (gradient b1 + b2 = 0.1) returns.
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[1].weight.copy_(torch.tensor([[1.0], [-0.9]]))
    return net


def test_force_brings_back_a_pruned_weight(monkeypatch):
    steps = record_steps(monkeypatch)
    data = [(torch.ones(1, 1), torch.zeros(1))]
    loss = lambda out, target: out.sum()  # noqa: E731
    masks = sf.force(revival_net(), data, sparsity=2 / 3, iterations=2, loss_fn=loss)
    assert [flat_bool(s).tolist() for s in steps] == [[False, True, True], [True, False, False]]
    assert flat_bool(list(masks.values())).tolist() == [True, False, False]
    # Iter SNIP cannot: a stays pruned, and the tie at 0 goes to the lowest position.
    masks = sf.iter_snip(revival_net(), data, sparsity=2 / 3, iterations=2, loss_fn=loss)
    assert flat_bool(list(masks.values())).tolist() == [False, True, False]


def independent_force(model, data, sparsity, iterations, resurrect):
    """FORCE / Iter SNIP written out plainly: a fresh model copy per step, as the official code does."""
    params0 = [p.detach().clone() for _, p in prunable(model)]
    n = sum(p.numel() for p in params0)
    masks = [torch.ones_like(p, dtype=torch.bool) for p in params0]
    for t, k in enumerate(keep_counts(n, sparsity, iterations, "exp")):
        net = copy.deepcopy(model).train()
        with torch.no_grad():
            for (_, p), p0, m in zip(prunable(net), params0, masks):
                p.copy_(p0 * m)
        x, y = data[t % len(data)]
        F.cross_entropy(net(x), y).backward()
        scores = [(p0 * p.grad).abs() for (_, p), p0 in zip(prunable(net), params0)]
        keep = oracle_keep(flat64(scores), k, None if resurrect else flat_bool(masks))
        masks = [torch.from_numpy(piece.copy()).view(p.shape)
                 for piece, p in zip(np.split(keep, np.cumsum([p.numel() for p in params0])[:-1]), params0)]
    return flat_bool(masks)


@pytest.mark.parametrize("method", ["force", "iter_snip"])
def test_progressive_methods_match_a_plain_implementation(method):
    model, data = tiny_cnn(), batches(3)
    got = getattr(sf, method)(model, data, sparsity=0.95, iterations=5)
    want = independent_force(model, data, 0.95, 5, resurrect=method == "force")
    np.testing.assert_array_equal(flat_bool(list(got.values())), want)


def test_batches_are_consumed_in_order_and_cycled():
    seen = []

    def loss(out, target):
        seen.append(int(target[0]))
        return F.cross_entropy(out, target)

    data = [(torch.randn(4, 1, 8, 8), torch.full((4,), i)) for i in range(3)]
    sf.force(tiny_cnn(), data, sparsity=0.5, iterations=4, batches_per_iteration=2, loss_fn=loss)
    assert seen == [0, 1, 2, 0, 1, 2, 0, 1]
    seen.clear()
    sf.force(tiny_cnn(), iter(data), sparsity=0.5, iterations=2, loss_fn=loss)  # a one-shot iterator
    assert seen == [0, 1]


def test_bad_data_is_refused_clearly():
    with pytest.raises(ValueError, match="data yielded no batches"):
        sf.force(tiny_cnn(), [], sparsity=0.5, iterations=2)
    with pytest.raises(ValueError, match=r"pair \(inputs, targets\)"):
        sf.force(tiny_cnn(), [torch.randn(2, 1, 8, 8)], sparsity=0.5, iterations=2)
    with pytest.raises(ValueError, match="needs data"):
        sf.snip(tiny_cnn(), None, sparsity=0.5)
    with pytest.raises(ValueError, match="batches_per_iteration"):
        sf.force(tiny_cnn(), batches(1), sparsity=0.5, batches_per_iteration=0)


def test_nan_weight_is_reported_by_parameter_name():
    model = tiny_cnn()
    with torch.no_grad():
        model[4].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'4.weight'"):
        sf.force(model, batches(1), sparsity=0.5, iterations=2)


# ---------------------------------------------------------------- prunable selection

def test_default_prunable_weights_and_overrides():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(3 * 6, 4),
                          nn.Conv3d(1, 1, 1), nn.Embedding(3, 3))
    masks = sf.magnitude(model, sparsity=0.5)
    assert list(masks) == ["0.weight", "3.weight", "4.weight"]
    masks = sf.magnitude(model, sparsity=0.5, prunable=["3.weight", "0.bias"])
    assert list(masks) == ["0.bias", "3.weight"]  # named_parameters order
    masks = sf.magnitude(model, sparsity=0.5, prunable=lambda name, p: name.startswith("5."))
    assert list(masks) == ["5.weight"]
    with pytest.raises(ValueError, match=r"\['nope'\] are not parameters"):
        sf.magnitude(model, sparsity=0.5, prunable=["nope"])
    with pytest.raises(ValueError, match="no prunable weights"):
        sf.magnitude(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(2)), sparsity=0.5)


# ---------------------------------------------------------------- magnitude and random

def test_magnitude_keeps_the_largest_weights():
    model = tiny_cnn()
    masks = sf.magnitude(model, sparsity=0.9)
    weights = [p for _, p in prunable(model)]
    k = round(sum(w.numel() for w in weights) * 0.1)
    np.testing.assert_array_equal(flat_bool(list(masks.values())), oracle_keep(np.abs(flat64(weights)), k))


def test_random_is_seeded_and_exact():
    model = tiny_cnn()
    a, b, c = (sf.random(model, sparsity=0.8, seed=s) for s in (3, 3, 4))
    n = sum(p.numel() for _, p in prunable(model))
    assert a.num_kept() == c.num_kept() == round(n * 0.2)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    # every layer gets roughly its share: uniform over all weights
    for name, m in a.items():
        assert abs(m.float().mean().item() - 0.2) < 0.1


# ---------------------------------------------------------------- GraSP and SynFlow

def test_grasp_matches_explicit_hessian():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    shapes = [net[0].weight.shape, net[2].weight.shape]
    theta = torch.cat([net[0].weight.detach().reshape(-1), net[2].weight.detach().reshape(-1)])
    temperature = 7.0

    def loss(flat):
        w1, w2 = flat[:12].view(shapes[0]), flat[12:].view(shapes[1])
        h = torch.tanh(F.linear(x, w1, net[0].bias))
        return F.cross_entropy(F.linear(h, w2, net[2].bias) / temperature, y)

    g = torch.autograd.functional.jacobian(loss, theta)
    hess = torch.autograd.functional.hessian(loss, theta)
    scores = (theta * (hess @ g)).numpy()
    for k in range(len(theta) + 1):
        masks = sf.grasp(net, [(x, y)], sparsity=1 - k / len(theta), temperature=temperature)
        np.testing.assert_array_equal(flat_bool(list(masks.values())), oracle_keep(scores, k), err_msg=f"k={k}")


def synflow_scores(w1, w2):
    # R = 1ᵀ|W2||W1|1:  ∂R/∂W1[i,j] = Σ_k |W2[k,i]|,  ∂R/∂W2[k,i] = Σ_j |W1[i,j]|
    a1, a2 = w1.abs(), w2.abs()
    s1 = a1 * a2.sum(0)[:, None]
    s2 = a2 * a1.sum(1)[None, :]
    return torch.cat([s1.reshape(-1), s2.reshape(-1)])


def test_synflow_matches_the_explicit_formula():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))
    w1, w2 = net[0].weight.detach().double(), net[2].weight.detach().double()
    n = w1.numel() + w2.numel()
    for k in (0, 1, 7, n // 2, n):
        masks = sf.synflow(net, sparsity=1 - k / n, iterations=1, input_shape=(5,))
        np.testing.assert_array_equal(flat_bool(list(masks.values())), oracle_keep(synflow_scores(w1, w2), k))
    # Iterated: rescore the surviving (masked) weights each step.
    m = torch.ones(n, dtype=torch.bool)
    for k in keep_counts(n, 0.8, 3):
        s = synflow_scores(w1 * m[:20].view(4, 5), w2 * m[20:].view(3, 4))
        m = torch.from_numpy(oracle_keep(s.numpy(), k, m.numpy()))
    got = sf.synflow(net, [(torch.randn(2, 5), torch.zeros(2))], sparsity=0.8, iterations=3)
    np.testing.assert_array_equal(flat_bool(list(got.values())), m.numpy())


def test_synflow_needs_an_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        sf.synflow(tiny_cnn(), sparsity=0.5)


# ---------------------------------------------------------------- the caller's model is untouched

def snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "ids": {n: id(p) for n, p in model.named_parameters()},
    }


def assert_same(a, b):
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        x, y = a["state"][k], b["state"][k]
        assert x.dtype == y.dtype and torch.equal(x.view(-1).view(torch.uint8) if x.dtype != torch.bool else x,
                                                  y.view(-1).view(torch.uint8) if y.dtype != torch.bool else y), k
    for n in a["grad"]:
        assert (a["grad"][n] is None) == (b["grad"][n] is None) and (
            a["grad"][n] is None or torch.equal(a["grad"][n], b["grad"][n])), n
    assert a["requires_grad"] == b["requires_grad"] and a["training"] == b["training"] and a["ids"] == b["ids"]


@pytest.mark.parametrize("method", ["force", "iter_snip", "snip", "grasp", "synflow", "magnitude", "random"])
def test_the_callers_model_is_left_exactly_as_it_was(method):
    model = get_model("digits_cnn")
    data = batches(2)
    model(data[0][0]).sum().backward()  # some existing grads ...
    next(model.parameters()).grad = None  # ... and one missing
    list(model.parameters())[1].requires_grad_(False)
    model.eval()
    list(model.modules())[2].train()  # a mixed train/eval state
    before = snapshot(model)
    kw = {"iterations": 3} if method in ("force", "iter_snip", "synflow") else {}
    masks = sf.prune(model, data, method=method, sparsity=0.9, **kw)
    assert_same(before, snapshot(model))
    n = sum(p.numel() for _, p in prunable(model))
    assert masks.num_kept() == round(n * 0.1)


def test_prune_entry_point():
    model, data = tiny_cnn(), batches(1)
    a = sf.prune(model, data, method="snip", sparsity=0.7)
    b = sf.snip(model, data, sparsity=0.7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="unknown pruning method 'prun'"):
        sf.prune(model, data, method="prun", sparsity=0.5)
    with pytest.raises(ValueError, match="needs sparsity"):
        sf.prune(model, data, method="snip")


def test_progress_bar_shows_density_and_loss(capsys):
    sf.force(tiny_cnn(), batches(1), sparsity=0.9, iterations=3, progress=True)
    err = capsys.readouterr().err
    assert "FORCE" in err and "density=" in err and "loss=" in err


def test_extreme_sparsities_and_k_edges():
    model, data = tiny_cnn(), batches(1)
    assert sf.force(model, data, sparsity=1.0, iterations=3).num_kept() == 0
    assert sf.force(model, data, sparsity=0.0, iterations=2).density() == 1.0


def test_nan_gradient_is_reported_by_parameter_name():
    data = [(torch.full((2, 1, 8, 8), float("nan")), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(ValueError, match=r"FORCE step 1: the saliency of '0.weight' is NaN"):
        sf.force(tiny_cnn(), data, sparsity=0.5, iterations=2)
