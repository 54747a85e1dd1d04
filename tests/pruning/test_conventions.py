"""Other implementations' conventions as options (k_rounding, explicit schedules, train_mode,
invert), checked against the peers' own formulas written out here: the official FORCE code
(github.com/naver/force, ``iterative_pruning``/``get_mask``) and Synaptic-Flow
(github.com/ganguli-lab/Synaptic-Flow, ``prune_loop``/``Pruner._global_mask``).

The nets are float64 with random weights, so no two scores tie and the peers' threshold masks
(``>=`` / ``<=`` a k-th value) keep exactly their k.
"""
import copy
import math
import random as pyrandom

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import sparseforce as sf
from benchmarks.peers import official_iterative_pruning, prunable_layers
from conftest import BACKEND_DEVICE
from conftest import flat64, flat_bool, oracle_keep
from sparseforce.pruning import (K_ROUNDINGS, densities, keep_count, keep_counts, official_force_densities,
                                 synaptic_flow_densities)

PEERS_EXACT = "the peer's masks, bit for bit"
# Small nets at high sparsity: a layer left empty is expected here, not the point.
pytestmark = pytest.mark.filterwarnings("ignore::sparseforce.masks.LayerCollapseWarning")


def fresh_seed() -> int:
    seed = pyrandom.SystemRandom().randrange(2**31)
    print(f"random seed {seed}")
    return seed


def net(seed, bn=True, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [act(), nn.Conv2d(4, 4, 3, padding=1), act(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)]
    model = nn.Sequential(*layers).double()
    if bn:  # running statistics that are not the identity, so eval mode differs from train mode
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2.0)
    return model


def batch(seed, size=16):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(size, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (size,), generator=g)


def as_flat(masks):
    return flat_bool(list(masks.values()) if isinstance(masks, sf.Masks) else masks)


def split_like(flat, like):
    cuts = np.cumsum([t.numel() for t in like])[:-1]
    return [torch.from_numpy(piece.copy()).view(t.shape) for piece, t in zip(np.split(flat, cuts), like)]


# ---------------------------------------------------------------- the official FORCE code, written out

def nll_on_logits(output, target):
    return F.nll_loss(output, target)


@pytest.mark.parametrize("mode", ["exp", "linear"])
@pytest.mark.parametrize("method, prune_method", [("force", 3), ("iter_snip", 1)])
def test_official_force_code_masks_are_reproduced_exactly(method, prune_method, mode):
    seed = fresh_seed()
    model, (x, y) = net(seed), batch(seed)
    pf = float(10 ** -np.random.default_rng(seed).uniform(0.5, 2.0))  # the official --pruning_factor
    T = 6
    want = official_iterative_pruning(model, [(x, y)], pf, T, mode, prune_method)
    got = getattr(sf, method)(model, [(x, y)], sparsity=1 - pf, iterations=T,
                              schedule=official_force_densities(pf, T, mode), k_rounding="floor",
                              loss_fn=nll_on_logits, backend="reference")
    assert np.array_equal(as_flat(got), flat_bool(want)), PEERS_EXACT
    assert got.num_kept() == int(got.numel() * official_force_densities(pf, T, mode)[-1])


def shuffled_loader(seed, n=64, batch_size=16, classes=2):
    g = torch.Generator().manual_seed(seed + 2)
    xs = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    ys = torch.arange(n) % classes  # balanced, so a shuffled batch of 16 all but surely holds every class
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=batch_size, shuffle=True)


def tie_free_net(seed, classes=2):
    """No exact zero among the official code's scores: Tanh, not ReLU (a unit dead on a batch
    gives its weights a zero score), and as few classes as the batches always hold (nll_loss on
    raw logits has a zero gradient for the output rows of classes absent from the batch). At a
    zero threshold the official ``>=`` keeps every tie (see the test after this one), which with
    other batches at the next step changes its final masks, not only the tie rule's."""
    model = net(seed, act=nn.Tanh)
    torch.manual_seed(seed)
    model[-1] = nn.Linear(4 * 8 * 8, classes).double()
    return model


