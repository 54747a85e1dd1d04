"""scope / distribution / nm on every method that ranks scores (issue 21), checked against
counts and patterns computed here, independently of the library."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseforce as sf
from sparseforce.pruning import keep_counts, layer_counts

RANKING = {"snip": {}, "force": {"iterations": 3}, "iter_snip": {"iterations": 3}, "grasp": {},
           "synflow": {"iterations": 3}, "magnitude": {}}


def net():
    """Rows of 4, 16, 216 and 12 weights: every layer takes N:M with m in (1, 2, 4)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 2), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 6 * 6, 12), nn.ReLU(), nn.Linear(12, 10))


NAMES = ["0.weight", "3.weight", "6.weight", "8.weight"]
SHAPES = [(4, 1, 2, 2), (6, 4, 2, 2), (12, 216), (10, 12)]
SIZES = [math.prod(s) for s in SHAPES]


def batches(n=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def prune(method, model=None, **kw):
    return sf.prune(net() if model is None else model, batches(), method=method, backend="reference",
                    **{**RANKING[method], **kw})


def kept(masks):
    return [int(masks[n].sum()) for n in NAMES]


def group_counts(mask, m):
    """Kept per group of m consecutive weights along each row (the tensor viewed as (dim 0, rest))."""
    rows = mask.reshape(mask.shape[0], -1)
    return rows.reshape(rows.shape[0], rows.shape[1] // m, m).sum(-1)


def top_of(values, k):
    """Bool mask of the k largest of a 1-D float64 array, ties to the lowest position."""
    keep = np.zeros(values.size, dtype=bool)
    keep[np.argsort(-values, kind="stable")[:k]] = True
    return keep


# ---------------------------------------------------------------- global: today's masks

@pytest.mark.parametrize("method", list(RANKING))
def test_global_scope_is_todays_selection(method):
    today = prune(method, sparsity=0.8)
    assert prune(method, sparsity=0.8, scope="global") == today
    assert prune(method, sparsity=0.8, scope="global", distribution=None, nm=None) == today
    assert sum(kept(today)) == round(sum(SIZES) * 0.2)


# ---------------------------------------------------------------- layer scope

@pytest.mark.filterwarnings("ignore::sparseforce.LayerCollapseWarning")
@pytest.mark.parametrize("method", list(RANKING))
@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("sparsity", [0.3, 0.9, 0.99])
def test_layer_scope_keeps_each_layers_count(method, distribution, sparsity):
    masks = prune(method, sparsity=sparsity, scope="layer", distribution=distribution)
    assert kept(masks) == layer_counts(SHAPES, round(sum(SIZES) * (1 - sparsity)), distribution)


@pytest.mark.parametrize("method", list(RANKING))
def test_layer_scope_defaults_to_uniform(method):
    assert prune(method, sparsity=0.7, scope="layer") == prune(method, sparsity=0.7, scope="layer",
                                                               distribution="uniform")


@pytest.mark.parametrize("method", list(RANKING))
def test_a_density_dict_is_kept_as_given_when_it_adds_up_to_the_sparsity(method):
    counts = [3, 50, 400, 7]
    dist = {n: c / s for n, c, s in zip(NAMES, counts, SIZES)}
    masks = prune(method, sparsity=1 - sum(counts) / sum(SIZES), scope="layer", distribution=dist)
    assert kept(masks) == counts


@pytest.mark.filterwarnings("ignore::sparseforce.LayerCollapseWarning")  # the layer at density 0
@pytest.mark.parametrize("method", ["snip", "magnitude"])
def test_a_density_dict_is_scaled_to_the_sparsity(method):
    # Equal densities, whatever their value, share the budget out as "uniform" does.
    same = {n: 0.5 for n in NAMES}
    assert prune(method, sparsity=0.8, scope="layer", distribution=same) == \
        prune(method, sparsity=0.8, scope="layer", distribution="uniform")
    # A layer at density 0 keeps nothing while the others can hold the budget ...
    masks = prune(method, sparsity=0.9, scope="layer", distribution={**same, "3.weight": 0.0})
    assert kept(masks)[1] == 0 and sum(kept(masks)) == round(sum(SIZES) * 0.1)
    # ... and the rest of it once they are all dense.
    masks = prune(method, sparsity=0.9, scope="layer", distribution={**same, "6.weight": 0.0})
    assert kept(masks) == [16, 96, round(sum(SIZES) * 0.1) - 16 - 96 - 120, 120]


def test_layer_scope_keeps_the_top_of_each_layer():
    model = net()
    masks = sf.magnitude(model, sparsity=0.75, scope="layer", distribution="erk", backend="reference")
    counts = layer_counts(SHAPES, round(sum(SIZES) * 0.25), "erk")
    low = sf.magnitude(model, sparsity=0.75, scope="layer", distribution="erk", backend="reference", invert=True)
    for name, c in zip(NAMES, counts):
        w = dict(model.named_parameters())[name].detach().abs().double().flatten().numpy()
        assert np.array_equal(masks[name].flatten().numpy(), top_of(w, c)), name
        assert np.array_equal(low[name].flatten().numpy(), top_of(-w, c)), name


def snip_scores(model, data):
    """|w * mean dL/dw| by plain autograd on a copy in train mode."""
    model = copy.deepcopy(model).train()
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(params[n]) for n in NAMES}
    for x, y in data:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n in NAMES:
            grads[n] += params[n].grad
    return {n: (params[n].detach() * grads[n] / len(data)).abs().double().flatten().numpy() for n in NAMES}


def test_snip_per_layer_and_nm_rank_the_saliency_within_each_segment():
    model, data = net(), batches()
    scores = snip_scores(model, data[:1])  # SNIP's one step reads batches_per_iteration = 1 batch
    layer = sf.snip(model, data, sparsity=0.6, scope="layer", backend="reference")
    for name, c in zip(NAMES, layer_counts(SHAPES, round(sum(SIZES) * 0.4), "uniform")):
        assert np.array_equal(layer[name].flatten().numpy(), top_of(scores[name], c)), name
    nm = sf.snip(model, data, nm=(1, 4), backend="reference")
    for name in NAMES:
        groups = scores[name].reshape(-1, 4)
        want = np.stack([top_of(g, 1) for g in groups]).flatten()
        assert np.array_equal(nm[name].flatten().numpy(), want), name


# ---------------------------------------------------------------- N:M

@pytest.mark.parametrize("method", list(RANKING))
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (1, 2), (3, 4), (4, 4)])
def test_nm_keeps_exactly_n_of_every_m(method, n, m):
    masks = prune(method, nm=(n, m))
    for name in NAMES:
        assert (group_counts(masks[name], m) == n).all(), name
    assert masks.num_kept() == sum(SIZES) * n // m


