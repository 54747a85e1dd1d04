"""sparseforce.compat.prune against the real torch.nn.utils.prune (the oracle).

Where no score ties at the threshold, every mask, weight, ``weight_orig`` and state_dict is
torch's; where scores tie, exactly the amount is pruned and the lowest positions are kept
(conftest's numpy ``oracle_keep``). The weights are drawn from a pool of distinct magnitudes
exact in every float dtype, so "no ties" holds by construction, for fp16 and bf16 too.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune as tp

from conftest import BACKEND_DEVICE, flat64, flat_bool, oracle_keep
from sparseforce.compat import prune

pytestmark = pytest.mark.usefixtures("one_thread")

CPU_BACKENDS = [p for p in BACKEND_DEVICE if p.values[1] == "cpu"]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc1 = nn.Linear(96, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Distinct:
    """Values m * 2^e (m in 128..255, e in -12..6, random sign), exact in bf16, fp16, fp32 and
    fp64, drawn without replacement: no two |values| are equal."""

    def __init__(self, gen):
        m = torch.arange(128, 256, dtype=torch.float64)
        pool = torch.cat([m * 2.0 ** e for e in range(-12, 7)])
        self.pool = pool[torch.randperm(pool.numel(), generator=gen)]
        self.sign = torch.randint(0, 2, (pool.numel(),), generator=gen) * 2 - 1
        self.used = 0

    def __call__(self, shape, dtype=torch.float32):
        n = int(np.prod(shape))
        v = self.pool[self.used:self.used + n] * self.sign[self.used:self.used + n]
        self.used += n
        assert self.used <= self.pool.numel()
        return v.reshape(shape).to(dtype)


def make_net(gen, dtypes=None):
    net, draw = Net(), Distinct(gen)
    dtypes = dtypes or {}
    with torch.no_grad():
        for name, module in net.named_children():
            module.to(dtypes.get(name, torch.float32))
            for p in module.parameters():
                p.copy_(draw(p.shape, p.dtype))
    return net, draw


def pairs(net, biases=True):
    out = []
    for _, m in net.named_children():
        out.append((m, "weight"))
        if biases:
            out.append((m, "bias"))
    return out


def twins(net):
    """The same network twice, and a function mapping a (module, name) pair of the first onto the second."""
    other = copy.deepcopy(net)
    mods = dict(net.named_modules())
    names = {id(m): n for n, m in mods.items()}
    other_mods = dict(other.named_modules())
    return other, lambda ps: [(other_mods[names[id(m)]], n) for m, n in ps]


def assert_same(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k
    for (n, ma), mb in zip(ours.named_modules(), theirs.modules()):
        assert tp.is_pruned(ma) == tp.is_pruned(mb), n
        for name in ("weight", "bias"):
            if hasattr(mb, name):
                assert torch.equal(getattr(ma, name), getattr(mb, name)), f"{n}.{name}"


def snapshot(net):
    return ([(n, t.clone()) for n, t in net.state_dict().items()],
            [(n, list(m._forward_pre_hooks.values()), list(m._parameters), list(m._buffers))
             for n, m in net.named_modules()])


def assert_unchanged(net, before):
    after = snapshot(net)
    assert [n for n, _ in after[0]] == [n for n, _ in before[0]]
    assert all(a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
               for (_, a), (_, b) in zip(after[0], before[0]))
    assert len(after[1]) == len(before[1])
    for (n, ha, pa, ba), (_, hb, pb, bb) in zip(after[1], before[1]):
        assert [id(h) for h in ha] == [id(h) for h in hb] and pa == pb and ba == bb, n


@pytest.fixture
def gen(rng):
    return rng


# --- global_unstructured with L1Unstructured ---------------------------------------------------

TOTAL = sum(p.numel() for p in Net().parameters())


@pytest.mark.parametrize("method", [tp.L1Unstructured, prune.L1Unstructured], ids=["torch-L1", "sf-L1"])
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.77, 1.0, 0, 1, 257, TOTAL])
def test_global_l1_is_torchs(method, amount, gen):
    ours, _ = make_net(gen)
    theirs, onto = twins(ours)
    ps = pairs(ours)
    prune.global_unstructured(ps, pruning_method=method, amount=amount)
    tp.global_unstructured(onto(ps), pruning_method=tp.L1Unstructured, amount=amount)
    assert_same(ours, theirs)
    kept = sum(int(m.weight_mask.sum() + m.bias_mask.sum()) for m in ours.children())
    assert TOTAL - kept == (amount if isinstance(amount, int) else round(amount * TOTAL))
    x = torch.randn(2, 3, 8, 8, generator=gen)
    assert torch.equal(ours(x), theirs(x))


def test_global_weights_only_and_a_generator_of_pairs(gen):
    ours, _ = make_net(gen)
    theirs, onto = twins(ours)
    ps = pairs(ours, biases=False)
    prune.global_unstructured((p for p in ps), pruning_method=tp.L1Unstructured, amount=0.6)
    tp.global_unstructured(onto(ps), pruning_method=tp.L1Unstructured, amount=0.6)
    assert_same(ours, theirs)


@pytest.mark.parametrize("amount", [0.4, 300])
def test_global_importance_scores_for_some_pairs(amount, gen):
    ours, draw = make_net(gen)
    theirs, onto = twins(ours)
    ps = pairs(ours)
    some = [ps[0], ps[6], ps[7]]
    scores = {p: draw(getattr(*p).shape) for p in some}
    prune.global_unstructured(ps, pruning_method=prune.L1Unstructured, importance_scores=scores, amount=amount)
    tp.global_unstructured(onto(ps), pruning_method=tp.L1Unstructured,
                           importance_scores=dict(zip(onto(some), scores.values())), amount=amount)
    assert_same(ours, theirs)


def test_global_mixed_dtypes(gen):
    dtypes = {"conv1": torch.bfloat16, "conv2": torch.float16, "fc1": torch.float64, "fc2": torch.float32}
    ours, _ = make_net(gen, dtypes)
    theirs, onto = twins(ours)
    for amount in (0.35, 0.5, 100):
        prune.global_unstructured(pairs(ours), pruning_method=prune.L1Unstructured, amount=amount)
        tp.global_unstructured(onto(pairs(ours)), pruning_method=tp.L1Unstructured, amount=amount)
        assert_same(ours, theirs)
    assert ours.conv1.weight_mask.dtype == torch.bfloat16


def _global(impl, ps, amount):
    (prune if impl == "ours" else tp).global_unstructured(ps, pruning_method=tp.L1Unstructured, amount=amount)


def _l1(impl, ps, amount):
    for m, n in ps:
        (prune if impl == "ours" else tp).l1_unstructured(m, n, amount=amount)


@pytest.mark.parametrize("steps", [
    [("ours", _global, 0.3), ("ours", _global, 0.5), ("ours", _global, 120)],
    [("torch", _global, 0.3), ("ours", _global, 0.5), ("ours", _global, 0.2)],
    [("ours", _global, 0.3), ("torch", _global, 0.5), ("ours", _global, 0.4)],
    [("ours", _global, 0.3), ("ours", _l1, 0.5), ("ours", _global, 0.4), ("torch", _l1, 0.1)],
    [("torch", _l1, 0.3), ("ours", _global, 0.5), ("ours", _l1, 0.25)],
], ids=["ours-ours", "torch-then-ours", "ours-then-torch", "global-and-per-tensor", "per-tensor-then-global"])
def test_iterative_rounds(steps, gen):
    """Each round prunes a fraction of the weights not pruned yet (torch's PruningContainer)."""
    ours, _ = make_net(gen)
    theirs, onto = twins(ours)
    for impl, fn, amount in steps:
        before = sum(int(getattr(m, f"{n}_mask", torch.ones(1)).count_nonzero()) if hasattr(m, f"{n}_mask")
                     else getattr(m, n).numel() for m, n in pairs(ours))
        fn(impl, pairs(ours), amount)
        fn("torch", onto(pairs(ours)), amount)
        assert_same(ours, theirs)
        after = sum(int(m.weight_mask.count_nonzero() + m.bias_mask.count_nonzero()) for m in ours.children())
        if fn is _global:
            assert before - after == (amount if isinstance(amount, int) else round(amount * before))


# --- per tensor ------------------------------------------------------------------------------

@pytest.mark.parametrize("amount", [0.0, 0.45, 1.0, 7])
def test_l1_unstructured_fresh_and_pruned(amount, gen):
    ours, draw = make_net(gen)
    theirs, onto = twins(ours)
    prune.l1_unstructured(ours.fc1, "weight", amount=amount)
    tp.l1_unstructured(theirs.fc1, "weight", amount=amount)
    assert_same(ours, theirs)
    prune.l1_unstructured(ours.fc1, "weight", amount=0.5)
    tp.l1_unstructured(theirs.fc1, "weight", amount=0.5)
    assert_same(ours, theirs)
    s = draw(ours.conv2.weight.shape)
    assert prune.l1_unstructured(ours.conv2, "weight", amount=0.3, importance_scores=s) is ours.conv2
    tp.l1_unstructured(theirs.conv2, "weight", amount=0.3, importance_scores=s)
    assert_same(ours, theirs)


def test_per_tensor_scores_module_attribute_as_torch(gen):
    """torch ranks ``module.<name>`` as it is: after a change to ``weight_orig`` without a forward,
    that is the stale masked tensor, for us too."""
    ours, _ = make_net(gen)
    theirs, onto = twins(ours)
    for net in (ours, theirs):
        tp.l1_unstructured(net.fc1, "weight", amount=0.3)
        with torch.no_grad():
            net.fc1.weight_orig.mul_(torch.linspace(0.01, 100, net.fc1.weight_orig.numel()).view_as(net.fc1.weight))
    prune.l1_unstructured(ours.fc1, "weight", amount=0.5)
    tp.l1_unstructured(theirs.fc1, "weight", amount=0.5)
    assert_same(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("amount", [0.3, 0.0, 1.0, 11])
def test_random_unstructured_is_torchs_and_leaves_the_same_rng_state(dtype, amount, gen):
    ours, _ = make_net(gen, {"fc1": dtype, "conv2": dtype})
    theirs, onto = twins(ours)
    seed = int(torch.randint(0, 2 ** 31, (1,), generator=gen))
    for round_ in range(2):  # fresh, then already pruned
        for net, fn in ((ours, prune.random_unstructured), (theirs, tp.random_unstructured)):
            torch.manual_seed(seed + round_)
            fn(net.fc1, "weight", amount=amount)
            fn(net.conv2, "bias", amount=amount if isinstance(amount, float) else 2)
            state = torch.get_rng_state()
            if net is ours:
                ours_state = state
        assert torch.equal(ours_state, state)
        assert_same(ours, theirs)


@pytest.mark.parametrize("dtypes", [{}, {"fc1": torch.float64}], ids=["fp32", "fp32+fp64"])
def test_global_random_is_torchs(dtypes, gen):
    ours, _ = make_net(gen, dtypes)
    theirs, onto = twins(ours)
    seed = int(torch.randint(0, 2 ** 31, (1,), generator=gen))
    for amount in (0.4, 50, 0.5):
        torch.manual_seed(seed)
        prune.global_unstructured(pairs(ours), pruning_method=tp.RandomUnstructured, amount=amount)
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        tp.global_unstructured(onto(pairs(ours)), pruning_method=tp.RandomUnstructured, amount=amount)
        assert torch.equal(state, torch.get_rng_state())
        assert_same(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_random_half_draws_tie_and_the_lowest_positions_are_kept(dtype, gen):
    """bf16/fp16 draws repeat often, so torch's topk picks among ties; ours prunes exactly the
    amount of largest draws of torch's own stream (the same RNG state after), ties by position."""
    lin = nn.Linear(40, 30).to(dtype)
    lin_t = copy.deepcopy(lin)
    seed = int(torch.randint(0, 2 ** 31, (1,), generator=gen))
    torch.manual_seed(seed)
    u = torch.rand(1200, dtype=dtype)
    want_state = torch.get_rng_state()
    torch.manual_seed(seed)
    prune.random_unstructured(lin, "weight", amount=0.4)
    assert torch.equal(torch.get_rng_state(), want_state)
    torch.manual_seed(seed)
    tp.random_unstructured(lin_t, "weight", amount=0.4)
    assert torch.equal(torch.get_rng_state(), want_state)
    want = oracle_keep(-u.double().numpy(), 1200 - 480)
    np.testing.assert_array_equal(flat_bool([lin.weight_mask == 1]), want)
    assert int(lin_t.weight_mask.sum()) == 720


def test_no_parameters_is_a_no_op():
    prune.global_unstructured([], pruning_method=prune.L1Unstructured, amount=0.5)  # torch: torch.cat() error


def test_exact_random_class_in_torchs_global_unstructured(gen):
    ours, _ = make_net(gen)
    theirs, onto = twins(ours)
    torch.manual_seed(7)
    tp.global_unstructured(pairs(ours), pruning_method=prune.RandomUnstructured, amount=0.45)
    torch.manual_seed(7)
    tp.global_unstructured(onto(pairs(ours)), pruning_method=tp.RandomUnstructured, amount=0.45)
    assert_same(ours, theirs)


# --- remove, is_pruned, checkpoints ----------------------------------------------------------

def test_remove_is_pruned_and_checkpoints_both_ways(gen, tmp_path):
    ours, _ = make_net(gen)
    theirs, onto = twins(ours)
    fresh_ours, fresh_theirs = copy.deepcopy(ours), copy.deepcopy(ours)
    prune.global_unstructured(pairs(ours), pruning_method=prune.L1Unstructured, amount=0.6)
    tp.global_unstructured(onto(pairs(ours)), pruning_method=tp.L1Unstructured, amount=0.6)
    assert prune.is_pruned(ours) and tp.is_pruned(ours)
    torch.save(theirs.state_dict(), tmp_path / "torch.pt")
    torch.save(ours.state_dict(), tmp_path / "ours.pt")
    # a checkpoint of torch's pruned model loads into a model pruned by us, and vice versa
    prune.global_unstructured(pairs(fresh_ours), pruning_method=prune.L1Unstructured, amount=0.1)
    tp.global_unstructured(pairs(fresh_theirs), pruning_method=tp.L1Unstructured, amount=0.1)
    fresh_ours.load_state_dict(torch.load(tmp_path / "torch.pt"))
    fresh_theirs.load_state_dict(torch.load(tmp_path / "ours.pt"))
    x = torch.randn(3, 3, 8, 8, generator=gen)
    want = theirs(x)
    for net in (ours, fresh_ours, fresh_theirs):
        assert torch.equal(net(x), want)
    for net in (ours, theirs):
        for m, n in pairs(net):
            prune.remove(m, n)
    assert not tp.is_pruned(ours)
    assert_same(ours, theirs)
    assert torch.equal(ours(x), want)


# --- ties, NaN, ±inf, -0.0 -------------------------------------------------------------------

def test_ties_exactly_the_amount_lowest_positions_kept(gen):
    net = Net()
    with torch.no_grad():
        for p in net.parameters():  # few distinct values: ties everywhere, many zeros
            p.copy_(torch.randint(-2, 3, p.shape, generator=gen).float())
    ps = pairs(net)
    tensors = [getattr(m, n).detach().clone() for m, n in ps]
    competing = np.ones(sum(t.numel() for t in tensors), dtype=bool)
    for amount in (0.5, 333, 0.3):
        nprune = amount if isinstance(amount, int) else round(amount * int(competing.sum()))
        prune.global_unstructured(ps, pruning_method=prune.L1Unstructured, amount=amount)
        want = oracle_keep(np.abs(flat64(tensors)), int(competing.sum()) - nprune, competing)
        got = flat_bool([getattr(m, f"{n}_mask") == 1 for m, n in ps])
        np.testing.assert_array_equal(got, want)
        competing = want


def test_all_equal_weights_per_tensor():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.fill_(0.5)
    prune.l1_unstructured(lin, "weight", amount=5)
    assert lin.weight_mask.flatten().tolist() == [1] * 7 + [0] * 5


def test_documented_tie_example_torch_keeps_another_tie():
    """The docs' example: weights [0, 0, 1], prune 1. torch 2.13's topk on the CPU returns the
    first zero (torch keeps the second); we keep the lowest position (we prune the second)."""
    t_lin, s_lin = nn.Linear(3, 1, bias=False), nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        t_lin.weight.copy_(torch.tensor([[0.0, 0.0, 1.0]]))
        s_lin.weight.copy_(t_lin.weight)
    tp.l1_unstructured(t_lin, "weight", amount=1)
    prune.l1_unstructured(s_lin, "weight", amount=1)
    assert s_lin.weight_mask.tolist() == [[1.0, 0.0, 1.0]]
    assert t_lin.weight_mask.tolist() == [[0.0, 1.0, 1.0]]


def test_nan_raises_naming_the_parameter_and_changes_nothing(gen):
    net, _ = make_net(gen)
    with torch.no_grad():
        net.fc1.weight[3, 4] = float("nan")
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"\(Linear, 'weight'\) \(parameters\[4\]\) contain NaN"):
        prune.global_unstructured(pairs(net), pruning_method=prune.L1Unstructured, amount=0.5)
    assert_unchanged(net, before)
    with pytest.raises(ValueError, match=r"Linear, 'weight'.*NaN"):
        prune.l1_unstructured(net.fc1, "weight", amount=3)
    with pytest.raises(ValueError, match=r"Linear, 'weight'.*NaN"):
        prune.global_unstructured(pairs(net), pruning_method=prune.L1Unstructured, amount=0)
    assert_unchanged(net, before)


def test_nan_and_inf_in_pruned_positions_do_not_compete(gen):
    """torch ranks only the entries not pruned yet; ``weight`` (= weight_orig * mask) is NaN where
    a pruned ``weight_orig`` is ±inf or NaN, and that is no error."""
    ours, _ = make_net(gen)
    theirs, onto = twins(ours)
    for net in (ours, theirs):
        tp.l1_unstructured(net.fc1, "weight", amount=0.5)
        pruned = (net.fc1.weight_mask == 0).nonzero()
        with torch.no_grad():
            net.fc1.weight_orig[tuple(pruned[0])] = float("nan")
            net.fc1.weight_orig[tuple(pruned[1])] = float("inf")
        net(torch.zeros(1, 3, 8, 8))  # the hook recomputes weight: NaN at both
    assert ours.fc1.weight.isnan().sum() == 2
    prune.global_unstructured(pairs(ours), pruning_method=prune.L1Unstructured, amount=0.5)
    tp.global_unstructured(onto(pairs(ours)), pruning_method=tp.L1Unstructured, amount=0.5)
    assert_same_masks(ours, theirs)
    prune.l1_unstructured(ours.fc1, "weight", amount=0.5)
    tp.l1_unstructured(theirs.fc1, "weight", amount=0.5)
    assert_same_masks(ours, theirs)


def assert_same_masks(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        if k.endswith("_mask"):
            assert torch.equal(a[k], b[k]), k


def test_inf_and_signed_zeros_are_ordinary():
    a, b = nn.Linear(3, 2), nn.Linear(2, 2)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[float("inf"), -0.0, 0.0], [-float("inf"), 1.0, -0.0]]))
        a.bias.copy_(torch.tensor([0.0, -2.0]))
        b.weight.copy_(torch.tensor([[-0.0, 3.0], [0.0, -float("inf")]]))
        b.bias.copy_(torch.tensor([-0.0, 0.5]))
    ps = [(a, "weight"), (a, "bias"), (b, "weight"), (b, "bias")]
    values = flat64([getattr(m, n) for m, n in ps])
    prune.global_unstructured(ps, pruning_method=prune.L1Unstructured, amount=6)
    got = flat_bool([getattr(m, f"{n}_mask") == 1 for m, n in ps])
    np.testing.assert_array_equal(got, oracle_keep(np.abs(values), values.size - 6))