@pytest.mark.parametrize("num_batches", [1, 2])
@pytest.mark.parametrize("method, prune_method", [("force", 3), ("iter_snip", 1)])
def test_official_force_code_with_a_shuffling_loader_is_reproduced_by_the_readme_recipe(method, prune_method,
                                                                                         num_batches):
    """The official training script's loader shuffles, and its loop takes every batch as
    next(iter(loader)): a new shuffle each time. The README's recipe draws the same batches from
    the same RNG state up front: ``[next(iter(loader)) for _ in range(T * num_batches)]``."""
    seed = fresh_seed()
    model, loader = tie_free_net(seed), shuffled_loader(seed)
    pf, T = float(10 ** -np.random.default_rng(seed).uniform(0.5, 2.0)), 5
    torch.manual_seed(seed)
    want = official_iterative_pruning(model, loader, pf, T, "exp", prune_method, num_batches)
    n = sum(m.weight.numel() for m in prunable_layers(model))
    assert flat_bool(want).sum() == int(n * official_force_densities(pf, T)[-1]), "a tie at the threshold"
    after_official = torch.get_rng_state()
    torch.manual_seed(seed)
    batches = [next(iter(loader)) for _ in range(T * num_batches)]  # the README's recipe
    got = getattr(sf, method)(model, batches, sparsity=1 - pf, iterations=T, batches_per_iteration=num_batches,
                              schedule=official_force_densities(pf, T, "exp"), k_rounding="floor",
                              loss_fn=nll_on_logits)
    assert np.array_equal(as_flat(got), flat_bool(want)), PEERS_EXACT
    assert torch.equal(torch.get_rng_state(), after_official)  # the same draws, and sf.force drew none
    # the batches did change from step to step (else this is the non-shuffling case again)
    assert not all(torch.equal(b[1], batches[0][1]) for b in batches[1:])
    # and the one-batch recipe of a non-shuffling loader does not reproduce this run
    torch.manual_seed(seed)
    first = [next(iter(loader))]
    assert got != getattr(sf, method)(model, first, sparsity=1 - pf, iterations=T,
                                      schedule=official_force_densities(pf, T, "exp"), k_rounding="floor",
                                      loss_fn=nll_on_logits)


def test_readme_gives_the_recipe_for_a_shuffling_loader_and_snip():
    from pathlib import Path
    section = (Path(__file__).resolve().parents[2] / "docs" / "methods" / "reproducing.md").read_text(encoding="utf-8")
    assert section.startswith("# Reproducing other implementations")
    assert "[next(iter(loader)) for _ in range(T" in section
    assert "schedule=official_force_densities(d, 1)" in section  # their one-step SNIP
    assert "torch.set_default_dtype(torch.float64)" in section  # their SynFlow on a float64 model


def dead_channel_net():
    """Three of the last conv's four channels dead (bias -100 before a ReLU): the Linear weights
    reading them and the conv weights writing them have gradient 0, so over 2000 of the 2740
    scores are exactly 0, as whole dead units give at extreme sparsity."""
    model = net(11, bn=False)
    with torch.no_grad():
        model[2].bias[:3] = -100.0
    return model


@pytest.mark.parametrize("method, prune_method, T", [("snip", 3, 1), ("force", 3, 3), ("iter_snip", 1, 3)])
def test_at_a_zero_threshold_the_official_rule_keeps_every_weight_and_we_keep_k(method, prune_method, T):
    model, (x, y) = dead_channel_net(), batch(11)
    layers = prunable_layers(model)
    n = sum(m.weight.numel() for m in layers)
    pf = 0.3  # k = 822 of 2740, more than the scores that are not 0
    net_ = copy.deepcopy(model)
    F.nll_loss(net_(x), y).backward()
    nonzero = int(sum(((m.weight * m.weight.grad) != 0).sum() for m in prunable_layers(net_)))
    k = int(n * official_force_densities(pf, T)[-1])
    assert nonzero < k  # so the k-th largest score, their threshold, is 0
    want = official_iterative_pruning(model, [(x, y)], pf, T, "exp", prune_method)
    assert flat_bool(want).all()  # `>= 0` keeps every weight: a dense "pruned" net
    kw = {} if method == "snip" else {"iterations": T}
    got = getattr(sf, method)(model, [(x, y)], sparsity=1 - pf, schedule=official_force_densities(pf, T),
                              k_rounding="floor", loss_fn=nll_on_logits, **kw)
    assert got.num_kept() == k  # exactly k: every nonzero score, then zeros by global position
    scores = flat64([(m.weight * m.weight.grad).abs() for m in prunable_layers(net_)])
    if T == 1:
        assert np.array_equal(as_flat(got), oracle_keep(scores, k))


def test_official_force_schedule_uses_the_official_float_expressions():
    for pf, T in [(0.01, 10), (0.005, 60), (0.1, 7), (1e-4, 100), (0.5, 1)]:
        want = [np.exp(0 - ((x + 1) * (0 - np.log(pf)) / T)) for x in range(T)]
        assert official_force_densities(pf, T) == [float(v) for v in want]
        assert official_force_densities(pf, T, "linear") == [1 - ((x + 1) * (1 - pf) / T) for x in range(T)]
    assert official_force_densities(0.0, 3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="mode"):
        official_force_densities(0.1, 3, "cosine")


def test_floor_keeps_what_the_official_get_mask_keeps():
    g = np.random.default_rng(fresh_seed())
    for _ in range(2000):
        n, pf, T = int(g.integers(1, 10**8)), float(10 ** -g.uniform(0, 4)), int(g.integers(1, 100))
        steps = official_force_densities(pf, T)
        assert keep_counts(n, 1 - pf, T, steps, "floor") == [int(n * p) for p in steps]


