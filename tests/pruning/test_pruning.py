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


@pytest.mark.filterwarnings("ignore::sparseforce.LayerCollapseWarning")  # collapse is part of the case
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

@pytest.mark.filterwarnings("ignore::sparseforce.LayerCollapseWarning")  # collapse is part of the case
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


@pytest.mark.filterwarnings("ignore::sparseforce.LayerCollapseWarning")  # collapse is part of the case
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


# ---------------------------------------------------------------- issue 12: one-shot data

DATA_METHODS = {  # each needs 4 batches from data of 2
    "force": dict(iterations=2, batches_per_iteration=2),
    "iter_snip": dict(iterations=4),
    "snip": dict(batches_per_iteration=3),
    "grasp": dict(batches_per_iteration=3),
}


@pytest.mark.parametrize("method", list(DATA_METHODS))
@pytest.mark.parametrize("via_prune", [False, True])
def test_a_one_shot_iterator_that_runs_out_says_so(method, via_prune):
    data = (b for b in batches(2))
    call = (lambda: sf.prune(tiny_cnn(), data, method=method, sparsity=0.5, **DATA_METHODS[method])) if via_prune \
        else (lambda: getattr(sf, method)(tiny_cnn(), data, sparsity=0.5, **DATA_METHODS[method]))
    with pytest.raises(ValueError, match=r"data is an iterator that ran out after 2 batches and cannot be "
                                         r"restarted; pass a list or a DataLoader"):
        call()


def test_an_iterable_that_is_empty_the_second_time_says_so():
    class OneShot:  # not an iterator, but its second pass yields nothing
        def __init__(self):
            self.left = batches(2)

        def __iter__(self):
            items, self.left = self.left, []
            return iter(items)

    with pytest.raises(ValueError, match=r"data yielded 2 batches, then none when iterated again"):
        sf.force(tiny_cnn(), OneShot(), sparsity=0.5, iterations=3)
    with pytest.raises(ValueError, match="data yielded no batches"):
        sf.force(tiny_cnn(), iter([]), sparsity=0.5, iterations=3)


@pytest.mark.parametrize("method", list(DATA_METHODS))
def test_every_data_method_documents_how_data_is_reused(method):
    doc = " ".join(getattr(sf, method).__doc__.split())
    assert "one-shot iterator" in doc and "a list or a DataLoader" in doc


# ---------------------------------------------------------------- issue 12: layer collapse

def three_layers():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 10))


ALL_METHODS = {"force": dict(iterations=2), "iter_snip": dict(iterations=2), "snip": {}, "grasp": {},
               "synflow": dict(iterations=2), "magnitude": {}, "random": {}}


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_every_method_warns_about_layers_left_with_no_weights(method):
    import warnings
    model = three_layers()
    n = 64 * 4 + 4 * 4 + 4 * 10
    with pytest.warns(sf.LayerCollapseWarning) as record:
        masks = sf.prune(model, batches(2), method=method, sparsity=1 - 1 / n, **ALL_METHODS[method])
    assert masks.num_kept() == 1
    empty = masks.collapsed()
    assert len(empty) == 2
    msg = str([w for w in record if w.category is sf.LayerCollapseWarning][0].message)
    assert "2 of 3 layers" in msg and all(repr(name) in msg for name in empty), msg
    assert issubclass(sf.LayerCollapseWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sf.LayerCollapseWarning)
        sf.prune(model, batches(2), method=method, sparsity=0.5, **ALL_METHODS[method])
        sf.prune(model, batches(2), method=method, sparsity=1.0, **ALL_METHODS[method])  # nothing kept, as asked


def test_the_collapse_warning_points_at_the_callers_line():
    model = three_layers()
    with pytest.warns(sf.LayerCollapseWarning) as record:
        sf.snip(model, batches(1), sparsity=1 - 1 / 312)
    assert record[0].filename == __file__


# ---------------------------------------------------------------- issue 12: the caller's random state

