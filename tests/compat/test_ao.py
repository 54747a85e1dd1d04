"""sparseforce.compat.ao.Sparsifier in torch.ao.pruning's own flow (prepare / step / squash_mask,
LambdaSL and CubicSL), against sparseforce's methods called directly on the same weights."""
import copy
import io

import pytest
import torch
from torch import nn
from torch.ao.pruning import BaseSparsifier, CubicSL, LambdaSL, WeightNormSparsifier

import sparseforce as sf
from sparseforce.compat.ao import Sparsifier

OPTIONS = {"force": {"iterations": 3}, "iter_snip": {"iterations": 3}, "synflow": {"iterations": 3}}
METHODS = ["force", "iter_snip", "snip", "grasp", "synflow", "magnitude", "random"]
WEIGHTS = ["0.weight", "2.weight", "4.weight"]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))


def _data():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(6, 8, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(3)]


def _masked_copy(model, masks):
    """What the sparsifier's method must see: a plain model holding original ⊙ mask."""
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            plain.get_parameter(name).mul_(mask)
    return plain


def _expected(model, method, level, **kw):
    return sf.prune(copy.deepcopy(model), _data(), method=method, sparsity=level, **OPTIONS.get(method, {}), **kw)


def _sparsifier(method, level=0.5, **kw):
    return Sparsifier(method, _data(), defaults={"sparsity_level": level}, **OPTIONS.get(method, {}), **kw)


def _stepped(method, level, **kw):
    """A fresh model prepared (every Linear weight) and stepped once by a sparsifier of ``method``."""
    model, sparsifier = _model(), _sparsifier(method, level, **kw)
    sparsifier.prepare(model, None)
    sparsifier.step()
    return model, sparsifier


def _set_level(sparsifier, level):
    for group in sparsifier.groups:
        group["sparsity_level"] = level


def _masks(model):
    return sf.Masks.from_torch_ao(model)