# ---------------------------------------------------------------- Synaptic-Flow, written out

def synflow_global_mask(scores, density):
    """Pruner._global_mask: prune the int((1 - density) * N) smallest (score <= their k-th value)."""
    flat = torch.cat([s.flatten() for s in scores])
    k = int((1.0 - density) * flat.numel())
    if k < 1:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    threshold, _ = torch.kthvalue(flat, k)
    return [~(s <= threshold) for s in scores]


def weight_names(model):
    return [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]


def peer_snip_scores(model, x, y):
    """Synaptic-Flow SNIP in eval mode: |dL/dm| with the weights w ⊙ m, normalized by their sum."""
    model = copy.deepcopy(model).eval()
    names = weight_names(model)
    params = dict(model.named_parameters())
    ones = [torch.ones_like(params[n], requires_grad=True) for n in names]
    out = functional_call(model, {**params, **{n: params[n] * m for n, m in zip(names, ones)}}, (x,))
    grads = torch.autograd.grad(F.cross_entropy(out, y), ones)
    scores = [g.abs() for g in grads]
    norm = torch.sum(torch.cat([s.flatten() for s in scores]))
    return [s / norm for s in scores]


def peer_grasp_scores(model, x, y, temp=200):
    """Synaptic-Flow GraSP in eval mode: Hg ⊙ θ, normalized by |sum| + 1e-10."""
    model = copy.deepcopy(model).eval()
    names = weight_names(model)
    weights = [dict(model.named_parameters())[n] for n in names]
    stopped = torch.cat([g.reshape(-1) for g in
                         torch.autograd.grad(F.cross_entropy(model(x) / temp, y), weights)])
    grads = torch.autograd.grad(F.cross_entropy(model(x) / temp, y), weights, create_graph=True)
    hg = torch.autograd.grad((stopped * torch.cat([g.reshape(-1) for g in grads])).sum(), weights)
    scores = [h * w.detach() for h, w in zip(hg, weights)]
    norm = torch.abs(torch.sum(torch.cat([s.flatten() for s in scores]))) + 1e-10
    return [s / norm for s in scores]