@pytest.mark.parametrize("method", list(RANKING))
def test_nm_takes_a_sparsity_that_agrees(method):
    assert prune(method, nm=(2, 4), sparsity=0.5) == prune(method, nm=(2, 4))


@pytest.mark.parametrize("method", ["magnitude", "grasp"])
def test_inverted_nm_keeps_the_lowest_of_each_group(method):
    model = net()
    if method == "magnitude":
        high = sf.magnitude(model, nm=(1, 4), backend="reference")
        low = sf.magnitude(model, nm=(1, 4), backend="reference", invert=True)
        for name in NAMES:
            w = dict(model.named_parameters())[name].detach().abs().double().flatten().numpy().reshape(-1, 4)
            assert np.array_equal(high[name].flatten().numpy(), np.stack([top_of(g, 1) for g in w]).flatten())
            assert np.array_equal(low[name].flatten().numpy(), np.stack([top_of(-g, 1) for g in w]).flatten())
    else:
        low = prune(method, nm=(1, 4), invert=True)
        assert all((group_counts(low[n], 4) == 1).all() for n in NAMES)
        assert low != prune(method, nm=(1, 4))


def test_prune_takes_nm_without_sparsity():
    assert sf.prune(net(), batches(), method="snip", nm=(2, 4), backend="reference") == \
        sf.snip(net(), batches(), sparsity=0.5, nm=(2, 4), backend="reference")