# --- backends ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", CPU_BACKENDS)
def test_every_backend_gives_the_same_masks(backend, device, gen):
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randint(-3, 4, p.shape, generator=gen).float() * torch.rand(1, generator=gen))
    ref = copy.deepcopy(net)
    ps, rps = pairs(net), pairs(ref)
    prune.global_unstructured(ps, pruning_method=prune.L1Unstructured, amount=0.4, backend=backend)
    prune.global_unstructured(rps, pruning_method=prune.L1Unstructured, amount=0.4, backend="reference")
    prune.l1_unstructured(net.fc1, "weight", amount=0.5, backend=backend)
    prune.l1_unstructured(ref.fc1, "weight", amount=0.5, backend="reference")
    torch.manual_seed(3)
    prune.random_unstructured(net.conv2, "weight", amount=0.5, backend=backend)
    prune.global_unstructured(ps, pruning_method=tp.RandomUnstructured, amount=0.3, backend=backend)
    torch.manual_seed(3)
    prune.random_unstructured(ref.conv2, "weight", amount=0.5, backend="reference")
    prune.global_unstructured(rps, pruning_method=tp.RandomUnstructured, amount=0.3, backend="reference")
    assert_same(net, ref)


# --- methods of one's own, and our class inside torch's function -------------------------------