def dropout_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def rng_states():
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
                                      if torch.cuda.is_available() else [])


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(ALL_METHODS) + ["prune"])
def test_pruning_leaves_the_global_random_state_as_it_was(method, device):
    model = dropout_cnn().to(device)
    ds = torch.utils.data.TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)  # its shuffle draws from the global RNG
    kw = dict(ALL_METHODS.get(method, {}))
    torch.manual_seed(123)
    before = rng_states()
    if method == "prune":
        sf.prune(model, loader, method="force", sparsity=0.9, iterations=3)
    elif method in ("magnitude", "random"):
        getattr(sf, method)(model, sparsity=0.9)
    else:
        getattr(sf, method)(model, loader, sparsity=0.9, **kw)
    after = rng_states()
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("method", ["force", "iter_snip", "snip", "grasp"])
def test_a_seed_makes_dropout_reproducible_and_no_seed_follows_the_callers_state(method):
    model, data = dropout_cnn(), batches(2)
    kw = dict(ALL_METHODS[method], sparsity=0.7)
    fn = getattr(sf, method)
    torch.manual_seed(1)
    a = fn(model, data, seed=7, **kw)
    torch.manual_seed(2)
    assert fn(model, data, seed=7, **kw) == a
    assert fn(model, data, seed=8, **kw) != a
    torch.manual_seed(5)
    b = fn(model, data, **kw)
    assert fn(model, data, **kw) == b  # the first call did not move the state the second starts from


# ---------------------------------------------------------------- issue 12: argument checks

class Untouchable:
    """Data that fails the test if a method reads it: arguments are checked before any work."""

    def __iter__(self):
        raise AssertionError("data was read before the arguments were checked")


def call(method, *, data=None, **kw):
    fn = getattr(sf, method)
    model = tiny_cnn()
    if method in ("magnitude", "random"):
        return fn(model, **{"sparsity": 0.5, **kw})
    if method == "synflow":
        kw.setdefault("input_shape", (1, 8, 8))
    return fn(model, Untouchable() if data is None else data, **{"sparsity": 0.5, **kw})


@pytest.mark.parametrize("method", ["force", "iter_snip", "snip", "grasp"])
@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                                          ("2", TypeError), (None, TypeError)])
def test_batches_per_iteration_is_checked_first(method, value, error):
    with pytest.raises(error, match="batches_per_iteration"):
        call(method, batches_per_iteration=value)


@pytest.mark.parametrize("method", ["force", "iter_snip", "synflow"])
@pytest.mark.parametrize("value, error", [(0, ValueError), (1.5, TypeError), (True, TypeError), (None, TypeError)])
def test_iterations_are_checked_first(method, value, error):
    with pytest.raises(error, match="iterations"):
        call(method, iterations=value)


@pytest.mark.parametrize("value, error", [(1.5, TypeError), (None, TypeError), ("x", TypeError), (True, TypeError),
                                          (-1, ValueError), (2**32, ValueError), (2**64, ValueError)])
def test_random_seed_is_checked(value, error):
    with pytest.raises(error, match="seed"):
        sf.random(tiny_cnn(), sparsity=0.5, seed=value)


def test_random_accepts_numpy_integer_seeds():
    model = tiny_cnn()
    assert sf.random(model, sparsity=0.5, seed=np.int64(3)) == sf.random(model, sparsity=0.5, seed=3)


@pytest.mark.parametrize("method", ["force", "iter_snip", "snip", "grasp"])
@pytest.mark.parametrize("value, error", [(1.5, TypeError), ("x", TypeError), (True, TypeError), (-1, ValueError),
                                          (2**32, ValueError)])
def test_the_seed_of_data_methods_is_checked_first(method, value, error):
    with pytest.raises(error, match="seed"):
        call(method, seed=value)


@pytest.mark.parametrize("method", list(ALL_METHODS))
@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), torch.tensor(0.5).double(),
                                   0.5])
def test_sparsity_may_be_any_real_scalar(method, value):
    model = tiny_cnn()
    kw = {**ALL_METHODS[method], "sparsity": value}
    data = batches(1)
    got = sf.prune(model, data, method=method, **kw)
    assert got == sf.prune(model, data, method=method, **{**kw, "sparsity": 0.5})


@pytest.mark.parametrize("method", list(ALL_METHODS))
@pytest.mark.parametrize("value", [True, np.bool_(False), torch.tensor(True), torch.tensor([0.5]), "0.5", None,
                                   1 + 0j])
def test_sparsity_that_is_no_real_scalar_is_refused_first(method, value):
    with pytest.raises(TypeError, match="sparsity"):
        call(method, **{**ALL_METHODS[method], "sparsity": value})


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_sparsity_out_of_range_is_refused_first(method):
    for value in (1.5, -0.1, float("nan"), np.float32(2)):
        with pytest.raises(ValueError, match="sparsity"):
            call(method, **{**ALL_METHODS[method], "sparsity": value})


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m != "random"])
def test_an_unknown_backend_is_refused_first(method):
    with pytest.raises(ValueError, match="backend"):
        call(method, **ALL_METHODS[method], backend="nope")


# ---------------------------------------------------------------- issue 20: the method table