def _state(model, masks=True):
    """Everything of the model the caller owns (with or without ao's FakeSparsity masks)."""
    return ({n: p.detach().clone() for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers() if masks or ".parametrizations." not in f".{n}"},
            {n: (p.requires_grad, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
            model.training)


def _same_state(a, b):
    def same(x, y):
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, tuple):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
    return same(a, b)


# -- the ao flow ----------------------------------------------------------------------------------

def test_is_an_ao_sparsifier_and_the_flow_prunes_the_forward():
    model = _model()
    model(torch.randn(4, 8)).sum().backward()  # grads and BN running stats the step must not touch
    model.eval()
    sparsifier = _sparsifier("force", 0.7)
    assert isinstance(sparsifier, BaseSparsifier)
    sparsifier.prepare(model, None)
    assert [g["tensor_fqn"] for g in sparsifier.groups] and {g["tensor_fqn"] for g in sparsifier.groups} == set(WEIGHTS)
    before = _state(model, masks=False)
    rng = torch.get_rng_state()
    sparsifier.step()
    assert torch.equal(torch.get_rng_state(), rng)
    assert _same_state(before, _state(model, masks=False))
    masks = _masks(model)
    plain = _model()
    assert masks == _expected(plain, "force", 0.7)
    # the forward uses them
    x = torch.randn(5, 8)
    torch.testing.assert_close(model(x), _masked_copy(_with_running_stats(plain, model), masks).eval()(x))
    originals = {n: model.get_submodule(n[:-7]).parametrizations.weight.original.detach().clone() for n in WEIGHTS}
    sparsifier.squash_mask()
    params = dict(model.named_parameters())
    for n in WEIGHTS:
        assert torch.equal(params[n], originals[n] * masks[n])
    assert not hasattr(model[0], "parametrizations")


def _with_running_stats(plain, model):
    plain[3].load_state_dict(model[3].state_dict())
    return plain


@pytest.mark.parametrize("method, scope", [(m, s) for m in METHODS for s in ("global", "layer", "erk", "nm")
                                           if (m, s) != ("random", "nm")])  # random ranks nothing: no N:M
def test_masks_are_the_method_called_directly(method, scope):
    kw = {"global": {}, "layer": {"scope": "layer"}, "erk": {"scope": "layer", "distribution": "erk"},
          "nm": {"nm": (1, 4)}}[scope]
    level = 0.75 if scope == "nm" else 0.6
    model, _ = _stepped(method, level, **kw)
    direct = kw if method != "random" else {"distribution": {"global": "global", "layer": "uniform",
                                                                 "erk": "erk"}[scope]}
    assert _masks(model) == _expected(_model(), method, level, **direct)


def test_the_method_sees_the_effective_weights_under_plain_names():
    model, sparsifier = _stepped("magnitude", 0.5)
    first = _masks(model)
    _set_level(sparsifier, 0.3)
    sparsifier.step()
    # pruned weights are zero now, so the 20% kept back are the first zeros, not the dense top-70%
    assert _masks(model) == sf.magnitude(_masked_copy(_model(), first), sparsity=0.3)
    assert _masks(model) != sf.magnitude(_model(), sparsity=0.3)


def test_layer_scope_gives_each_group_its_own_level():
    model = _model()
    config = [{"tensor_fqn": "0.weight", "sparsity_level": 0.25}, {"tensor_fqn": "2.weight", "sparsity_level": 0.75},
              {"tensor_fqn": "4.weight", "sparsity_level": 0.5}]
    sparsifier = Sparsifier("magnitude", scope="layer")
    sparsifier.prepare(model, config)
    sparsifier.step()
    masks = _masks(model)
    sizes = {"0.weight": 128, "2.weight": 256, "4.weight": 64}
    assert {n: int(m.sum()) for n, m in masks.items()} == {"0.weight": 96, "2.weight": 64, "4.weight": 32}
    kept = 96 + 64 + 32
    assert masks == sf.magnitude(_model(), scope="layer", sparsity=1 - kept / sum(sizes.values()),
                                 distribution={"0.weight": 0.75, "2.weight": 0.25, "4.weight": 0.5})


def test_config_picks_the_tensors_and_ties_follow_the_model_order():
    model = _model()
    config = [{"tensor_fqn": "4.weight"}, {"tensor_fqn": "0.weight"}]
    sparsifier = Sparsifier("magnitude", defaults={"sparsity_level": 0.8})
    sparsifier.prepare(model, config)
    sparsifier.step()
    assert _masks(model) == sf.magnitude(_model(), sparsity=0.8, prunable=["0.weight", "4.weight"])
    assert not hasattr(model[2], "parametrizations")


# -- schedulers -------------------------------------------------------------------------------

@pytest.mark.parametrize("method, scope", [("magnitude", {}), ("force", {}), ("iter_snip", {"scope": "layer"})])
@pytest.mark.parametrize("schedule", ["lambda", "cubic"])
def test_an_ao_scheduler_drives_it(method, scope, schedule):
    model = _model()
    sparsifier = _sparsifier(method, 0.8, **scope)
    sparsifier.prepare(model, None)
    if schedule == "lambda":
        scheduler = LambdaSL(sparsifier, lambda epoch: min(1.0, (epoch + 1) / 4))
    else:
        scheduler = CubicSL(sparsifier, init_sl=0.2, init_t=0, delta_t=1, total_t=4)
    levels = []
    for _ in range(5):
        level = sparsifier.groups[0]["sparsity_level"]
        expected = _expected(_masked_copy(_model(), _masks(model)), method, level, **scope)
        sparsifier.step()
        assert _masks(model) == expected
        levels.append(level)
        scheduler.step()
    assert len(set(levels)) >= 4 and levels[-1] == pytest.approx(0.8)
    kept = sum(int(m.sum()) for m in _masks(model).values())
    assert kept == round(0.2 * (128 + 256 + 64))


class _Unread:
    def __iter__(self):
        raise AssertionError("the method ran: data was read")


def test_enable_mask_update_false_does_not_run_the_method():
    model = _model()
    sparsifier = Sparsifier("force", _Unread(), defaults={"sparsity_level": 0.5}, iterations=2)
    sparsifier.prepare(model, None)
    sparsifier.enable_mask_update = False
    sparsifier.step()
    assert all(bool(m.all()) for m in _masks(model).values())


def test_enable_mask_update_false_keeps_the_masks():
    model, sparsifier = _stepped("magnitude", 0.5)
    first = _masks(model)
    sparsifier.enable_mask_update = False
    _set_level(sparsifier, 0.9)
    sparsifier.step()
    assert _masks(model) == first
    sparsifier.enable_mask_update = True
    sparsifier.step()
    assert _masks(model) != first


def test_nm_levels_are_the_pattern_or_zero():
    model = _model()
    sparsifier = Sparsifier("magnitude", nm=(2, 4))
    assert sparsifier.defaults["sparsity_level"] == 0.5
    sparsifier.prepare(model, None)
    scheduler = LambdaSL(sparsifier, lambda epoch: float(epoch >= 1))
    sparsifier.step()
    assert all(bool(m.all()) for m in _masks(model).values())  # level 0: nothing pruned yet
    scheduler.step()
    sparsifier.step()
    assert _masks(model) == sf.magnitude(_model(), nm=(2, 4))
    sparsifier.groups[1]["sparsity_level"] = 0.6
    with pytest.raises(ValueError, match=r"nm=\(2, 4\).*'2.weight': 0.6"):
        sparsifier.step()


def test_random_keeps_the_global_rng_and_is_its_seeded_draw():
    model = _model()
    sparsifier = Sparsifier("random", defaults={"sparsity_level": 0.7}, seed=3)
    sparsifier.prepare(model, None)
    rng = torch.get_rng_state()
    sparsifier.step()
    assert torch.equal(torch.get_rng_state(), rng)
    assert _masks(model) == sf.random(_model(), sparsity=0.7, seed=3)


def test_converters_round_trip_with_both_sparsifiers():
    (ours, _), theirs = _stepped("snip", 0.6), _model()
    weight_norm = WeightNormSparsifier(sparsity_level=0.3, sparse_block_shape=(1, 1), zeros_per_block=1)
    weight_norm.prepare(theirs, None)
    weight_norm.step()
    # each sparsifier's masks written into the other's model, and read back
    _masks(ours).to_torch_ao(theirs)
    assert _masks(theirs) == _masks(ours)
    other = sf.magnitude(_model(), sparsity=0.4)
    other.to_torch_ao(ours)
    assert _masks(ours) == other


def test_state_dict_restores_masks_and_levels_through_a_checkpoint():
    model, sparsifier = _stepped("magnitude", 0.7)
    buffer = io.BytesIO()
    torch.save(sparsifier.state_dict(), buffer)
    buffer.seek(0)
    fresh, restored = _model(seed=1), Sparsifier()
    restored.prepare(fresh, None)
    restored.load_state_dict(torch.load(buffer, weights_only=False))  # ao's state is a defaultdict
    assert _masks(fresh) == _masks(model)
    assert [g["sparsity_level"] for g in restored.groups] == [0.7] * 3
    _set_level(restored, 0.5)
    restored.step()
    assert _masks(fresh) == sf.magnitude(_masked_copy(_model(seed=1), _masks(model)), sparsity=0.5)


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, kw, error, words", [
    (("nope",), {}, ValueError, "method must be one of"),
    (("force",), {}, ValueError, "'force' computes its masks from batches"),
    (("magnitude",), {"iterations": 3}, TypeError, r"unexpected options \['iterations'\]"),
    (("magnitude",), {"prunable": ["0.weight"]}, TypeError, r"unexpected options \['prunable'\]"),
    (("magnitude",), {"scope": "row"}, ValueError, "scope must be one of"),
    (("magnitude",), {"nm": (2, 4), "scope": "layer"}, ValueError, "leave scope"),
    (("magnitude",), {"distribution": "erk"}, ValueError, "pass scope='layer'"),
    (("random",), {"nm": (2, 4)}, ValueError, "method 'random' takes"),
    (("magnitude",), {"defaults": {"sparsity_level": 1.5}}, ValueError, "defaults: sparsity_level 1.5"),
    (("magnitude",), {"defaults": [0.5]}, TypeError, "defaults must be a dict"),
    (("magnitude",), {"backend": "fast"}, ValueError, "backend must be 'auto' or one of"),
    (("random",), {"backend": "cpp"}, ValueError, "method 'random' uses no kernel"),
    (("magnitude",), {"nm": (1, 4), "defaults": {"sparsity_level": 0.5}}, ValueError,
     r"nm=\(1, 4\) prunes a group to sparsity_level 0.75 \(or 0: not yet\), but the groups' levels are "
     r"'defaults': 0.5"),
])
def test_bad_arguments_raise_at_construction(args, kw, error, words):
    with pytest.raises(error, match=words):
        Sparsifier(*args, **kw)