class AboveMean(tp.BasePruningMethod):
    """Prunes the entries whose |score| is below the mean |score|."""
    PRUNING_TYPE = "unstructured"

    def __init__(self, scale=1.0):
        self.scale = scale

    def compute_mask(self, t, default_mask):
        return default_mask * (t.abs() >= self.scale * t.abs().mean()).to(default_mask.dtype)


def test_custom_method_runs_as_torch_runs_it(gen):
    ours, draw = make_net(gen)
    theirs, onto = twins(ours)
    scores = {pairs(ours)[2]: draw(ours.conv2.weight.shape)}
    for scale in (1.0, 0.5):
        prune.global_unstructured(pairs(ours), pruning_method=AboveMean, importance_scores=scores, scale=scale)
        tp.global_unstructured(onto(pairs(ours)), pruning_method=AboveMean,
                               importance_scores=dict(zip(onto(scores), scores.values())), scale=scale)
        assert_same(ours, theirs)
    hooks = [type(h) for m in ours.modules() for h in m._forward_pre_hooks.values()]
    assert hooks == [type(h) for m in theirs.modules() for h in m._forward_pre_hooks.values()]


def test_exact_l1_class_in_torchs_global_unstructured_prunes_exactly_by_position():
    lin, conv = nn.Linear(5, 4), nn.Conv2d(2, 2, 2)
    with torch.no_grad():
        for p in (*lin.parameters(), *conv.parameters()):
            p.copy_(torch.arange(p.numel()).remainder(3).float().view_as(p))  # 0, 1, 2, 0, ...
    ps = [(lin, "weight"), (conv, "weight"), (lin, "bias")]
    values = flat64([getattr(m, n) for m, n in ps])
    tp.global_unstructured(ps, pruning_method=prune.L1Unstructured, amount=23)
    got = flat_bool([getattr(m, f"{n}_mask") == 1 for m, n in ps])
    np.testing.assert_array_equal(got, oracle_keep(np.abs(values), values.size - 23))