# ---------------------------------------------------------------- the steps of FORCE / Iter SNIP

def record(monkeypatch, op):
    """Every selection the op makes: (segment, ks, masks)."""
    steps, real = [], getattr(sf.ops, op)

    def spy(*args, **kw):
        out = real(*args, **kw)
        steps.append((kw.get("segment"), args[2] if "saliency" in op else args[1], [m.clone() for m in out]))
        return out

    monkeypatch.setattr(sf.ops, op, spy)
    return steps


@pytest.mark.parametrize("method", ["force", "iter_snip", "synflow"])
@pytest.mark.parametrize("n, m, T", [(2, 4, 4), (1, 4, 3), (1, 2, 5)])
def test_nm_steps_round_the_schedule_to_the_group(monkeypatch, method, n, m, T):
    steps = record(monkeypatch, "segmented_saliency_topk_masks")
    prune(method, nm=(n, m), iterations=T)
    ds = [(n / m) ** (t / T) for t in range(1, T + 1)]
    want = [max(n, round(m * d)) for d in ds[:-1]] + [n]
    assert [segment for segment, _, _ in steps] == [("nm", k, m) for k in want]
    for (_, _, masks), k in zip(steps, want):
        assert all((group_counts(mask, m) == k).all() for mask in masks)
    if method != "force":  # nested: a pruned weight stays pruned
        for (_, _, before), (_, _, after) in zip(steps, steps[1:]):
            assert all(not (a & ~b).any() for a, b in zip(after, before))


def test_nm_steps_example():
    # 2:4 over 4 exp steps: densities .84, .71, .59, .5 -> 3, 3, 2, 2 of every 4
    assert [max(2, round(4 * 0.5 ** (t / 4))) for t in (1, 2, 3)] == [3, 3, 2]


@pytest.mark.parametrize("method", ["force", "iter_snip", "synflow"])
@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_layer_steps_share_each_steps_k_out(monkeypatch, method, distribution):
    steps = record(monkeypatch, "segmented_saliency_topk_masks")
    prune(method, sparsity=0.9, scope="layer", distribution=distribution, iterations=4)
    ks = keep_counts(sum(SIZES), 0.9, 4)
    assert len(steps) == 4
    for (segment, counts, masks), k in zip(steps, ks):
        assert segment == "tensor" and sum(counts) == k
        assert [int(mask.sum()) for mask in masks] == counts
    if method == "force":
        assert [c for _, c, _ in steps] == [layer_counts(SHAPES, k, distribution) for k in ks]
    else:
        assert steps[-1][1] == layer_counts(SHAPES, ks[-1], distribution)
        for (_, _, before), (_, _, after) in zip(steps, steps[1:]):
            assert all(not (a & ~b).any() for a, b in zip(after, before))