def test_the_method_table_has_every_method_with_the_options_of_its_signature():
    import inspect
    from sparseforce.pruning import DATA_FREE, METHODS, Method
    assert list(METHODS) == list(ALL_METHODS)
    for name, entry in METHODS.items():
        assert isinstance(entry, Method) and entry.name == name and entry.function is getattr(sf, name)
        params = inspect.signature(entry.function).parameters
        assert dict(entry.options) == {n: p.default for n, p in params.items()
                                       if n not in ("model", "data", "sparsity")}
        assert entry.takes_data == ("data" in params)
    assert DATA_FREE == ("magnitude", "random", "synflow")
    assert {n for n, entry in METHODS.items() if not entry.needs_data} == set(DATA_FREE)
    assert METHODS["force"].options["iterations"] == 60 and METHODS["synflow"].options["iterations"] == 100
    with pytest.raises(TypeError):
        METHODS["force"].options["iterations"] = 1
    model = tiny_cnn()
    assert METHODS["magnitude"](model, sparsity=0.5) == sf.magnitude(model, sparsity=0.5)


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_each_method_resolves_the_backend_of_the_ops_its_table_entry_names(method, monkeypatch):
    from sparseforce import ops
    from sparseforce.pruning import METHODS
    asked, real = [], ops.resolve

    def spy(backend, op, *args, **kw):
        asked.append(op)
        return real(backend, op, *args, **kw)

    monkeypatch.setattr(ops, "resolve", spy)
    call(method, **ALL_METHODS[method], data=batches(1))
    assert set(asked) == set(METHODS[method].ops)


def test_other_arguments_are_checked_first():
    with pytest.raises(TypeError, match="temperature"):
        call("grasp", temperature="200")
    with pytest.raises(ValueError, match="temperature"):
        call("grasp", temperature=float("nan"))
    with pytest.raises(TypeError, match="loss_fn"):
        call("force", loss_fn="cross_entropy")
    with pytest.raises(TypeError, match="loss_fn"):
        call("grasp", loss_fn=3)
    with pytest.raises(ValueError, match="schedule"):
        call("force", schedule="cosine")
    with pytest.raises(ValueError, match="schedule"):
        call("synflow", schedule="cosine")
    with pytest.raises(TypeError, match="input_shape"):
        call("synflow", input_shape=(1, 8.0, 8))
    with pytest.raises(ValueError, match="input_shape"):
        call("synflow", input_shape=(1, 0, 8))
    with pytest.raises(TypeError, match="method"):
        sf.prune(tiny_cnn(), Untouchable(), method=["force"], sparsity=0.5)


def meta_model():
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def sparse_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].weight = nn.Parameter(model[0].weight.detach().to_sparse())
    return model


@pytest.mark.parametrize("method", list(ALL_METHODS))
@pytest.mark.parametrize("make, what", [(meta_model, "meta device"), (sparse_model, "sparse")])
def test_meta_and_sparse_weights_are_refused_by_name(method, make, what):
    data = [(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))]
    kw = {**ALL_METHODS[method], "sparsity": 0.5}
    if method == "synflow":
        kw["input_shape"] = (3,)
    with pytest.raises(ValueError, match=rf"'0\.weight'.*{what}"):
        sf.prune(make(), data, method=method, **kw)


def test_mean_gradients_accumulate_into_writable_memory_only():
    """The first batch's gradients become the running sums, except an expanded (stride-0) one,
    such as the gradient of ``w.sum()``, which must be copied before it is added to."""
    from sparseforce.pruning import _gradients
    w = torch.randn(3, 4)
    model = torch.nn.Linear(4, 3, bias=False)
    batches = [(torch.randn(2, 4), None), (torch.randn(2, 4), None), (torch.randn(2, 4), None)]

    grads, _ = _gradients.mean_gradients(model, {"weight": w}, {}, batches, lambda out, target: out.sum())
    want = sum(x.sum(0, keepdim=True).expand(3, 4) for x, _ in batches) / 3
    torch.testing.assert_close(grads[0], want)
    # A loss whose gradient is expanded: linear in w, so every batch adds the same all-ones.
    leaf_model = torch.nn.Module()
    leaf_model.weight = torch.nn.Parameter(torch.zeros(3, 4))
    leaf_model.forward = lambda x: leaf_model.weight
    grads, _ = _gradients.mean_gradients(leaf_model, {"weight": w}, {}, batches, lambda out, t: out.sum())
    assert grads[0].is_contiguous() and torch.equal(grads[0], torch.ones(3, 4))
    one, _ = _gradients.mean_gradients(leaf_model, {"weight": w}, {}, batches[:1], lambda out, t: out.sum())
    assert torch.equal(one[0], torch.ones(3, 4)) and one[0].stride() == (4, 1)