# --- bad input: one line naming the problem, nothing changed ----------------------------------

def _bad_cases(net):
    ps = pairs(net)
    other = nn.Linear(3, 3).to("meta")
    net.register_buffer("buf", torch.zeros(2))
    L1 = prune.L1Unstructured
    g = prune.global_unstructured
    return [
        (lambda: g(5, L1, amount=0.5), TypeError, "not an Iterable"),
        (lambda: g([net.fc1], L1, amount=0.5), TypeError, r"parameters\[0\] must be a \(module, name\) pair"),
        (lambda: g([(net.fc1, "weight", 1)], L1, amount=0.5), TypeError, r"parameters\[0\]"),
        (lambda: g([(net.fc1, "weight"), (net.fc2, "weight"), (net.fc1, "weight")], L1, amount=0.5),
         ValueError, r"parameters\[2\] \(Linear, 'weight'\) is listed twice"),
        (lambda: g(ps + [(net, "buf")], L1, amount=0.5), ValueError, "'buf' is a buffer"),
        (lambda: g(ps + [(net.fc1, "nope")], L1, amount=0.5), ValueError, "'nope' is missing"),
        (lambda: g(ps, L1, importance_scores={ps[0]: torch.ones(3)}, amount=0.5), ValueError,
         r"importance scores of \(Conv2d, 'weight'\) have shape \(3,\)"),
        (lambda: g(ps, L1, importance_scores={ps[0]: torch.ones(4, 3, 3, 3, dtype=torch.int64)}, amount=0.5),
         TypeError, "must be a floating-point tensor, got torch.int64"),
        (lambda: g(ps, L1, importance_scores=[1], amount=0.5), TypeError, "importance_scores must be of type dict"),
        (lambda: g(ps + [(other, "weight")], L1, amount=0.5), ValueError, "several devices"),
        (lambda: g(ps, L1, importance_scores={ps[0]: torch.ones(4, 3, 3, 3, device="meta")}, amount=0.5),
         ValueError, "several devices"),
        (lambda: prune.l1_unstructured(net.fc1, "weight", amount=0.5,
                                       importance_scores=torch.ones(12, 96, device="meta")), ValueError, "several devices"),
        (lambda: g(ps, L1, amount=-1), ValueError, "amount"),
        (lambda: g(ps, L1, amount=1.5), ValueError, "amount"),
        (lambda: g(ps, L1, amount=TOTAL + 1), ValueError, "should be smaller than the number of parameters"),
        (lambda: g(ps, L1, amount="half"), TypeError, "amount"),
        (lambda: g(ps, nn.Linear, amount=0.5), TypeError, "BasePruningMethod subclass"),
        (lambda: g(ps, L1(0.5), amount=0.5), TypeError, "BasePruningMethod subclass"),
        (lambda: g(ps, tp.LnStructured, amount=0.5, n=1, dim=0), TypeError, 'Only "unstructured"'),
        (lambda: prune.l1_unstructured(net.fc1, "bias", amount=13), ValueError, "should be smaller"),
        (lambda: prune.l1_unstructured(net.fc1, "weight", amount=0.5, importance_scores=torch.ones(2)),
         ValueError, "have shape"),
        (lambda: prune.l1_unstructured(net, "buf", amount=0.5), ValueError, "'buf' is a buffer"),
        (lambda: prune.l1_unstructured("fc1", "weight", amount=0.5), TypeError, "module must be a torch.nn.Module"),
        (lambda: prune.random_unstructured(net.fc1, 0, amount=0.5), TypeError, "name must be a str"),
        (lambda: prune.random_unstructured(net.fc1, "weight", amount=1.5), ValueError, "amount"),
    ]