@pytest.mark.parametrize("sparsifier, config, error, words", [
    (lambda: Sparsifier(), [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "9.weight"}], ValueError,
     "config\\[1\\]: tensor_fqn '9.weight' is no floating-point parameter"),
    (lambda: Sparsifier(), [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "0.weight"}], ValueError, "twice"),
    (lambda: Sparsifier(), [{"tensor_fqn": "0.weight", "sparsity_level": 0.5},
                            {"tensor_fqn": "2.weight", "sparsity_level": 0.7}], ValueError,
     "scope='global' ranks all groups together.*'0.weight': 0.5, '2.weight': 0.7"),
    (lambda: Sparsifier(scope="layer", distribution="erk"), [{"tensor_fqn": "0.weight", "sparsity_level": 0.5},
                                                             {"tensor_fqn": "2.weight", "sparsity_level": 0.7}],
     ValueError, "distribution='erk' shares one level"),
    (lambda: Sparsifier(nm=(2, 3)), None, ValueError, "not a multiple of 3"),
    (lambda: Sparsifier(scope="layer", distribution={"0.weight": 0.5}), None, ValueError,
     "missing '2.weight', '4.weight'"),
    (lambda: Sparsifier(), [{"tensor_fqn": "0.weight", "sparsity_level": -1}], ValueError, r"config\[0\]"),
    (lambda: Sparsifier(), ["0.weight"], TypeError, r"config\[0\] must be a dict"),
    (lambda: Sparsifier(backend="cuda"), None, sf.ops.BackendUnavailableError,
     "backend 'cuda' is not available for topk_masks on cpu"),
])
def test_a_bad_config_raises_at_prepare_and_leaves_the_model(sparsifier, config, error, words):
    model = _model()
    before = _state(model)
    with pytest.raises(error, match=words):
        sparsifier().prepare(model, config)
    assert _same_state(before, _state(model))
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def test_a_level_set_apart_raises_at_step_and_leaves_the_masks():
    model, sparsifier = _stepped("magnitude", 0.5)
    first, before = _masks(model), _state(model)
    sparsifier.groups[0]["sparsity_level"] = 0.9
    with pytest.raises(ValueError, match="need one sparsity_level"):
        sparsifier.step()
    assert _masks(model) == first and _same_state(before, _state(model))