def peer_synflow(model, input_shape, density, epochs, schedule):
    """Synaptic-Flow prune_loop with the SynFlow pruner (eval mode, masks multiplied into the
    weights, every state entry made positive, one all-ones input)."""
    model = copy.deepcopy(model).eval()
    names = weight_names(model)
    state = {n: t.detach().abs() if t.is_floating_point() else t for n, t in
             {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}
    masks = [torch.ones_like(state[n]) for n in names]
    for epoch in range(epochs):
        leaves = [state[n].clone().requires_grad_(True) for n in names]
        # theirs: torch.ones([1] + input_dim), in the default dtype, so a float64 model needs
        # torch.set_default_dtype(torch.float64) around the call
        out = functional_call(model, {**state, **{n: w * m for n, w, m in zip(names, leaves, masks)}},
                              (torch.ones([1] + list(input_shape)),))
        grads = torch.autograd.grad(torch.sum(out), leaves)
        scores = [(g * w).detach().abs() for g, w in zip(grads, leaves)]
        if schedule == "exponential":
            sparse = density ** ((epoch + 1) / epochs)
        else:
            sparse = 1.0 - (1.0 - density) * ((epoch + 1) / epochs)
        masks = [m.double() for m in synflow_global_mask(scores, sparse)]
    return [m.bool() for m in masks]


def compression_density(seed):
    """Synaptic-Flow's `sparsity` (a density): 10**(-compression)."""
    return 10 ** (-float(np.random.default_rng(seed).uniform(0.2, 1.5)))


@pytest.mark.parametrize("method", ["snip", "grasp", "magnitude"])
def test_synaptic_flow_one_shot_masks_are_reproduced_exactly(method):
    check_synaptic_flow_one_shot(method, fresh_seed())


def test_synaptic_flow_one_shot_masks_where_scores_tie_at_the_threshold():
    # 850 GraSP scores are exactly 0 (a dead ReLU channel in eval mode) and 0 is the threshold.
    check_synaptic_flow_one_shot("grasp", 687099172)


def check_synaptic_flow_one_shot(method, seed):
    model, (x, y) = net(seed), batch(seed)
    p = compression_density(seed)
    if method == "snip":
        scores = peer_snip_scores(model, x, y)
        got = sf.snip(model, [(x, y)], sparsity=1 - p, k_rounding="synflow", train_mode=False)
    elif method == "grasp":
        scores = peer_grasp_scores(model, x, y)
        got = sf.grasp(model, [(x, y)], sparsity=1 - p, k_rounding="synflow", train_mode=False)
    else:
        scores = [m.weight.detach().abs() for m in prunable_layers(model)]
        got = sf.magnitude(model, sparsity=1 - p, k_rounding="synflow")
    assert_peer_mask_up_to_threshold_ties(as_flat(got), scores, synflow_global_mask(scores, p), p)


def assert_peer_mask_up_to_threshold_ties(got, scores, want, density):
    """Bit for bit where no score ties the peer's threshold. Where some do (a dead ReLU channel
    gives exact zero scores, often the threshold at high sparsity: seed 687099172 here), the peer's
    `<=` prunes every tie and we prune exactly int((1 - p) N), the ties of lowest position kept."""
    want = flat_bool(want)
    flat = torch.cat([s.flatten() for s in scores]).numpy()
    n_prune = int((1.0 - density) * flat.size)
    if n_prune < 1:
        assert np.array_equal(got, want), PEERS_EXACT
        return
    threshold = np.sort(flat, kind="stable")[n_prune - 1]
    tied = flat == threshold
    if tied.sum() == 1:
        assert np.array_equal(got, want), PEERS_EXACT
        return
    assert np.array_equal(got[~tied], want[~tied]), "away from the threshold: " + PEERS_EXACT
    assert got.sum() == flat.size - n_prune
    ties_kept = got[tied]
    assert np.array_equal(ties_kept, np.sort(ties_kept)[::-1]), "ties are kept by lowest position"


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_synaptic_flow_synflow_masks_are_reproduced_exactly(schedule):
    seed = fresh_seed()
    model = net(seed)
    p, T = compression_density(seed), 5
    with pytest.raises(RuntimeError):  # their all-ones input is float32 by default: it needs ...
        peer_synflow(model, (1, 8, 8), p, T, schedule)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # ... this, as the README's recipe says
    try:
        want = peer_synflow(model, (1, 8, 8), p, T, schedule)
    finally:
        torch.set_default_dtype(default)
    got = sf.synflow(model, input_shape=(1, 8, 8), sparsity=1 - p, iterations=T,
                     schedule=synaptic_flow_densities(p, T, schedule), k_rounding="synflow")
    assert np.array_equal(as_flat(got), flat_bool(want)), PEERS_EXACT


def test_synflow_rounding_is_what_synaptic_flow_keeps_and_ceil_is_not():
    g = np.random.default_rng(fresh_seed())
    for _ in range(5000):
        n, p = int(g.integers(1, 10**8)), float(10 ** -g.uniform(0, 4)) if g.random() < 0.7 else float(g.random())
        # one-shot: the caller passes sparsity = 1 - p, as Synaptic-Flow's 1.0 - sparsity
        assert keep_counts(n, 1 - p, 1, "exp", "synflow") == [n - int((1.0 - p) * n)]
        T = int(g.integers(1, 50))
        steps = synaptic_flow_densities(p, T)
        assert steps == [p ** ((e + 1) / T) for e in range(T)]
        assert synaptic_flow_densities(p, T, "linear") == [1.0 - (1.0 - p) * ((e + 1) / T) for e in range(T)]
        assert keep_counts(n, 1 - p, T, steps, "synflow") == [n - int((1.0 - d) * n) for d in steps]
    # In exact arithmetic both are ceil(N·d); in floats they differ, hence the separate name.
    d = math.nextafter(2 / 3, 1)
    assert keep_count(3, d, "ceil") == 2 and keep_count(3, d, "synflow") == 3
    d = math.nextafter(0.25, 1)
    assert keep_count(4, d, "ceil") == 2 and keep_count(4, d, "synflow") == 1


# ---------------------------------------------------------------- k_rounding, schedules

def test_k_roundings():
    assert K_ROUNDINGS == ("round", "floor", "ceil", "synflow")
    assert [keep_count(10, 0.25, r) for r in ("round", "floor", "ceil", "synflow")] == [2, 2, 3, 3]
    assert [keep_count(10, 0.35, r) for r in ("round", "floor", "ceil")] == [round(3.5), 3, 4]
    assert keep_count(10, 0.5, lambda n, d: n // 3) == 3
    assert keep_counts(1000, 0.99, 2) == keep_counts(1000, 0.99, 2, "exp", "round") == [100, 10]


@pytest.mark.parametrize("method", ["force", "iter_snip", "snip", "grasp", "synflow", "magnitude", "random"])
def test_every_method_takes_k_rounding(method):
    model, data = net(3, bn=False), [batch(3)]
    n = sum(m.weight.numel() for m in prunable_layers(model))
    counts = {}
    for rounding in ("round", "floor", "ceil", "synflow", lambda n_, d: 7):
        kw = {"iterations": 2} if method in ("force", "iter_snip", "synflow") else {}
        masks = sf.prune(model, data, method=method, sparsity=0.3, k_rounding=rounding, **kw)
        counts[rounding if isinstance(rounding, str) else "callable"] = masks.num_kept()
    d = 1 - 0.3
    assert counts == {"round": round(n * d), "floor": math.floor(n * d), "ceil": math.ceil(n * d),
                      "synflow": n - math.floor((1 - d) * n), "callable": 7}


class Untouchable:
    """Data that fails the test if read: arguments are checked before any work."""

    def __iter__(self):
        raise AssertionError("data was read before the arguments were checked")


def call(method, **kw):
    model = net(0)
    if method in ("magnitude", "random"):
        return getattr(sf, method)(model, **{"sparsity": 0.5, **kw})
    if method == "synflow":
        kw.setdefault("input_shape", (1, 8, 8))
    return getattr(sf, method)(model, Untouchable(), **{"sparsity": 0.5, **kw})


ALL = ["force", "iter_snip", "snip", "grasp", "synflow", "magnitude", "random"]
DATA_DRIVEN = ["force", "iter_snip", "snip", "grasp"]
SCORED = ["force", "iter_snip", "snip", "grasp", "synflow", "magnitude"]


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("value, error", [("nearest", ValueError), ("ROUND", ValueError), (None, TypeError),
                                          (0.5, TypeError), (True, TypeError)])
def test_a_bad_k_rounding_is_refused_first(method, value, error):
    with pytest.raises(error, match="k_rounding"):
        call(method, k_rounding=value)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("value, error", [(lambda n, d: n + 1, ValueError), (lambda n, d: -1, ValueError),
                                          (lambda n, d: n * d, TypeError), (lambda n, d: True, TypeError)])
def test_a_k_rounding_callable_returning_a_bad_count_is_refused_first(method, value, error):
    with pytest.raises(error, match="k_rounding"):
        call(method, k_rounding=value)


@pytest.mark.parametrize("method", DATA_DRIVEN)
@pytest.mark.parametrize("value", [1, 0, "yes", None, np.bool_(True)])
def test_a_bad_train_mode_is_refused_first(method, value):
    with pytest.raises(TypeError, match="train_mode"):
        call(method, train_mode=value)


@pytest.mark.parametrize("method", SCORED)
@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_a_bad_invert_is_refused_first(method, value):
    with pytest.raises(TypeError, match="invert"):
        call(method, invert=value)


@pytest.mark.parametrize("method", ["force", "iter_snip", "synflow"])
def test_explicit_schedules_are_checked_first(method):
    with pytest.raises(ValueError, match="iterations=3"):
        call(method, iterations=3, schedule=[0.9, 0.5])
    with pytest.raises(ValueError, match="sparsity=0.5"):
        call(method, iterations=2, schedule=[0.9, 0.4])
    with pytest.raises(ValueError, match=r"schedule\[1\]"):
        call(method, iterations=2, schedule=[0.9, 1.5])
    with pytest.raises(TypeError, match=r"schedule\[0\]"):
        call(method, iterations=2, schedule=["a", 0.5])
    with pytest.raises(ValueError, match="empty"):
        call(method, iterations=1, schedule=[])
    with pytest.raises(TypeError, match="schedule"):
        call(method, iterations=1, schedule=0.5)
    if method != "force":  # nested masks: the kept count may not grow
        with pytest.raises(ValueError, match="nested"):
            call(method, iterations=3, schedule=[0.6, 0.7, 0.5])


def test_explicit_schedules_are_used_as_given():
    assert densities(0.5, 3, [0.9, 0.6, 0.5]) == [0.9, 0.6, 0.5]
    assert densities(0.5, 3, np.array([0.9, 0.6, 0.5])) == [0.9, 0.6, 0.5]
    assert densities(0.5, 2, (torch.tensor(0.8, dtype=torch.float64), 0.5)) == [0.8, 0.5]
    assert keep_counts(100, 0.5, 3, [0.9, 0.95, 0.5], "round") == [90, 95, 50]  # FORCE may grow back
    model, data = net(5, bn=False), [batch(5)]
    ours = sf.force(model, data, sparsity=0.9, iterations=4, schedule=densities(0.9, 4, "exp"))
    assert ours == sf.force(model, data, sparsity=0.9, iterations=4, schedule="exp")


# ---------------------------------------------------------------- train_mode

def hand_progressive(model, data, ks, *, resurrect, train, invert=False):
    """FORCE / Iter SNIP written out: a model copy in the asked mode, weights set to θ0 ⊙ m."""
    net_ = copy.deepcopy(model).train(train)
    layers = prunable_layers(net_)
    theta0 = [m.weight.detach().clone() for m in layers]
    masks = [torch.ones_like(w, dtype=torch.bool) for w in theta0]
    for t, k in enumerate(ks):
        with torch.no_grad():
            for m, w0, keep in zip(layers, theta0, masks):
                m.weight.copy_(w0 * keep)
        net_.zero_grad()
        x, y = data[t % len(data)]
        F.cross_entropy(net_(x), y).backward()
        scores = flat64([(w0 * m.weight.grad).abs() for m, w0 in zip(layers, theta0)])
        keep = oracle_keep(-scores if invert else scores, k, None if resurrect else flat_bool(masks))
        masks = split_like(keep, theta0)
    return flat_bool(masks)


def modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("method", ["force", "iter_snip", "snip"])
def test_eval_mode_scores_match_a_hand_computation_and_differ_from_train_mode(method):
    differ = False
    for _ in range(5):
        seed = fresh_seed()
        model, data = net(seed), [batch(seed), batch(seed + 7)]
        model[3].eval()  # a mix of modes, which every call must put back
        before = modes(model)
        T = 1 if method == "snip" else 3
        n = sum(m.weight.numel() for m in prunable_layers(model))
        ks = keep_counts(n, 0.9, T)
        kw = {} if method == "snip" else {"iterations": T}
        got = getattr(sf, method)(model, data, sparsity=0.9, train_mode=False, **kw)
        assert modes(model) == before
        want = hand_progressive(model, data, ks, resurrect=method != "iter_snip", train=False)
        assert np.array_equal(as_flat(got), want)
        train = getattr(sf, method)(model, data, sparsity=0.9, **kw)
        assert modes(model) == before
        assert np.array_equal(as_flat(train),
                              hand_progressive(model, data, ks, resurrect=method != "iter_snip", train=True))
        differ = differ or got != train
        if differ:
            break
    assert differ, "BatchNorm in eval mode (running statistics) should change some mask"


def test_grasp_train_mode_false_restores_modes_and_differs():
    seed = fresh_seed()
    model, data = net(seed), [batch(seed)]
    model.eval()
    model[1].train()
    before = modes(model)
    eval_masks = sf.grasp(model, data, sparsity=0.8, train_mode=False)
    assert modes(model) == before
    train_masks = sf.grasp(model, data, sparsity=0.8)
    assert modes(model) == before
    # the eval-mode one is the peer's (Synaptic-Flow's default), computed by hand in eval mode
    n = sum(m.weight.numel() for m in prunable_layers(model))
    want = oracle_keep(flat64(peer_grasp_scores(model, *data[0])), round(n * (1 - 0.8)))
    assert np.array_equal(as_flat(eval_masks), want)
    assert eval_masks != train_masks


# ---------------------------------------------------------------- invert

def hand_scores(method, model, x, y):
    if method == "magnitude":
        return [m.weight.detach().abs() for m in prunable_layers(model)]
    if method == "grasp":
        return peer_grasp_scores(model, x, y)  # eval mode; normalized by a positive number
    net_ = copy.deepcopy(model).train()
    F.cross_entropy(net_(x), y).backward()
    return [(m.weight.detach() * m.weight.grad).abs() for m in prunable_layers(net_)]


@pytest.mark.parametrize("method", ["snip", "grasp", "magnitude", "force"])
def test_inverted_one_shot_keeps_exactly_the_k_lowest_scores(method):
    seed = fresh_seed()
    model, (x, y) = net(seed, bn=False), batch(seed)
    scores = flat64(hand_scores(method, model, x, y))
    n = scores.size
    fn = getattr(sf, method)
    args = (model,) if method == "magnitude" else (model, [(x, y)])
    kw = {"iterations": 1} if method == "force" else {"train_mode": False} if method == "grasp" else {}
    for k in (0, 1, int(np.random.default_rng(seed).integers(2, n - 1)), n):
        low = as_flat(fn(*args, sparsity=0.5, k_rounding=lambda n_, d: k, invert=True, **kw))
        assert low.sum() == k
        if 0 < k < n:
            assert scores[low].max() <= scores[~low].min()
        # = the top-k of the negated scores: among equal ones the lowest global position wins
        assert np.array_equal(low, oracle_keep(-scores, k))
        if k == 0 or k == n or scores[low].max() < scores[~low].min():  # no tie at the cut
            high = as_flat(fn(*args, sparsity=0.5, k_rounding=lambda n_, d: n - k, **kw))
            assert np.array_equal(low, ~high)


def test_inverted_magnitude_is_the_bottom_k_by_value_and_breaks_ties_by_position():
    model = net(fresh_seed(), bn=False)
    w = flat64([m.weight for m in prunable_layers(model)])
    k = w.size // 3
    got = as_flat(sf.magnitude(model, sparsity=1 - k / w.size, invert=True))
    assert got.sum() == k and np.abs(w[got]).max() < np.abs(w[~got]).min()
    with torch.no_grad():  # every |θ| equal (signs mixed, a zero of each sign): ties go to the lowest positions
        for m in prunable_layers(model):
            m.weight.copy_(torch.where(m.weight > 0, 0.5, -0.5))
        prunable_layers(model)[0].weight.view(-1)[:2] = torch.tensor([0.0, -0.0])
        prunable_layers(model)[1].weight.zero_()
    got = as_flat(sf.magnitude(model, sparsity=0.5, invert=True, k_rounding=lambda n_, d: 40))
    want = np.zeros(w.size, dtype=bool)
    n0 = prunable_layers(model)[0].weight.numel()
    want[[0, 1]] = True  # the two zeros, -0.0 tying +0.0 ...
    want[n0:n0 + 38] = True  # ... then the all-zero second layer, lowest positions first
    assert np.array_equal(got, want)


@pytest.mark.parametrize("method", ["force", "iter_snip"])
def test_inverted_progressive_steps_keep_the_lowest_saliencies(method):
    seed = fresh_seed()
    model, data = net(seed), [batch(seed), batch(seed + 3)]
    T = 4
    ds = densities(0.95, T, "exp")
    n = sum(m.weight.numel() for m in prunable_layers(model))
    got = sf.prune(model, data, method=method, sparsity=0.95, iterations=T, invert=True)
    want = hand_progressive(model, data, keep_counts(n, 0.95, T), resurrect=method == "force", train=True,
                            invert=True)
    assert np.array_equal(as_flat(got), want)
    # Each step's masks (a run of the first t densities); Iter SNIP's are nested.
    steps = [as_flat(sf.prune(model, data, method=method, sparsity=1 - ds[t - 1], iterations=t, schedule=ds[:t],
                              invert=True)) for t in range(1, T + 1)]
    assert [int(s.sum()) for s in steps] == keep_counts(n, 0.95, T)
    assert np.array_equal(steps[-1], want)
    if method == "iter_snip":
        assert all(not (later & ~earlier).any() for earlier, later in zip(steps, steps[1:]))


def test_inverted_synflow_is_nested_and_keeps_the_lowest_survivors():
    seed = fresh_seed()
    model = net(seed)
    T = 4
    ds = densities(0.9, T, "exp")
    n = sum(m.weight.numel() for m in prunable_layers(model))
    steps = [as_flat(sf.synflow(model, input_shape=(1, 8, 8), sparsity=1 - ds[t - 1], iterations=t,
                                schedule=ds[:t], invert=True)) for t in range(1, T + 1)]
    assert [int(s.sum()) for s in steps] == keep_counts(n, 0.9, T)
    assert all(not (later & ~earlier).any() for earlier, later in zip(steps, steps[1:]))
    # each step keeps the k_t lowest scores of the survivors (the peer's formula for the scores)
    prev = np.ones(n, dtype=bool)
    for t, (keep, k) in enumerate(zip(steps, keep_counts(n, 0.9, T))):
        scores = flat64(synflow_scores(model, split_like(prev, [m.weight for m in prunable_layers(model)])))
        assert np.array_equal(keep, oracle_keep(-scores, k, prev)), f"step {t + 1}"
        prev = keep


def synflow_scores(model, masks):
    model = copy.deepcopy(model).eval()
    names = weight_names(model)
    state = {n: t.detach().abs() if t.is_floating_point() else t for n, t in
             {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}
    leaves = [(state[n] * m).requires_grad_(True) for n, m in zip(names, masks)]
    out = functional_call(model, {**state, **dict(zip(names, leaves))}, (torch.ones(1, 1, 8, 8, dtype=torch.float64),))
    grads = torch.autograd.grad(out.sum(), leaves)
    return [(state[n] * g).abs() for n, g in zip(names, grads)]


@pytest.mark.parametrize("backend, device", [p for p in BACKEND_DEVICE if p.values[0] != "reference"])
def test_inverted_masks_are_the_same_on_every_backend(backend, device):
    seed = fresh_seed()
    model = net(seed).to(device)
    data = [tuple(t.to(device) for t in batch(seed))]
    for method in ("force", "iter_snip"):
        ref = sf.prune(model, data, method=method, sparsity=0.9, iterations=3, invert=True, backend="reference")
        assert ref == sf.prune(model, data, method=method, sparsity=0.9, iterations=3, invert=True, backend=backend)
    assert sf.magnitude(model, sparsity=0.9, invert=True, backend="reference") == \
        sf.magnitude(model, sparsity=0.9, invert=True, backend=backend)


# ---------------------------------------------------------------- the command line

def test_prune_command_takes_k_rounding_and_eval_mode_scores(tmp_path, capsys):
    from sparseforce.cli import main
    counts = {}
    for rounding in ("round", "floor", "ceil", "synflow"):
        out = tmp_path / f"{rounding}.pt"
        assert main(["prune", "--dataset", "digits", "--method", "snip", "--sparsity", "0.97", "--k-rounding",
                     rounding, "--eval-mode-scores", "--out", str(out)]) == 0
        counts[rounding] = sf.Masks.load(out).num_kept()
    n = sf.Masks.load(tmp_path / "round.pt").numel()
    d = 1 - 0.97
    assert counts == {"round": round(n * d), "floor": math.floor(n * d), "ceil": math.ceil(n * d),
                      "synflow": n - math.floor((1 - d) * n)}
    capsys.readouterr()
    assert main(["prune", "--dataset", "digits", "--method", "magnitude", "--eval-mode-scores",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "--eval-mode-scores does not apply to --method magnitude" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(SystemExit):
        main(["prune", "--k-rounding", "nearest"])
    assert "--k-rounding" in capsys.readouterr().err


# ---------------------------------------------------------------- snip(schedule=): their one-step SNIP

def test_snip_takes_a_one_step_schedule_and_reproduces_the_official_one_step_count():
    """The official FORCE code's SNIP (num_steps=1) keeps int(N * exp(-log(1/d))), a float that
    need not be d: N = 1000, d = 0.1 keeps 100 where floor(N·(1 - 0.9)) is 99."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 10, bias=False)).double()  # N = 1000
    torch.manual_seed(0)
    data = [(torch.randn(8, 100, dtype=torch.float64), torch.randint(0, 10, (8,)))]
    steps = official_force_densities(0.1, 1)
    assert int(1000 * steps[0]) == 100 and math.floor(1000 * (1 - 0.9)) == 99  # the case, as it stands
    assert sf.snip(model, data, sparsity=1 - 0.1, k_rounding="floor").num_kept() == 99
    got = sf.snip(model, data, sparsity=1 - 0.1, schedule=steps, k_rounding="floor", loss_fn=nll_on_logits)
    assert got.num_kept() == 100
    assert got == sf.force(model, data, sparsity=1 - 0.1, iterations=1, schedule=steps, k_rounding="floor",
                           loss_fn=nll_on_logits)
    assert got == sf.prune(model, data, method="snip", sparsity=1 - 0.1, schedule=steps, k_rounding="floor",
                           loss_fn=nll_on_logits)
    # the official loop itself, one step
    x, y = data[0]
    want = official_iterative_pruning(model, [(x, y)], 0.1, 1, "exp", 3)
    assert np.array_equal(as_flat(got), flat_bool(want)), PEERS_EXACT


def test_snip_schedule_names_and_sequence_forms():
    model, data = net(4, bn=False), [batch(4)]
    plain = sf.snip(model, data, sparsity=0.9)
    for schedule in ("exp", "linear", [0.1], (0.1,), np.array([0.1]), torch.tensor([0.1], dtype=torch.float64)):
        assert sf.snip(model, data, sparsity=0.9, schedule=schedule) == plain, schedule


@pytest.mark.parametrize("via_prune", [False, True])
def test_snip_refuses_a_schedule_of_several_steps_pointing_to_force_and_iter_snip(via_prune):
    kw = dict(sparsity=0.5, schedule=[0.8, 0.5])
    with pytest.raises(ValueError, match=r"snip is one step, but schedule gives 2 densities.*force / iter_snip"):
        if via_prune:
            sf.prune(net(0), Untouchable(), method="snip", **kw)
        else:
            call("snip", **kw)


def test_snip_schedules_are_checked_first():
    with pytest.raises(ValueError, match="sparsity=0.5"):
        call("snip", schedule=[0.4])
    with pytest.raises(ValueError, match=r"schedule\[0\]"):
        call("snip", schedule=[1.5])
    with pytest.raises(TypeError, match=r"schedule\[0\]"):
        call("snip", schedule=["a"])
    with pytest.raises(ValueError, match="empty"):
        call("snip", schedule=[])
    with pytest.raises(ValueError, match="schedule must be one of"):
        call("snip", schedule="cosine")
    with pytest.raises(TypeError, match="schedule"):
        call("snip", schedule=0.5)


def test_readme_tie_frequencies_are_the_committed_measurement():
    """The tie counts of docs/methods/reproducing.md are those of benchmarks/ties_at_threshold.py's
    committed output."""
    import json
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    readme = " ".join((root / "docs" / "methods" / "reproducing.md").read_text(encoding="utf-8").split())
    path = re.search(r"`(benchmarks/results/ties-at-threshold-[\d-]+\.json)`", readme).group(1)
    summary = json.loads((root / path).read_text(encoding="utf-8"))["summary"]
    assert (f"a zero threshold at some step in {summary['with_a_zero_threshold_at_some_step']} of the "
            f"{summary['settings']} settings ({summary['of_those_with_a_zero_threshold_at_some_step']} of the "
            f"{summary['settings_at_sparsity_ge_0.99']} at ≥ 99 %), and a dense final mask in "
            f"{summary['with_a_dense_final_mask']}") in readme
    assert (root / path).with_suffix(".txt").exists()  # the run's printout, next to it