def tiny_chain():
    """Layers of 1, 3 and 3 weights: largest remainder gives [0, 2, 2] of 4 but [1, 1, 1] of 3."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 3, bias=False), nn.Linear(3, 1, bias=False))


def test_nested_layer_counts_never_grow(monkeypatch):
    shapes = [(1, 1), (3, 1), (1, 3)]
    assert layer_counts(shapes, 4, "uniform") == [0, 2, 2] and layer_counts(shapes, 3, "uniform") == [1, 1, 1]
    data = [(torch.randn(5, 1), torch.randn(5, 1))]
    kw = dict(sparsity=1 - 3 / 7, schedule=[4 / 7, 3 / 7], iterations=2, scope="layer", backend="reference",
              loss_fn=lambda out, y: ((out - y) ** 2).mean())
    steps = record(monkeypatch, "segmented_saliency_topk_masks")
    sf.force(tiny_chain(), data, **kw)
    assert [c for _, c, _ in steps] == [[0, 2, 2], [1, 1, 1]]  # FORCE: each step as random would share it
    steps.clear()
    sf.iter_snip(tiny_chain(), data, **kw)
    # Iter SNIP: the first layer keeps its one weight at step 1 already; the unit comes from the
    # layer furthest above its next count (a tie: the earlier of the two).
    assert [c for _, c, _ in steps] == [[1, 1, 2], [1, 1, 1]]


# ---------------------------------------------------------------- one clear error, before any work

class Untouchable:
    def __iter__(self):
        raise AssertionError("data was read before the arguments were checked")


def call(method, **kw):
    kw = {**RANKING[method], "backend": "reference", **kw}
    if method == "magnitude":
        return sf.magnitude(net(), **kw)
    if method == "synflow":
        kw.setdefault("input_shape", (1, 8, 8))
    return getattr(sf, method)(net(), Untouchable(), **kw)


BAD = [
    (dict(sparsity=0.5, scope="foo"), ValueError, r"scope must be one of 'global', 'layer', got str 'foo'"),
    (dict(sparsity=0.5, scope=None), TypeError, "scope must be one of"),
    (dict(nm=(3, 2)), ValueError, r"nm=\(n, m\) .*0 <= n <= m.*got \(3, 2\)"),
    (dict(nm=(1, 33)), ValueError, r"1 <= m <= 32"),
    (dict(nm=(2, 4.0)), TypeError, r"nm\[1\] must be an integer"),
    (dict(nm="2:4"), TypeError, "nm must be a pair"),
    (dict(nm=(1, 3)), ValueError, r"nm=\(1, 3\): prunable layer '0.weight' has rows of 4 weights"),
    (dict(nm=(2, 4), sparsity=0.9), ValueError, r"sparsity=0.9 disagrees with nm=\(2, 4\)"),
    (dict(nm=(2, 4), scope="layer"), ValueError, "leave scope and distribution out"),
    (dict(nm=(2, 4), distribution="erk"), ValueError, "leave scope and distribution out"),
    (dict(sparsity=0.5, distribution="erk"), ValueError, "pass scope='layer'"),
    (dict(sparsity=0.5, scope="layer", distribution="global"), ValueError,
     "distribution must be one of 'uniform', 'erk'"),
    (dict(sparsity=0.5, scope="layer", distribution=3), TypeError, "distribution must be one of"),
    (dict(sparsity=0.5, scope="layer", distribution={n: 0.5 for n in NAMES[:3]}), ValueError,
     "density for every prunable layer and no other: missing '8.weight'"),
    (dict(sparsity=0.5, scope="layer", distribution={**{n: 0.5 for n in NAMES}, "x": 0.1}), ValueError,
     "not prunable 'x'"),
    (dict(sparsity=0.5, scope="layer", distribution={**{n: 0.5 for n in NAMES}, "6.weight": 1.5}), ValueError,
     r"distribution\['6.weight'\] must be a density in \[0, 1\]"),
    (dict(sparsity=0.5, scope="layer", distribution={**{n: 0.5 for n in NAMES}, "6.weight": "x"}), TypeError,
     r"distribution\['6.weight'\] must be a density"),
    (dict(), TypeError, "needs sparsity .* or nm=\\(n, m\\)"),
]


@pytest.mark.parametrize("method", list(RANKING))
@pytest.mark.parametrize("kw, error, match", BAD)
def test_bad_scope_arguments_are_one_clear_error_before_any_work(method, kw, error, match):
    with pytest.raises(error, match=match):
        call(method, **kw)


def test_a_bad_schedule_for_nested_nm_is_refused():
    with pytest.raises(ValueError, match="2 of every 4 weights at step 1 and 3 at step 2; this method's masks"):
        call("iter_snip", nm=(2, 4), schedule=[0.5, 0.75, 0.5], iterations=3)


def test_random_keeps_its_own_distribution_and_takes_no_scope():
    model = net()
    with pytest.raises(TypeError, match="scope"):
        sf.random(model, sparsity=0.5, scope="layer")
    assert kept(sf.random(model, sparsity=0.5, distribution="erk")) == layer_counts(SHAPES, sum(SIZES) // 2, "erk")


def test_the_method_table_records_the_scope_options_and_ops():
    from sparseforce.pruning import METHODS
    for name, entry in METHODS.items():
        if name == "random":
            assert "scope" not in entry.options and entry.options["distribution"] == "global"
            continue
        assert (entry.options["scope"], entry.options["distribution"], entry.options["nm"]) == ("global", None, None)
        assert entry.ops_for() == entry.ops == entry.ops_for("global")
        assert entry.ops_for("layer") == entry.ops_for(None, (2, 4)) == tuple(f"segmented_{op}" for op in entry.ops)


@pytest.mark.parametrize("method", list(RANKING))
def test_each_method_resolves_the_segmented_op_its_table_names(monkeypatch, method):
    from sparseforce.pruning import METHODS
    asked, real = [], sf.ops.resolve

    def spy(backend, op, *args, **kw):
        asked.append(op)
        return real(backend, op, *args, **kw)

    monkeypatch.setattr(sf.ops, "resolve", spy)
    prune(method, nm=(2, 4))
    assert set(METHODS[method].ops_for(None, (2, 4))) <= set(asked)
    assert set(asked) & set(METHODS[method].ops) == set()


def record_inverted(monkeypatch):
    """The full masks of every inverted progressive step."""
    from sparseforce.pruning import _select
    steps, real = [], _select.inverted_saliency_topk

    def spy(*args, **kw):
        out = real(*args, **kw)
        steps.append([m.clone() for m in out])
        return out

    monkeypatch.setattr(_select, "inverted_saliency_topk", spy)
    return steps


@pytest.mark.parametrize("method", ["iter_snip", "synflow"])
def test_inverted_nested_steps_keep_the_pattern_among_the_survivors(monkeypatch, method):
    steps = record_inverted(monkeypatch)
    ranked = record(monkeypatch, "segmented_topk_masks")
    prune(method, nm=(1, 4), iterations=3, invert=True)
    # 3, 2, 1 of every 4: each step ranks the survivors, n_prev of every 4, as groups of n_prev.
    assert [segment for segment, _, _ in ranked] == [("nm", 3, 4), ("nm", 2, 3), ("nm", 1, 2)]
    for masks, k in zip(steps, (3, 2, 1)):
        assert all((group_counts(mask, 4) == k).all() for mask in masks)
    for before, after in zip(steps, steps[1:]):
        assert all(not (a & ~b).any() for a, b in zip(after, before))
    steps.clear()
    prune(method, sparsity=0.9, scope="layer", iterations=3, invert=True)
    ks = keep_counts(sum(SIZES), 0.9, 3)
    assert [sum(int(m.sum()) for m in masks) for masks in steps] == ks
    assert [int(m.sum()) for m in steps[-1]] == layer_counts(SHAPES, ks[-1], "uniform")
    for before, after in zip(steps, steps[1:]):
        assert all(not (a & ~b).any() for a, b in zip(after, before))


def test_inverted_survivor_ranking_keeps_the_lowest_saliencies():
    from sparseforce.pruning import _select
    from sparseforce.pruning._scope import Keep
    g = torch.Generator().manual_seed(3)
    w, grad = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    prev = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 0]] * 3, dtype=torch.bool)  # 2 of every 4 survive
    masks = _select.inverted_saliency_topk(lambda s, keep: _select.topk(s, keep, "reference"), [w], [grad],
                                           Keep(6, ("nm", 1, 4), None), [prev], False)
    sal = (w * grad).abs().double().numpy().reshape(-1, 4)
    want = np.zeros_like(sal, dtype=bool)
    for i, (row, alive) in enumerate(zip(sal, prev.numpy().reshape(-1, 4))):
        candidates = np.flatnonzero(alive)
        want[i, candidates[np.argsort(row[candidates], kind="stable")[:1]]] = True
    assert np.array_equal(masks[0].numpy().reshape(-1, 4), want)