@pytest.mark.parametrize("case", range(25))
@pytest.mark.parametrize("pruned_before", [False, True])
def test_bad_input_one_line_and_nothing_changed(case, pruned_before, gen):
    net, _ = make_net(gen)
    fn, exc, pattern = _bad_cases(net)[case]
    if pruned_before:
        tp.global_unstructured(pairs(net), pruning_method=tp.L1Unstructured, amount=0.2)
    before = snapshot(net)
    state = torch.get_rng_state()
    with pytest.raises(exc, match=pattern) as info:
        fn()
    assert "\n" not in str(info.value)
    assert_unchanged(net, before)
    assert torch.equal(state, torch.get_rng_state())


def test_bad_cases_count():
    assert len(_bad_cases(Net())) == 25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_on_a_gpu_the_masks_are_torchs_and_the_cpu_ones(backend):
    net, _ = make_net(torch.Generator().manual_seed(7))
    on_cpu, on_gpu, theirs = copy.deepcopy(net), copy.deepcopy(net).cuda(), copy.deepcopy(net).cuda()
    for amount in (0.6, 0.5):  # the second round ranks the weights the first one left
        prune.global_unstructured(pairs(on_cpu), pruning_method=prune.L1Unstructured, amount=amount)
        prune.global_unstructured(pairs(on_gpu), pruning_method=prune.L1Unstructured, amount=amount, backend=backend)
        tp.global_unstructured(pairs(theirs), pruning_method=tp.L1Unstructured, amount=amount)
    for (a, name), (b, _), (c, _) in zip(pairs(on_cpu), pairs(on_gpu), pairs(theirs)):
        mask = getattr(b, name + "_mask")
        assert mask.is_cuda and torch.equal(mask.cpu(), getattr(a, name + "_mask"))
        assert torch.equal(mask, getattr(c, name + "_mask"))
    torch.cuda.manual_seed(3)
    prune.random_unstructured(on_gpu.fc1, "weight", amount=0.5, backend=backend)
    torch.cuda.manual_seed(3)
    tp.random_unstructured(theirs.fc1, "weight", amount=0.5)
    assert torch.equal(on_gpu.fc1.weight_mask, theirs.fc1.weight_mask)  # torch's own draw, on the device
